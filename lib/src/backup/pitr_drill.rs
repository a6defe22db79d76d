//! `backup drill --pitr`: proves the point-in-time recovery chain (the newest base
//! backup and every WAL file stored after it) by recovering it. `verify` and the
//! continuity check read the stored files; only PostgreSQL replaying them shows that
//! they recover (a base backup that unpacks but does not start, WAL that does not
//! replay, a setting of the backed-up cluster the sidecar cannot honour).
//!
//! The drill recovers to the latest point with [`super::recover`] into a scratch
//! directory (mode 0700, in `BACKUP_TMP_DIR`), starts a throwaway PostgreSQL of the
//! base backup's major on it (the `postgres` beside the `pg_dump` chosen for that
//! major) and waits until it has promoted. It then reads the point recovered to (how
//! far behind now it is: the RPO measured), connects to every database, runs the
//! team's `BACKUP_DRILL_SQL` on the backup URL's database, and checks the stored WAL
//! for a gap and that replay reached the newest segment fetched: recovery ends quietly
//! at the first missing segment (or record that does not read) and promotes all the
//! same, so a server that opened proves nothing past that point. The server is stopped
//! (fast shutdown; SIGKILL to its process group after [`STOP_TIMEOUT`]) and the
//! directory removed on every path, a stop signal included (both are guards dropped
//! on the way out); the result is recorded as a drill of the base backup.
//!
//! PostgreSQL refuses to run as root: as root the server runs as the user `postgres`
//! (the PostgreSQL images have it), to whom the scratch directory is given. Settings
//! on its command line override whatever the backed-up configuration says that would
//! reach outside the scratch directory or slow a drill down: no TCP (a Unix socket in
//! the scratch directory only), no archiving, no streaming from a primary, no SSL
//! files, no synchronous standbys, a `pg_hba.conf` of its own (trust over that socket,
//! which only its owner can reach), no logical replication workers and no pg_cron
//! jobs (nothing reaches a live system once it has promoted), `fsync` off and small
//! shared buffers. Hot standby
//! is off, so the server takes connections only once it has promoted, and a primary's
//! larger `max_connections` cannot pause the recovery.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::catalog::{Backup, Reading, Side};
use super::manifest::{Content, Drill};
use super::recover::{self, Target};
use super::{err, unix_now, BackupError, Cancel};
use crate::pg::PgTarget;
use crate::privileges::Credentials;
use crate::url::Url;

/// How long the server may take to replay the stored WAL and promote.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a fast shutdown may take before the server is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket's port number: the socket directory is the drill's own, so any will do.
const PORT: u16 = 5432;

/// The longest Unix socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What to drill, and where.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub from: Option<Side>,
    /// Keep the scratch data directory (`--keep`), the server stopped.
    pub keep: bool,
    /// Where the scratch directory goes (`BACKUP_TMP_DIR`); the system's by default.
    pub tmp_dir: Option<PathBuf>,
    /// `BACKUP_DRILL_SQL`: a file of queries that must each return true.
    pub sql: Option<PathBuf>,
}

/// What a drill found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The base backup drilled.
    pub base: String,
    pub wal_files: usize,
    /// Where recovery ended, once the server opened.
    pub point: Option<Point>,
    /// The scratch data directory, when kept.
    pub kept: Option<PathBuf>,
    pub drill: Drill,
}

/// The point a recovery reached.
#[derive(Debug, Clone)]
pub struct Point {
    /// Unix seconds of the last transaction replayed; `None` when no transaction
    /// ended after the base backup.
    pub last_transaction: Option<f64>,
    /// The end of the last WAL record replayed.
    pub lsn: String,
    /// The databases that accepted a connection.
    pub databases: usize,
}

