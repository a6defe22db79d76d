//! WAL streaming for point-in-time recovery (`BACKUP_WAL=on` in the daemon): the server
//! major's `pg_receivewal` runs as a supervised child on a physical replication slot
//! (created if missing, so the server keeps the WAL the sidecar has not received yet)
//! and writes into a spool folder; every completed 16 MiB segment and timeline history
//! file there goes through the backup pipeline (archive.rs: compression, age, SHA-256,
//! the folder and S3, a manifest) and leaves the spool only once stored everywhere.
//! A child that exits (PostgreSQL restarted, the network gone) is restarted with
//! backoff; a failed store is tried again on the next pass, so nothing is lost while
//! the spool and the slot hold it. Before each start the server's side is checked
//! ([`server_lacks`]), so a server that cannot stream is told exactly what it lacks.
//!
//! The segment pg_receivewal is still writing (`.partial`, which it must find again
//! when it restarts, so it never leaves the spool) is stored too, at most every
//! `BACKUP_WAL_RPO` and only when it was written since its last store: a lost host
//! then loses at most that much committed work offsite. Each stored partial replaces
//! the segment's previous one, and the complete segment, once stored, replaces them
//! all ([`Partials`]).
//!
//! Stored names are `_wal-<file>-<stamp>`, so a segment stored again after a crash
//! between storing and removing it never collides with its first copy.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::archive::{self, Destinations, Dump};
use super::catalog::Backup;
use super::daemon::Stop;
use super::dump::{self, Server, Tools};
use super::manifest::Content;
use super::run::Runner;
use super::walname::{check_segment, is_wal_file, partial_segment, stored_file};
use super::BackupError;
use crate::config::invalid;
use crate::pg::PgTarget;

/// How often the spool is looked at.
const PASS: Duration = Duration::from_secs(1);
/// The longest wait before the child is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The spool folder: `BACKUP_WAL_SPOOL`, else `.wal-spool` in the backup folder.
pub fn spool_of(runner: &Runner) -> Result<PathBuf, BackupError> {
    let s = &runner.settings;
    s.wal_spool
        .clone()
        .or_else(|| s.dir.as_ref().map(|d| d.join(".wal-spool")))
        .ok_or_else(|| {
            super::usage(invalid(
                "BACKUP_WAL=on needs a spool folder on a volume: set BACKUP_WAL_SPOOL (or BACKUP_DIR)",
            ))
        })
}

