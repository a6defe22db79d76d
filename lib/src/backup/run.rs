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

use super::archive::{self, Destinations, Dump, Outcome};
use super::catalog::{self, Backup, Reading, Side};
use super::manifest::{self, Manifest};
use super::retention::{self, Decision, Item};
use super::s3::Object;
use super::s3::S3;
use super::settings::{Databases, Settings};
use super::status::{self, RunMetrics};
use super::walname::{segment, segment_of_lsn, stored_file};
use super::{dump, err, BackupError, Cancel, Failures};
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
    pub failures: Failures<Failure>,
}

impl RunResult {
    fn fail(&mut self, failure: Failure) {
        self.failures.push(failure);
    }

    /// Records a dump of `what` that made a backup: the backup, and each destination
    /// that failed it (the other copies are kept).
    fn record(&mut self, what: &str, made: Outcome) {
        for error in &made.errors {
            self.fail(Failure::Copy {
                what: what.to_string(),
                kept: made.places(),
                error: error.clone(),
            });
        }
        self.made.push(made);
    }

    /// Whether nothing failed.
    pub fn succeeded(&self) -> bool {
        self.failures.is_empty()
    }

    /// The bytes stored by the backups made.
    fn bytes(&self) -> u64 {
        self.made.iter().map(|o| o.manifest.size).sum()
    }
}

/// One failure of a run, with the error it failed with (kind and cause kept); shown
/// as the run's messages and status file have always shown it.
#[derive(Debug, Clone)]
pub enum Failure {
    /// What stopped the run before or between its dumps: no database, a server that
    /// cannot be reached or is behind a pooler, no pg_dump for its version, a stop.
    Run(BackupError),
    /// A dump of `what` (`database "app"`, `the globals`) that made no backup.
    Dump { what: String, error: BackupError },
    /// One destination of a dump of `what` failed; the copies in `kept` were made.
    Copy {
        what: String,
        kept: String,
        error: BackupError,
    },
    /// A backup made that did not verify.
    Verify(BackupError),
    /// Retention could not be applied.
    Retention(BackupError),
    /// The status file could not be written.
    StatusFile(BackupError),
}

impl Failure {
    /// The error behind it.
    pub fn error(&self) -> &BackupError {
        match self {
            Failure::Run(e)
            | Failure::Dump { error: e, .. }
            | Failure::Copy { error: e, .. }
            | Failure::Verify(e)
            | Failure::Retention(e)
            | Failure::StatusFile(e) => e,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Failure::Run(e) => e.to_string(),
            Failure::Dump { what, error } => format!("{what}: {error}"),
            Failure::Copy { what, kept, error } => {
                format!("{what}: {error} (the copy in {kept} is kept)")
            }
            Failure::Verify(e) => format!("verify: {e}"),
            Failure::Retention(e) => format!("retention: {e}"),
            Failure::StatusFile(e) => return write!(f, "status file: {e}"),
        };
        f.write_str(&crate::redact::text(&text))
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error())
    }
}

/// Why a run or a base backup cannot start without a URL.
const NO_DATABASE: &str = "no database: set DIRECT_URL (or DATABASE_URL)";

/// What a run dumps with: the database's connection settings, its server, the client
/// tools of the server's major, and the databases to dump.
struct Plan<'a> {
    target: &'a PgTarget,
    server: dump::Server,
    tools: dump::Tools,
    databases: Vec<String>,
}

