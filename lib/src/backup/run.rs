//! One backup run, as the daemon and `backup now` do it: read the server's version,
//! pick pg_dump, dump every database (and the globals) to every destination, each dump
//! under its own locks ([`DumpLock`]), verify when asked, apply retention, then record
//! the outcome (status file, metrics, pings). Also `prune`, and the [`Runner`] that holds what runs share:
//! the tokio runtime, the S3 client and the deadpool-postgres pool of metadata
//! connections, which replaces connections broken by a database restart between runs.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tracing::{info, warn};

use super::archive::{self, Destinations, Dump, Outcome, Stored};
use super::catalog::{self, Backup, Reading, Side};
use super::manifest::{self, Manifest};
use super::retention::{self, Decision, Item};
use super::s3::S3;
use super::settings::{Databases, Settings};
use super::status::{self, RunMetrics};
use super::walname::{segment, segment_of_lsn, stored_file};
use super::{dump, err, BackupError, Cancel};
use crate::pg::PgTarget;

/// Session advisory lock a dump holds in the database it dumps (whatever database the
/// URL names): two runs of one database on one server (the daemon and a `backup now`,
/// two sidecars, one connected to `postgres` with `BACKUP_DATABASES=app` and one to
/// `app`) never overlap.
pub const RUN_LOCK: i64 = 0x646b_6261_636b_7570; // "dkbackup"

/// How old an incomplete upload (by its start and its newest part), or a data object
/// without a manifest, must be before a run takes it for an interrupted run's
/// leftover: longer than any run lasts. Nothing in S3 says whether the run that made
/// it is alive (a run of the same database on another server, sharing the prefix,
/// holds no lock this one can see), so age is the only proof; a dead run's upload
/// costs a day of storage, a live one aborted would cost its backup.
const STALE_AFTER: i64 = 24 * 3600;

/// What one dump holds while it runs. Both are released when dropped (the session
/// closed, the file closed) and by the kernel when the process dies, so a crash never
/// leaves a stale lock behind:
/// - [`RUN_LOCK`] in the database dumped: no other run on this server dumps it;
/// - `flock(2)` on `.NAME.lock` in the folder: no other run, from any server, writes
///   this database's files there, so `.NAME-*.partial` files are provably dead.
///
/// Each dump takes its locks just before it starts and lets go just after, and only
/// ever tries them (never waits), so runs dumping overlapping sets of databases in any
/// order can never deadlock: the later one skips what the other is dumping.
struct DumpLock {
    _session: Option<tokio_postgres::Client>,
    folder: Option<FolderLock>,
}

/// A held `.NAME.lock`: removed, while still locked, when let go, so the folder keeps
/// only backups. A run that opened the file just before it was removed finds its lock
/// on a file no longer in the folder, and opens the path again.
struct FolderLock {
    path: std::path::PathBuf,
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The session holding [`RUN_LOCK`] in the current database, as messages name it.
const HOLDER: &str = "SELECT a.pid, a.application_name, host(a.client_addr), extract(epoch FROM a.backend_start)::bigint
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = ($1::bigint >> 32) AND l.objid::bigint = ($1::bigint & 4294967295)
    LIMIT 1";

/// Connects pool members through [`PgTarget::connect_raw`] (our resolver and TLS).
struct Connector {
    target: PgTarget,
    tls: Arc<rustls::ClientConfig>,
}

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        Box::pin(self.target.connect_raw(self.tls.clone()))
    }
}

/// What runs share.
pub struct Runner {
    pub settings: Settings,
    pub rt: tokio::runtime::Runtime,
    pub s3: Option<S3>,
    pool: Option<(PgTarget, Pool)>,
    pub cancel: Arc<Cancel>,
}

/// The result of a run: the backups made, and every failure.
#[derive(Debug, Default)]
pub struct RunResult {
    pub made: Vec<Outcome>,
    pub failures: Vec<String>,
}

