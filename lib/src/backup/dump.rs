//! `pg_dump` for the server at hand: the server's major version is read first, and the
//! `pg_dump` of that version (else the newest newer one) is chosen from `BACKUP_PG_BIN` (a directory), the
//! `/usr/lib/postgresql/N/bin` directories and `PATH`, so a version mismatch is a clear
//! message ("server is 17, pg_dump is 15: install postgresql-client-17") instead of
//! pg_dump's own error halfway through the night.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::manifest::Counts;
use super::{err, BackupError};
use crate::pg::PgTarget;

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
        .map_err(|e| err(format!("{}: {}", target.url, crate::pg::classify(&e))).with_source(e))?;
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

    /// `pg_basebackup` beside `pg_dump` (base backups for point-in-time recovery).
    pub fn pg_basebackup(&self) -> PathBuf {
        self.pg_dump.with_file_name("pg_basebackup")
    }
}

/// The major version `pg_dump --version` reports (`pg_dump (PostgreSQL) 15.18 ...`).
pub fn tool_major(pg_dump: &Path) -> Option<(u32, String)> {
    let out = libpq_command(pg_dump, None)
        .arg("--version")
        .output()
        .ok()?;
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

/// True when a pg_dump of major `candidate` is better for a server of `server` than the
/// best so far: the server's own major wins; else the newest that is at least as new.
fn preferred(candidate: u32, best: Option<u32>, server: u32) -> bool {
    candidate >= server
        && match best {
            None => true,
            Some(b) => b != server && (candidate == server || candidate > b),
        }
}

/// Picks the `pg_dump` of the server's major version when one is installed (Debian
/// keeps several in `/usr/lib/postgresql/N/bin`), else the newest one that is newer.
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
        if preferred(major, best.as_ref().map(|b| b.major), server_major) {
            best = Some(Tools {
                pg_restore: dir.join("pg_restore"),
                pg_dump,
                major,
                version,
            });
        }
    }
    let pg_bin = std::env::var_os("BACKUP_PG_BIN").filter(|d| !d.is_empty());
    best.ok_or_else(|| match (newest_seen, pg_bin) {
        (Some((m, p)), Some(dir)) => err(format!(
            "server is {server_major}, pg_dump is {m} ({}), from BACKUP_PG_BIN={}: install postgresql-client-{server_major} and point BACKUP_PG_BIN at its bin directory, or unset BACKUP_PG_BIN to search /usr/lib/postgresql/*/bin and PATH",
            p.display(),
            std::path::Path::new(&dir).display()
        )),
        (Some((m, p)), None) => err(format!(
            "server is {server_major}, pg_dump is {m} ({}): install postgresql-client-{server_major}, or set BACKUP_PG_BIN to its bin directory",
            p.display()
        )),
        (None, Some(dir)) => err(format!(
            "no pg_dump in BACKUP_PG_BIN={}: point it at the bin directory of pg_dump {server_major} or newer",
            std::path::Path::new(&dir).display()
        )),
        (None, None) => err(format!(
            "no pg_dump found (/usr/lib/postgresql/*/bin, PATH): install postgresql-client-{server_major}"
        )),
    })
}

/// Variables a libpq child may keep from our environment: locale, time zone, search
/// path, and libpq's own settings that hold no secret (client certificates, service
/// files, encodings). Everything else (`AWS_SECRET_ACCESS_KEY`, `DIRECT_URL`, any
/// other secret) stays out of `/proc/PID/environ` of pg_dump, pg_restore and psql.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_COLLATE",
    "LC_NUMERIC",
    "LC_TIME",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGCLIENTENCODING",
    "PGTZ",
    "PGDATESTYLE",
    "PGLOCALEDIR",
    "KRB5CCNAME",
    "KRB5_CONFIG",
];

