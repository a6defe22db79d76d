//! Migrations at start-up, over a direct connection to PostgreSQL, serialised across
//! replicas by a session-level advisory lock.
//!
//! - The connection comes from `DIRECT_URL` (Prisma's convention); `DATABASE_URL`, which
//!   the app keeps untouched, is only a fallback, with a warning.
//! - A connection through a transaction pooler (PgBouncer in transaction mode) is refused
//!   unless allowed: session state (the lock, `SET`) does not survive it. Detection is by
//!   behaviour, not port: two client connections are opened and `pg_backend_pid()` asked
//!   in turn, A, B, A, three times. A direct connection (or a session pooler, which is
//!   safe) gives each client its own backend, for good; a transaction pooler hands B the
//!   backend A just released (PgBouncer reuses the most recent one) or moves A between
//!   transactions (a busy pool). Plain TCP proxies pass, as they should.
//! - Replica safety: refinery and drizzle take no lock, so replicas that start together
//!   crash-loop on "already exists". The lock is taken with `pg_try_advisory_lock` in a
//!   polling loop (a blocking `pg_advisory_lock` can deadlock with
//!   `CREATE INDEX CONCURRENTLY`), only when something is pending, and held for the
//!   whole phase; it dies with the session, so a killed entrypoint never leaves it.
//! - Sources: refinery SQL files (`V1__name.sql`; each migration commits with its history
//!   row; divergent or missing migrations abort), a drizzle-kit folder (applied and
//!   recorded exactly as drizzle-orm's migrator does), or the app's own command run with
//!   `DATABASE_URL` set to the direct URL while the lock is held.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::pg::{classify, PgTarget};
use crate::privileges::Credentials;

/// The advisory lock key: "dockhand" in ASCII.
pub const LOCK_KEY: i64 = 0x646f_636b_6861_6e64;

/// Where migrations come from.
#[derive(Debug, Clone)]
pub enum Source {
    Refinery(PathBuf),
    Drizzle(PathBuf),
    /// The app's own tool; argv.
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub lock_timeout: Duration,
    pub allow_pooler: bool,
    /// Credentials for `Source::Command`.
    pub user: Option<Credentials>,
}

crate::message_error!(
    /// A failed migration phase; the message names what failed and the server's error.
    MigrateError
);

fn err(msg: impl Into<String>) -> MigrateError {
    MigrateError(crate::url::redact_text(&msg.into()))
}

/// The process group of a running `--migrate-cmd`, so a stop signal can end it.
pub static COMMAND_PGID: AtomicI32 = AtomicI32::new(0);

/// The migration URL: `DIRECT_URL`, else `DATABASE_URL` with a warning. Warns when both
/// are the same. `None` when neither is set.
pub fn direct_url() -> Result<Option<String>, String> {
    let direct = crate::config::var("DIRECT_URL").map_err(|e| e.to_string())?;
    let database = crate::config::var("DATABASE_URL").map_err(|e| e.to_string())?;
    match (direct, database) {
        (Some(d), Some(db)) => {
            if d == db {
                warn!("DIRECT_URL equals DATABASE_URL: if DATABASE_URL goes through PgBouncer, point DIRECT_URL at PostgreSQL itself");
            }
            Ok(Some(d))
        }
        (Some(d), None) => Ok(Some(d)),
        (None, Some(db)) => {
            warn!("DIRECT_URL is not set: migrating over DATABASE_URL; set DIRECT_URL to a connection that bypasses PgBouncer");
            Ok(Some(db))
        }
        (None, None) => Ok(None),
    }
}

/// Fails when `target` goes through a transaction pooler (see the module doc).
pub async fn refuse_pooler(target: &PgTarget, a: &Client) -> Result<(), MigrateError> {
    match crate::pg::shared_backend(target, a).await {
        Ok(None) => Ok(()),
        Ok(Some(pid)) => Err(err(format!(
            "{} goes through a transaction pooler (PgBouncer?): two connections shared backend {pid}, so the advisory lock and session settings would not hold. Set DIRECT_URL to PostgreSQL itself, or pass --allow-pooler if you are sure",
            target.url
        ))),
        Err(e) => Err(err(format!("checking the connection: {e}"))),
    }
}

/// Runs the migration phase.
pub async fn run(target: &PgTarget, direct_url: &str, opts: &Options) -> Result<(), MigrateError> {
    let started = Instant::now();
    let client = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {}", target.url, e.reason)))?;
    if !opts.allow_pooler {
        refuse_pooler(target, &client).await?;
    }
    let mut client = client;
    let pending = pending(&mut client, &opts.source).await?;
    if pending == Some(0) {
        info!(
            "migrations: nothing to apply ({})",
            crate::duration::format(started.elapsed())
        );
        return Ok(());
    }
    lock(&client, opts.lock_timeout).await?;
    let result = apply(&mut client, direct_url, opts).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result?;
    info!(
        "migrations done in {}",
        crate::duration::format(started.elapsed())
    );
    Ok(())
}