impl Runner {
    pub fn new(settings: Settings, cancel: Arc<Cancel>) -> Result<Runner, BackupError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start: {e}")).with_source(e))?;
        let s3 = match &settings.s3 {
            Some(s) => Some(rt.block_on(S3::connect(s))?),
            None => None,
        };
        let pool = match &settings.url {
            Some(url) => {
                let target = PgTarget::from_url(url)
                    .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
                let tls = target
                    .tls_config()
                    .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
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
                    .map_err(|e| err(format!("connection pool: {e}")).with_source(e))?;
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
            None => either_side(local(), remote()),
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
                    r.map_err(|e| err(format!("waiting for the database: {e}")).with_source(e))
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
        let success = result.succeeded();
        if let Some(path) = &self.settings.status_file {
            let written = if success {
                let made: Vec<Manifest> = result.made.iter().map(|o| o.manifest.clone()).collect();
                status::success(path, &made)
            } else {
                status::failure(path, &result.failures.join("; "))
            };
            if let Err(e) = written {
                result.fail(Failure::StatusFile(e));
            }
        }
        if let Some(path) = &self.settings.metrics_file {
            let m = RunMetrics {
                success,
                seconds: clock.elapsed().as_secs_f64(),
                bytes: result.bytes(),
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
            return Err(err(NO_DATABASE));
        };
        let server = self.rt.block_on(async {
            let client = pooled(pool, target).await?;
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
        let d = self.destinations();
        let lock = self.lock(target, &Dump::Base)?;
        if lock.folder.is_some() {
            self.remove_stale_partials(&Dump::Base);
        }
        let made = archive::backup(&d, target, &Dump::Base, &tools, &server.version);
        drop(lock);
        made.map_err(|e| e.context("base backup"))
    }

    /// Where this runner's dumps go.
    fn destinations(&self) -> Destinations<'_> {
        Destinations {
            settings: &self.settings,
            rt: self.rt.handle(),
            s3: self.s3.as_ref(),
            cancel: &self.cancel,
        }
    }

    /// The run itself: plan, clean up after killed runs, each dump under its locks,
    /// verification, retention (only after a run where nothing failed).
    fn run_inner(&self) -> RunResult {
        let mut r = RunResult::default();
        let plan = match self.plan() {
            Ok(p) => p,
            Err(e) => {
                r.fail(Failure::Run(e));
                return r;
            }
        };
        self.clean_up_remote(&plan.databases);
        let d = self.destinations();
        for kind in dumps(&plan.databases, self.settings.globals) {
            if let Err(e) = self.cancel.check() {
                r.fail(Failure::Run(e));
                break;
            }
            self.dump_one(&d, &plan, &kind, &mut r);
        }
        if self.settings.verify {
            self.verify_made(&plan.tools, &mut r);
        }
        if r.succeeded() && !self.settings.retention.is_empty() {
            if let Err(e) = self.prune(false) {
                r.fail(Failure::Retention(e));
            }
        }
        r
    }

    /// The server this run dumps, its tools, and the databases to dump.
    fn plan(&self) -> Result<Plan<'_>, BackupError> {
        let Some((target, pool)) = &self.pool else {
            return Err(err(NO_DATABASE));
        };
        let (server, databases) = self.rt.block_on(self.survey(target, pool))?;
        let tools = dump::find_tools(server.major)?;
        Ok(Plan {
            target,
            server,
            tools,
            databases,
        })
    }

    /// Checks that `target` reaches PostgreSQL itself, then reads the server's version
    /// and the databases to dump.
    async fn survey(
        &self,
        target: &PgTarget,
        pool: &Pool,
    ) -> Result<(dump::Server, Vec<String>), BackupError> {
        refuse_pooler(target).await?;
        let client = pooled(pool, target).await?;
        let server = dump::server_of(&client, target).await?;
        let databases = match &self.settings.databases {
            Databases::FromUrl => vec![target.dbname().to_string()],
            Databases::List(l) => l.clone(),
            Databases::All => {
                let url = &target.url;
                client
                    .query(
                        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                        &[],
                    )
                    .await
                    .map_err(|e| err(format!("{url}: {}", crate::pg::classify(&e))).with_source(e))?
                    .iter()
                    .map(|row| row.get(0))
                    .collect()
            }
        };
        Ok((server, databases))
    }

    /// One dump under its locks, recorded in `r`: the backup made, or why not.
    fn dump_one(&self, d: &Destinations, plan: &Plan, kind: &Dump, r: &mut RunResult) {
        let what = what(kind);
        let lock = match self.lock(plan.target, kind) {
            Ok(l) => l,
            Err(error) => return r.fail(Failure::Dump { what, error }),
        };
        if lock.folder.is_some() {
            self.remove_stale_partials(kind);
        }
        let made = archive::backup(d, plan.target, kind, &plan.tools, &plan.server.version);
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
                r.record(&what, o);
            }
            Err(error) => r.fail(Failure::Dump { what, error }),
        }
    }