impl Runner {
    pub fn new(settings: Settings, cancel: Arc<Cancel>) -> Result<Runner, BackupError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start: {e}")))?;
        let s3 = match &settings.s3 {
            Some(s) => Some(rt.block_on(S3::connect(s))?),
            None => None,
        };
        let pool = match &settings.url {
            Some(url) => {
                let target = PgTarget::from_url(url).map_err(|e| err(format!("{url}: {e}")))?;
                let tls = target
                    .tls_config()
                    .map_err(|e| err(format!("{url}: {e}")))?;
                let manager = Manager::from_connect(
                    target.config().clone(),
                    Connector {
                        target: target.clone(),
                        tls,
                    },
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Verified,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(2)
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .build()
                    .map_err(|e| err(format!("connection pool: {e}")))?;
                Some((target, pool))
            }
            None => None,
        };
        Ok(Runner {
            settings,
            rt,
            s3,
            pool,
            cancel,
        })
    }

    /// What reading backups back needs.
    pub fn reading<'a>(&'a self, identities: &'a [age::x25519::Identity]) -> Reading<'a> {
        Reading {
            dir: self.settings.dir.as_deref(),
            s3: self.s3.as_ref(),
            rt: self.rt.handle(),
            identities,
        }
    }

    /// The backups to read one from (verify, restore): only the copy asked for, so
    /// disaster recovery from the folder never depends on S3, nor the reverse; without
    /// `--from`, both, where one unreachable side is a warning as long as the other
    /// answers.
    pub fn backups_for_reading(&self, from: Option<Side>) -> Result<Vec<Backup>, BackupError> {
        let local = || match &self.settings.dir {
            Some(d) => catalog::list_local(d),
            None => Ok(Vec::new()),
        };
        let remote = || match &self.s3 {
            Some(s3) => self.rt.block_on(catalog::list_remote(s3)),
            None => Ok(Vec::new()),
        };
        match from {
            Some(Side::Local) => Ok(catalog::merge(local()?, Vec::new())),
            Some(Side::S3) => Ok(catalog::merge(Vec::new(), remote()?)),
            None => match (local(), remote()) {
                (Ok(l), Ok(r)) => Ok(catalog::merge(l, r)),
                (Ok(l), Err(e)) => {
                    tracing::warn!("S3 cannot be listed ({e}): using the local copies");
                    Ok(catalog::merge(l, Vec::new()))
                }
                (Err(e), Ok(r)) => {
                    tracing::warn!("the folder cannot be listed ({e}): using the S3 copies");
                    Ok(catalog::merge(Vec::new(), r))
                }
                (Err(a), Err(b)) => Err(err(format!("{a}; {b}"))),
            },
        }
    }

    /// Verifies the backup `name` (or `latest`) from `from` (default: the local copy
    /// if there is one): checksum, decryption with `identities`, and a full read by
    /// the `pg_restore` of the version that wrote it. Returns its manifest.
    pub fn verify(
        &self,
        name: &str,
        from: Option<Side>,
        identities: &[age::x25519::Identity],
    ) -> Result<Manifest, BackupError> {
        let backups = self.backups_for_reading(from)?;
        let b = catalog::find(&backups, name)?;
        let from = from.unwrap_or(if b.local { Side::Local } else { Side::S3 });
        let tools = dump::find_tools(b.manifest.pg_dump_major())?;
        catalog::verify(
            &self.reading(identities),
            b,
            from,
            &tools.pg_restore,
            &self.cancel,
        )?;
        Ok(b.manifest.clone())
    }

    /// The backups in the folder and, when `remote` (or there is no folder), in S3.
    pub fn backups(&self, remote: bool) -> Result<Vec<Backup>, BackupError> {
        let local = match &self.settings.dir {
            Some(d) => catalog::list_local(d)?,
            None => Vec::new(),
        };
        let remote = match &self.s3 {
            Some(s3) if remote || self.settings.dir.is_none() => {
                self.rt.block_on(catalog::list_remote(s3))?
            }
            _ => Vec::new(),
        };
        Ok(catalog::merge(local, remote))
    }

