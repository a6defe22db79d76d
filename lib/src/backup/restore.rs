//! `backup restore`: a backup streamed back (download, decrypt, decompress, checksum)
//! into `pg_restore` (or `psql` for the globals, see [`super::globals`]). By default
//! into a new database named `<db>_restore_<time>` (made to fit the server's identifier
//! limit by [`super::names`]), created by the restore itself: `CREATE DATABASE` is the
//! atomic claim, and a name someone else holds is never reused (another suffix is
//! tried), so a default restore can never write into an existing database, its source
//! included. Into an existing database only when `--to` names it, and then only when it
//! is empty, or with `--clean` and a confirmation (typed at the terminal, or `--yes`).
//! `pg_restore` runs in one transaction and stops at the first error, so a failed
//! restore leaves the target as it was (and a database the restore created is dropped
//! again). The report says what arrived: tables, rows, time; for the globals, which
//! roles and tablespaces were created and which updated.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use tokio_postgres::error::SqlState;

use super::catalog::{self, Backup, Reading, Side};
use super::dump::{self, Server, Tools};
use super::manifest::{stamp, Content, Counts, Manifest};
use super::{err, globals, names, unix_now, BackupError, Cancel, Tool};
use crate::pg::PgTarget;
use crate::url::Url;

/// What to restore, and where.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A backup name, or `latest`.
    pub name: String,
    pub from: Option<Side>,
    /// The target database (`--to`); default: a new database on the backup URL's server.
    pub to: Option<Url>,
    /// Drop the backup's objects in the target first (`--clean`).
    pub clean: bool,
    /// Confirmed on the command line (`--yes`).
    pub yes: bool,
    /// Skip ownership and privileges (restoring as another role).
    pub no_owner: bool,
    /// Parallel `pg_restore` jobs (`--jobs`); 0 or 1 streams the backup.
    pub jobs: usize,
    /// Where `--jobs` writes the decoded backup (`BACKUP_TMP_DIR`); default the system's.
    pub tmp_dir: Option<PathBuf>,
    /// A drill ([`super::drill`]): always a new database `<db>_drill_<time>` on the
    /// server of `to` (else the backup URL's), and pg_restore goes on past an error
    /// so that every table that fails is seen; its errors come back in the report
    /// instead of failing the restore, and the database is left for the drill.
    pub drill: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Report {
    pub backup: String,
    pub database: String,
    pub created: bool,
    pub tables: i64,
    pub rows: i64,
    pub seconds: f64,
    /// A globals restore: roles and tablespaces created and updated, and notes.
    pub globals: bool,
    pub roles_created: Vec<String>,
    pub roles_updated: Vec<String>,
    pub tablespaces_created: Vec<String>,
    pub tablespaces_updated: Vec<String>,
    pub notes: Vec<String>,
    /// The restored database's row counts (a database backup).
    pub counts: Option<Counts>,
    /// A drill: pg_restore's exit status and its messages (errors it went on past).
    pub restore_failed: bool,
    pub messages: String,
}

