//! Migrations at start-up, over a direct connection to PostgreSQL, serialised across
//! replicas by a session-level advisory lock, and safe for live traffic.
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
//!   Waiting for it names the holder. Prisma folders also take Prisma's own key.
//! - Sources: a folder in one of four formats, detected unless given (refinery
//!   `V1__name.sql`; drizzle-kit 0.x with `meta/_journal.json`; drizzle 1.0
//!   `<stamp>_<name>/migration.sql`; Prisma with `migration_lock.toml`), each applied and
//!   recorded exactly as its own tool does ([`drizzle`], [`prisma`]); or the app's own
//!   command, run with `DATABASE_URL` set to the direct URL while the lock is held.
//! - Live traffic: every migration statement runs with `lock_timeout`
//!   (`--ddl-lock-timeout`), so an `ALTER TABLE` stuck behind a long transaction (a
//!   nightly pg_dump) gives up after a few seconds instead of queueing every reader of
//!   the table behind it for as long as the dump lasts. The migration is rolled back and
//!   retried with capped, jittered backoff until `--lock-timeout` runs out, and each
//!   retry logs who blocked it. A command gets the same through libpq's `PGOPTIONS`.
//!   Prisma scripts that a retry could not repeat safely (a lone
//!   `CREATE INDEX CONCURRENTLY`, which waits for older transactions by design; a
//!   script that commits part way) run without it ([`prisma::apply`]); refinery and
//!   drizzle run every statement in a transaction, as those tools do, and a statement
//!   that cannot run in one fails with what to do ([`db_error_text`]).
//! - Every check runs at every start, not only when something is pending: refinery's
//!   refusal of an applied migration that was edited or deleted, and the warnings
//!   about edited drizzle and Prisma files (see [`status`]).
//! - Protocol: no named prepared statement is ever used (tokio-postgres's `query` and
//!   `execute` make one per statement): values travel as parameters of the unnamed
//!   statement (`query_typed`), scripts as simple queries, so that `--allow-pooler`
//!   works through PgBouncer in transaction mode before 1.21, where a named statement
//!   lands on a server connection another client already used ("prepared statement
//!   \"s0\" already exists"). With `--allow-pooler` the lock is a transaction-level
//!   advisory lock held by an open transaction on a connection of its own: a pooler
//!   keeps a transaction on one server connection, where a session lock would stay
//!   behind on whatever server connection took it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};

pub use failure::{db_error_text, MigrateError, MigrateKind};
use failure::{db_fail, err};

use crate::config::{invalid, ConfigError};
use crate::pg::{classify, PgTarget};
use crate::privileges::Credentials;
use crate::process::ChildGroup;

/// The advisory lock key: "dockhand" in ASCII.
pub const LOCK_KEY: i64 = 0x646f_636b_6861_6e64;

/// The migration folder formats dockhand applies natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Refinery,
    /// drizzle-kit 0.x: `meta/_journal.json` and `TAG.sql` files.
    Drizzle,
    /// drizzle 1.0: `<YYYYMMDDHHMMSS>_<name>/migration.sql` folders.
    DrizzleV1,
    Prisma,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Refinery => "refinery",
            Format::Drizzle => "drizzle-kit 0.x",
            Format::DrizzleV1 => "drizzle 1.0",
            Format::Prisma => "Prisma",
        }
    }

    /// `--migrations-format`: `auto` (or nothing) detects; `drizzle` is either drizzle
    /// layout, told apart by the journal.
    pub fn parse(s: &str) -> Result<Option<Format>, ConfigError> {
        match s.trim() {
            "" | "auto" => Ok(None),
            "refinery" => Ok(Some(Format::Refinery)),
            "drizzle" => Ok(Some(Format::Drizzle)),
            "drizzle-v1" | "drizzle1" => Ok(Some(Format::DrizzleV1)),
            "prisma" => Ok(Some(Format::Prisma)),
            other => Err(invalid(format!(
                "--migrations-format {other:?}: use auto, refinery, drizzle or prisma"
            ))),
        }
    }
}