    /// Waits until PostgreSQL answers `SELECT 1` (as the entrypoint's `--wait postgres`
    /// does: "starting up", refused and unresolvable keep waiting, a wrong password
    /// fails at once), up to `timeout` or until `stopped` says so. Logs progress.
    pub fn wait_for_database(
        &self,
        timeout: std::time::Duration,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), BackupError> {
        let Some((target, _)) = &self.pool else {
            return Ok(());
        };
        let targets = [crate::probe::Target::Postgres(Box::new(target.clone()))];
        let http = crate::probe::HttpOptions::default();
        self.rt.block_on(async {
            let stop = async {
                while !stopped() {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                r = crate::wait::wait_all(&targets, &http, timeout) => {
                    r.map_err(|e| err(format!("waiting for the database: {e}")))
                }
                _ = stop => Err(err("stopped while waiting for the database")),
            }
        })
    }

    /// One complete run, recorded in the status file, the metrics and the pings.
    pub fn run(&self) -> RunResult {
        let clock = Instant::now();
        if let Some(p) = &self.settings.ping_url {
            status::ping(self.rt.handle(), p, "/start");
        }
        let mut result = self.run_inner();
        let success = result.failures.is_empty();
        let made: Vec<Manifest> = result.made.iter().map(|o| o.manifest.clone()).collect();
        if let Some(path) = &self.settings.status_file {
            let written = if success {
                status::success(path, &made)
            } else {
                status::failure(path, &result.failures.join("; "))
            };
            if let Err(e) = written {
                result.failures.push(format!("status file: {e}"));
            }
        }
        if let Some(path) = &self.settings.metrics_file {
            let m = RunMetrics {
                success,
                seconds: clock.elapsed().as_secs_f64(),
                bytes: made.iter().map(|m| m.size).sum(),
            };
            if let Err(e) = status::metrics(path, &m) {
                warn!("metrics file: {e}");
            }
        }
        if let Some(p) = &self.settings.ping_url {
            status::ping(self.rt.handle(), p, if success { "" } else { "/fail" });
        }
        result
    }

    /// The database's connection settings, when a URL is set.
    pub fn target(&self) -> Option<&PgTarget> {
        self.pool.as_ref().map(|(t, _)| t)
    }

    /// The database, its server and the client tools of its major (base backups and
    /// WAL streaming).
    pub fn server(&self) -> Result<(&PgTarget, dump::Server, dump::Tools), BackupError> {
        let Some((target, pool)) = &self.pool else {
            return Err(err("no database: set DIRECT_URL (or DATABASE_URL)"));
        };
        let url = &target.url;
        let server = self.rt.block_on(async {
            let client = pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => {
                    err(format!("{url}: {}", crate::pg::classify(&e)))
                }
                other => err(format!("{url}: {other}")),
            })?;
            dump::server_of(&client, target).await
        })?;
        let tools = dump::find_tools(server.major)?;
        Ok((target, server, tools))
    }

    /// One base backup of the cluster (`backup base`): `pg_basebackup` of the server's
    /// major to every destination, under the folder lock of the base backups.
    pub fn base(&self) -> Result<Outcome, BackupError> {
        let made = self.base_inner();
        let s = &self.settings;
        if s.status_file.is_some() || s.metrics_file.is_some() {
            // A copy that failed in one destination is a failure too, as for a run.
            let reason = match &made {
                Ok(o) if o.errors.is_empty() => None,
                Ok(o) => Some(format!(
                    "{} incomplete: {}",
                    o.manifest.name,
                    o.errors.join("; ")
                )),
                Err(e) => Some(e.to_string()),
            };
            let recorded = status::base(
                s.status_file.as_deref(),
                s.metrics_file.as_deref(),
                match (&made, &reason) {
                    (Ok(o), None) => Ok(o.manifest.name.as_str()),
                    (_, Some(r)) => Err(r.as_str()),
                    (Err(_), None) => Err(""),
                },
            );
            if let Err(e) = recorded {
                warn!("recording the base backup in the status or metrics file: {e}");
            }
        }
        made
    }

    fn base_inner(&self) -> Result<Outcome, BackupError> {
        let (target, server, tools) = self.server()?;
        self.clean_up_remote(&[]);
        let d = Destinations {
            settings: &self.settings,
            rt: self.rt.handle(),
            s3: self.s3.as_ref(),
            cancel: &self.cancel,
        };
        let lock = self.lock(target, &Dump::Base)?;
        if lock.folder.is_some() {
            self.remove_stale_partials(&Dump::Base);
        }
        let made = archive::backup(&d, target, &Dump::Base, &tools, &server.version);
        drop(lock);
        made.map_err(|e| e.context("base backup"))
    }

    fn run_inner(&self) -> RunResult {
        let mut r = RunResult::default();
        let fail = |r: &mut RunResult, e: String| {
            r.failures.push(crate::redact::text(&e));
        };
        let Some((target, pool)) = &self.pool else {
            fail(
                &mut r,
                "no database: set DIRECT_URL (or DATABASE_URL)".into(),
            );
            return r;
        };
        let url = &target.url;
        let prepared = self.rt.block_on(async {
            let session = target
                .connect()
                .await
                .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
            // Behind PgBouncer in transaction mode neither the locks nor pg_dump work.
            if let Some(pid) = crate::pg::shared_backend(target, &session)
                .await
                .map_err(|e| err(format!("{url}: {e}")))?
            {
                return Err(err(format!(
                    "{url} goes through a transaction pooler (PgBouncer?): two connections shared backend {pid}, and pg_dump needs a session of its own. Set DIRECT_URL to PostgreSQL itself"
                )));
            }
            drop(session);
            let client = pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => {
                    err(format!("{url}: {}", crate::pg::classify(&e)))
                }
                other => err(format!("{url}: {other}")),
            })?;
            let server = dump::server_of(&client, target).await?;
            let databases: Vec<String> = match &self.settings.databases {
                Databases::FromUrl => vec![target.dbname().to_string()],
                Databases::List(l) => l.clone(),
                Databases::All => client
                    .query(
                        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                        &[],
                    )
                    .await
                    .map_err(|e| err(format!("{url}: {}", crate::pg::classify(&e))))?
                    .iter()
                    .map(|row| row.get(0))
                    .collect(),
            };
            Ok::<_, BackupError>((server, databases))
        });
        let (server, databases) = match prepared {
            Ok(p) => p,
            Err(e) => {
                fail(&mut r, e.to_string());
                return r;
            }
        };
        let tools = match dump::find_tools(server.major) {
            Ok(t) => t,
            Err(e) => {
                fail(&mut r, e.to_string());
                return r;
            }
        };
        self.clean_up_remote(&databases);
        let d = Destinations {
            settings: &self.settings,
            rt: self.rt.handle(),
            s3: self.s3.as_ref(),
            cancel: &self.cancel,
        };
        let mut kinds: Vec<Dump> = databases.into_iter().map(Dump::Database).collect();
        if self.settings.globals {
            kinds.push(Dump::Globals);
        }
        for kind in kinds {
            if let Err(e) = self.cancel.check() {
                fail(&mut r, e.to_string());
                break;
            }
            let what = match &kind {
                Dump::Database(db) => format!("database {db:?}"),
                Dump::Globals => "the globals".to_string(),
                Dump::Base => "the base backup".to_string(),
                Dump::Wal(p) => format!("WAL {}", p.display()),
            };
            let lock = match self.lock(target, &kind) {
                Ok(l) => l,
                Err(e) => {
                    fail(&mut r, format!("{what}: {e}"));
                    continue;
                }
            };
            if lock.folder.is_some() {
                self.remove_stale_partials(&kind);
            }
            let made = archive::backup(&d, target, &kind, &tools, &server.version);
            drop(lock);
            match made {
                Ok(o) => {
                    info!(
                        "backup {} of {what}: {} dumped, {} stored in {}",
                        o.manifest.name,
                        catalog::human_size(o.manifest.dump_bytes),
                        catalog::human_size(o.manifest.size),
                        o.places()
                    );
                    for e in &o.errors {
                        fail(
                            &mut r,
                            format!("{what}: {e} (the copy in {} is kept)", o.places()),
                        );
                    }
                    r.made.push(o);
                }
                Err(e) => fail(&mut r, format!("{what}: {e}")),
            }
        }
        if self.settings.verify {
            for o in &r.made.clone() {
                let b = Backup {
                    manifest: o.manifest.clone(),
                    local: o.stored.iter().any(|s| matches!(s, Stored::Local(_))),
                    remote: o.stored.iter().any(|s| matches!(s, Stored::S3(_))),
                };
                let from = if b.local { Side::Local } else { Side::S3 };
                match catalog::verify(
                    &self.reading(&[]),
                    &b,
                    from,
                    &tools.pg_restore,
                    &self.cancel,
                ) {
                    Ok(()) => info!("{}: verified (checksum and full read)", o.manifest.name),
                    Err(e) => fail(&mut r, format!("verify: {e}")),
                }
            }
        }
        if r.failures.is_empty() && !self.settings.retention.is_empty() {
            if let Err(e) = self.prune(false) {
                fail(&mut r, format!("retention: {e}"));
            }
        }
        r
    }

    /// Takes the locks one dump holds (see [`DumpLock`]); when another run holds one,
    /// says which run that is. A folder that cannot hold a lock file is left to the
    /// dump, which reports the folder's own error and still makes the S3 copy.
    fn lock(&self, target: &PgTarget, kind: &Dump) -> Result<DumpLock, BackupError> {
        let safe = match kind {
            Dump::Database(db) => manifest::file_safe(db),
            // The globals are read, never locked, in PostgreSQL: only their files need it.
            Dump::Globals => "_globals".to_string(),
            Dump::Base => "_base".to_string(),
            Dump::Wal(_) => "_wal".to_string(),
        };
        let session = match kind {
            Dump::Database(db) => Some(self.rt.block_on(lock_database(target, db))?),
            Dump::Globals | Dump::Base | Dump::Wal(_) => None,
        };
        let folder = match &self.settings.dir {
            Some(dir) => lock_folder(dir, &safe)?,
            None => None,
        };
        Ok(DumpLock {
            _session: session,
            folder,
        })
    }

    /// Removes the `.NAME.partial` files of `kind` a killed run left; called with the
    /// folder lock of `kind` held, so none of them is being written.
    fn remove_stale_partials(&self, kind: &Dump) {
        let Some(dir) = &self.settings.dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefix = match kind {
            Dump::Database(db) => format!("{}-", manifest::file_safe(db)),
            Dump::Globals => "_globals-".to_string(),
            Dump::Base => "_base-".to_string(),
            Dump::Wal(_) => "_wal-".to_string(),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".partial"))
                .is_some_and(|f| manifest::is_own_data_file(f, &prefix));
            if ours && std::fs::remove_file(e.path()).is_ok() {
                warn!("removed {name}, left by an interrupted run");
            }
        }
    }

    /// Removes from S3 what a killed run of these databases left under the prefix, and
    /// nothing else: incomplete multipart uploads of their own file names, and their own
    /// data objects that have no manifest, both only once older than [`STALE_AFTER`]
    /// (a run of the same database elsewhere may be writing them). Foreign objects,
    /// other databases' files and complete backups are never touched. Failures only warn.
    fn clean_up_remote(&self, databases: &[String]) {
        let Some(s3) = &self.s3 else {
            return;
        };
        let prefixes: Vec<String> = databases
            .iter()
            .map(|d| format!("{}-", manifest::file_safe(d)))
            .chain(["_globals-".to_string(), "_base-".to_string()])
            .collect();
        let ours = |f: &str| {
            prefixes
                .iter()
                .find(|p| manifest::is_own_data_file(f, p))
                .and_then(|p| stamp_secs(&f[p.len()..]))
        };
        let now = super::unix_now();
        let cancel = self.cancel.clone();
        let cleaned = self.rt.block_on(async {
            tokio::select! {
                r = self.clean_up(s3, &ours, now) => r,
                _ = cancel.cancelled() => Err(super::cancelled("cancelled")),
            }
        });
        if let Err(e) = cleaned {
            warn!("cleaning up after interrupted runs in S3: {e}");
        }
    }

    /// `ours` gives the time in the name of an own file (when its run started).
    async fn clean_up(
        &self,
        s3: &S3,
        ours: &dyn Fn(&str) -> Option<i64>,
        now: i64,
    ) -> Result<(), BackupError> {
        // The last sign of life: the start in the name (our own clock: some servers
        // give every upload a made-up start), the server's dates, the newest part.
        let stale = |times: &[i64]| now - times.iter().copied().max().unwrap_or(now) > STALE_AFTER;
        for (file, id, started) in s3.incomplete_uploads().await? {
            let Some(named) = ours(&file) else {
                continue;
            };
            if stale(&[named, started])
                && stale(&[named, started, s3.last_part(&file, &id).await?.unwrap_or(0)])
            {
                s3.abort_upload(&file, &id).await?;
                warn!("aborted the incomplete upload of {file}, left by an interrupted run");
            }
        }
        let objects = s3.list().await?;
        let manifests: std::collections::HashSet<&str> = objects
            .iter()
            .filter_map(|o| o.file.strip_suffix(".manifest.json"))
            .collect();
        for o in &objects {
            let Some(named) = ours(&o.file) else {
                continue;
            };
            let orphan = !manifests
                .iter()
                .any(|m| o.file.starts_with(&format!("{m}.")))
                && o.modified > 0
                && stale(&[named, o.modified]);
            if orphan {
                s3.delete(&o.file).await?;
                warn!(
                    "deleted {}: data without a manifest, left by an interrupted run",
                    o.file
                );
            }
        }
        Ok(())
    }

    /// Applies the retention policy (or, with `dry_run`, only decides); returns each
    /// backup's decision and where it was. Stored WAL is kept by the base backups
    /// kept: every segment from the oldest one's start on (see [`wal_to_delete`]).
    pub fn prune(&self, dry_run: bool) -> Result<Vec<(Decision, Backup)>, BackupError> {
        let (wal, backups): (Vec<Backup>, Vec<Backup>) = self
            .backups(true)?
            .into_iter()
            .partition(|b| b.manifest.kind == manifest::Content::Wal);
        let items: Vec<Item> = backups
            .iter()
            .map(|b| Item {
                name: b.manifest.name.clone(),
                series: b.manifest.series(),
                started: b.manifest.started,
                verified: b.manifest.verified.is_some(),
            })
            .collect();
        let decisions = retention::decide(&items, &self.settings.retention, super::unix_now());
        let mut out = Vec::new();
        for (dec, b) in decisions.into_iter().zip(backups) {
            if !dec.keep && !dry_run {
                self.delete(&b)?;
                info!("deleted {} ({})", b.manifest.name, dec.why);
            }
            out.push((dec, b));
        }
        if self.settings.retention.is_empty() {
            return Ok(out);
        }
        let kept: Vec<&Manifest> = out
            .iter()
            .filter(|(d, _)| d.keep)
            .map(|(_, b)| &b.manifest)
            .collect();
        let Some((start, why)) = wal_needed_from(&kept) else {
            return Ok(out);
        };
        let mut deleted = 0;
        for b in wal_to_delete(wal, start) {
            if !dry_run {
                self.delete(&b)?;
                deleted += 1;
            }
            let dec = Decision {
                name: b.manifest.name.clone(),
                keep: false,
                why: why.clone(),
            };
            out.push((dec, b));
        }
        if deleted > 0 {
            info!("deleted {deleted} stored WAL file(s): {why}");
        }
        Ok(out)
    }

    /// Deletes a backup: its manifest first (from then on it does not exist), then
    /// its data.
    pub(crate) fn delete(&self, b: &Backup) -> Result<(), BackupError> {
        let m = &b.manifest;
        if b.local {
            if let Some(dir) = &self.settings.dir {
                for f in [m.manifest_file(), m.file.clone()] {
                    let p = dir.join(&f);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(super::io_err(&p)(e)),
                    }
                }
            }
        }
        if b.remote {
            if let Some(s3) = &self.s3 {
                self.rt.block_on(async {
                    s3.delete(&m.manifest_file()).await?;
                    s3.delete(&m.file).await
                })?;
            }
        }
        Ok(())
    }
}