impl Point {
    /// The last transaction replayed, RFC 3339 UTC.
    pub fn time(&self) -> Option<String> {
        let t = self.last_transaction?;
        let secs = t.floor();
        let micros = ((t - secs) * 1e6).round().min(999_999.0) as u32;
        let d = chrono::DateTime::from_timestamp(secs as i64, micros * 1000)?;
        Some(d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    }

    /// Seconds from the last transaction replayed to now: what would be lost were the
    /// database lost now (the recovery point objective, measured).
    pub fn behind_now(&self) -> Option<f64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some((now - self.last_transaction?).max(0.0))
    }
}

/// Who the checks connect as, and to which database: the backup URL's user and
/// database (`postgres` for either when there is no URL).
struct Who {
    user: String,
    database: String,
}

impl Who {
    fn of(backup_url: Option<&Url>) -> Result<Who, BackupError> {
        let Some(url) = backup_url else {
            return Ok(Who {
                user: "postgres".into(),
                database: "postgres".into(),
            });
        };
        let t = PgTarget::from_url(url).map_err(super::usage)?;
        Ok(Who {
            user: t.config().get_user().unwrap_or("postgres").to_string(),
            database: t.dbname().to_string(),
        })
    }
}

/// What the drill runs with, besides the backups.
struct Setup<'a> {
    postgres: &'a Path,
    user: Option<&'a Credentials>,
    checks: &'a [String],
    who: &'a Who,
    cancel: &'a Cancel,
}

/// Drills point-in-time recovery to the latest point stored, and records the result
/// in the base backup's manifest. `Ok` with the outcome whether the drill passed or
/// not (a recovery that fails is a failed drill); `Err` when it could not start (no
/// base backup, no server binaries, no user to run them as) or was stopped.
pub fn drill(
    r: &Reading,
    backups: &[Backup],
    req: &Request,
    backup_url: Option<&Url>,
    cancel: &Cancel,
) -> Result<Outcome, BackupError> {
    let checks = super::drill::read_checks(req.sql.as_deref())?;
    let who = Who::of(backup_url)?;
    let base = newest_base(backups)?;
    let postgres = server_binary(&base.manifest.server_version)?;
    let user = server_user()?;
    let mut scratch = Scratch::create(req.tmp_dir.as_deref())?;
    info!(
        "{}: drilling point-in-time recovery to the latest point stored, in {}",
        base.manifest.name,
        scratch.path.display()
    );
    let setup = Setup {
        postgres: &postgres,
        user: user.as_ref(),
        checks: &checks,
        who: &who,
        cancel,
    };
    let started = Instant::now();
    let run = recover_and_check(r, backups, req.from, &scratch, &setup);
    let seconds = started.elapsed().as_secs_f64();
    cancel.check()?;
    let (wal_files, point, mut problems, seconds) = match run {
        Ok(c) => (c.wal_files, Some(c.point), c.problems, c.open_seconds),
        Err(e) => (0, None, vec![e.message().to_string()], seconds),
    };
    if let Some(gap) = gap(backups, &base.manifest.name) {
        problems.push(match &point {
            Some(p) => format!("{gap}; the drill's recovery ended at {}", p.lsn),
            None => gap,
        });
    }
    scratch.keep = req.keep;
    let drill = Drill {
        at: unix_now(),
        ok: problems.is_empty(),
        seconds,
        rows_missing: 0,
        problems: problems.iter().map(|p| crate::redact::text(p)).collect(),
    };
    super::drill::save(r, base, &drill);
    Ok(Outcome {
        base: base.manifest.name.clone(),
        wal_files,
        point,
        kept: req.keep.then(|| scratch.data()),
        drill,
    })
}

/// The base backup a recovery to the latest point starts from (as
/// [`recover::recover`] picks it): the newest with a WAL range.
fn newest_base(backups: &[Backup]) -> Result<&Backup, BackupError> {
    backups
        .iter()
        .rev()
        .find(|b| b.manifest.kind == Content::Base && b.manifest.wal.is_some())
        .ok_or_else(|| {
            err("no base backup to drill (see `backup list`; `backup base` makes one, and BACKUP_WAL=on streams the WAL after it)")
        })
}