/// Where migrations come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder; its format detected when `None`.
    Folder {
        dir: PathBuf,
        format: Option<Format>,
    },
    /// The app's own tool; argv.
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    /// How long to wait for another replica's migration lock, and for a migration
    /// blocked by live traffic to get through (`--lock-timeout`).
    pub lock_timeout: Duration,
    /// `lock_timeout` for every migration statement (`--ddl-lock-timeout`; zero: off).
    pub ddl_lock_timeout: Duration,
    pub allow_pooler: bool,
    /// Credentials for `Source::Command`.
    pub user: Option<Credentials>,
    /// Where a running `Source::Command` is recorded, so a stop signal reaches it.
    pub running: ChildGroup,
    /// The check of pending statements against the live schema (`--migrate-lint`).
    pub lint: lint::Policy,
}

/// The migration URL: `DIRECT_URL`, else `DATABASE_URL` with a warning. Warns when both
/// are the same. `None` when neither is set.
pub fn direct_url() -> Result<Option<String>, ConfigError> {
    let direct = crate::config::var("DIRECT_URL")?;
    let database = crate::config::var("DATABASE_URL")?;
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

/// Says which format a folder is in, from what it holds; a folder that matches none,
/// or several, is an error naming what was found.
pub fn detect(dir: &Path) -> Result<Format, MigrateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        err(format!(
            "--migrations {}: {}",
            dir.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    let mut refinery_files = Vec::new();
    let mut stamped_folders = Vec::new();
    let mut other_sql = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Follows symlinks (a folder of linked migration folders), as loading does.
        let is_dir = e.path().is_dir();
        if is_dir && e.path().join("migration.sql").is_file() {
            stamped_folders.push(name);
        } else if !is_dir
            && (name.starts_with('V') || name.starts_with('U'))
            && name.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
        {
            refinery_files.push(name);
        } else if !is_dir && name.ends_with(".sql") {
            other_sql.push(name);
        }
    }
    let journal = dir.join("meta/_journal.json").is_file();
    let prisma = dir.join("migration_lock.toml").is_file();
    let mut found: Vec<(Format, String)> = Vec::new();
    if prisma {
        found.push((Format::Prisma, "migration_lock.toml".into()));
    }
    if journal {
        found.push((Format::Drizzle, "meta/_journal.json".into()));
    }
    if !prisma && !stamped_folders.is_empty() {
        found.push((
            Format::DrizzleV1,
            format!(
                "{} <stamp>_<name>/migration.sql folder(s)",
                stamped_folders.len()
            ),
        ));
    }
    if !refinery_files.is_empty() {
        found.push((
            Format::Refinery,
            format!("{} V<n>__<name>.sql file(s)", refinery_files.len()),
        ));
    }
    match found.as_slice() {
        [(f, _)] => Ok(*f),
        [] => Err(err(format!(
            "--migrations {}: no migrations format recognised (found {}): expected refinery V1__name.sql files, a drizzle-kit folder (meta/_journal.json), drizzle 1.0 folders (YYYYMMDDHHMMSS_name/migration.sql) or a Prisma folder (migration_lock.toml)",
            dir.display(),
            if other_sql.is_empty() && stamped_folders.is_empty() {
                "nothing of these".to_string()
            } else {
                format!("{} other .sql file(s)", other_sql.len())
            }
        ))),
        several => Err(err(format!(
            "--migrations {}: the folder mixes formats: {}; keep one tool's migrations per folder (or pass --migrations-format)",
            dir.display(),
            several
                .iter()
                .map(|(f, what)| format!("{} ({what})", f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The folder's format: as given (`drizzle` told apart by its journal), else detected.
pub fn resolve_format(dir: &Path, given: Option<Format>) -> Result<Format, MigrateError> {
    match given {
        Some(Format::Drizzle) | Some(Format::DrizzleV1) => {
            Ok(if dir.join("meta/_journal.json").is_file() {
                Format::Drizzle
            } else {
                Format::DrizzleV1
            })
        }
        Some(f) => Ok(f),
        None => {
            let f = detect(dir)?;
            info!("migrations: {} is a {} folder", dir.display(), f.name());
            Ok(f)
        }
    }
}

/// One migration's state, for `--migrate-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub applied: bool,
    /// A migration that started and failed (Prisma's P3009): what its row says.
    pub failed: Option<String>,
}

/// The applied and pending migrations of a folder. Takes no lock, changes nothing.
/// Runs each format's checks of what was applied, so they hold at every start (a run
/// with nothing pending stops after this): refinery's refusal of an applied migration
/// whose file was edited or deleted, the warnings about edited drizzle and Prisma files.
pub async fn status(
    client: &mut Client,
    dir: &Path,
    format: Format,
) -> Result<Vec<Status>, MigrateError> {
    let out: Vec<Status> = match format {
        Format::Refinery => {
            let migrations = load_refinery(dir)?;
            let applied = refinery_applied(client).await?;
            refinery_verify(&applied, &migrations)?;
            migrations
                .iter()
                .map(|m| Status {
                    name: m.to_string(),
                    applied: applied.iter().any(|a| a.version() == m.version()),
                    failed: None,
                })
                .collect()
        }
        Format::Drizzle | Format::DrizzleV1 => {
            let v1 = format == Format::DrizzleV1;
            let entries = if v1 {
                drizzle::load_v1(dir)?
            } else {
                drizzle::load(dir)?
            };
            let rows = drizzle::rows(client).await?;
            let pending: Vec<&drizzle::Entry> = if v1 {
                drizzle::pending_v1(&entries, &rows)?
            } else {
                drizzle::pending_v0(&entries, &rows)?
            };
            drizzle::warn_changed(&entries, &rows, v1);
            entries
                .iter()
                .map(|e| Status {
                    name: e.name.clone(),
                    applied: !pending.iter().any(|p| p.name == e.name),
                    failed: None,
                })
                .collect()
        }
        Format::Prisma => {
            let migrations = prisma::load(dir)?;
            let rows = prisma::rows(client).await?.unwrap_or_default();
            prisma::warn_changed(&migrations, &rows);
            // Only finished rows count here: an unfinished one is another replica's
            // migration in progress (or, seen under the lock, a failed one: apply
            // refuses it then, with P3009). Counting it as applied would let this
            // replica start its app before the schema is there. Nobody holding either
            // lock, it is a failed one.
            let running =
                !prisma::failed_rows(&rows).is_empty() && migration_lock_held(client).await?;
            migrations
                .iter()
                .map(|m| Status {
                    name: m.name.clone(),
                    applied: prisma::is_finished(&rows, &m.name),
                    failed: (!running)
                        .then(|| prisma::failure(&rows, &m.name))
                        .flatten(),
                })
                .collect()
        }
    };
    Ok(out)
}

/// Sets the session up as the folder's own tool would: Prisma migrates in the URL's
/// `schema` (default `public`, see [`prisma::use_schema`]); the others use the
/// session's search_path and ignore `schema`, as drizzle-kit and refinery do.
pub async fn prepare_session(
    client: &Client,
    target: &PgTarget,
    format: Format,
) -> Result<(), MigrateError> {
    match format {
        Format::Prisma => {
            let explicit = target.url_param("schema").is_some();
            prisma::use_schema(client, prisma::schema_of(target), explicit).await
        }
        _ => {
            if let Some(s) = target.url_param("schema") {
                tracing::debug!(
                    "ignoring schema={s:?} in the URL: it is Prisma's, and this is a {} folder",
                    format.name()
                );
            }
            Ok(())
        }
    }
}

/// True when a session holds dockhand's or Prisma's migration lock (a migration is
/// running now).
async fn migration_lock_held(client: &Client) -> Result<bool, MigrateError> {
    let keys = [LOCK_KEY, prisma::PRISMA_LOCK_KEY];
    Ok(client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = ANY($1))",
            &[(&keys.as_slice(), Type::INT8_ARRAY)],
        )
        .await
        .map_err(|e| err(format!("reading pg_locks: {}", classify(&e))))?
        .get(0))
}

/// Connects for `--migrate-status`: the same checks as a run, no lock.
pub async fn connect_for_status(target: &PgTarget) -> Result<Client, MigrateError> {
    target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))
}

/// Runs the migration phase.
pub async fn run(target: &PgTarget, direct_url: &str, opts: &Options) -> Result<(), MigrateError> {
    let started = Instant::now();
    if target.url_param("pgbouncer") == Some("true") {
        warn!("{} says pgbouncer=true (Prisma's PgBouncer mode): migrations need a connection to PostgreSQL itself; point DIRECT_URL there", target.url);
    }
    let client = target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?;
    if !opts.allow_pooler {
        refuse_pooler(target, &client).await?;
    }
    let mut client = client;
    let format = match &opts.source {
        Source::Folder { dir, format } => Some(resolve_format(dir, *format)?),
        Source::Command(_) => None,
    };
    if let Some(f) = format {
        prepare_session(&client, target, f).await?;
    }
    let states = match (&opts.source, format) {
        (Source::Folder { dir, .. }, Some(f)) => Some(status(&mut client, dir, f).await?),
        _ => None,
    };
    let pending = states
        .as_ref()
        .map(|s| s.iter().filter(|s| !s.applied).count());
    // drizzle 1.0 over a 0.x table: its upgrade is a write, made under the lock
    let upgrade = match (&opts.source, format) {
        (Source::Folder { .. }, Some(Format::DrizzleV1)) => drizzle::needs_upgrade(&client).await?,
        _ => false,
    };
    if pending == Some(0) && !upgrade {
        info!(
            "migrations: nothing to apply ({})",
            crate::duration::format(started.elapsed())
        );
        return Ok(());
    }
    lint_pending(&client, opts, format, states.as_deref()).await?;
    let mut keys = vec![LOCK_KEY];
    if format == Some(Format::Prisma) {
        keys.push(prisma::PRISMA_LOCK_KEY);
    }
    // Through a pooler the lock is held by an open transaction of its own connection
    // (see the module doc); directly, by this session.
    let lock_client = if opts.allow_pooler {
        Some(
            target
                .connect()
                .await
                .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))?,
        )
    } else {
        None
    };
    let holder = lock_client.as_ref().unwrap_or(&client);
    lock(holder, &keys, opts.lock_timeout, lock_client.is_some()).await?;
    let result = apply_with_retries(&mut client, target, direct_url, opts, format, started).await;
    match &lock_client {
        Some(c) => {
            let _ = c.batch_execute("COMMIT").await;
        }
        None => {
            for key in keys.iter().rev() {
                let _ = client
                    .query_typed("SELECT pg_advisory_unlock($1)", &[(key, Type::INT8)])
                    .await;
            }
        }
    }
    result?;
    info!(
        "migrations done in {}",
        crate::duration::format(started.elapsed())
    );
    Ok(())
}

/// Checks the pending statements against the live schema before anything is locked
/// or applied (see [`lint`]); a command's SQL cannot be seen.
async fn lint_pending(
    client: &Client,
    opts: &Options,
    format: Option<Format>,
    states: Option<&[Status]>,
) -> Result<(), MigrateError> {
    if opts.lint.mode == lint::Mode::Off {
        return Ok(());
    }
    let (Source::Folder { dir, .. }, Some(format), Some(states)) = (&opts.source, format, states)
    else {
        info!("migration lint: --migrate-cmd runs SQL dockhand cannot see, so its statements are not checked (--migrate-lint applies to --migrations folders)");
        return Ok(());
    };
    let ctx = lint_context(format, opts.ddl_lock_timeout, opts.allow_pooler, &opts.lint);
    let findings = lint::findings(client, &pending_scripts(dir, format, states)?, &ctx).await?;
    lint::enforce(&findings, &opts.lint)
}

/// How the statements of `format` will run, for the lint: whether dockhand sets
/// `lock_timeout` for them (not with `--ddl-lock-timeout 0`, nor for Prisma through a
/// pooler; see [`apply_with_retries`]).
pub fn lint_context(
    format: Format,
    ddl_lock_timeout: Duration,
    allow_pooler: bool,
    policy: &lint::Policy,
) -> lint::Context {
    lint::Context {
        alone_runs_outside: format == Format::Prisma,
        lock_timeout_set: !(ddl_lock_timeout.is_zero() || allow_pooler && format == Format::Prisma),
        min_size: policy.min_size,
    }
}

/// The SQL of the pending migrations, read by the format's own loader; `states` is
/// what [`status`] found.
pub fn pending_scripts(
    dir: &Path,
    format: Format,
    states: &[Status],
) -> Result<Vec<lint::Script>, MigrateError> {
    let pending: std::collections::HashSet<&str> = states
        .iter()
        .filter(|s| !s.applied)
        .map(|s| s.name.as_str())
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match format {
        Format::Refinery => load_refinery(dir)?
            .into_iter()
            .filter(|m| pending.contains(m.to_string().as_str()))
            .map(|m| lint::Script {
                file: format!("{}{}__{}.sql", m.prefix(), m.version(), m.name()),
                sql: m.sql().unwrap_or_default().to_string(),
            })
            .collect(),
        Format::Drizzle | Format::DrizzleV1 => {
            let v1 = format == Format::DrizzleV1;
            let entries = if v1 {
                drizzle::load_v1(dir)?
            } else {
                drizzle::load(dir)?
            };
            entries
                .into_iter()
                .filter(|e| pending.contains(e.name.as_str()))
                .map(|e| lint::Script {
                    file: if v1 {
                        format!("{}/migration.sql", e.name)
                    } else {
                        format!("{}.sql", e.name)
                    },
                    sql: e.sql,
                })
                .collect()
        }
        Format::Prisma => prisma::load(dir)?
            .into_iter()
            .filter(|m| pending.contains(m.name.as_str()))
            .map(|m| lint::Script {
                file: format!("{}/migration.sql", m.name),
                sql: m.script,
            })
            .collect(),
    })
}