    /// Verifies each backup the run made (checksum and a full read), from the local
    /// copy when there is one.
    fn verify_made(&self, tools: &dump::Tools, r: &mut RunResult) {
        let mut failed = Vec::new();
        for o in &r.made {
            let b = o.backup();
            let from = if b.local { Side::Local } else { Side::S3 };
            let reading = self.reading(&[]);
            match catalog::verify(&reading, &b, from, &tools.pg_restore, &self.cancel) {
                Ok(()) => info!("{}: verified (checksum and full read)", o.manifest.name),
                Err(e) => failed.push(Failure::Verify(e)),
            }
        }
        for f in failed {
            r.fail(f);
        }
    }

    /// Takes the locks one dump holds (see [`DumpLock`]); when another run holds one,
    /// says which run that is. A folder that cannot hold a lock file is left to the
    /// dump, which reports the folder's own error and still makes the S3 copy.
    fn lock(&self, target: &PgTarget, kind: &Dump) -> Result<DumpLock, BackupError> {
        let session = match kind {
            Dump::Database(db) => Some(self.rt.block_on(lock_database(target, db))?),
            // The globals are read, never locked, in PostgreSQL: only their files need it.
            Dump::Globals | Dump::Base | Dump::Wal(_) => None,
        };
        let folder = match &self.settings.dir {
            Some(dir) => lock_folder(dir, &file_stem(kind))?,
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
        let prefix = format!("{}-", file_stem(kind));
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
        let prefixes = own_prefixes(databases);
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
        let stale = |times: &[i64]| stale(now, times);
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
        for o in orphans(&objects, ours, now) {
            s3.delete(&o.file).await?;
            warn!(
                "deleted {}: data without a manifest, left by an interrupted run",
                o.file
            );
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

/// How a dump is named in messages: `database "app"`, `the globals`.
fn what(kind: &Dump) -> String {
    match kind {
        Dump::Database(db) => format!("database {db:?}"),
        Dump::Globals => "the globals".to_string(),
        Dump::Base => "the base backup".to_string(),
        Dump::Wal(p) => format!("WAL {}", p.display()),
    }
}

/// The dumps of a run: each database, then the globals when asked.
fn dumps(databases: &[String], globals: bool) -> Vec<Dump> {
    let mut kinds: Vec<Dump> = databases.iter().cloned().map(Dump::Database).collect();
    if globals {
        kinds.push(Dump::Globals);
    }
    kinds
}

/// What the files of `kind` are named after in the folder: the lock `.STEM.lock`, the
/// data files `STEM-STAMP...`.
fn file_stem(kind: &Dump) -> String {
    match kind {
        Dump::Database(db) => manifest::file_safe(db),
        Dump::Globals => "_globals".to_string(),
        Dump::Base => "_base".to_string(),
        Dump::Wal(_) => "_wal".to_string(),
    }
}

/// The name prefixes of the files a run of `databases` owns in S3: theirs, the
/// globals' and the base backups'.
fn own_prefixes(databases: &[String]) -> Vec<String> {
    databases
        .iter()
        .map(|d| Dump::Database(d.clone()))
        .chain([Dump::Globals, Dump::Base])
        .map(|k| format!("{}-", file_stem(&k)))
        .collect()
}

/// Whether the newest of `times` (unix seconds, the last signs of life of something
/// in S3) is more than [`STALE_AFTER`] before `now`.
fn stale(now: i64, times: &[i64]) -> bool {
    now - times.iter().copied().max().unwrap_or(now) > STALE_AFTER
}

/// The objects that are a killed run's data: own files (`ours` gives the time in an
/// own file's name) without a manifest, stale by their name and their date. An
/// object whose date the server did not give is never one.
fn orphans<'o>(
    objects: &'o [Object],
    ours: &dyn Fn(&str) -> Option<i64>,
    now: i64,
) -> Vec<&'o Object> {
    let manifests: std::collections::HashSet<&str> = objects
        .iter()
        .filter_map(|o| o.file.strip_suffix(".manifest.json"))
        .collect();
    objects
        .iter()
        .filter(|o| {
            let Some(named) = ours(&o.file) else {
                return false;
            };
            !manifests
                .iter()
                .any(|m| o.file.starts_with(&format!("{m}.")))
                && o.modified > 0
                && stale(now, &[named, o.modified])
        })
        .collect()
}

/// The backups of both sides, read without `--from`: one side that cannot be listed
/// is a warning as long as the other answers.
fn either_side(
    local: Result<Vec<Manifest>, BackupError>,
    remote: Result<Vec<Manifest>, BackupError>,
) -> Result<Vec<Backup>, BackupError> {
    match (local, remote) {
        (Ok(l), Ok(r)) => Ok(catalog::merge(l, r)),
        (Ok(l), Err(e)) => {
            tracing::warn!("S3 cannot be listed ({e}): using the local copies");
            Ok(catalog::merge(l, Vec::new()))
        }
        (Err(e), Ok(r)) => {
            tracing::warn!("the folder cannot be listed ({e}): using the S3 copies");
            Ok(catalog::merge(Vec::new(), r))
        }
        (Err(a), Err(b)) => Err(err(format!("{a}; {b}")).with_source(a)),
    }
}

/// A pooled connection to `target`, or why there is none.
async fn pooled(pool: &Pool, target: &PgTarget) -> Result<deadpool_postgres::Object, BackupError> {
    let url = &target.url;
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => {
            err(format!("{url}: {}", crate::pg::classify(&e))).with_source(e)
        }
        other => err(format!("{url}: {other}")).with_source(other),
    })
}