/// Streams WAL until `stop` is requested: the child supervised with backoff, the
/// spool shipped every second and once more at the end.
pub fn stream(runner: &Runner, stop: &Stop) {
    let spool = match spool_of(runner) {
        Ok(s) => s,
        Err(e) => {
            warn!("WAL streaming is off: {e}");
            return;
        }
    };
    if let Err(e) = create_spool(&spool) {
        warn!("WAL streaming is off: {e}");
        return;
    }
    let slot = runner.settings.wal_slot.clone();
    info!("WAL streaming on slot {slot:?} through {}", spool.display());
    let mut partials = Partials::new(runner);
    let mut backoff = PASS;
    while !stop.is_requested() {
        let started = Instant::now();
        match runner.server() {
            Ok((target, server, tools)) => {
                let target = target.clone();
                let wal = Wal {
                    runner,
                    target: &target,
                    server: &server,
                    tools: &tools,
                    spool: &spool,
                };
                match supervise(&wal, stop, &slot, &mut partials) {
                    Ok(()) => {}
                    Err(e) => warn!("WAL streaming: {e}"),
                }
                // What pg_receivewal flushed as it ended, the partial segment included.
                wal.ship(&mut partials);
                wal.ship_partial(&mut partials, true);
            }
            Err(e) => warn!("WAL streaming: {e}"),
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = PASS;
        }
        if stop.is_requested() {
            break;
        }
        info!(
            "WAL streaming: starting again in {}",
            crate::duration::format(backoff)
        );
        if stop.sleep_until(std::time::SystemTime::now() + backoff) {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    info!("WAL streaming stopped");
}

fn create_spool(spool: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(spool)
        .map_err(super::io_err(spool))
}

/// What storing the spool needs.
struct Wal<'a> {
    runner: &'a Runner,
    target: &'a PgTarget,
    server: &'a Server,
    tools: &'a Tools,
    spool: &'a Path,
}

/// Creates the slot if missing, runs pg_receivewal until it exits or `stop`, shipping
/// the spool meanwhile.
fn supervise(
    wal: &Wal,
    stop: &Stop,
    slot: &str,
    partials: &mut Partials,
) -> Result<(), BackupError> {
    let (runner, target) = (wal.runner, wal.target);
    wal.prepare_slot(slot)?;
    // Before receiving (what was held while the sidecar was away), then every minute
    // and soon after a segment was stored.
    check_health(runner, target, slot);
    let mut checked = Instant::now();
    let mut stored_since = false;
    let (mut child, messages) = wal.receive(slot)?;
    loop {
        stored_since |= wal.ship(partials) > 0;
        wal.ship_partial(partials, false);
        let due = if stored_since {
            HEALTH_AFTER_STORE
        } else {
            HEALTH
        };
        if checked.elapsed() >= due {
            check_health(runner, target, slot);
            checked = Instant::now();
            stored_since = false;
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let said = messages.join().unwrap_or_default();
                if forked(&said) {
                    wal.set_aside_forked(partials);
                }
                return Err(super::err(format!(
                    "pg_receivewal exited ({status}): {}",
                    super::base::explain(&said)
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(super::err(format!("pg_receivewal: {e}"))),
        }
        if stop.sleep_until(std::time::SystemTime::now() + PASS) {
            // SIGTERM: pg_receivewal flushes what it received and exits.
            if let Err(e) = crate::process::kill(child.id() as i32, nix::libc::SIGTERM) {
                warn!("stopping pg_receivewal: {e}");
            }
            let _ = child.wait();
            let _ = messages.join();
            return Ok(());
        }
    }
}

impl Wal<'_> {
    /// Checks that the server can stream WAL to us, and creates the slot if missing.
    fn prepare_slot(&self, slot: &str) -> Result<(), BackupError> {
        let lacks = self.runner.rt.block_on(server_lacks(self.target))?;
        if !lacks.is_empty() {
            return Err(super::err(format!(
                "the server cannot stream WAL to the sidecar: {}",
                lacks.join("; ")
            )));
        }
        let mut create = dump::libpq_command(&self.receivewal(), Some(self.target));
        create.args(["--create-slot", "--if-not-exists", "--no-password"]);
        create.arg(format!("--slot={slot}"));
        let out = run_quietly(create)?;
        if !out.0 {
            return Err(super::err(format!(
                "creating the replication slot {slot:?}: {}",
                super::base::explain(&out.1)
            )));
        }
        Ok(())
    }

    /// The server major's `pg_receivewal`, beside its `pg_dump`.
    fn receivewal(&self) -> PathBuf {
        self.tools.pg_dump.with_file_name("pg_receivewal")
    }

    /// Starts pg_receivewal on `slot` into the spool (C messages, for [`forked`]);
    /// the thread gathers what it says.
    fn receive(&self, slot: &str) -> Result<(Child, std::thread::JoinHandle<String>), BackupError> {
        let mut cmd = dump::libpq_command(&self.receivewal(), Some(self.target));
        cmd.env("LC_MESSAGES", "C")
            .env_remove("LC_ALL")
            .env_remove("LANGUAGE");
        cmd.arg("--directory")
            .arg(self.spool)
            .arg(format!("--slot={slot}"))
            .args(["--no-loop", "--no-password"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::process::prepare_child(&mut cmd, None, false);
        let mut child = cmd.spawn().map_err(|e| {
            super::err(format!(
                "cannot run pg_receivewal: {}",
                crate::error::io_reason(&e)
            ))
        })?;
        let messages = log_stderr(&mut child);
        Ok((child, messages))
    }
}

/// What the server lacks for streaming WAL over a replication connection, each piece
/// with what to change: `wal_level` (replica or logical), `max_wal_senders`, the
/// role's REPLICATION. (The `pg_hba.conf` line shows only when the replication
/// connection is made: pg_receivewal's refusal is explained then.)
pub async fn server_lacks(target: &PgTarget) -> Result<Vec<String>, BackupError> {
    let url = &target.url;
    let client = target
        .connect()
        .await
        .map_err(|e| super::err(format!("{url}: {e}")).with_source(e))?;
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int,
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_user::text, current_setting('wal_segment_size')",
            &[],
        )
        .await
        .map_err(|e| super::err(format!("{url}: {}", crate::pg::classify(&e))))?;
    let wal_level: String = row.get(0);
    let senders: i32 = row.get(1);
    let replication: Option<bool> = row.get(2);
    let user: String = row.get(3);
    let segment_size: String = row.get(4);
    let mut lacks = Vec::new();
    // Stored names, continuity and recovery number segments as 16 MiB ones.
    if segment_size != "16MB" {
        lacks.push(format!(
            "the cluster's WAL segments are {segment_size} (initdb --wal-segsize): dockhand streams 16MB segments only"
        ));
    }
    if wal_level != "replica" && wal_level != "logical" {
        lacks.push(format!(
            "wal_level is {wal_level}: set wal_level = replica in postgresql.conf and restart PostgreSQL"
        ));
    }
    if senders < 1 {
        lacks.push(format!(
            "max_wal_senders is {senders}: set it to 2 or more (PostgreSQL's default is 10) and restart PostgreSQL"
        ));
    }
    if replication != Some(true) {
        lacks.push(format!(
            "the role {user:?} lacks REPLICATION: ALTER ROLE \"{}\" REPLICATION",
            user.replace('"', "\"\"")
        ));
    }
    Ok(lacks)
}

/// Drops the sidecar's slot (`backup wal drop-slot`, when removing the sidecar for
/// good: the slot would keep WAL on the server without limit); `false` when there is
/// none. A slot in use (the daemon still streams) is refused.
pub async fn drop_slot(target: &PgTarget, slot: &str) -> Result<bool, BackupError> {
    let url = &target.url;
    let client = target
        .connect()
        .await
        .map_err(|e| super::err(format!("{url}: {e}")).with_source(e))?;
    let sql_err =
        |e: tokio_postgres::Error| super::err(format!("{url}: {}", crate::pg::classify(&e)));
    let row = client
        .query_opt(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_err)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let active: bool = row.get(0);
    if active {
        let pid: Option<i32> = row.get(1);
        return Err(super::err(format!(
            "the replication slot {slot:?} is in use (by server process {}): stop the sidecar's daemon first",
            pid.map_or("?".to_string(), |p| p.to_string())
        )));
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(sql_err)?;
    Ok(true)
}

/// WAL the slot holds on the server (`pg_current_wal_lsn() - restart_lsn`), in bytes.
pub async fn slot_lag(target: &PgTarget, slot: &str) -> Result<Option<i64>, BackupError> {
    let client = target
        .connect()
        .await
        .map_err(|e| super::err(format!("{}: {e}", target.url)).with_source(e))?;
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| super::err(format!("{}: {}", target.url, crate::pg::classify(&e))))?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
}

/// How often the slot's lag and the stored WAL's continuity are checked.
const HEALTH: Duration = Duration::from_secs(60);
/// ... and how soon after a segment was stored.
const HEALTH_AFTER_STORE: Duration = Duration::from_secs(5);

/// Checks the slot's lag and the continuity of the stored WAL (the folder's, else
/// S3's), warns about either, and records both in the status and metrics files.
/// Warns when the slot holds more than `BACKUP_WAL_MAX_LAG`: a slot keeps WAL without
/// limit (`max_slot_wal_keep_size = -1` by default) while the sidecar is behind.
fn check_health(runner: &Runner, target: &PgTarget, slot: &str) {
    let s = &runner.settings;
    let max = s.wal_max_lag;
    let lag = match runner.rt.block_on(slot_lag(target, slot)) {
        Ok(lag) => lag,
        Err(e) => {
            warn!("reading the lag of the replication slot {slot:?}: {e}");
            None
        }
    };
    if let Some(lag) = lag.filter(|l| *l as u64 > max) {
        warn!(
            "the replication slot {slot:?} holds {} of WAL on the server, more than BACKUP_WAL_MAX_LAG {}: the sidecar is behind, and the server's disk fills until it catches up (set max_slot_wal_keep_size on the server to cap it; `backup wal drop-slot` when removing the sidecar for good)",
            super::catalog::human_size(lag as u64),
            super::catalog::human_size(max)
        );
    }
    if s.status_file.is_none() && s.metrics_file.is_none() {
        return;
    }
    let continuity = match stored_wal(runner) {
        Ok(c) => c,
        Err(e) => {
            warn!("listing the stored WAL for its continuity: {e}");
            None
        }
    };
    if let Some(c) = continuity.as_ref().filter(|c| !c.is_continuous()) {
        warn!("{}", c.describe());
    }
    let health = super::status::WalHealth {
        lag_bytes: lag,
        continuous: continuity.as_ref().map(|c| c.is_continuous()),
        continuity: continuity.as_ref().map(|c| c.describe()),
    };
    if let Some(path) = &s.status_file {
        if let Err(e) = super::status::wal(path, &health) {
            warn!("status file: {e}");
        }
    }
    if let Some(path) = &s.metrics_file {
        if let Err(e) = super::status::wal_metrics(path, &health) {
            warn!("metrics file: {e}");
        }
    }
}

/// The continuity of the WAL stored in the folder, else in S3. In S3 only the base
/// backups' manifests are read: a WAL file counts by its manifest's name (written
/// after its data), so the check every minute costs one listing, not a request per
/// segment.
fn stored_wal(runner: &Runner) -> Result<Option<super::continuity::Continuity>, BackupError> {
    use super::manifest::Manifest;
    if let Some(dir) = &runner.settings.dir {
        let all = super::catalog::list_local(dir)?;
        let manifests: Vec<&Manifest> = all.iter().collect();
        return Ok(super::continuity::check(&manifests, None));
    }
    let Some(s3) = &runner.s3 else {
        return Ok(None);
    };
    runner.rt.block_on(async {
        let objects = s3.list().await?;
        let names: Vec<&str> = objects
            .iter()
            .filter_map(|o| o.file.strip_suffix(".manifest.json"))
            .collect();
        let mut bases = Vec::new();
        for name in names.iter().filter(|n| n.starts_with("_base-")) {
            let bytes = s3.get_bytes(&format!("{name}.manifest.json")).await?;
            if let Some(m) = Manifest::from_json(&String::from_utf8_lossy(&bytes)) {
                bases.push(m);
            }
        }
        let bases: Vec<&Manifest> = bases.iter().collect();
        let wal: Vec<&str> = names
            .into_iter()
            .filter(|n| n.starts_with("_wal-"))
            .collect();
        Ok(super::continuity::check_names(&bases, &wal, None))
    })
}

/// Runs a short libpq program; success and its messages.
fn run_quietly(mut cmd: std::process::Command) -> Result<(bool, String), BackupError> {
    cmd.stdin(Stdio::null());
    crate::process::prepare_child(&mut cmd, None, false);
    let out = cmd.output().map_err(|e| {
        super::err(format!(
            "cannot run pg_receivewal: {}",
            crate::error::io_reason(&e)
        ))
    })?;
    let said = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok((out.status.success(), said))
}

/// Logs the child's messages as they come; the last few are returned when it ends.
fn log_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut last: Vec<String> = Vec::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                let line = line.trim().to_string();
                if line.is_empty() {
                    continue;
                }
                warn!("pg_receivewal: {}", crate::redact::text(&line));
                last.push(line);
                if last.len() > 5 {
                    last.remove(0);
                }
            }
        }
        last.join("; ")
    })
}

