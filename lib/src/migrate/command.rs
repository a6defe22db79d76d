//! The app's own migration tool (`--migrate-cmd`), run as a child with the direct URL
//! while the lock is held: its command line split like a shell would, its failure told
//! as an exit status or a signal. Its own module because it shares nothing with the
//! folder formats but the lock around it.

use std::time::Duration;

use tracing::info;

use super::failure::{err, MigrateError};
use crate::config::{invalid, ConfigError};
use crate::privileges::Credentials;
use crate::process::ChildGroup;

/// Splits a command line into words like a shell (quotes, backslashes), without any
/// expansion: `pnpm db:migrate`, `sh -c 'npx prisma migrate deploy'`.
pub fn split_command(s: &str) -> Result<Vec<String>, ConfigError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(invalid(format!("unclosed ' in {s:?}"))),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(invalid(format!("unclosed \" in {s:?}"))),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(invalid(format!("unclosed \" in {s:?}"))),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(invalid("the migration command is empty"));
    }
    Ok(words)
}

pub(super) async fn run_command(
    argv: &[String],
    direct_url: &str,
    user: Option<&Credentials>,
    ddl_lock_timeout: Duration,
    running: &ChildGroup,
) -> Result<(), MigrateError> {
    info!("running migration command: {}", argv.join(" "));
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("DATABASE_URL", direct_url)
        .env("DIRECT_URL", direct_url);
    if !ddl_lock_timeout.is_zero() {
        // libpq (psql, and drivers built on it or reading PGOPTIONS) applies this to
        // every session the command opens.
        let mut options = std::env::var("PGOPTIONS").unwrap_or_default();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c lock_timeout={}ms",
            ddl_lock_timeout.as_millis()
        ));
        cmd.env("PGOPTIONS", options);
    }
    crate::process::prepare_child(&mut cmd, user, false);
    let mut child = cmd.spawn().map_err(|e| {
        err(format!(
            "--migrate-cmd: cannot run {}: {}",
            argv[0],
            crate::error::io_reason(&e)
        ))
    })?;
    running.set(child.id());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| err(format!("--migrate-cmd: {e}")))?
        .map_err(|e| err(format!("--migrate-cmd: {e}")))?;
    running.clear();
    if status.success() {
        Ok(())
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(err(match (status.code(), status.signal()) {
            (Some(c), _) => format!(
                "migration command `{}` failed with exit status {c}",
                argv.join(" ")
            ),
            (_, Some(s)) => format!(
                "migration command `{}` was killed by {}",
                argv.join(" "),
                crate::signals::signal_name(s)
            ),
            _ => format!("migration command `{}` failed", argv.join(" ")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands_like_a_shell() {
        assert_eq!(
            split_command("pnpm db:migrate").unwrap(),
            ["pnpm", "db:migrate"]
        );
        assert_eq!(
            split_command(r#"sh -c 'npx prisma migrate deploy' "a b" c\ d"#).unwrap(),
            ["sh", "-c", "npx prisma migrate deploy", "a b", "c d"]
        );
        assert!(split_command("echo 'oops").is_err());
        assert!(split_command("   ").is_err());
    }
}