/// Takes the advisory locks `keys` in order, polling until `timeout`. `in_transaction`:
/// as transaction-level locks in a transaction left open on `client` (each attempt that
/// fails rolls back, so a waiting replica does not keep a pooled server connection).
async fn lock(
    client: &Client,
    keys: &[i64],
    timeout: Duration,
    in_transaction: bool,
) -> Result<(), MigrateError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut next_log = started;
    let mut held = 0;
    loop {
        let attempt = if in_transaction {
            try_lock_in_transaction(client, keys).await
        } else {
            try_lock(client, keys[held]).await
        };
        let got =
            attempt.map_err(|e| err(format!("taking the migration lock: {}", classify(&e))))?;
        if got {
            held = if in_transaction { keys.len() } else { held + 1 };
            if held == keys.len() {
                return Ok(());
            }
            continue;
        }
        let timed_out = started.elapsed() >= timeout;
        if timed_out || Instant::now() >= next_log {
            // whose lock we wait for: the first key someone else holds
            let mut key = keys[held];
            let mut who = String::new();
            for k in &keys[held..] {
                who = lock_holder(client, *k).await;
                if !who.is_empty() {
                    key = *k;
                    break;
                }
            }
            if timed_out {
                return Err(err(format!(
                    "another replica held the migration lock for longer than --lock-timeout {}{who}",
                    crate::duration::format(timeout),
                )));
            }
            let whom = if key == LOCK_KEY {
                "another replica to finish migrating"
            } else {
                "another `prisma migrate` to finish (Prisma's lock)"
            };
            info!("waiting for {whom}{who}");
            next_log = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn try_lock(client: &Client, key: i64) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_typed_one("SELECT pg_try_advisory_lock($1)", &[(&key, Type::INT8)])
        .await?
        .get(0))
}

