//! `pg_dump` for the server at hand: the server's major version is read first, and a
//! `pg_dump` at least that new is chosen from `BACKUP_PG_BIN` (a directory), the
//! `/usr/lib/postgresql/N/bin` directories and `PATH`, so a version mismatch is a clear
//! message ("server is 17, pg_dump is 15: install postgresql-client-17") instead of
//! pg_dump's own error halfway through the night.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{err, BackupError};
use crate::pg::PgTarget;
use crate::url::Url;

/// What the server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub major: u32,
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
}

/// Reads the server's version over an open connection.
pub async fn server_of(
    client: &tokio_postgres::Client,
    target: &PgTarget,
) -> Result<Server, BackupError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| err(format!("{}: {}", target.url, crate::pg::classify(&e))))?;
    let num: i32 = row.get(0);
    Ok(Server {
        major: (num / 10000) as u32,
        version: row.get(1),
    })
}

/// A `pg_dump` (and the `pg_restore` beside it) of a known major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub major: u32,
    /// `pg_dump --version`'s output.
    pub version: String,
}

impl Tools {
    /// `pg_dumpall` beside `pg_dump` (for the globals).
    pub fn pg_dumpall(&self) -> PathBuf {
        self.pg_dump.with_file_name("pg_dumpall")
    }

    /// `psql` beside `pg_dump` (to restore the globals).
    pub fn psql(&self) -> PathBuf {
        self.pg_dump.with_file_name("psql")
    }
}

/// The major version `pg_dump --version` reports (`pg_dump (PostgreSQL) 15.18 ...`).
pub fn tool_major(pg_dump: &Path) -> Option<(u32, String)> {
    let out = Command::new(pg_dump).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ver = text.split_whitespace().nth(2)?;
    let major = ver.split(['.', ' ', '-']).next()?.parse().ok()?;
    Some((major, text))
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("BACKUP_PG_BIN").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
        return dirs;
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        v.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        dirs.extend(v.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Picks the newest `pg_dump` whose major version is at least the server's.
pub fn find_tools(server_major: u32) -> Result<Tools, BackupError> {
    let mut best: Option<Tools> = None;
    let mut newest_seen: Option<(u32, PathBuf)> = None;
    for dir in candidates() {
        let pg_dump = dir.join("pg_dump");
        let Some((major, version)) = tool_major(&pg_dump) else {
            continue;
        };
        if newest_seen.as_ref().is_none_or(|(m, _)| major > *m) {
            newest_seen = Some((major, pg_dump.clone()));
        }
        if major >= server_major && best.as_ref().is_none_or(|b| major > b.major) {
            best = Some(Tools {
                pg_restore: dir.join("pg_restore"),
                pg_dump,
                major,
                version,
            });
        }
    }
    best.ok_or_else(|| match newest_seen {
        Some((m, p)) => err(format!(
            "server is {server_major}, pg_dump is {m} ({}): install postgresql-client-{server_major}, or set BACKUP_PG_BIN to its bin directory",
            p.display()
        )),
        None => err(format!(
            "no pg_dump found (BACKUP_PG_BIN, /usr/lib/postgresql/*/bin, PATH): install postgresql-client-{server_major}"
        )),
    })
}

/// libpq environment for `pg_dump`/`pg_restore` from a URL: the password travels in
/// `PGPASSWORD`, never on the command line (where `ps` shows it).
pub fn libpq_env(url: &Url) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if !url.hosts.is_empty() {
        env.push((
            "PGHOST",
            url.hosts
                .iter()
                .map(|h| h.host.clone())
                .collect::<Vec<_>>()
                .join(","),
        ));
        env.push((
            "PGPORT",
            url.hosts
                .iter()
                .map(|h| h.port.unwrap_or(5432).to_string())
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    if !url.username.is_empty() {
        env.push(("PGUSER", url.username.clone()));
    }
    if let Some(p) = &url.password {
        env.push(("PGPASSWORD", p.clone()));
    }
    if let Some(db) = url
        .decoded_path()
        .map(|p| p.trim_start_matches('/').to_string())
        .filter(|d| !d.is_empty())
    {
        env.push(("PGDATABASE", db));
    }
    for (k, v) in &url.query {
        let var = match k.as_str() {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "application_name" => "PGAPPNAME",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "options" => "PGOPTIONS",
            "password" => "PGPASSWORD",
            "user" => "PGUSER",
            "dbname" => "PGDATABASE",
            _ => continue,
        };
        env.retain(|(k, _)| *k != var);
        env.push((var, v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_carries_the_password_out_of_argv() {
        let u = Url::parse("postgres://app:s%40cret@db:6432/shop?sslmode=require").unwrap();
        let env = libpq_env(&u);
        assert!(env.contains(&("PGPASSWORD", "s@cret".into())));
        assert!(env.contains(&("PGHOST", "db".into())));
        assert!(env.contains(&("PGPORT", "6432".into())));
        assert!(env.contains(&("PGDATABASE", "shop".into())));
        assert!(env.contains(&("PGSSLMODE", "require".into())));
    }
}