impl Wal<'_> {
    fn destinations(&self) -> Destinations<'_> {
        Destinations {
            settings: &self.runner.settings,
            rt: self.runner.rt.handle(),
            s3: self.runner.s3.as_ref(),
            cancel: &self.runner.cancel,
        }
    }

    /// Stores every completed file in the spool, oldest first; each leaves the spool
    /// once stored in every destination, and replaces the partials of its segment. A
    /// failure leaves it for the next pass. Returns how many were stored.
    fn ship(&self, partials: &mut Partials) -> usize {
        let Ok(entries) = std::fs::read_dir(self.spool) else {
            return 0;
        };
        let mut stored = 0;
        let mut files: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_wal_file(n))
            .collect();
        files.sort();
        let d = self.destinations();
        for f in files {
            let path = self.spool.join(&f);
            let kind = Dump::Wal(path.clone());
            match archive::backup(&d, self.target, &kind, self.tools, &self.server.version) {
                Ok(o) if o.errors.is_empty() => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!("WAL {f}: stored, but not removed from the spool: {e}");
                    }
                    info!("WAL {f} stored in {}", o.places());
                    partials.superseded(self.runner, &f, None);
                    stored += 1;
                }
                Ok(o) => {
                    warn!(
                        "WAL {f}: {} (kept in the spool; the copy in {} is stored)",
                        o.errors.join("; "),
                        o.places()
                    );
                    return stored;
                }
                Err(e) => {
                    warn!("WAL {f}: {e} (kept in the spool, tried again)");
                    return stored;
                }
            }
        }
        stored
    }

    /// Stores the segment pg_receivewal is writing when `BACKUP_WAL_RPO` has passed
    /// since the last store (or `now`), if it was written since it was last stored.
    fn ship_partial(&self, partials: &mut Partials, now: bool) {
        if !now && partials.last.is_some_and(|t| t.elapsed() < partials.rpo) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.spool) else {
            return;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| partial_segment(n).is_some())
            .collect();
        names.sort();
        let d = self.destinations();
        for name in names {
            let Some(segment) = partial_segment(&name) else {
                continue;
            };
            let path = self.spool.join(&name);
            // Read before the file: a write after it makes the next pass store it again.
            let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
                continue; // completed meanwhile: the next pass stores the segment
            };
            if partials.written.get(segment) == Some(&modified) {
                continue;
            }
            // Nothing visible before it is checked: a file pg_receivewal is still
            // creating holds no page yet (its first page comes after the zeros).
            match segment_on_disk(&path, segment) {
                Ok(()) => {}
                Err((why, true)) => {
                    tracing::debug!("partial WAL not stored yet: {why}");
                    continue;
                }
                Err((why, false)) => {
                    warn!("partial WAL not stored: {why}");
                    continue;
                }
            }
            let kind = Dump::Wal(path.clone());
            match archive::backup(&d, self.target, &kind, self.tools, &self.server.version) {
                Ok(o) => {
                    tracing::debug!("partial WAL {segment} stored in {}", o.places());
                    let complete = o.errors.is_empty();
                    if complete {
                        partials.written.insert(segment.to_string(), modified);
                    } else {
                        warn!(
                            "partial WAL {segment}: {} (the copy in {} is stored; tried again)",
                            o.errors.join("; "),
                            o.places()
                        );
                    }
                    let new = o.backup();
                    // The segment's older partials go once this one is everywhere.
                    if complete {
                        partials.superseded(self.runner, segment, Some(&new.manifest.name));
                    }
                    partials.stored.push(new);
                }
                Err(_) if !path.exists() => {} // completed meanwhile
                Err(e) => warn!("partial WAL {segment}: {e} (tried again)"),
            }
        }
        partials.last = Some(Instant::now());
    }
}