/// The first WAL segment recovery from the oldest of the `kept` base backups needs,
/// and the reason older ones go; `None` when no base backup is kept (WAL is kept).
pub fn wal_needed_from(kept: &[&Manifest]) -> Option<(u64, String)> {
    let (start, name) = kept
        .iter()
        .filter(|m| m.kind == manifest::Content::Base)
        .filter_map(|m| Some((segment_of_lsn(&m.wal.as_ref()?.start)?, &m.name)))
        .min()?;
    Some((
        start,
        format!("older than the WAL the oldest base backup kept ({name}) needs"),
    ))
}

/// The stored WAL segments (complete or partial) before segment `start`, on any
/// timeline; history files are always kept (tiny, and recovery follows them).
pub fn wal_to_delete(wal: Vec<Backup>, start: u64) -> Vec<Backup> {
    wal.into_iter()
        .filter(|b| {
            stored_file(&b.manifest.name)
                .and_then(|(file, _)| segment(file))
                .is_some_and(|(_, seg)| seg < start)
        })
        .collect()
}

/// Unix seconds of the stamp a data file's name starts with (`YYYYmmddTHHMMSS...`).
fn stamp_secs(stamp: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Takes [`RUN_LOCK`] in `db` on a session of its own, or says which session holds it.
async fn lock_database(target: &PgTarget, db: &str) -> Result<tokio_postgres::Client, BackupError> {
    let t = target.with_dbname(db);
    let url = &t.url;
    let session = t
        .connect()
        .await
        .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
    let got: bool = session
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
        .await
        .map_err(|e| err(format!("{url}: {}", crate::pg::classify(&e))))?
        .get(0);
    if got {
        return Ok(session);
    }
    let holder = match session.query_opt(HOLDER, &[&RUN_LOCK]).await {
        Ok(Some(row)) => {
            let pid: i32 = row.get(0);
            let app: Option<String> = row.get(1);
            let from: Option<String> = row.get(2);
            let since: Option<i64> = row.get(3);
            let mut s = format!("held by PostgreSQL session {pid}");
            if let Some(app) = app.filter(|a| !a.is_empty()) {
                s.push_str(&format!(" ({app:?})"));
            }
            if let Some(from) = from {
                s.push_str(&format!(" from {from}"));
            }
            if let Some(since) = since {
                s.push_str(&format!(
                    ", connected since {}",
                    crate::time::rfc3339(since, 0)
                ));
            }
            s
        }
        _ => "its advisory lock is held".to_string(),
    };
    Err(err(format!(
        "another backup of this database is running ({holder}): this one is skipped"
    )))
}

/// Takes `flock(2)` on `DIR/.SAFE.lock` and writes who holds it there, or says which
/// run holds it. `None` when the folder cannot hold the file (the dump reports why).
fn lock_folder(dir: &std::path::Path, safe: &str) -> Result<Option<FolderLock>, BackupError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = dir.join(format!(".{safe}.lock"));
    // Another run may remove the file between our open and our lock: then again.
    for _ in 0..10 {
        let opened = std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        });
        let Ok(file) = opened else {
            return Ok(None);
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                let current = match (std::fs::metadata(&path), file.metadata()) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if !current {
                    continue;
                }
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let who = format!(
                    "pid {} on {}, since {}\n",
                    std::process::id(),
                    host.trim(),
                    crate::time::rfc3339_now()
                );
                // Only for the message of a run that finds it held: a full disk must
                // not stop the backup.
                let _ = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| file.write_all(who.as_bytes()));
                return Ok(Some(FolderLock { path, _file: file }));
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut who = String::new();
                let _ = (&mut file).take(200).read_to_string(&mut who);
                let who = who.trim();
                let who = if who.is_empty() {
                    String::new()
                } else {
                    format!("{who}; ")
                };
                return Err(err(format!(
                    "another backup is writing these files in {} ({who}it holds {}): this one is skipped",
                    dir.display(),
                    path.display()
                )));
            }
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::manifest::is_own_data_file;

    #[test]
    fn a_stamp_is_read_back_as_the_time_it_was_made_at() {
        for secs in [0, 951_782_400, 1_767_225_599, 1_798_761_600, 4_107_542_399] {
            let stamp = super::manifest::stamp(secs);
            assert_eq!(super::stamp_secs(&stamp), Some(secs), "{stamp}");
        }
        assert_eq!(super::stamp_secs("20261307T000000Z"), None);
        assert_eq!(super::stamp_secs("2026"), None);
    }

    #[test]
    fn a_database_owns_only_its_own_file_names() {
        let stamp = "20260101T000000.000Z-abcd";
        assert!(is_own_data_file(&format!("app-{stamp}.dump.zst"), "app-"));
        assert!(is_own_data_file("app-20260101T000000Z.dump.gz.age", "app-"));
        assert!(is_own_data_file(
            &format!("_globals-{stamp}.sql.zst"),
            "_globals-"
        ));
        // database `app-1`'s files are not `app`'s
        assert!(!is_own_data_file(
            &format!("app-1-{stamp}.dump.zst"),
            "app-"
        ));
        assert!(!is_own_data_file("app-20260101-1.dump.zst", "app-"));
        assert!(!is_own_data_file(&format!("app-{stamp}X.dump.zst"), "app-"));
        assert!(!is_own_data_file(
            &format!("app-{stamp}.dump.zst.tmp"),
            "app-"
        ));
        assert!(!is_own_data_file(
            "app-20260101T000000.000Z-ABCD.dump.zst",
            "app-"
        ));
    }
}