/// The missing stored WAL after `base`, if any.
fn gap(backups: &[Backup], base: &str) -> Option<String> {
    let manifests: Vec<&super::manifest::Manifest> = backups.iter().map(|b| &b.manifest).collect();
    super::continuity::check(&manifests, Some(base))
        .filter(|c| !c.gaps.is_empty())
        .map(|c| c.describe())
}

/// The major version in a `server_version` (`15.18 (Debian ...)`, `17devel`).
fn major_of(server_version: &str) -> Option<u32> {
    let digits: String = server_version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The `postgres` of the base backup's major: beside the `pg_dump` the backup tools
/// select for that major. A sidecar without it is told what to install.
fn server_binary(server_version: &str) -> Result<PathBuf, BackupError> {
    let major = major_of(server_version).ok_or_else(|| {
        err(format!(
            "the base backup's server version {server_version:?} names no major version"
        ))
    })?;
    let install = format!(
        "install the PostgreSQL {major} server in the sidecar (Debian: postgresql-{major}; Alpine: postgresql{major}; or build it on the postgres:{major} image), or set BACKUP_PG_BIN to its bin directory"
    );
    let tools = super::dump::find_tools(major).map_err(|e| {
        err(format!(
            "a PITR drill runs PostgreSQL {major}, the base backup's major, and {}: {install}",
            e.message()
        ))
    })?;
    if tools.major != major {
        return Err(err(format!(
            "a PITR drill runs PostgreSQL {major}, the base backup's major, and the sidecar has PostgreSQL {} only ({}): {install}",
            tools.major,
            tools.pg_dump.display()
        )));
    }
    let postgres = tools.pg_dump.with_file_name("postgres");
    if !postgres.is_file() {
        return Err(err(format!(
            "a PITR drill runs PostgreSQL {major}, and {} has its client tools but no `postgres` (the server binaries): {install}",
            tools.pg_dump.parent().unwrap_or(Path::new("/")).display()
        )));
    }
    Ok(postgres)
}

/// Who the server runs as: ourselves, or as root the user `postgres` (PostgreSQL
/// refuses to run as root).
fn server_user() -> Result<Option<Credentials>, BackupError> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        return Ok(None);
    }
    match crate::privileges::resolve("postgres") {
        Ok(c) if c.uid != 0 => Ok(Some(c)),
        _ => Err(err(
            "PostgreSQL refuses to run as root, and this system has no user `postgres` (other than root) to run the drill's server as: add one (the PostgreSQL images have it), or run the sidecar as a user other than root",
        )),
    }
}

/// What recovering and checking found.
struct Checked {
    wal_files: usize,
    /// Seconds from the start of the recovery until the server opened.
    open_seconds: f64,
    point: Point,
    problems: Vec<String>,
}

/// Recovers into the scratch directory, starts the server, waits until it has
/// promoted and checks it; stops it on every path (the guard's drop).
fn recover_and_check(
    r: &Reading,
    backups: &[Backup],
    from: Option<Side>,
    scratch: &Scratch,
    s: &Setup,
) -> Result<Checked, BackupError> {
    let started = Instant::now();
    let recovered = recover::recover(r, backups, from, &Target::Latest, &scratch.data(), s.cancel)?;
    prepare(scratch, s.user, s.cancel)?;
    let mut server = Server::start(s.postgres, scratch, s.user)?;
    let target = scratch.target(&s.who.user, &s.who.database)?;
    wait_open(r, &mut server, &target, s.cancel).map_err(|e| match s.user {
        Some(_) if e.message().contains("Permission denied") => e.map_message(|m| {
            format!(
                "{m} (the server runs as the user postgres, who must be able to reach {}: see BACKUP_TMP_DIR)",
                scratch.path.parent().unwrap_or(Path::new("/")).display()
            )
        }),
        _ => e,
    })?;
    let open_seconds = started.elapsed().as_secs_f64();
    info!(
        "the drill's server has recovered {} and {} WAL files and opened",
        recovered.base, recovered.wal_files
    );
    let inspected = r.rt.block_on(async {
        tokio::select! {
            found = inspect(scratch, &target, s.checks) => Some(found),
            () = s.cancel.cancelled() => None,
        }
    });
    s.cancel.check()?;
    let (point, mut problems) = inspected.unwrap_or_else(|| Err(err("stopped")))?;
    problems.extend(replay_short(&recovered, &point.lsn));
    server.stop();
    Ok(Checked {
        wal_files: recovered.wal_files,
        open_seconds,
        point,
        problems,
    })
}