/// [`check_segment`] on the spool file `path`, which holds `segment`; the error says
/// too whether the file is still being created (its first page not written yet: all
/// zeros so far), which the next pass sees through, or is not a segment at all.
fn segment_on_disk(path: &Path, segment: &str) -> Result<(), (String, bool)> {
    use std::io::Read;
    let read = || -> std::io::Result<(Vec<u8>, u64)> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let mut head = Vec::with_capacity(40);
        f.by_ref().take(40).read_to_end(&mut head)?;
        Ok((head, len))
    };
    let (head, len) =
        read().map_err(|e| (format!("{segment}: {}", crate::error::io_reason(&e)), true))?;
    check_segment(segment, &head, len).map_err(|why| (why, head.iter().all(|&b| b == 0)))
}

/// True when pg_receivewal was refused because the spool's position is not on the
/// server's history: the server was recovered to an earlier point and promoted (a new
/// timeline forked before it), or is behind it.
fn forked(said: &str) -> bool {
    said.contains("not in this server's history")
        || said.contains("ahead of the WAL flush position of this server")
}

impl Wal<'_> {
    /// After a fork ([`forked`]): the spool's partial segments, which pg_receivewal
    /// would start from again, belong to the old history. Each is stored (as it would
    /// be at any stop) and then leaves the spool, so the next start begins at the
    /// slot's position on the server's own timeline (pg_receivewal then fetches that
    /// timeline's history file). One not stored everywhere is kept beside, renamed
    /// `.forked`, for a person to look at.
    fn set_aside_forked(&self, partials: &mut Partials) {
        self.ship(partials);
        partials.written.retain(|_, _| false);
        self.ship_partial(partials, true);
        let Ok(entries) = std::fs::read_dir(self.spool) else {
            return;
        };
        for name in entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
        {
            let Some(segment) = partial_segment(&name) else {
                continue;
            };
            let path = self.spool.join(&name);
            let stored = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| partials.written.get(segment) == Some(&m));
            let done = if stored {
                std::fs::remove_file(&path)
            } else {
                std::fs::rename(&path, self.spool.join(format!("{name}.forked")))
            };
            match done {
                Ok(()) if stored => warn!(
                    "WAL streaming: the server's history forked before the spool's {segment} (recovered and promoted?): it is stored, and streaming starts again on the server's timeline"
                ),
                Ok(()) => warn!(
                    "WAL streaming: the server's history forked before the spool's {segment}, which could not be stored everywhere: kept as {name}.forked; streaming starts again on the server's timeline"
                ),
                Err(e) => warn!("WAL streaming: setting aside {name}: {e}"),
            }
        }
    }
}