/// How many migrations are pending; `None` when it cannot be known (a command).
async fn pending(client: &mut Client, source: &Source) -> Result<Option<usize>, MigrateError> {
    match source {
        Source::Command(_) => Ok(None),
        Source::Refinery(dir) => {
            let migrations = load_refinery(dir)?;
            let applied = refinery_applied(client).await?;
            Ok(Some(
                migrations
                    .iter()
                    .filter(|m| !applied.iter().any(|a| a.version() == m.version()))
                    .count(),
            ))
        }
        Source::Drizzle(dir) => {
            let journal = drizzle::load(dir)?;
            let last = drizzle::last_applied(client).await?;
            Ok(Some(
                journal
                    .iter()
                    .filter(|m| last.is_none_or(|l| l < m.when))
                    .count(),
            ))
        }
    }
}

async fn lock(client: &Client, timeout: Duration) -> Result<(), MigrateError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut next_log = started;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|e| err(format!("taking the migration lock: {}", classify(&e))))?
            .get(0);
        if got {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(err(format!(
                "another replica held the migration lock for longer than --lock-timeout {}",
                crate::duration::format(timeout)
            )));
        }
        if Instant::now() >= next_log {
            let holder = client
                .query_opt(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = ($1::bigint & 4294967295)::oid LIMIT 1",
                    &[&LOCK_KEY],
                )
                .await
                .ok()
                .flatten()
                .map(|r| format!(" (backend {})", r.get::<_, i32>(0)))
                .unwrap_or_default();
            info!("waiting for another replica to finish migrating{holder}");
            next_log = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn apply(client: &mut Client, direct_url: &str, opts: &Options) -> Result<(), MigrateError> {
    match &opts.source {
        Source::Refinery(dir) => {
            let migrations = load_refinery(dir)?;
            let report = refinery::Runner::new(&migrations)
                .set_abort_divergent(true)
                .set_abort_missing(true)
                .run_async(client)
                .await
                .map_err(|e| refinery_error(&e, &migrations))?;
            for m in report.applied_migrations() {
                info!("applied migration {m}");
            }
            Ok(())
        }
        Source::Drizzle(dir) => drizzle::apply(client, dir).await,
        Source::Command(argv) => run_command(argv, direct_url, opts.user.as_ref()).await,
    }
}

fn load_refinery(dir: &Path) -> Result<Vec<refinery::Migration>, MigrateError> {
    if !dir.is_dir() {
        return Err(err(format!(
            "--migrations {}: not a directory",
            dir.display()
        )));
    }
    let bad = misnamed_refinery_files(dir)
        .map_err(|e| err(format!("--migrations {}: {e}", dir.display())))?;
    if !bad.is_empty() {
        return Err(err(format!(
            "--migrations {}: {} file(s) look like migrations but refinery would skip them silently; rename them as V<version>__<name>.sql: {}",
            dir.display(),
            bad.len(),
            bad.iter()
                .map(|(f, why)| format!("{f} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    refinery::load_sql_migrations(dir)
        .map_err(|e| err(format!("--migrations {}: {e}", dir.display())))
}

/// Files in `dir` that look like migrations (`V` or `U` and a digit, in any case,
/// then `.sql` in any case or an underscore) but do not follow refinery's rule
/// `[U|V]<version>__<name>.sql`, with `<name>` of letters, digits and `_` only.
/// refinery ignores such files without a word; a later rename then wedges start-up
/// ("missing from the filesystem"). Each comes with the rule it breaks.
pub fn misnamed_refinery_files(dir: &Path) -> std::io::Result<Vec<(String, &'static str)>> {
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_type()
            .is_ok_and(|t| t.is_file() || t.is_symlink())
        {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(why) = refinery_name_problem(&name) {
            bad.push((name, why));
        }
    }
    bad.sort();
    Ok(bad)
}

/// Why `name` looks like a refinery migration but is not one (`None`: it is one, or
/// it does not look like one at all).
fn refinery_name_problem(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let starts_like = {
        let b = lower.as_bytes();
        b.len() > 1 && (b[0] == b'v' || b[0] == b'u') && b[1].is_ascii_digit()
    };
    let sql_ext = lower.ends_with(".sql");
    if !starts_like || !(sql_ext || name.contains("_")) {
        return None;
    }
    if !name.ends_with(".sql") {
        return Some(if sql_ext {
            "the extension must be .sql in lower case"
        } else {
            "the file must end in .sql"
        });
    }
    let stem = &name[..name.len() - 4];
    let Some(rest) = stem.strip_prefix('V').or_else(|| stem.strip_prefix('U')) else {
        return Some("the prefix must be an upper-case V (or U)");
    };
    let version_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (version, after) = rest.split_at(version_len);
    if version.is_empty()
        || version.starts_with('.')
        || version.ends_with('.')
        || version.matches('.').count() > 1
    {
        return Some("the version after V must be a number (V1, V2.1)");
    }
    let Some(label) = after.strip_prefix("__") else {
        return Some("two underscores must separate the version from the name (V1__name.sql)");
    };
    if label.is_empty() || !label.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Some("the name may hold only letters, digits and _ (no -, space or dot)");
    }
    None
}

async fn refinery_applied(client: &mut Client) -> Result<Vec<refinery::Migration>, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| err(format!("reading refinery_schema_history: {}", classify(&e))))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    refinery::Runner::new(&[])
        .get_applied_migrations_async(client)
        .await
        .map_err(|e| err(format!("reading refinery_schema_history: {e}")))
}

fn refinery_error(e: &refinery::Error, migrations: &[refinery::Migration]) -> MigrateError {
    use refinery::error::Kind;
    match e.kind() {
        Kind::Connection(msg, source) => {
            let name = msg.strip_prefix("error applying migration ").unwrap_or(msg);
            let sql = migrations
                .iter()
                .find(|m| m.to_string() == name)
                .and_then(|m| m.sql());
            match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => err(format!(
                    "migration {name} failed: {}",
                    db_error_text(pg, sql, 0)
                )),
                None => err(format!("{msg}: {source}")),
            }
        }
        other => err(format!("migrations: {other}")),
    }
}

/// The server's error with SQLSTATE and, when the SQL is known, the line it points at.
/// `line_offset` is added to the line (a statement inside a larger file).
pub fn db_error_text(e: &tokio_postgres::Error, sql: Option<&str>, line_offset: usize) -> String {
    let Some(db) = e.as_db_error() else {
        return classify(e).reason;
    };
    let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(tokio_postgres::error::ErrorPosition::Original(pos)) = db.position() {
        match sql {
            Some(sql) => {
                let upto: String = sql
                    .chars()
                    .take((*pos as usize).saturating_sub(1))
                    .collect();
                let line = upto.matches('\n').count() + 1 + line_offset;
                let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                s.push_str(&format!(" at line {line}, column {col}"));
            }
            None => s.push_str(&format!(" at character {pos}")),
        }
    }
    if let Some(d) = db.detail() {
        s.push_str(&format!("; {d}"));
    }
    s
}

/// Splits a command line into words like a shell (quotes, backslashes), without any
/// expansion: `pnpm db:migrate`, `sh -c 'npx prisma migrate deploy'`.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
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
                        None => return Err(format!("unclosed ' in {s:?}")),
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
                            None => return Err(format!("unclosed \" in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed \" in {s:?}")),
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
        return Err("the migration command is empty".into());
    }
    Ok(words)
}

async fn run_command(
    argv: &[String],
    direct_url: &str,
    user: Option<&Credentials>,
) -> Result<(), MigrateError> {
    info!("running migration command: {}", argv.join(" "));
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("DATABASE_URL", direct_url)
        .env("DIRECT_URL", direct_url);
    crate::supervise::prepare_child(&mut cmd, user, false);
    let mut child = cmd.spawn().map_err(|e| {
        err(format!(
            "--migrate-cmd: cannot run {}: {}",
            argv[0],
            crate::error::io_reason(&e)
        ))
    })?;
    COMMAND_PGID.store(child.id() as i32, Ordering::SeqCst);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| err(format!("--migrate-cmd: {e}")))?
        .map_err(|e| err(format!("--migrate-cmd: {e}")))?;
    COMMAND_PGID.store(0, Ordering::SeqCst);
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
                crate::supervise::signal_name(s)
            ),
            _ => format!("migration command `{}` failed", argv.join(" ")),
        }))
    }
}