/// Where replay fell short of the WAL fetched. PostgreSQL promotes quietly wherever
/// replay stops (a record that does not read, a segment left out), so a server that
/// opened proves nothing past that point: recovery to the end must replay into the
/// newest segment fetched (or the one before it, when that is a partial which may not
/// hold a complete record yet), and leave out nothing before it.
fn replay_short(recovered: &recover::Recovered, lsn: &str) -> Vec<String> {
    use super::walname::{segment, segment_of_lsn};
    let Some((file, partial)) = &recovered.newest else {
        return Vec::new();
    };
    let Some((_, newest)) = segment(file) else {
        return Vec::new();
    };
    let mut problems: Vec<String> = recovered
        .left_out
        .iter()
        .filter(|f| segment(f).is_some_and(|(_, s)| s < newest))
        .map(|f| {
            format!("stored WAL {f} does not read as a segment (left out): replay cannot pass it")
        })
        .collect();
    let reached = segment_of_lsn(lsn);
    let needed = if *partial {
        newest.saturating_sub(1)
    } else {
        newest
    };
    if reached.is_none_or(|r| r < needed) {
        problems.push(format!(
            "replay stopped at {lsn}, before the end of the stored WAL ({file}{}): a stored segment does not replay; the server's log says where",
            if *partial { ", a partial" } else { "" }
        ));
    }
    problems
}

/// Readies the recovered directory for the drill's server: a `postgresql.conf`
/// (a base backup of a cluster whose configuration lives elsewhere has none), the
/// drill's `pg_hba.conf`, the log file, and the whole directory given to the
/// server's user.
fn prepare(
    scratch: &Scratch,
    user: Option<&Credentials>,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let conf = scratch.data().join("postgresql.conf");
    if !conf.exists() {
        write_new(
            &conf,
            "# dockhand drill: the base backup holds no postgresql.conf\n",
        )?;
    }
    write_new(&scratch.hba(), "local all all trust\n")?;
    write_new(&scratch.log(), "")?;
    if let Some(c) = user {
        crate::privileges::chown_recursive(&scratch.path, c, || cancel.is_cancelled()).map_err(
            |e| {
                err(format!(
                    "giving the scratch directory to the user postgres: {}",
                    e.message()
                ))
            },
        )?;
    }
    cancel.check()
}

/// Writes a new file of mode 0600.
fn write_new(path: &Path, text: &str) -> Result<(), BackupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(super::io_err(path))
}

/// Waits until the server has promoted (accepts a connection and is out of
/// recovery); fails when it exits first, refuses the connection for good, or takes
/// longer than [`OPEN_TIMEOUT`].
fn wait_open(
    r: &Reading,
    server: &mut Server,
    target: &PgTarget,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let start = Instant::now();
    let deadline = start + OPEN_TIMEOUT;
    loop {
        cancel.check()?;
        if let Some(status) = server.exited() {
            return Err(err(format!(
                "PostgreSQL stopped before it finished recovery ({status}); the end of its log: {}",
                server.log_tail()
            )));
        }
        match r.rt.block_on(in_recovery(target)) {
            Ok(false) => return Ok(()),
            Err(e) if e.is_permanent() => {
                return Err(err(format!(
                    "the recovered server refuses {}@{}: {e}",
                    target.config().get_user().unwrap_or(""),
                    target.dbname()
                )))
            }
            Ok(true) | Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "PostgreSQL had not finished recovery after {}; the end of its log: {}",
                crate::duration::format(OPEN_TIMEOUT),
                server.log_tail()
            )));
        }
        // often at first (a small chain opens in a second), then every second
        let pause = if start.elapsed() < Duration::from_secs(10) {
            200
        } else {
            1000
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
}