/// `dbname='...'` for a libpq connection string, quoted so that any name is one name.
pub fn conninfo_dbname(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The application name dockhand's backup connections use (`pg_stat_activity`).
pub const APP_NAME: &str = "dockhand-backup";

/// A libpq program (pg_dump, pg_dumpall, pg_restore, psql) that connects to `target`
/// with exactly the settings the run resolved (see [`PgTarget::libpq_env`]) and
/// carries nothing else from our environment but [`INHERITED`].
pub fn libpq_command(program: &Path, target: Option<&PgTarget>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for name in INHERITED {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    if let Some(t) = target {
        cmd.envs(t.libpq_env(APP_NAME));
    }
    cmd
}

/// pg_dump's `--lock-wait-timeout` for `timeout` (none for zero: no limit). pg_dump
/// takes ACCESS SHARE on every table it dumps at its start; without a limit it waits
/// behind an ACCESS EXCLUSIVE lock (a migration's ALTER in an open transaction) for as
/// long as that is held.
pub fn lock_wait_args(timeout: std::time::Duration) -> Vec<String> {
    if timeout.is_zero() {
        return Vec::new();
    }
    vec![format!(
        "--lock-wait-timeout={}ms",
        timeout.as_millis().max(1)
    )]
}

/// When pg_dump's `messages` say it gave up waiting for a table lock, the sessions
/// that hold or wait for ACCESS EXCLUSIVE on a table of `target`'s database, each as
/// pid, application, address, state and how long its transaction has been open (no
/// query text: it may hold secrets). `None` when the failure was something else or
/// the blockers cannot be read.
pub async fn lock_blockers(target: &PgTarget, messages: &str) -> Option<String> {
    // pg_dump sets statement_timeout for its LOCK TABLE statements only.
    if !messages.contains("statement timeout") || !messages.contains("LOCK TABLE") {
        return None;
    }
    let client = target.connect().await.ok()?;
    let rows = client
        .query(
            // state is NULL for another role's session unless we may read all
            // stats; its address and transaction start are hidden then too.
            "SELECT a.pid, coalesce(a.application_name, ''), a.state, \
                    CASE WHEN a.state IS NOT NULL THEN coalesce(host(a.client_addr), 'local') END, \
                    extract(epoch FROM now() - a.xact_start)::bigint, \
                    l.relation::regclass::text, l.granted \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation \
             WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND c.relpersistence <> 't' \
               AND c.relkind IN ('r', 'p', 'm', 'f') \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND a.pid <> pg_backend_pid() \
             ORDER BY l.granted DESC, a.pid",
            &[],
        )
        .await
        .ok()?;
    if rows.is_empty() {
        return Some("a session that has finished since".into());
    }
    let who = rows
        .iter()
        .map(|r| {
            let app: String = r.get(1);
            let mut text = format!("backend {}", r.get::<_, i32>(0));
            if !app.is_empty() {
                text.push_str(&format!(" {app:?}"));
            }
            match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
                (Some(state), Some(from)) => text.push_str(&format!(" from {from}, {state}")),
                _ => text.push_str(
                    " (another role's session: grant pg_read_all_stats to the backup's role to see its address and state)",
                ),
            }
            if let Some(age) = r.get::<_, Option<i64>>(4) {
                text.push_str(&format!(", in a transaction for {age}s"));
            }
            let how = if r.get::<_, bool>(6) {
                "holding"
            } else {
                "waiting for"
            };
            text.push_str(&format!(", {how} ACCESS EXCLUSIVE on {}", r.get::<_, String>(5)));
            text
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(crate::redact::text(&who))
}

/// The tables whose rows a whole-database `pg_dump` writes, as `(schema, table)`:
/// ordinary tables (partitions are the leaves that hold rows; a partitioned table
/// holds none of its own), temporary tables and extension members excluded (pg_dump
/// leaves their data out), unlogged tables included (their data is dumped).
const DUMPED_TABLES: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                     AND d.objid = c.oid AND d.deptype = 'e') \
     ORDER BY 1, 2";

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The exact rows of every table a dump holds ([`DUMPED_TABLES`], `count(*) FROM
/// ONLY`) and the large objects, as `client` sees them: inside a dump's exported
/// snapshot when counting a backup, in the restored database when checking a drill.
/// One implementation for both sides, so they count the same things.
pub async fn count_rows(client: &tokio_postgres::Client) -> Result<Counts, tokio_postgres::Error> {
    let mut tables = Vec::new();
    for t in client.query(DUMPED_TABLES, &[]).await? {
        let (schema, name): (String, String) = (t.get(0), t.get(1));
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                ),
                &[],
            )
            .await?
            .get(0);
        tables.push((schema, name, n));
    }
    let large_objects: i64 = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await?
        .get(0);
    Ok(Counts {
        tables,
        large_objects,
    })
}

/// A REPEATABLE READ transaction whose snapshot `pg_dump --snapshot` dumps, counting
/// the rows in that same snapshot while pg_dump runs, so the counts are exactly the
/// dump's even while the application writes. The transaction stays open until
/// [`Snapshot::finish`] (after pg_dump has exited): pg_dump and its workers import
/// the snapshot, which needs the exporting transaction alive.
pub struct Snapshot {
    pub id: String,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<Counts, String>>>,
}