/// Refuses a `target` that goes through a transaction pooler: behind PgBouncer in
/// transaction mode neither the locks nor pg_dump work.
async fn refuse_pooler(target: &PgTarget) -> Result<(), BackupError> {
    let url = &target.url;
    let session = target
        .connect()
        .await
        .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
    let shared = crate::pg::shared_backend(target, &session)
        .await
        .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
    match shared {
        Some(pid) => Err(err(format!(
            "{url} goes through a transaction pooler (PgBouncer?): two connections shared backend {pid}, and pg_dump needs a session of its own. Set DIRECT_URL to PostgreSQL itself"
        ))),
        None => Ok(()),
    }
}

/// The session holding [`RUN_LOCK`], as the message of a run that finds it held
/// names it: its pid, and its application, address and start when known.
fn holder(pid: i32, app: Option<String>, from: Option<String>, since: Option<i64>) -> String {
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

/// The error of a run that finds the folder lock `path` held; `who` is what its
/// holder wrote in it.
fn folder_busy(dir: &std::path::Path, path: &std::path::Path, who: &str) -> BackupError {
    let who = who.trim();
    let who = if who.is_empty() {
        String::new()
    } else {
        format!("{who}; ")
    };
    err(format!(
        "another backup is writing these files in {} ({who}it holds {}): this one is skipped",
        dir.display(),
        path.display()
    ))
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
        .map_err(|e| err(format!("{url}: {}", crate::pg::classify(&e))).with_source(e))?
        .get(0);
    if got {
        return Ok(session);
    }
    let holder = match session.query_opt(HOLDER, &[&RUN_LOCK]).await {
        Ok(Some(row)) => holder(row.get(0), row.get(1), row.get(2), row.get(3)),
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
                return Err(folder_busy(dir, &path, &who));
            }
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::archive::{Dump, Outcome, Stored};
    use super::manifest::{is_own_data_file, Content, Manifest, WalRange};
    use super::*;
    use crate::backup::Failures;

    fn manifest(name: &str, kind: Content, size: u64) -> Manifest {
        Manifest::from_json(&format!(
            r#"{{"format":1,"name":"{name}","file":"{name}.{}.zst","kind":"{}","database":"","started":1,"finished":2,"dump_bytes":1,"size":{size},"sha256":"x"}}"#,
            kind.ext(),
            kind.name()
        ))
        .unwrap()
    }

    fn outcome(name: &str, size: u64, stored: Vec<Stored>, errors: &[&str]) -> Outcome {
        let mut failed = Failures::default();
        for e in errors {
            failed.push(err(*e));
        }
        Outcome {
            manifest: manifest(name, Content::Database, size),
            stored,
            errors: failed,
        }
    }

    #[test]
    fn a_run_records_its_backups_and_each_destination_that_failed_one() {
        let mut r = RunResult::default();
        assert!(r.succeeded());
        r.record(
            "database \"app\"",
            outcome(
                "app-1",
                100,
                vec![Stored::Local("/b/app-1.dump.zst".into())],
                &[],
            ),
        );
        assert!(r.succeeded());
        r.record(
            "database \"shop\"",
            outcome(
                "shop-1",
                50,
                vec![Stored::Local("/b/shop-1.dump.zst".into())],
                &["s3://bk/shop-1.dump.zst: HTTP 503 SlowDown"],
            ),
        );
        assert!(!r.succeeded());
        assert_eq!(r.made.len(), 2, "a backup with one copy is still made");
        assert_eq!(r.bytes(), 150);
        assert_eq!(
            r.failures.join("; "),
            "database \"shop\": s3://bk/shop-1.dump.zst: HTTP 503 SlowDown (the copy in /b/shop-1.dump.zst is kept)"
        );
        let f = r.failures.iter().next().unwrap();
        assert!(matches!(f, Failure::Copy { .. }));
        assert_eq!(f.error().kind(), crate::backup::BackupKind::Failed);
    }

    #[test]
    fn each_failure_reads_as_the_status_file_has_always_said_it() {
        let e = || err("boom");
        let all = [
            (Failure::Run(e()), "boom"),
            (
                Failure::Dump {
                    what: "the globals".into(),
                    error: e(),
                },
                "the globals: boom",
            ),
            (Failure::Verify(e()), "verify: boom"),
            (Failure::Retention(e()), "retention: boom"),
            (Failure::StatusFile(e()), "status file: boom"),
        ];
        let mut failures = Failures::default();
        for (f, says) in all {
            assert_eq!(f.to_string(), says);
            failures.push(f);
        }
        assert_eq!(
            failures.join("; "),
            "boom; the globals: boom; verify: boom; retention: boom; status file: boom"
        );
        // the error behind each is its cause, kind kept
        let stopped = Failure::Run(crate::backup::cancelled("cancelled: SIGTERM"));
        let source = std::error::Error::source(&stopped).unwrap();
        assert_eq!(source.to_string(), "cancelled: SIGTERM");
        assert_eq!(stopped.error().kind(), crate::backup::BackupKind::Cancelled);
        // a password in what a dump is named never reaches the status file
        let f = Failure::Dump {
            what: "database \"postgres://u:secret@h/x\"".into(),
            error: e(),
        };
        assert!(!f.to_string().contains("secret"), "{f}");
    }

    #[test]
    fn a_dump_is_named_and_its_files_stemmed_by_its_kind() {
        let db = Dump::Database("my app".into());
        assert_eq!(what(&db), "database \"my app\"");
        assert_eq!(what(&Dump::Globals), "the globals");
        assert_eq!(what(&Dump::Base), "the base backup");
        let wal = Dump::Wal(PathBuf::from("/spool/000000010000000000000003"));
        assert_eq!(what(&wal), "WAL /spool/000000010000000000000003");
        assert_eq!(file_stem(&db), manifest::file_safe("my app"));
        assert_eq!(file_stem(&Dump::Database("app".into())), "app");
        assert_eq!(file_stem(&Dump::Globals), "_globals");
        assert_eq!(file_stem(&Dump::Base), "_base");
        assert_eq!(file_stem(&wal), "_wal");
        assert_eq!(
            own_prefixes(&["app".into(), "a/b".into()]),
            [
                "app-".to_string(),
                format!("{}-", manifest::file_safe("a/b")),
                "_globals-".into(),
                "_base-".into()
            ]
        );
    }

    #[test]
    fn a_run_dumps_each_database_then_the_globals_when_asked() {
        let dbs = ["a".to_string(), "b".to_string()];
        assert_eq!(
            dumps(&dbs, true),
            [
                Dump::Database("a".into()),
                Dump::Database("b".into()),
                Dump::Globals
            ]
        );
        assert_eq!(dumps(&dbs[..1], false), [Dump::Database("a".into())]);
        assert_eq!(dumps(&[], true), [Dump::Globals]);
    }

    #[test]
    fn only_own_stale_data_without_a_manifest_is_an_orphan() {
        let now = 10 * STALE_AFTER;
        let old = now - STALE_AFTER - 1;
        let object = |file: &str, modified: i64| Object {
            file: file.into(),
            modified,
        };
        let objects = [
            // a complete backup: its manifest is there
            object("app-1.dump.zst", old),
            object("app-1.manifest.json", old),
            // a killed run's data
            object("app-2.dump.zst", old),
            // a run still writing, as far as anyone can tell
            object("app-3.dump.zst", now - 60),
            // no date from the server: never taken for dead
            object("app-4.dump.zst", 0),
            // another database's, or a foreign object
            object("shop-5.dump.zst", old),
        ];
        let ours = |f: &str| f.strip_prefix("app-").map(|_| old);
        let found: Vec<&str> = orphans(&objects, &ours, now)
            .iter()
            .map(|o| o.file.as_str())
            .collect();
        assert_eq!(found, ["app-2.dump.zst"]);
        // a name stamped recently is a live run's, however old the server says it is
        let recent = |f: &str| f.strip_prefix("app-").map(|_| now - 60);
        assert!(orphans(&objects, &recent, now).is_empty());
        assert!(stale(now, &[old]));
        assert!(
            !stale(now, &[old, now - STALE_AFTER]),
            "the newest sign counts"
        );
        assert!(!stale(now, &[]));
    }

    #[test]
    fn one_side_that_cannot_be_listed_leaves_the_other() {
        let m = |n: &str| manifest(n, Content::Database, 1);
        let both = either_side(Ok(vec![m("a")]), Ok(vec![m("a"), m("b")])).unwrap();
        assert_eq!(both.len(), 2);
        assert!(both[0].local && both[0].remote);
        let local = either_side(Ok(vec![m("a")]), Err(err("s3 down"))).unwrap();
        assert!(local[0].local && !local[0].remote);
        let remote = either_side(Err(err("no folder")), Ok(vec![m("b")])).unwrap();
        assert!(!remote[0].local && remote[0].remote);
        let e = either_side(Err(err("no folder")), Err(err("s3 down"))).unwrap_err();
        assert_eq!(e.message(), "no folder; s3 down");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_holder_of_a_lock_is_named_with_what_is_known_of_it() {
        assert_eq!(
            holder(42, None, None, None),
            "held by PostgreSQL session 42"
        );
        assert_eq!(
            holder(42, Some(String::new()), Some("10.0.0.5".into()), Some(0)),
            "held by PostgreSQL session 42 from 10.0.0.5, connected since 1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            holder(7, Some("dockhand-backup".into()), None, None),
            "held by PostgreSQL session 7 (\"dockhand-backup\")"
        );
        let dir = std::path::Path::new("/b");
        let path = dir.join(".app.lock");
        let e = folder_busy(dir, &path, "pid 9 on h1, since x\n");
        assert_eq!(
            e.message(),
            "another backup is writing these files in /b (pid 9 on h1, since x; it holds /b/.app.lock): this one is skipped"
        );
        let e = folder_busy(dir, &path, " \n");
        assert_eq!(
            e.message(),
            "another backup is writing these files in /b (it holds /b/.app.lock): this one is skipped"
        );
    }

    #[test]
    fn stored_wal_goes_once_older_than_the_oldest_base_backup_kept_needs() {
        let mut base = manifest("_base-1", Content::Base, 1);
        base.wal = Some(WalRange {
            timeline: 1,
            start: "0/5000028".into(),
            end: "0/5000100".into(),
        });
        let dump = manifest("app-1", Content::Database, 1);
        assert_eq!(
            wal_needed_from(&[&dump]),
            None,
            "no base backup: WAL is kept"
        );
        let (start, why) = wal_needed_from(&[&dump, &base]).unwrap();
        assert_eq!(start, 5);
        assert!(why.contains("_base-1"), "{why}");
        let seg = |name: &str| Backup {
            manifest: manifest(name, Content::Wal, 1),
            local: true,
            remote: false,
        };
        let wal = vec![
            seg("_wal-000000010000000000000004-20260101T000000.000Z-abcd"),
            seg("_wal-000000010000000000000005-20260101T000000.000Z-abcd"),
            seg("_wal-000000020000000000000003.partial-20260101T000000.000Z-abcd"),
            seg("_wal-00000002.history-20260101T000000.000Z-abcd"),
        ];
        let gone: Vec<String> = wal_to_delete(wal, start)
            .into_iter()
            .map(|b| b.manifest.name)
            .collect();
        assert_eq!(
            gone,
            [
                "_wal-000000010000000000000004-20260101T000000.000Z-abcd",
                "_wal-000000020000000000000003.partial-20260101T000000.000Z-abcd"
            ]
        );
    }

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