/// Every key or none, in a transaction left open when they are all taken.
async fn try_lock_in_transaction(
    client: &Client,
    keys: &[i64],
) -> Result<bool, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let got: bool = client
        .query_typed_one(
            "SELECT bool_and(pg_try_advisory_xact_lock(k)) FROM unnest($1::int8[]) AS k",
            &[(&keys.to_vec(), Type::INT8_ARRAY)],
        )
        .await?
        .get(0);
    if !got {
        client.batch_execute("ROLLBACK").await?;
    }
    Ok(got)
}

/// Who holds an advisory lock: pid, application, address, connected since.
async fn lock_holder(client: &Client, key: i64) -> String {
    let row = client
        .query_typed(
            "SELECT l.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), coalesce(to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), '?') \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid LIMIT 1",
            &[(&key, Type::INT8)],
        )
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next());
    match row {
        Some(r) => {
            let app: String = r.get(1);
            format!(
                " (held by backend {}{}, from {}, connected since {} UTC)",
                r.get::<_, i32>(0),
                if app.is_empty() {
                    String::new()
                } else {
                    format!(" \"{app}\"")
                },
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            )
        }
        None => String::new(),
    }
}

/// Applies with `lock_timeout` set; a migration that timed out waiting for a lock is
/// rolled back and retried with capped, jittered backoff until `--lock-timeout` (from
/// the start of the phase) runs out, each retry naming what blocked it.
async fn apply_with_retries(
    client: &mut Client,
    target: &PgTarget,
    direct_url: &str,
    opts: &Options,
    format: Option<Format>,
    started: Instant,
) -> Result<(), MigrateError> {
    let ddl = opts.ddl_lock_timeout;
    if opts.allow_pooler && !ddl.is_zero() && format == Some(Format::Prisma) {
        warn!("--allow-pooler: --ddl-lock-timeout is not applied to Prisma migrations (they run outside a transaction, and a SET through a transaction pooler would stay on a pooled connection the app uses next)");
    }
    // Through a pooler a session SET would land on whichever server connection runs it
    // and stay there for the app's queries: refinery and drizzle set it per transaction
    // instead (see `local_lock_timeout`).
    if !ddl.is_zero() && format.is_some() && !opts.allow_pooler {
        client
            .batch_execute(&format!("SET lock_timeout = '{}ms'", ddl.as_millis()))
            .await
            .map_err(|e| err(format!("setting lock_timeout: {}", classify(&e))))?;
    }
    // A second connection watches who blocks us while a statement waits.
    let watcher = if ddl.is_zero() || format.is_none() {
        None
    } else {
        target.connect().await.ok()
    };
    let our_pid: i32 = match &watcher {
        Some(_) => client
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0),
        None => 0,
    };
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let blockers = std::cell::RefCell::new(String::new());
        let attempt_result = {
            let work = apply(client, direct_url, opts, format);
            let watch = watch_blockers(watcher.as_ref(), our_pid, &blockers);
            tokio::pin!(work);
            tokio::pin!(watch);
            tokio::select! {
                r = &mut work => r,
                _ = &mut watch => unreachable_pending().await,
            }
        };
        match attempt_result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() != MigrateKind::LockTimeout => return Err(e),
            Err(e) => {
                let what = e.message();
                let who = blockers.borrow().clone();
                let who = if who.is_empty() {
                    "a session that has finished since".to_string()
                } else {
                    who
                };
                if started.elapsed() + delay >= opts.lock_timeout {
                    return Err(err(format!(
                        "{what}: still blocked by {who} after --lock-timeout {} ({attempt} attempts, each waiting at most --ddl-lock-timeout {})",
                        crate::duration::format(opts.lock_timeout),
                        crate::duration::format(ddl)
                    )));
                }
                warn!(
                    "migration attempt {attempt} gave up waiting {} for a lock, so the app's queries were not held up; blocked by {who}; retrying in {}",
                    crate::duration::format(ddl),
                    crate::duration::format(delay)
                );
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

async fn unreachable_pending() -> Result<(), MigrateError> {
    std::future::pending().await
}

/// ±25 %, from the clock (no randomness crate).
fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.75 + f64::from(n % 1000) / 2000.0)
}