/// drizzle-kit folders, applied as drizzle-orm's migrator does: the journal
/// (`meta/_journal.json`) lists the migrations; each `TAG.sql` is split on
/// `--> statement-breakpoint`; a migration is pending when its journal `when` is newer
/// than the newest `created_at` in `drizzle.__drizzle_migrations`; all pending ones run
/// in one transaction, each recorded as (sha256 of the file, `when`).
pub mod drizzle {
    use super::{err, MigrateError};
    use crate::pg::classify;
    use sha2::{Digest, Sha256};
    use std::path::Path;
    use tokio_postgres::Client;
    use tracing::info;

    pub struct Entry {
        pub tag: String,
        pub when: i64,
        pub sql: String,
        pub hash: String,
    }

    /// Reads the journal and the SQL files.
    pub fn load(dir: &Path) -> Result<Vec<Entry>, MigrateError> {
        let journal_path = dir.join("meta/_journal.json");
        let text = std::fs::read_to_string(&journal_path).map_err(|e| {
            err(format!(
                "{}: {} (is this a drizzle-kit migrations folder?)",
                journal_path.display(),
                crate::error::io_reason(&e)
            ))
        })?;
        let journal: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| err(format!("{}: invalid JSON: {e}", journal_path.display())))?;
        let entries = journal["entries"]
            .as_array()
            .ok_or_else(|| err(format!("{}: no \"entries\" list", journal_path.display())))?;
        let mut out = Vec::new();
        for e in entries {
            let tag = e["tag"]
                .as_str()
                .ok_or_else(|| err(format!("{}: an entry has no tag", journal_path.display())))?;
            let when = e["when"].as_i64().ok_or_else(|| {
                err(format!(
                    "{}: entry {tag} has no \"when\"",
                    journal_path.display()
                ))
            })?;
            let path = dir.join(format!("{tag}.sql"));
            let bytes = std::fs::read(&path).map_err(|e| {
                err(format!(
                    "{}: {}",
                    path.display(),
                    crate::error::io_reason(&e)
                ))
            })?;
            let hash = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let sql = String::from_utf8(bytes)
                .map_err(|_| err(format!("{}: not UTF-8", path.display())))?;
            out.push(Entry {
                tag: tag.to_string(),
                when,
                sql,
                hash,
            });
        }
        Ok(out)
    }

    /// The newest `created_at` recorded, if any.
    pub async fn last_applied(client: &Client) -> Result<Option<i64>, MigrateError> {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('drizzle.__drizzle_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| {
                err(format!(
                    "reading drizzle.__drizzle_migrations: {}",
                    classify(&e)
                ))
            })?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let row = client
            .query_opt("SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY created_at DESC LIMIT 1", &[])
            .await
            .map_err(|e| err(format!("reading drizzle.__drizzle_migrations: {}", classify(&e))))?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
    }

    /// Applies the pending migrations in one transaction.
    pub async fn apply(client: &mut Client, dir: &Path) -> Result<(), MigrateError> {
        let entries = load(dir)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| err(classify(&e).reason))?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS \"drizzle\"; CREATE TABLE IF NOT EXISTS \"drizzle\".\"__drizzle_migrations\" (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)",
        )
        .await
        .map_err(|e| err(format!("creating drizzle.__drizzle_migrations: {}", classify(&e))))?;
        let last: Option<i64> = tx
            .query_opt("SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY created_at DESC LIMIT 1", &[])
            .await
            .map_err(|e| err(classify(&e).reason))?
            .and_then(|r| r.get(0));
        let mut applied = Vec::new();
        for entry in entries.iter().filter(|e| last.is_none_or(|l| l < e.when)) {
            let mut line = 0;
            for stmt in entry.sql.split("--> statement-breakpoint") {
                if !stmt.trim().is_empty() {
                    tx.batch_execute(stmt).await.map_err(|e| {
                        err(format!(
                            "migration {} failed: {}",
                            entry.tag,
                            super::db_error_text(&e, Some(stmt), line)
                        ))
                    })?;
                }
                line += stmt.matches('\n').count();
            }
            tx.execute(
                "INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ($1, $2)",
                &[&entry.hash, &entry.when],
            )
            .await
            .map_err(|e| err(classify(&e).reason))?;
            applied.push(entry.tag.as_str());
        }
        tx.commit()
            .await
            .map_err(|e| err(format!("committing migrations: {}", classify(&e))))?;
        for tag in applied {
            info!("applied migration {tag}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refinery_names_that_would_be_skipped_are_named() {
        for ok in [
            "V1__init.sql",
            "V2.1__add_users.sql",
            "U3__x_y.sql",
            "README.md",
            "notes.txt",
            "seed.sql",
            "V1 notes.txt",
            "V10__ünïcode.sql",
        ] {
            assert_eq!(refinery_name_problem(ok), None, "{ok}");
        }
        for (bad, rule) in [
            ("V2__add-users.sql", "only letters"),
            ("V3__with space.sql", "only letters"),
            ("V4_single.sql", "two underscores"),
            ("v5__lower.sql", "upper-case V"),
            ("V6__upper.SQL", "lower case"),
            ("V1.2.3__x.sql", "version"),
        ] {
            let why = refinery_name_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(why.contains(rule), "{bad}: {why}");
        }
    }

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