impl Drop for Snapshot {
    /// A dump that failed or was stopped: stop counting and end the transaction now.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Snapshot {
    /// Opens the transaction, exports its snapshot and starts counting in it. The
    /// counting session locks every table it will count at once (ACCESS SHARE, as
    /// pg_dump does at its start, waiting at most `lock_wait`), so it never takes a
    /// lock later: a migration that queues for ACCESS EXCLUSIVE behind pg_dump can
    /// never deadlock with the count.
    pub async fn export(
        target: &PgTarget,
        lock_wait: std::time::Duration,
    ) -> Result<Snapshot, String> {
        let client = target.connect().await.map_err(|e| e.to_string())?;
        let q = |e: tokio_postgres::Error| crate::pg::classify(&e).to_string();
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(q)?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(q)?
            .get(0);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // A failed count (a table this role may not read, a lock timeout) must not
            // end the transaction: the snapshot dies with it, and pg_dump, importing it
            // at the same moment, would fail on that instead of its own error. The
            // count runs in a savepoint, rolled back on failure.
            let counted = async {
                client.batch_execute("SAVEPOINT dockhand_count").await?;
                if !lock_wait.is_zero() {
                    client
                        .batch_execute(&format!(
                            "SET LOCAL lock_timeout = '{}ms'",
                            lock_wait.as_millis().max(1)
                        ))
                        .await?;
                }
                let tables: Vec<String> = client
                    .query(DUMPED_TABLES, &[])
                    .await?
                    .iter()
                    .map(|r| format!("{}.{}", quote_ident(r.get(0)), quote_ident(r.get(1))))
                    .collect();
                if !tables.is_empty() {
                    client
                        .batch_execute(&format!(
                            "LOCK TABLE {} IN ACCESS SHARE MODE",
                            tables.join(", ")
                        ))
                        .await?;
                }
                count_rows(&client).await
            }
            .await
            .map_err(q);
            if counted.is_err() {
                let _ = client
                    .batch_execute("ROLLBACK TO SAVEPOINT dockhand_count")
                    .await;
            }
            // Hold the snapshot until pg_dump is done with it (or gone).
            let _ = released.await;
            let _ = client.batch_execute("ROLLBACK").await;
            counted
        });
        Ok(Snapshot {
            id,
            release: Some(release),
            task: Some(task),
        })
    }

    /// Ends the transaction (call once pg_dump has exited); the counts.
    pub async fn finish(mut self) -> Result<Counts, String> {
        drop(self.release.take());
        match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| Err(format!("counting stopped: {e}"))),
            None => Err("counting stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_major_is_preferred() {
        let pick = |found: &[u32], server| {
            found.iter().fold(None, |best, m| {
                if preferred(*m, best, server) {
                    Some(*m)
                } else {
                    best
                }
            })
        };
        assert_eq!(pick(&[18, 17, 16, 15], 17), Some(17));
        assert_eq!(pick(&[15, 16, 17, 18], 17), Some(17));
        assert_eq!(pick(&[18, 15], 16), Some(18));
        assert_eq!(pick(&[15], 17), None);
    }

    #[test]
    fn env_carries_the_password_out_of_argv() {
        let u = crate::url::Url::parse(
            "postgres://app:s%40cret@db:6432,db2/shop?sslmode=require&sslrootcert=/ca.pem",
        )
        .unwrap();
        let env = PgTarget::from_url(&u).unwrap().libpq_env(APP_NAME);
        assert!(env.contains(&("PGPASSWORD", "s@cret".into())));
        assert!(env.contains(&("PGHOST", "db,db2".into())));
        assert!(env.contains(&("PGPORT", "6432,5432".into())));
        assert!(env.contains(&("PGDATABASE", "shop".into())));
        assert!(env.contains(&("PGSSLMODE", "require".into())));
        assert!(env.contains(&("PGSSLROOTCERT", "/ca.pem".into())));
        assert!(env.contains(&("PGAPPNAME", "dockhand-backup".into())));
        let u = crate::url::Url::parse("postgres://app@/shop?host=/run/postgresql").unwrap();
        let env = PgTarget::from_url(&u).unwrap().libpq_env(APP_NAME);
        assert!(env.contains(&("PGHOST", "/run/postgresql".into())));
        assert!(env.contains(&("PGSSLMODE", "disable".into())));
    }
}
