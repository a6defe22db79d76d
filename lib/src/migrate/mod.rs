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

pub use command::split_command;
pub use connection::{connect_for_status, direct_url, prepare_session, refuse_pooler};
pub use detect::{detect, resolve_format, Format};
pub use failure::{db_error_text, MigrateError, MigrateKind};
pub use lock::LOCK_KEY;
pub use refinery::misnamed_refinery_files;

use failure::err;
use retry::Limits;

use crate::pg::PgTarget;
use crate::privileges::Credentials;
use crate::process::ChildGroup;

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

impl Options {
    /// What the live-traffic retry may spend.
    fn limits(&self) -> Limits {
        Limits {
            lock_timeout: self.lock_timeout,
            ddl_lock_timeout: self.ddl_lock_timeout,
            allow_pooler: self.allow_pooler,
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
            let migrations = refinery::load_refinery(dir)?;
            let applied = refinery::refinery_applied(client).await?;
            refinery::refinery_verify(&applied, &migrations)?;
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
                !prisma::failed_rows(&rows).is_empty() && lock::migration_lock_held(client).await?;
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
    apply_locked(&mut client, target, direct_url, opts, format, started).await?;
    info!(
        "migrations done in {}",
        crate::duration::format(started.elapsed())
    );
    Ok(())
}

/// Applies what is pending while holding the migration lock (and Prisma's, for a
/// Prisma folder), then lets go of it whatever the outcome.
async fn apply_locked(
    client: &mut Client,
    target: &PgTarget,
    direct_url: &str,
    opts: &Options,
    format: Option<Format>,
    started: Instant,
) -> Result<(), MigrateError> {
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
    let holder = lock_client.as_ref().unwrap_or(client);
    lock::lock(holder, &keys, opts.lock_timeout, lock_client.is_some()).await?;
    let result = retry::apply_with_retries(
        client,
        target,
        opts.limits(),
        format,
        started,
        async |c: &mut Client| apply(c, direct_url, opts, format).await,
    )
    .await;
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
    result
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
/// pooler; see [`retry::apply_with_retries`]).
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
        Format::Refinery => refinery::load_refinery(dir)?
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

/// One attempt at applying.
async fn apply(
    client: &mut Client,
    direct_url: &str,
    opts: &Options,
    format: Option<Format>,
) -> Result<(), MigrateError> {
    let applied = match (&opts.source, format) {
        (Source::Command(argv), _) => {
            command::run_command(
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
            refinery::apply(client, dir, retry::local_lock_timeout(opts.limits())).await?
        }
        (Source::Folder { dir, .. }, Some(f @ (Format::Drizzle | Format::DrizzleV1))) => {
            drizzle::apply(
                client,
                dir,
                f == Format::DrizzleV1,
                retry::local_lock_timeout(opts.limits()).as_deref(),
            )
            .await?
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

mod command;
mod connection;
mod detect;
pub mod drizzle;
pub mod failure;
pub mod lint;
mod lock;
pub mod prisma;
mod refinery;
mod retry;
pub mod script;
pub mod sql;