/// Polls, every 250 ms, which sessions block `pid`, and keeps the latest answer as one
/// line ([`crate::pg::Blocker::describe`], string literals masked, passwords
/// redacted). Never completes.
async fn watch_blockers(watcher: Option<&Client>, pid: i32, out: &std::cell::RefCell<String>) {
    let Some(c) = watcher.filter(|_| pid > 0) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(found) = crate::pg::blockers(c, pid).await else {
            continue;
        };
        if found.is_empty() {
            continue;
        }
        let text = found
            .iter()
            .map(|b| b.describe(mask_literals))
            .collect::<Vec<_>>()
            .join("; ");
        *out.borrow_mut() = crate::redact::text(&text);
    }
}

/// A query with its string literals masked: they may hold secrets.
fn mask_literals(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut in_lit = false;
    for c in q.chars() {
        if c == '\'' {
            in_lit = !in_lit;
            out.push(c);
            if in_lit {
                out.push_str("...");
            }
        } else if !in_lit {
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    out
}

/// With `--allow-pooler`, the `SET LOCAL lock_timeout` that starts each migration
/// transaction (`--ddl-lock-timeout`), in place of the session's setting.
fn local_lock_timeout(opts: &Options) -> Option<String> {
    let ddl = opts.ddl_lock_timeout;
    (opts.allow_pooler && !ddl.is_zero())
        .then(|| format!("SET LOCAL lock_timeout = '{}ms'", ddl.as_millis()))
}

/// One attempt at applying.
async fn apply(
    client: &mut Client,
    direct_url: &str,
    opts: &Options,
    format: Option<Format>,
) -> Result<(), MigrateError> {
    let applied = match (&opts.source, format) {
        (Source::Command(argv), _) => {
            run_command(
                argv,
                direct_url,
                opts.user.as_ref(),
                opts.ddl_lock_timeout,
                &opts.running,
            )
            .await?;
            return Ok(());
        }
        (Source::Folder { dir, .. }, Some(Format::Refinery)) => {
            let migrations = load_refinery(dir)?;
            let report = refinery::Runner::new(&migrations)
                .set_abort_divergent(true)
                .set_abort_missing(true)
                .run_async(&mut Unnamed {
                    client,
                    first: local_lock_timeout(opts),
                })
                .await
                .map_err(|e| refinery_error(&e, &migrations))?;
            report
                .applied_migrations()
                .iter()
                .map(|m| m.to_string())
                .collect()
        }
        (Source::Folder { dir, .. }, Some(Format::Drizzle)) => {
            drizzle::apply(client, dir, false, local_lock_timeout(opts).as_deref()).await?
        }
        (Source::Folder { dir, .. }, Some(Format::DrizzleV1)) => {
            drizzle::apply(client, dir, true, local_lock_timeout(opts).as_deref()).await?
        }
        (Source::Folder { dir, .. }, Some(Format::Prisma)) => {
            prisma::apply(client, dir, &prisma::schema_in(direct_url)).await?
        }
        (Source::Folder { .. }, None) => return Err(err("internal error: no format")),
    };
    for m in applied {
        info!("applied migration {m}");
    }
    Ok(())
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
        .query_typed_one(
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
        .get_applied_migrations_async(&mut Unnamed {
            client,
            first: None,
        })
        .await
        .map_err(|e| err(format!("reading refinery_schema_history: {e}")))
}

/// refinery's own checks of the history against the files (`abort_divergent` and
/// `abort_missing`, both on, as refinery's runner has them), which refinery makes at
/// every run: an applied migration whose file is gone or differs (its name or its
/// checksum of name, version and SQL: an edit, a comment, git's CRLF), and a versioned
/// file below the newest applied version that was never applied.
fn refinery_verify(
    applied: &[refinery::Migration],
    files: &[refinery::Migration],
) -> Result<(), MigrateError> {
    for app in applied {
        match files.iter().find(|m| m.version() == app.version()) {
            None => {
                return Err(err(format!(
                    "refinery: applied migration {app} is missing from the filesystem (refinery refuses to go on): restore its file, or deploy the code that has it"
                )))
            }
            Some(file) if file != app => {
                return Err(err(format!(
                    "refinery: applied migration {app} is different than the file {file} (edited after it was applied? a changed comment or line endings count; refinery refuses to go on): restore the file as it was applied, and put the change in a new migration"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(current) = applied.iter().map(|a| a.version()).max() {
        let missed: Vec<String> = files
            .iter()
            .filter(|m| {
                m.prefix().to_string() == "V"
                    && m.version() <= current
                    && !applied.iter().any(|a| a.version() == m.version())
            })
            .map(|m| m.to_string())
            .collect();
        if !missed.is_empty() {
            return Err(err(format!(
                "refinery: {} not applied but below the newest applied version {current} (refinery refuses to go on): give it a version above {current}, or as U<n>__<name>.sql an unversioned migration",
                missed.join(", ")
            )));
        }
    }
    Ok(())
}

/// A client that refinery drives through its own runner, reading the history with the
/// unnamed statement instead of refinery's `query` (a named prepared statement): see
/// the module doc. Each migration runs in its own transaction, as refinery's
/// tokio-postgres driver does, starting with `first` when given (`SET LOCAL ...`).
struct Unnamed<'a> {
    client: &'a mut Client,
    first: Option<String>,
}

impl refinery_core::traits::r#async::AsyncTransaction for Unnamed<'_> {
    type Error = tokio_postgres::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let tx = self.client.transaction().await?;
        if let Some(first) = &self.first {
            tx.batch_execute(first).await?;
        }
        let mut count = 0;
        for query in queries {
            tx.batch_execute(query).await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }
}

impl refinery_core::traits::r#async::AsyncQuery<Vec<refinery::Migration>> for Unnamed<'_> {
    async fn query<'a>(
        &'a mut self,
        query: &'a str,
    ) -> Result<Vec<refinery::Migration>, Self::Error> {
        let tx = self.client.transaction().await?;
        let rows = tx.query_typed(query, &[]).await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            // refinery writes both as text: RFC 3339 and a u64 (a bad one is not its row)
            let applied_on: String = row.get(2);
            let checksum: String = row.get(3);
            let applied_on = time::OffsetDateTime::parse(
                &applied_on,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            out.push(refinery::Migration::applied(
                row.get(0),
                row.get(1),
                applied_on,
                checksum.parse().unwrap_or_default(),
            ));
        }
        Ok(out)
    }
}

impl refinery::AsyncMigrate for Unnamed<'_> {}

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
                Some(pg) => db_fail(
                    pg,
                    &format!("migration {name} failed: {}", db_error_text(pg, sql, 0)),
                ),
                None => err(format!("{msg}: {source}")),
            }
        }
        other => err(format!("migrations: {other}")),
    }
}

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

async fn run_command(
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

pub mod drizzle;
pub mod failure;
pub mod lint;
pub mod prisma;
pub mod script;
pub mod sql;

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
