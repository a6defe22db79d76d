//! One backup run, as the daemon and `backup now` do it: take the run lock, read the
//! server's version, pick pg_dump, dump every database (and the globals) to every
//! destination, verify when asked, apply retention, then record the outcome (status
//! file, metrics, pings). Also `prune`, and the [`Runner`] that holds what runs share:
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
use super::s3::S3;
use super::settings::{Databases, Settings};
use super::status::{self, RunMetrics};
use super::{dump, err, BackupError, Cancel};
use crate::pg::PgTarget;

/// Session advisory lock held for a whole run: two runs against the same database
/// (the daemon and a `backup now`, or two sidecars) never overlap.
pub const RUN_LOCK: i64 = 0x646b_6261_636b_7570; // "dkbackup"

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
        // The lock lives on its own connection, released when it is dropped.
        let prepared = self.rt.block_on(async {
            let lock = target
                .connect()
                .await
                .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
            // Behind PgBouncer in transaction mode neither the lock nor pg_dump works.
            if let Some(pid) = crate::pg::shared_backend(target, &lock)
                .await
                .map_err(|e| err(format!("{url}: {e}")))?
            {
                return Err(err(format!(
                    "{url} goes through a transaction pooler (PgBouncer?): two connections shared backend {pid}, and pg_dump needs a session of its own. Set DIRECT_URL to PostgreSQL itself"
                )));
            }
            let got: bool = lock
                .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
                .await
                .map_err(|e| err(format!("{url}: {}", crate::pg::classify(&e))))?
                .get(0);
            if !got {
                return Err(err(
                    "another backup of this database is running (its advisory lock is held): this run is skipped",
                ));
            }
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
            Ok::<_, BackupError>((lock, server, databases))
        });
        let (lock, server, databases) = match prepared {
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
        self.remove_stale_partials(&databases);
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
            };
            match archive::backup(&d, target, &kind, &tools, &server.version) {
                Ok(o) => {
                    info!(
                        "backup {} of {what}: {} dumped, {} stored in {}",
                        o.manifest.name,
                        catalog::human_size(o.manifest.dump_bytes),
                        catalog::human_size(o.manifest.size),
                        o.stored.join(" and ")
                    );
                    for e in &o.errors {
                        fail(
                            &mut r,
                            format!(
                                "{what}: {e} (the copy in {} is kept)",
                                o.stored.join(" and ")
                            ),
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
                    local: o.stored.iter().any(|s| !s.starts_with("s3://")),
                    remote: o.stored.iter().any(|s| s.starts_with("s3://")),
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
        drop(lock);
        r
    }

    /// Removes `.NAME.partial` files a killed run left for these databases.
    fn remove_stale_partials(&self, databases: &[String]) {
        let Some(dir) = &self.settings.dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefixes: Vec<String> = databases
            .iter()
            .map(|d| format!(".{}-", manifest::file_safe(d)))
            .chain(std::iter::once("._globals-".to_string()))
            .collect();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial")
                && prefixes.iter().any(|p| name.starts_with(p))
                && std::fs::remove_file(e.path()).is_ok()
            {
                warn!("removed {name}, left by an interrupted run");
            }
        }
    }

    /// Removes from S3 what a killed run of these databases left under the prefix, and
    /// nothing else: incomplete multipart uploads of its own file names (the run lock is
    /// held, so no other run of these databases is uploading), and its own data objects
    /// that have no manifest and are older than an hour. Foreign objects, other
    /// databases' files and complete backups are never touched. Failures only warn.
    fn clean_up_remote(&self, databases: &[String]) {
        let Some(s3) = &self.s3 else {
            return;
        };
        let prefixes: Vec<String> = databases
            .iter()
            .map(|d| format!("{}-", manifest::file_safe(d)))
            .chain(std::iter::once("_globals-".to_string()))
            .collect();
        let ours = |f: &str| prefixes.iter().any(|p| manifest::is_own_data_file(f, p));
        let now = super::unix_now();
        let cancel = self.cancel.clone();
        let cleaned = self.rt.block_on(async {
            tokio::select! {
                r = self.clean_up(s3, &ours, now) => r,
                _ = cancel.cancelled() => Err(err("cancelled")),
            }
        });
        if let Err(e) = cleaned {
            warn!("cleaning up after interrupted runs in S3: {e}");
        }
    }

    async fn clean_up(
        &self,
        s3: &S3,
        ours: &dyn Fn(&str) -> bool,
        now: i64,
    ) -> Result<(), BackupError> {
        const SAFE_AGE: i64 = 3600;
        {
            for (file, id, _) in s3.incomplete_uploads().await? {
                if ours(&file) {
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
                let orphan = ours(&o.file)
                    && !manifests
                        .iter()
                        .any(|m| o.file.starts_with(&format!("{m}.")))
                    && o.modified > 0
                    && now - o.modified > SAFE_AGE;
                if orphan {
                    s3.delete(&o.file).await?;
                    warn!(
                        "deleted {}: data without a manifest, left by an interrupted run",
                        o.file
                    );
                }
            }
        }
        Ok(())
    }

    /// Applies the retention policy (or, with `dry_run`, only decides); returns each
    /// backup's decision and where it was.
    pub fn prune(&self, dry_run: bool) -> Result<Vec<(Decision, Backup)>, BackupError> {
        let backups = self.backups(true)?;
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
        Ok(out)
    }

    /// Deletes a backup: its manifest first (from then on it does not exist), then
    /// its data.
    fn delete(&self, b: &Backup) -> Result<(), BackupError> {
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
