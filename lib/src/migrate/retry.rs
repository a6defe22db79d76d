//! Migrations that live traffic cannot be held up by: every statement runs with
//! `lock_timeout` (`--ddl-lock-timeout`), an attempt that gave up waiting for a lock is
//! rolled back and retried with capped, jittered backoff until `--lock-timeout`, and a
//! second connection watches who blocked it, for the log. Its own module because it
//! wraps every format alike: it is handed one attempt and knows nothing of formats
//! beyond whether a session `SET` is safe for them.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::warn;

use super::detect::Format;
use super::failure::{err, MigrateError, MigrateKind};
use crate::jitter::Jitter;
use crate::pg::{classify, PgTarget};

/// What the retry may spend: `--lock-timeout`, `--ddl-lock-timeout`, `--allow-pooler`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// How long a migration blocked by live traffic may keep retrying, from the start
    /// of the phase.
    pub(super) lock_timeout: Duration,
    /// `lock_timeout` for every migration statement (zero: off).
    pub(super) ddl_lock_timeout: Duration,
    /// Through a transaction pooler, where a session `SET` would outlive the phase.
    pub(super) allow_pooler: bool,
}

/// Applies with `lock_timeout` set; a migration that timed out waiting for a lock is
/// rolled back and retried with capped, jittered backoff until `--lock-timeout` (from
/// the start of the phase) runs out, each retry naming what blocked it.
///
/// `apply` makes one attempt; it runs on `client`, whose session this sets up.
pub(super) async fn apply_with_retries(
    client: &mut Client,
    target: &PgTarget,
    limits: Limits,
    format: Option<Format>,
    started: Instant,
    mut apply: impl AsyncFnMut(&mut Client) -> Result<(), MigrateError>,
) -> Result<(), MigrateError> {
    let ddl = limits.ddl_lock_timeout;
    let (watcher, our_pid) = prepare(client, target, limits, format).await?;
    let mut delay = Duration::from_millis(200);
    let mut jitter = Jitter::new();
    let mut attempt = 1;
    loop {
        let blockers = std::cell::RefCell::new(String::new());
        let attempt_result = {
            let work = apply(&mut *client);
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
                if started.elapsed() + delay >= limits.lock_timeout {
                    return Err(err(format!(
                        "{what}: still blocked by {who} after --lock-timeout {} ({attempt} attempts, each waiting at most --ddl-lock-timeout {})",
                        crate::duration::format(limits.lock_timeout),
                        crate::duration::format(ddl)
                    )));
                }
                warn!(
                    "migration attempt {attempt} gave up waiting {} for a lock, so the app's queries were not held up; blocked by {who}; retrying in {}",
                    crate::duration::format(ddl),
                    crate::duration::format(delay)
                );
                tokio::time::sleep(jitter.apply(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// Sets up the attempts: `lock_timeout` on `client`'s session where a session `SET` is
/// safe, and a second connection that watches who blocks it, with `client`'s backend
/// pid (none, and 0, when no statement waits on a lock timeout).
async fn prepare(
    client: &Client,
    target: &PgTarget,
    limits: Limits,
    format: Option<Format>,
) -> Result<(Option<Client>, i32), MigrateError> {
    let ddl = limits.ddl_lock_timeout;
    if limits.allow_pooler && !ddl.is_zero() && format == Some(Format::Prisma) {
        warn!("--allow-pooler: --ddl-lock-timeout is not applied to Prisma migrations (they run outside a transaction, and a SET through a transaction pooler would stay on a pooled connection the app uses next)");
    }
    // Through a pooler a session SET would land on whichever server connection runs it
    // and stay there for the app's queries: refinery and drizzle set it per transaction
    // instead (see `local_lock_timeout`).
    if !ddl.is_zero() && format.is_some() && !limits.allow_pooler {
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
    Ok((watcher, our_pid))
}

async fn unreachable_pending() -> Result<(), MigrateError> {
    std::future::pending().await
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
pub(super) fn local_lock_timeout(limits: Limits) -> Option<String> {
    let ddl = limits.ddl_lock_timeout;
    (limits.allow_pooler && !ddl.is_zero())
        .then(|| format!("SET LOCAL lock_timeout = '{}ms'", ddl.as_millis()))
}