/// The partial segments stored, so that each is deleted once replaced: by a newer
/// partial of its segment, or by the complete segment.
struct Partials {
    rpo: Duration,
    /// When partials were last looked at.
    last: Option<Instant>,
    /// Each segment's modification time in the spool when last stored everywhere.
    written: HashMap<String, SystemTime>,
    stored: Vec<Backup>,
}

impl Partials {
    /// The partials already stored (an earlier run's); those a complete segment or a
    /// newer partial replaces (a crash came between storing and deleting) go now.
    fn new(runner: &Runner) -> Partials {
        let mut p = Partials {
            rpo: runner.settings.wal_rpo,
            last: None,
            written: HashMap::new(),
            stored: Vec::new(),
        };
        let all = match runner.backups(true) {
            Ok(all) => all,
            Err(e) => {
                warn!("listing the stored WAL: {e} (partial segments stored before are kept)");
                return p;
            }
        };
        let wal: Vec<(&str, bool, &Backup)> = all
            .iter()
            .filter(|b| b.manifest.kind == Content::Wal)
            .filter_map(|b| stored_file(&b.manifest.name).map(|(f, partial)| (f, partial, b)))
            .collect();
        p.stored = wal
            .iter()
            .filter(|(_, partial, _)| *partial)
            .map(|(_, _, b)| (*b).clone())
            .collect();
        for (file, partial, b) in &wal {
            if !partial {
                p.superseded(runner, file, None);
            } else if let Some(newest) = wal
                .iter()
                .filter(|(f, partial, _)| *partial && f == file)
                .map(|(_, _, b)| b)
                .max_by_key(|b| (b.manifest.started, b.manifest.name.clone()))
            {
                if newest.manifest.name == b.manifest.name {
                    p.superseded(runner, file, Some(&b.manifest.name));
                }
            }
        }
        p
    }