/// `pg_is_in_recovery()` on `target`.
async fn in_recovery(target: &PgTarget) -> Result<bool, crate::net::NetError> {
    let client = target.connect().await?;
    let rows = values(&client, "SELECT pg_is_in_recovery()").await?;
    Ok(rows.first().and_then(|r| r.first()).map(String::as_str) != Some("f"))
}

/// The rows of a simple query, each value as text (NULL as the empty string).
async fn values(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<String>>, crate::net::NetError> {
    let msgs = client
        .simple_query(sql)
        .await
        .map_err(|e| crate::pg::classify(&e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Reads where recovery ended, connects to every database (as the cluster's
/// bootstrap superuser) and runs the team's checks; the problems found.
async fn inspect(
    scratch: &Scratch,
    target: &PgTarget,
    checks: &[String],
) -> Result<(Point, Vec<String>), BackupError> {
    let said = |e: crate::net::NetError| err(format!("reading the recovered server: {e}"));
    let client = target.connect().await.map_err(said)?;
    let row = values(
        &client,
        "SELECT extract(epoch FROM pg_last_xact_replay_timestamp()), pg_last_wal_replay_lsn(), (SELECT rolname FROM pg_roles WHERE oid = 10)",
    )
    .await
    .map_err(said)?
    .into_iter()
    .next()
    .unwrap_or_default();
    let field = |i: usize| row.get(i).cloned().unwrap_or_default();
    let databases = values(
        &client,
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
    )
    .await
    .map_err(said)?;
    let mut problems = Vec::new();
    let mut connected = 0;
    for db in databases.iter().filter_map(|r| r.first()) {
        let t = scratch.target(&field(2), db)?;
        match t.ping().await {
            Ok(()) => connected += 1,
            Err(e) => problems.push(format!(
                "database {db:?} of the recovered cluster refuses a connection: {e}"
            )),
        }
    }
    if !checks.is_empty() {
        problems.extend(super::drill::run_checks(target, checks).await);
    }
    let point = Point {
        last_transaction: field(0).parse().ok(),
        lsn: field(1),
        databases: connected,
    };
    Ok((point, problems))
}

/// Removes the scratch directories of drills whose process is gone: one killed
/// (SIGKILL, the OOM killer, `docker stop` past its timeout) never ran its clean-up,
/// and left a whole cluster's copy behind. The name carries the drill's process ID;
/// a directory whose process still runs (another drill) is left alone.
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("dockhand-pitr-drill-") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
        let Some(pid) = pid.filter(|p| *p > 0) else {
            continue;
        };
        if pid == std::process::id() as i32 || crate::process::kill(pid, 0) != Ok(false) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => info!(
                "removed {}, left by a drill that was killed",
                entry.path().display()
            ),
            Err(e) => warn!(
                "{} (left by a drill that was killed): {}",
                entry.path().display(),
                crate::error::io_reason(&e)
            ),
        }
    }
}

/// The drill's scratch directory: the data directory, the socket, the server's log
/// and `pg_hba.conf`. Removed when dropped, unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// A new directory of mode 0700 with a name of its own in `tmp` (the system's
    /// temporary directory by default).
    fn create(tmp: Option<&Path>) -> Result<Scratch, BackupError> {
        let parent = tmp.map_or_else(std::env::temp_dir, Path::to_path_buf);
        remove_abandoned(&parent);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(
            "dockhand-pitr-drill-{}-{}-{nanos:09}",
            unix_now(),
            std::process::id()
        ));
        let socket = path.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(super::usage(crate::config::invalid(format!(
                "BACKUP_TMP_DIR {}: too long a path for the drill server's socket (at most {MAX_SOCKET_PATH} bytes with {:?}): use a shorter one",
                parent.display(),
                socket.strip_prefix(&parent).unwrap_or(&socket)
            ))));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(super::io_err(&path))?;
        Ok(Scratch { path, keep: false })
    }

    fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    fn log(&self) -> PathBuf {
        self.path.join("postgres.log")
    }

    fn hba(&self) -> PathBuf {
        self.path.join("pg_hba.conf")
    }

    /// A target on the drill server's socket.
    fn target(&self, user: &str, database: &str) -> Result<PgTarget, BackupError> {
        use crate::url::encode;
        let url = Url::parse(&format!(
            "postgres://{}@localhost/{}?host={}&port={PORT}&connect_timeout=5",
            encode(user),
            encode(database),
            encode(&self.path.to_string_lossy())
        ))
        .map_err(|e| err(format!("the drill server's address: {e}")))?;
        PgTarget::from_url(&url).map_err(super::usage)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(
                    "the drill's scratch directory {} could not be removed ({}): remove it by hand",
                    self.path.display(),
                    crate::error::io_reason(&e)
                );
            }
        }
    }
}