impl Report {
    /// What a globals restore did, one line each (`created role "app"`).
    pub fn globals_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (verb, what, list) in [
            ("created", "role", &self.roles_created),
            ("updated", "role", &self.roles_updated),
            ("created", "tablespace", &self.tablespaces_created),
            ("updated", "tablespace", &self.tablespaces_updated),
        ] {
            out.extend(list.iter().map(|n| format!("{verb} {what} {n:?}")));
        }
        out.extend(self.notes.iter().cloned());
        out
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Restores. `confirm` is asked (with the database name) before a `--clean` restore
/// into a non-empty database without `--yes`; it returns whether the user agreed.
pub fn restore(
    r: &Reading,
    backups: &[Backup],
    req: &Request,
    backup_url: Option<&Url>,
    cancel: &Cancel,
    confirm: &dyn Fn(&str) -> Result<bool, BackupError>,
) -> Result<Report, BackupError> {
    let clock = Instant::now();
    let b = catalog::find(backups, &req.name)?;
    let m = &b.manifest;
    let from = copy_to_read(b, req)?;
    if m.kind == Content::Base {
        return Err(err(format!(
            "{}: a base backup of the whole cluster (for point-in-time recovery) is not restored into a database",
            m.name
        )));
    }
    if m.kind == Content::Globals {
        if req.drill {
            return Err(err(format!(
                "{}: a globals backup has no tables to drill; drill a database backup",
                m.name
            )));
        }
        return restore_globals(r, m, from, req, backup_url, cancel, clock);
    }
    let (target, created, server) = restore_target(r, m, req, backup_url, confirm)?;
    let database = target.dbname().to_string();
    let tools = dropped_on_error(
        r,
        &target,
        created,
        dump::find_tools(server.major.max(m.pg_dump_major())),
    )?;
    // Parallel only into a database this restore created: `pg_restore -j` cannot run
    // in one transaction, and a failure there is undone by dropping the database. An
    // existing target is restored by one job in one transaction, as it must be.
    if req.jobs > 1 && !created {
        info!(
            "restoring into the existing database {database:?} with one job, in one transaction (--jobs applies to a database the restore creates)"
        );
    }
    let into = RestoreInto {
        target: &target,
        database: &database,
        created,
    };
    let ran = run_pg_restore(r, m, from, req, &into, &tools, cancel);
    let (restore_failed, messages) = dropped_on_error(r, &target, created, ran)?;
    let restored_in = clock.elapsed().as_secs_f64();
    let counts = match r.rt.block_on(count_restored(&target)) {
        Ok(c) => c,
        Err(e) if req.drill => {
            drop_database(r, &target);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (tables, rows) = (counts.tables.len() as i64, counts.rows());
    Ok(Report {
        backup: m.name.clone(),
        database,
        created,
        tables,
        rows,
        seconds: restored_in,
        globals: false,
        roles_created: Vec::new(),
        roles_updated: Vec::new(),
        tablespaces_created: Vec::new(),
        tablespaces_updated: Vec::new(),
        notes: Vec::new(),
        counts: Some(counts),
        restore_failed,
        messages,
    })
}

/// `result`; when it is an error, the database this restore created is dropped
/// first (an existing one is left as it is).
fn dropped_on_error<T>(
    r: &Reading,
    target: &PgTarget,
    created: bool,
    result: Result<T, BackupError>,
) -> Result<T, BackupError> {
    if result.is_err() && created {
        drop_database(r, target);
    }
    result
}

/// Which copy of `b` to read: the one `--from` names (refused when there is none),
/// else the local one when there is one.
fn copy_to_read(b: &Backup, req: &Request) -> Result<Side, BackupError> {
    let m = &b.manifest;
    Ok(match req.from {
        Some(Side::Local) if !b.local => {
            return Err(err(format!(
                "{}: there is no local copy (try --from s3)",
                m.name
            )))
        }
        Some(Side::S3) if !b.remote => {
            return Err(err(format!(
                "{}: there is no copy in S3 (try --from local)",
                m.name
            )))
        }
        Some(f) => f,
        None if b.local => Side::Local,
        None => Side::S3,
    })
}

/// The database to restore into, whether this restore created it, and its server: a
/// new `<db>_drill_<time>` for a drill, `--to` (a non-empty one only with `--clean`,
/// confirmed), else a new `<db>_restore_<time>` on the backup URL's server.
fn restore_target(
    r: &Reading,
    m: &Manifest,
    req: &Request,
    backup_url: Option<&Url>,
    confirm: &dyn Fn(&str) -> Result<bool, BackupError>,
) -> Result<(PgTarget, bool, Server), BackupError> {
    let drill_server = if req.drill {
        req.to.as_ref().or(backup_url)
    } else {
        None
    };
    Ok(match (&req.to, backup_url) {
        _ if drill_server.is_some() => {
            let u = drill_server.expect("checked");
            let template = PgTarget::from_url(u).map_err(super::usage)?;
            let (target, server) = r.rt.block_on(claim_new(&template, &m.database, "_drill_"))?;
            (target, true, server)
        }
        (Some(u), _) => {
            let (target, created, server) = r.rt.block_on(existing_target(u, m, backup_url))?;
            if !created {
                may_restore_into(r, &target, req, confirm)?;
            }
            (target, created, server)
        }
        (None, Some(u)) => {
            let template = PgTarget::from_url(u).map_err(super::usage)?;
            let (target, server) = r.rt.block_on(claim_new(&template, &m.database, "_restore_"))?;
            (target, true, server)
        }
        (None, None) => {
            return Err(err(
                "no target: pass --to postgres://... or set DIRECT_URL (a new database is created on its server)",
            ))
        }
    })
}

/// An existing database is restored into when it is empty, or with `--clean` and
/// `--yes` (or the user's confirmation).
fn may_restore_into(
    r: &Reading,
    target: &PgTarget,
    req: &Request,
    confirm: &dyn Fn(&str) -> Result<bool, BackupError>,
) -> Result<(), BackupError> {
    let database = target.dbname();
    let nonempty = r.rt.block_on(is_nonempty(target))?;
    if nonempty {
        if !req.clean {
            return Err(err(format!(
                "database {database:?} is not empty: restore into a new database (leave out --to), or pass --clean to drop the backup's objects in it first"
            )));
        }
        if !req.yes && !confirm(database)? {
            return Err(err(format!("not confirmed: {database:?} left as it was")));
        }
    }
    Ok(())
}

/// The database a restore writes into.
struct RestoreInto<'a> {
    target: &'a PgTarget,
    database: &'a str,
    /// Created by this restore (so parallel jobs may be used).
    created: bool,
}

/// Runs pg_restore into `into`: streamed from the backup in one transaction, or with
/// `--jobs` from a decoded file. Returns whether it failed (a drill goes on past
/// errors) and its messages.
fn run_pg_restore(
    r: &Reading,
    m: &Manifest,
    from: Side,
    req: &Request,
    into: &RestoreInto<'_>,
    tools: &Tools,
    cancel: &Cancel,
) -> Result<(bool, String), BackupError> {
    let parallel = if req.jobs > 1 && into.created {
        let dir = req.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
        decode_to_file(r, m, from, &dir, cancel)?
    } else {
        None
    };
    // The connection settings travel in the environment; pg_restore insists on a
    // --dbname, given as a quoted conninfo (a bare name holding '=' would be read
    // as a connection string).
    let mut cmd = dump::libpq_command(&tools.pg_restore, Some(into.target));
    cmd.arg("--no-password")
        .arg(format!("--dbname={}", dump::conninfo_dbname(into.database)));
    // A drill goes on past errors to see every table that fails.
    if !req.drill {
        cmd.arg("--exit-on-error");
        if parallel.is_none() {
            cmd.arg("--single-transaction");
        }
    }
    if req.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if req.no_owner {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    cmd.stdout(Stdio::null());
    let _watch = watch_tables(r, into.target);
    let (status, messages) = match &parallel {
        Some(file) => {
            cmd.arg(format!("--jobs={}", req.jobs))
                .arg(&file.path)
                .stdin(Stdio::null());
            info!("{}: pg_restore with {} jobs", m.file, req.jobs);
            Tool::spawn(cmd, cancel)?.finish(cancel)?
        }
        None => {
            let opened = catalog::open(r, m, from)?;
            catalog::feed(cmd, opened, m, cancel)?
        }
    };
    drop(parallel);
    if !status.success() && !req.drill {
        return Err(err(format!(
            "pg_restore failed ({status}): {}",
            messages.trim().replace('\n', "; ")
        )));
    }
    Ok((!status.success(), messages))
}

/// The decoded backup of a parallel restore, removed when dropped (on every path:
/// success, failure, a stop by signal, which cancels and returns through here).
struct TempDump {
    path: PathBuf,
}

impl Drop for TempDump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bytes free for an unprivileged writer under `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Decodes (downloads, decrypts, decompresses) the backup into a new file in `dir`
/// (mode 0600) and checks the stored bytes' size and SHA-256 and the decoded size
/// against the manifest. `None` when `dir` lacks the room: the caller streams instead.
fn decode_to_file(
    r: &Reading,
    m: &Manifest,
    from: Side,
    dir: &Path,
    cancel: &Cancel,
) -> Result<Option<TempDump>, BackupError> {
    use super::catalog::human_size;
    let need = m.dump_bytes;
    if !room_for(dir, need) {
        return Ok(None);
    }
    let mut rand = [0u8; 8];
    getrandom_fill(&mut rand);
    let path = dir.join(format!(
        ".dockhand-restore-{}-{}.dump",
        m.name,
        super::hex(&rand)
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(super::io_err(&path))?;
    let guard = TempDump { path };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut opened = catalog::open(r, m, from)?;
    let mut reader = std::mem::replace(&mut opened.reader, Box::new(std::io::empty()));
    let written = match copy_on_two_threads(&mut reader, &mut out, cancel) {
        Ok(n) => n,
        Err(Decoding::Stopped(e)) => return Err(e),
        Err(Decoding::Write(e)) => {
            return Err(err(format!(
                "{}: writing the decoded backup ({} needed): {}",
                guard.path.display(),
                human_size(need),
                crate::error::io_reason(&e)
            )))
        }
        Err(Decoding::Read(e)) => {
            // a damaged or cut backup says so first; else the read error itself
            opened.reader = Box::new(reader);
            opened.check(m)?;
            return Err(err(format!("{}: cannot read the backup: {e}", m.file)));
        }
    };
    out.flush().map_err(super::io_err(&guard.path))?;
    drop(out);
    opened.reader = Box::new(reader);
    opened.check(m)?;
    if written != need {
        return Err(err(format!(
            "{}: decoded to {written} bytes, the manifest says pg_dump wrote {need}: the backup is damaged",
            m.file
        )));
    }
    // Checked: now the data offsets pg_dump could not write into a pipe, so that each
    // pg_restore job seeks to its table instead of reading up to it.
    match super::pgarchive::fill_offsets(&guard.path) {
        Ok(f) => tracing::debug!("{}: {} data offsets filled in", m.file, f.set),
        Err(e) => info!(
            "{}: data offsets not filled in ({e}): pg_restore reads its way to each table",
            m.file
        ),
    }
    Ok(Some(guard))
}

/// True when `dir` has room for `need` bytes and a margin, so the restore does not
/// fill the disk; else says so, for the caller to stream instead.
fn room_for(dir: &Path, need: u64) -> bool {
    use super::catalog::human_size;
    let margin = (need / 20).max(64 << 20);
    match free_bytes(dir) {
        Some(free) if free >= need + margin => true,
        free => {
            warn!(
                "{}: {} free, the decoded backup needs {} (and {} to spare): restoring with one job, streamed (set BACKUP_TMP_DIR to a folder with room)",
                dir.display(),
                free.map_or("unknown".into(), human_size),
                human_size(need),
                human_size(margin)
            );
            false
        }
    }
}

/// Copies `from` into `out`, reading (download, checksum, decryption, decompression)
/// on a second thread and writing on this one: pg_restore has not started, so both
/// cores are ours. Returns the bytes written.
fn copy_on_two_threads(
    from: &mut Box<dyn Read + Send>,
    out: &mut impl Write,
    cancel: &Cancel,
) -> Result<u64, Decoding> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
        scope.spawn(move || loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            buf.truncate(n);
            // the writer gone (a failure, a stop): stop reading
            if tx.send(Ok(buf)).is_err() {
                return;
            }
        });
        let mut written = 0u64;
        for chunk in rx {
            cancel.check().map_err(Decoding::Stopped)?;
            let buf = chunk.map_err(Decoding::Read)?;
            out.write_all(&buf).map_err(Decoding::Write)?;
            written += buf.len() as u64;
        }
        Ok(written)
    })
}

/// How copying the decoded backup into its file ended early.
enum Decoding {
    /// Reading the backup failed.
    Read(std::io::Error),
    /// Writing the file failed.
    Write(std::io::Error),
    /// Stopped (a signal).
    Stopped(BackupError),
}

/// Random bytes for a temporary file's name (its uniqueness, not secrecy: the file is
/// created with O_EXCL).
fn getrandom_fill(buf: &mut [u8]) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut x = (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// How often the table watcher logs what pg_restore copies.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How often the table watcher looks at `pg_stat_progress_copy`.
const COPY_POLL: Duration = Duration::from_millis(500);

/// Stops the table watcher when dropped.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs, every few seconds while `pg_restore` runs, the table it is copying and its
/// rows so far, and how many tables it copied before, as a second connection sees
/// them in `pg_stat_progress_copy` (PostgreSQL 14+; silent on older servers). Inside
/// the restore's open transaction the tables are not visible by name: then the
/// count and rows are all there is.
fn watch_tables(r: &Reading, target: &PgTarget) -> Watch {
    let target = target.clone();
    Watch(r.rt.spawn(async move {
        let Ok(c) = target.connect().await else {
            return;
        };
        let mut seen: HashSet<u32> = HashSet::new();
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(COPY_POLL).await;
            let Ok(rows) = c
                .query(
                    "SELECT p.relid::oid::int8, coalesce(c.relname::text, ''), p.tuples_processed \
                     FROM pg_stat_progress_copy p LEFT JOIN pg_class c ON c.oid = p.relid \
                     WHERE p.datname = current_database()",
                    &[],
                )
                .await
            else {
                return;
            };
            let now: Vec<(u32, String, i64)> = rows
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u32, r.get(1), r.get(2)))
                .collect();
            seen.extend(now.iter().map(|t| t.0));
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let copying: Vec<String> = now
                    .iter()
                    .map(|(_, name, rows)| {
                        if name.is_empty() {
                            format!("a table ({rows} rows so far)")
                        } else {
                            format!("{name:?} ({rows} rows so far)")
                        }
                    })
                    .collect();
                let done = seen.len() - now.len();
                if copying.is_empty() {
                    info!("pg_restore: {done} tables copied");
                } else {
                    info!(
                        "pg_restore: {done} tables copied, copying {}",
                        copying.join(", ")
                    );
                }
            }
        }
    }))
}

/// Drops a database this restore created (a failed or stopped restore, a finished
/// drill leave nothing). The sessions of a pg_restore just stopped may take a moment
/// to end: "being accessed by other users" is retried for a few seconds.
pub(crate) fn drop_database(r: &Reading, target: &PgTarget) -> bool {
    let database = target.dbname().to_string();
    r.rt.block_on(async {
        let Ok((admin, _)) = connect_first(target, &["postgres", "template1"]).await else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {}",
                    quote_ident(&database)
                ))
                .await
            {
                Ok(()) => return true,
                Err(e)
                    if e.code() == Some(&SqlState::OBJECT_IN_USE) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => {
                    warn!(
                        "cannot drop database {database:?}: {}",
                        crate::pg::classify(&e)
                    );
                    return false;
                }
            }
        }
    })
}

/// The error for a failed `CREATE DATABASE`.
fn create_failed(database: &str, e: &tokio_postgres::Error) -> BackupError {
    let hint = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        ": grant the role CREATEDB, or create the database and pass --to"
    } else {
        ""
    };
    err(format!(
        "cannot create database {database:?}: {}{hint}",
        crate::pg::classify(e)
    ))
}

/// Whether `CREATE DATABASE` failed because the name is taken: `duplicate_database`,
/// or, when another session created it at the same moment, a `unique_violation` on
/// `pg_database`'s name index.
fn taken(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::DUPLICATE_DATABASE) || e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// How many names a default restore tries before it gives up.
const NAME_TRIES: u32 = 100;

/// Creates the new database of a default restore on `template`'s server:
/// `<source>_restore_<YYYYmmdd_HHMMSS>` (then `..._2`, `..._3` when that exists),
/// fitted to the server's identifier limit. `CREATE DATABASE` is the claim: a name
/// that exists (another restore in the same second, a database of that name) is never
/// used, and neither is the source's or the URL's own name.
async fn claim_new(
    template: &PgTarget,
    source: &str,
    word: &str,
) -> Result<(PgTarget, Server), BackupError> {
    let own = template.dbname().to_string();
    let (admin, _) = connect_first(template, &["postgres", "template1", &own]).await?;
    let server = dump::server_of(&admin, template).await?;
    let q =
        |e: tokio_postgres::Error| err(format!("{}: {}", template.url, crate::pg::classify(&e)));
    let max: i32 = admin
        .query_one("SELECT current_setting('max_identifier_length')::int", &[])
        .await
        .map_err(q)?
        .get(0);
    let max = usize::try_from(max).unwrap_or(names::MAX_IDENTIFIER_BYTES);
    let time = stamp(unix_now());
    let time = format!("{}_{}", &time[..8], &time[9..15]);
    for n in 1..=NAME_TRIES {
        let suffix = if n == 1 {
            format!("{word}{time}")
        } else {
            format!("{word}{time}_{n}")
        };
        let name = fit(&admin, source, &suffix, max).await.map_err(q)?;
        if name == source || name == own {
            continue;
        }
        match admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
        {
            Ok(()) => return Ok((template.with_dbname(&name), server)),
            Err(e) if taken(&e) => continue,
            Err(e) => return Err(create_failed(&name, &e)),
        }
    }
    Err(err(format!(
        "no free name for the new database: {NAME_TRIES} names like {:?} exist; pass --to to name one",
        names::database_name(source, &format!("{word}{time}"), max)
    )))
}

/// [`names::database_name`] within `max` bytes as the server stores it: its encoding
/// may need more bytes than UTF-8 for some characters, so the server measures.
async fn fit(
    admin: &tokio_postgres::Client,
    base: &str,
    suffix: &str,
    max: usize,
) -> Result<String, tokio_postgres::Error> {
    let mut budget = max;
    loop {
        let name = names::database_name(base, suffix, budget);
        let len: i32 = admin
            .query_one("SELECT octet_length($1::text)", &[&name])
            .await?
            .get(0);
        let len = usize::try_from(len).unwrap_or(0);
        if len <= max || budget == 0 {
            return Ok(name);
        }
        budget = budget.saturating_sub(len - max);
    }
}

/// The target `--to` names: whether it exists (if not, it is created now) and the
/// server's version. A `--to` that names no database must not land on the database
/// the backup was taken from or the one the backup URL connects to.
async fn existing_target(
    url: &Url,
    m: &Manifest,
    backup_url: Option<&Url>,
) -> Result<(PgTarget, bool, Server), BackupError> {
    let target = PgTarget::from_url(url).map_err(|e| err(format!("{url}: {e}")))?;
    let database = target.dbname().to_string();
    let names_it = url
        .decoded_path()
        .is_some_and(|p| !p.trim_start_matches('/').is_empty())
        || url
            .query
            .iter()
            .any(|(k, v)| k == "dbname" && !v.is_empty());
    let source_url_db = backup_url
        .and_then(|u| PgTarget::from_url(u).ok())
        .map(|t| t.dbname().to_string());
    if !names_it && (database == m.database || source_url_db.as_deref() == Some(&database)) {
        return Err(BackupError::new(
            super::BackupKind::Usage,
            format!(
                "--to names no database, and the one it would connect to, {database:?}, is the database this backup was taken from or the one the backup URL connects to: to restore into it, name it in --to (postgres://.../{database}); to restore into a new database, leave out --to"
            ),
        ));
    }
    let (admin, db) = connect_first(&target, &[&database, "postgres", "template1"]).await?;
    let server = dump::server_of(&admin, &target).await?;
    if db == database {
        return Ok((target, false, server));
    }
    let q = |e: tokio_postgres::Error| err(format!("{}: {}", target.url, crate::pg::classify(&e)));
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(q)?
        .is_some();
    if exists {
        return Ok((target, false, server));
    }
    match admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
        .await
    {
        Ok(()) => Ok((target, true, server)),
        Err(e) if taken(&e) => Err(err(format!(
            "database {database:?} was created by someone else while this restore started: nothing was restored; run it again to restore into it"
        ))),
        Err(e) => Err(create_failed(&database, &e)),
    }
}

/// Whether the database holds anything of its own (a table, a sequence, a view ...).
async fn is_nonempty(target: &PgTarget) -> Result<bool, BackupError> {
    let c = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            &[],
        )
        .await
        .map_err(|e| err(format!("{}: {}", target.url, crate::pg::classify(&e))))?
        .get(0);
    Ok(n > 0)
}

/// The most a globals script may hold in memory (it is read whole and checked before
/// anything reaches the cluster; roles and tablespaces are far smaller).
const GLOBALS_LIMIT: u64 = 256 * 1024 * 1024;

/// Restores a globals backup into the cluster of `--to` (or the backup URL): see
/// [`globals`]. The script is read whole and its checksum matched first; missing
/// tablespaces are created before the one transaction (and dropped if it fails).
fn restore_globals(
    r: &Reading,
    m: &Manifest,
    from: Side,
    req: &Request,
    backup_url: Option<&Url>,
    cancel: &Cancel,
    clock: Instant,
) -> Result<Report, BackupError> {
    let url = req.to.as_ref().or(backup_url).ok_or_else(|| {
        err("no target: pass --to postgres://... or set DIRECT_URL (the globals go into its cluster)")
    })?;
    let target = PgTarget::from_url(url).map_err(|e| err(format!("{url}: {e}")))?;
    let database = target.dbname().to_string();
    let script = read_globals_script(r, m, from, cancel)?;
    let cluster = r.rt.block_on(cluster_globals(&target))?;
    let plan = globals::plan(&script, &cluster.roles, &cluster.tablespaces, &cluster.user)
        .map_err(|e| err(format!("{}: cannot restore the globals: {e}", m.file)))?;
    let tools: Tools = dump::find_tools(cluster.server.major.max(m.pg_dump_major()))?;
    let made = create_tablespaces(r, &cluster.admin, &plan, cancel)?;
    if let Err(e) = run_globals_script(&tools, &target, &plan.script, cancel) {
        drop_tablespaces(r, &cluster.admin, &made);
        return Err(e);
    }
    let mut notes = Vec::new();
    if let Some(role) = &plan.kept_password {
        notes.push(format!(
            "kept the password of role {role:?}, the role this restore connects as (the backup's was not applied)"
        ));
    }
    Ok(Report {
        backup: m.name.clone(),
        database,
        created: false,
        tables: 0,
        rows: 0,
        seconds: clock.elapsed().as_secs_f64(),
        globals: true,
        roles_created: plan.roles_created,
        roles_updated: plan.roles_updated,
        tablespaces_created: plan.tablespaces_created,
        tablespaces_updated: plan.tablespaces_updated,
        notes,
        counts: None,
        restore_failed: false,
        messages: String::new(),
    })
}

/// The globals script, read whole (up to [`GLOBALS_LIMIT`]) and its checksum matched
/// before anything reaches the cluster.
fn read_globals_script(
    r: &Reading,
    m: &Manifest,
    from: Side,
    cancel: &Cancel,
) -> Result<String, BackupError> {
    let mut opened = catalog::open(r, m, from)?;
    let mut script = Vec::new();
    let read = (&mut opened.reader)
        .take(GLOBALS_LIMIT + 1)
        .read_to_end(&mut script);
    if let Err(e) = read {
        // the checksum says whether the backup is damaged; else the read error
        opened.check(m)?;
        return Err(err(format!("{}: cannot read the backup: {e}", m.file)));
    }
    if script.len() as u64 > GLOBALS_LIMIT {
        return Err(err(format!(
            "{}: the globals script is larger than {} MiB",
            m.file,
            GLOBALS_LIMIT >> 20
        )));
    }
    opened.check(m)?;
    cancel.check()?;
    String::from_utf8(script).map_err(|_| {
        err(format!(
            "{}: the globals script is not UTF-8 text; restore it with psql",
            m.file
        ))
    })
}

/// The target cluster as a globals restore needs it: a connection, the server, the
/// roles and tablespaces it has, and whom we connect as.
struct ClusterGlobals {
    admin: tokio_postgres::Client,
    server: Server,
    roles: HashSet<String>,
    tablespaces: HashSet<String>,
    user: String,
}

/// Connects to the target's cluster and reads what [`globals::plan`] compares with.
async fn cluster_globals(target: &PgTarget) -> Result<ClusterGlobals, BackupError> {
    let q = |e: tokio_postgres::Error| err(format!("{}: {}", target.url, crate::pg::classify(&e)));
    let admin = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?;
    let server = dump::server_of(&admin, target).await?;
    let names = |rows: Vec<tokio_postgres::Row>| -> HashSet<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let roles = names(
        admin
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(q)?,
    );
    let tablespaces = names(
        admin
            .query("SELECT spcname::text FROM pg_tablespace", &[])
            .await
            .map_err(q)?,
    );
    let user: String = admin
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(q)?
        .get(0);
    Ok(ClusterGlobals {
        admin,
        server,
        roles,
        tablespaces,
        user,
    })
}

/// Creates the plan's missing tablespaces, each on its own (a tablespace cannot be
/// created in a transaction); returns their names. When one fails, those made are
/// dropped again.
fn create_tablespaces(
    r: &Reading,
    admin: &tokio_postgres::Client,
    plan: &globals::Plan,
    cancel: &Cancel,
) -> Result<Vec<String>, BackupError> {
    let mut made: Vec<String> = Vec::new();
    for (name, sql) in &plan.create_tablespaces {
        let created = cancel
            .check()
            .and_then(|()| r.rt.block_on(admin.batch_execute(sql)).map_err(|e| {
                err(format!(
                    "cannot create tablespace {name:?} (its directory must exist on the database server, empty and owned by the server's user): {}",
                    crate::pg::classify(&e)
                ))
            }));
        if let Err(e) = created {
            drop_tablespaces(r, admin, &made);
            return Err(e);
        }
        made.push(name.clone());
    }
    Ok(made)
}

/// Drops the tablespaces this restore created, last first (the restore failed).
fn drop_tablespaces(r: &Reading, admin: &tokio_postgres::Client, made: &[String]) {
    r.rt.block_on(async {
        for name in made.iter().rev() {
            let _ = admin
                .batch_execute(&format!("DROP TABLESPACE IF EXISTS {}", quote_ident(name)))
                .await;
        }
    })
}

/// Runs the globals script with psql, in one transaction, stopping at the first
/// error.
fn run_globals_script(
    tools: &Tools,
    target: &PgTarget,
    script: &str,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let mut cmd = dump::libpq_command(&tools.psql(), Some(target));
    cmd.args([
        "--no-password",
        "--quiet",
        "--no-psqlrc",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        "--file=-",
    ]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut tool = Tool::spawn(cmd, cancel)?;
    let mut stdin = tool.child.stdin.take().expect("piped");
    // A write error means psql stopped reading: its own message says why.
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let (status, messages) = tool.finish(cancel)?;
    if !status.success() {
        return Err(err(format!(
            "psql failed ({status}): {}",
            messages.trim().replace('\n', "; ")
        )));
    }
    Ok(())
}

/// Connects to the first of `dbs` on the target's server that accepts; returns the
/// client and the database it is connected to.
async fn connect_first<'a>(
    target: &PgTarget,
    dbs: &[&'a str],
) -> Result<(tokio_postgres::Client, &'a str), BackupError> {
    let mut last = String::new();
    for db in dbs {
        match target.with_dbname(db).connect().await {
            Ok(c) => return Ok((c, db)),
            Err(e) => last = e.message().to_string(),
        }
    }
    Err(err(format!("{}: {last}", target.url)))
}

/// User tables and their exact row counts in the restored database (the tables a
/// dump holds, counted as a backup counts them: [`dump::count_rows`]).
pub(crate) async fn count_restored(target: &PgTarget) -> Result<Counts, BackupError> {
    let c = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?;
    dump::count_rows(&c)
        .await
        .map_err(|e| err(format!("counting rows: {}", crate::pg::classify(&e))))
}