    /// Deletes the stored partials of `segment` but `keep` (folder and S3, manifest
    /// first); one that cannot be deleted now is tried again next time.
    fn superseded(&mut self, runner: &Runner, segment: &str, keep: Option<&str>) {
        if keep.is_none() {
            self.written.remove(segment);
        }
        self.stored.retain(|b| {
            let name = &b.manifest.name;
            let replaced = Some(name.as_str()) != keep
                && stored_file(name).is_some_and(|(f, partial)| partial && f == segment);
            if !replaced {
                return true;
            }
            match runner.delete(b) {
                Ok(()) => false,
                Err(e) => {
                    warn!("deleting the replaced partial WAL {name}: {e}");
                    true
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::walname::{check_slot_name, file_of, stored_name};

    #[test]
    fn slot_names_follow_postgresql() {
        assert!(check_slot_name("dockhand").is_ok());
        assert!(check_slot_name("a_1").is_ok());
        for bad in [
            "",
            "Dock",
            "a-b",
            "a b",
            "x'; DROP",
            &"a".repeat(64),
            "日本",
        ] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_completed_wal_files_are_shipped() {
        assert!(is_wal_file("000000010000000000000003"));
        assert!(is_wal_file("00000002.history"));
        for not in [
            "000000010000000000000003.partial",
            "00000001000000000000000",
            "0000000100000000000000g3",
            "000000010000000000000003.tmp",
            ".000000010000000000000003",
            "status.json",
            "0000002.history",
        ] {
            assert!(!is_wal_file(not), "{not}");
        }
        let name = stored_name(
            Path::new("/spool/000000010000000000000003"),
            "20260101T000000.000Z-abcd",
        );
        assert_eq!(file_of(&name), Some("000000010000000000000003"));
        assert_eq!(file_of("_wal-../x-1"), None);
        // the segment being written, and its stored name
        assert_eq!(
            partial_segment("000000010000000000000003.partial"),
            Some("000000010000000000000003")
        );
        assert_eq!(partial_segment("00000002.history.partial"), None);
        let name = stored_name(
            Path::new("/spool/000000010000000000000003.partial"),
            "20260101T000000.000Z-abcd",
        );
        assert_eq!(stored_file(&name), Some(("000000010000000000000003", true)));
        assert_eq!(file_of(&name), None);
        assert_eq!(
            stored_file("_wal-00000002.history-20260101T000000.000Z-abcd"),
            Some(("00000002.history", false))
        );
    }
}