/// The drill's PostgreSQL, stopped when dropped.
struct Server {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Server {
    /// Starts `postgres` on the scratch data directory, its log in the scratch
    /// directory, as `user` when given.
    fn start(
        postgres: &Path,
        scratch: &Scratch,
        user: Option<&Credentials>,
    ) -> Result<Server, BackupError> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(scratch.log())
            .map_err(super::io_err(&scratch.log()))?;
        let log2 = log.try_clone().map_err(super::io_err(&scratch.log()))?;
        // the environment of a libpq tool: no secret of ours reaches the server
        let mut cmd = super::dump::libpq_command(postgres, None);
        cmd.arg("-D").arg(scratch.data());
        for (k, v) in settings(scratch) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        crate::process::prepare_child(&mut cmd, user, false);
        die_with_us(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            err(format!(
                "cannot run {}: {}",
                postgres.display(),
                crate::error::io_reason(&e)
            ))
        })?;
        Ok(Server {
            child: Some(child),
            log: scratch.log(),
        })
    }

    /// The exit status, once the server has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last lines of the server's log, on one line, redacted.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let len = f.metadata().map_or(0, |m| m.len());
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        // the refusals of the drill's own connections while it recovers say nothing
        let noise = [
            "not yet accepting connections",
            "the database system is starting up",
            "Consistent recovery state has not been yet reached",
            "Hot standby mode is disabled",
        ];
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !noise.iter().any(|n| l.contains(n)))
            .collect();
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        if tail.is_empty() {
            "(empty)".to_string()
        } else {
            crate::redact::text(&tail)
        }
    }

    /// Fast shutdown (SIGINT) and a wait; SIGKILL to its process group after
    /// [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        if matches!(child.try_wait(), Ok(None)) {
            let _ = crate::process::kill(pid, nix::libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                warn!(
                    "the drill's server did not stop within {} of a fast shutdown: killed",
                    crate::duration::format(STOP_TIMEOUT)
                );
                let _ = crate::process::kill(-pid, nix::libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server's settings that override the backed-up configuration's (see the
/// module doc).
fn settings(scratch: &Scratch) -> Vec<(&'static str, String)> {
    let fixed = [
        ("listen_addresses", ""),
        ("ssl", "off"),
        ("archive_mode", "off"),
        ("primary_conninfo", ""),
        ("primary_slot_name", ""),
        ("archive_cleanup_command", ""),
        ("recovery_end_command", ""),
        ("synchronous_standby_names", ""),
        ("external_pid_file", ""),
        ("hot_standby", "off"),
        ("shared_buffers", "32MB"),
        ("huge_pages", "off"),
        ("fsync", "off"),
        ("autovacuum", "off"),
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
        ("cluster_name", "dockhand-drill"),
        // once promoted, nothing reaches outside: no subscription's apply worker
        // taking a live publisher's slot, no scheduled job of pg_cron
        ("max_logical_replication_workers", "0"),
        ("cron.launch_active_jobs", "off"),
    ];
    let mut out: Vec<(&'static str, String)> =
        fixed.iter().map(|(k, v)| (*k, v.to_string())).collect();
    out.push((
        "unix_socket_directories",
        scratch.path.display().to_string(),
    ));
    out.push(("port", PORT.to_string()));
    out.push(("hba_file", scratch.hba().display().to_string()));
    out
}

/// The server gets SIGQUIT (immediate shutdown) should this process die without
/// stopping it (SIGKILL): set after `prepare_child` changed the user, which clears it.
fn die_with_us(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_must_reach_the_newest_segment_fetched() {
        let rec = |newest: &str, partial: bool, left_out: &[&str]| recover::Recovered {
            base: "b".into(),
            wal_files: 3,
            to_end: None,
            newest: Some((newest.into(), partial)),
            left_out: left_out.iter().map(|f| f.to_string()).collect(),
        };
        let seg5 = "000000020000000000000005";
        // replay ended inside segment 5 (0/5000000 to 0/5FFFFFF): reached
        assert!(replay_short(&rec(seg5, false, &[]), "0/5000100").is_empty());
        assert!(replay_short(&rec(seg5, false, &[]), "0/6000000").is_empty());
        // stopped in segment 4: short, whatever PostgreSQL said when it promoted
        let p = replay_short(&rec(seg5, false, &[]), "0/4FFFF00");
        assert!(
            p.len() == 1 && p[0].contains("replay stopped at 0/4FFFF00"),
            "{p:?}"
        );
        // a partial newest segment may hold no complete record yet
        assert!(replay_short(&rec(seg5, true, &[]), "0/4FFFF00").is_empty());
        assert_eq!(replay_short(&rec(seg5, true, &[]), "0/3000000").len(), 1);
        // left out before the newest: a gap replay cannot pass; after it: the end
        let p = replay_short(
            &rec(seg5, false, &["000000020000000000000003"]),
            "0/5000100",
        );
        assert!(
            p.len() == 1 && p[0].contains("000000020000000000000003"),
            "{p:?}"
        );
        assert!(replay_short(
            &rec(seg5, false, &["000000020000000000000006"]),
            "0/5000100"
        )
        .is_empty());
        assert_eq!(replay_short(&rec(seg5, false, &[]), "garbage").len(), 1);
    }

    #[test]
    fn majors_and_points() {
        assert_eq!(major_of("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(major_of("17devel"), Some(17));
        assert_eq!(major_of("beta"), None);
        let p = Point {
            last_transaction: Some(1_796_659_500.25),
            lsn: "0/3000108".into(),
            databases: 2,
        };
        assert_eq!(p.time().as_deref(), Some("2026-12-07T16:05:00.250Z"));
        assert!(p.behind_now().is_some());
        let none = Point {
            last_transaction: None,
            ..p
        };
        assert_eq!((none.time(), none.behind_now()), (None, None));
    }

    #[test]
    fn a_scratch_directory_is_private_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Scratch::create(Some(tmp.path())).unwrap();
        let path = s.path.clone();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(s);
        assert!(!path.exists());
        let long = tmp.path().join("x".repeat(100));
        let e = Scratch::create(Some(&long)).err().unwrap();
        assert!(e.message().contains("too long"), "{e}");
    }
}
