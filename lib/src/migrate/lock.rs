//! The migration lock: a PostgreSQL advisory lock that serialises replicas starting at
//! the same moment (refinery and drizzle take none), taken by polling
//! `pg_try_advisory_lock` (a blocking `pg_advisory_lock` can deadlock with
//! `CREATE INDEX CONCURRENTLY`), and who holds it while we wait. Its own module because
//! the run takes it and the status reads it, apart from how migrations are applied.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::info;

use super::failure::{err, MigrateError};
use super::prisma;
use crate::pg::classify;

/// The advisory lock key: "dockhand" in ASCII.
pub const LOCK_KEY: i64 = 0x646f_636b_6861_6e64;

/// True when a session holds dockhand's or Prisma's migration lock (a migration is
/// running now).
pub(super) async fn migration_lock_held(client: &Client) -> Result<bool, MigrateError> {
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

/// Takes the advisory locks `keys` in order, polling until `timeout`. `in_transaction`:
/// as transaction-level locks in a transaction left open on `client` (each attempt that
/// fails rolls back, so a waiting replica does not keep a pooled server connection).
pub(super) async fn lock(
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
