//! Prisma migration folders, applied and recorded exactly as `prisma migrate deploy`
//! does (prisma-engines: `schema-engine/core/src/commands/apply_migrations.rs`,
//! `sql_migration_persistence.rs`, the Postgres flavour), so that either tool can take
//! over from the other, without the Prisma CLI and its engines in the image:
//!
//! - the folder holds `migration_lock.toml` (`provider = "postgresql"`, else P3019) and
//!   one `<timestamp>_<name>/migration.sql` per migration, applied in name order;
//! - everything happens in the URL's `schema` (default `public`): the session's
//!   search_path is set to it alone and it is created when missing, as Prisma's engine
//!   does (quaint `set_search_path`, schema engine `setup_connection`);
//! - `_prisma_migrations` is created there with Prisma's DDL; a schema that already has
//!   tables but no `_prisma_migrations` is refused (P3005, baseline);
//! - a row with `finished_at` and `rolled_back_at` both null is a failed migration and
//!   blocks every start (P3009) until it is marked rolled back or applied;
//! - a migration is applied when a row with its name has `rolled_back_at` null;
//! - per migration: a row is inserted (id, checksum = lowercase hex sha256 of the file
//!   as it is, started_at, name), the whole script runs as one simple-query batch, then
//!   `applied_steps_count + 1` and `finished_at`; on failure the error goes to `logs`;
//! - Prisma's own advisory lock key, 72707369, is held while migrating, so a
//!   `prisma migrate deploy` run elsewhere serialises with us (the caller takes it);
//! - `migrate deploy` never compares applied checksums: dockhand warns when an applied
//!   migration's file has changed (CRLF and LF spellings of one file count as the same).
//!
//! A statement that times out waiting for a lock (SQLSTATE 55P03) is not a failed
//! migration: its row is deleted again and the migration is retried by the caller. The
//! scripts a retry could not repeat safely run without `lock_timeout` (see [`apply`]).

use std::path::Path;

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::failure::{db_error_text, db_fail, err, MigrateError, MigrateKind};
use super::script::{checksum_matches, read_script};
use super::sql;
use crate::pg::{classify, PgTarget};

/// Prisma Migrate's advisory lock key.
pub const PRISMA_LOCK_KEY: i64 = 72_707_369;

/// One migration folder.
#[derive(Debug, Clone)]
pub struct Migration {
    pub name: String,
    pub script: String,
    pub checksum: String,
}

/// Reads the folder: the lock file's provider, then every migration in name order.
pub fn load(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let lock = dir.join("migration_lock.toml");
    let text = std::fs::read_to_string(&lock).map_err(|e| {
        err(format!(
            "{}: {} (is this a Prisma migrations folder?)",
            lock.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    // Prisma reads the first line starting with `provider` the same loose way.
    let provider = text
        .lines()
        .find(|l| l.trim_start().starts_with("provider"))
        .and_then(|l| l.split_once('='))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| "<PROVIDER NOT FOUND>".into());
    if provider != "postgresql" {
        return Err(err(format!(
            "P3019: the migrations in {} were made for provider {provider:?} (migration_lock.toml), not postgresql: start a new migration history for PostgreSQL",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        err(format!(
            "--migrations {}: {}",
            dir.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path().join("migration.sql");
        let (script, checksum) =
            read_script(&path, " (every migration folder needs its migration.sql)")?;
        out.push(Migration {
            name,
            script,
            checksum,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A row of `_prisma_migrations`.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub checksum: String,
    pub finished: bool,
    pub rolled_back: bool,
    pub logs: Option<String>,
    pub started_at: String,
}

/// The recorded rows; `None` when `_prisma_migrations` does not exist.
pub async fn rows(client: &Client) -> Result<Option<Vec<Row>>, MigrateError> {
    let exists: bool = client
        .query_typed_one("SELECT to_regclass('_prisma_migrations') IS NOT NULL", &[])
        .await
        .map_err(|e| err(format!("reading _prisma_migrations: {}", classify(&e))))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query_typed(
            "SELECT migration_name, checksum, finished_at IS NOT NULL, rolled_back_at IS NOT NULL, logs, started_at::text FROM _prisma_migrations ORDER BY started_at, migration_name",
            &[],
        )
        .await
        .map_err(|e| err(format!("reading _prisma_migrations: {}", classify(&e))))?;
    Ok(Some(
        rows.iter()
            .map(|r| Row {
                name: r.get(0),
                checksum: r.get(1),
                finished: r.get(2),
                rolled_back: r.get(3),
                logs: r.get(4),
                started_at: r.get(5),
            })
            .collect(),
    ))
}

/// True when the migration has a row that was not rolled back.
fn is_applied(rows: &[Row], name: &str) -> bool {
    rows.iter().any(|r| r.name == name && !r.rolled_back)
}

/// True when the migration has a finished row that was not rolled back.
pub fn is_finished(rows: &[Row], name: &str) -> bool {
    rows.iter()
        .any(|r| r.name == name && r.finished && !r.rolled_back)
}

/// The migrations not yet applied.
pub fn pending<'a>(migrations: &'a [Migration], rows: &[Row]) -> Vec<&'a Migration> {
    migrations
        .iter()
        .filter(|m| !is_applied(rows, &m.name))
        .collect()
}

/// The rows of failed migrations: started, neither finished nor rolled back.
pub fn failed_rows(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|r| !r.finished && !r.rolled_back)
        .collect()
}

/// What a failed row says: when it started and its logs, on one line (the logs Prisma
/// writes span lines and hold terminal colour codes).
fn describe(r: &Row) -> String {
    let logs = r
        .logs
        .as_deref()
        .map(one_line)
        .filter(|l| !l.is_empty())
        .map(|l| format!(" with the logs: {l}"))
        .unwrap_or_default();
    format!("started at {} and failed{logs}", r.started_at)
}

/// `text` without terminal escape sequences and control characters, its whitespace
/// runs (line breaks too) made single spaces.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a final letter
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if f.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c.is_whitespace() {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How to unblock a failed migration, as Prisma says it, and without its CLI.
pub fn resolve_advice(name: &str) -> String {
    format!(
        "Fix the database, then mark it: `npx prisma migrate resolve --rolled-back \"{name}\"` (to apply the corrected file again) or `--applied \"{name}\"` (if you finished it by hand); without the Prisma CLI: UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '{name}' AND finished_at IS NULL"
    )
}

/// `--migrate-status`: the failure of migration `name`, with the advice; `None` when
/// it has no failed row.
pub fn failure(rows: &[Row], name: &str) -> Option<String> {
    failed_rows(rows)
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| format!("{}. {}", describe(r), resolve_advice(name)))
}

/// P3009: failed migrations block every start, with Prisma's guidance.
pub fn refuse_failed(rows: &[Row]) -> Result<(), MigrateError> {
    let failed = failed_rows(rows);
    if failed.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = failed
        .iter()
        .map(|r| format!("the `{}` migration {}", r.name, describe(r)))
        .collect();
    Err(err(format!(
        "P3009: migrate found failed migrations in the target database, new migrations will not be applied: {}. {}",
        details.join("; "),
        resolve_advice(&failed[0].name)
    )))
}

/// Warns about applied migrations whose file changed since (Prisma does not check).
pub(crate) fn warn_changed(migrations: &[Migration], rows: &[Row]) {
    for m in migrations {
        let recorded = rows
            .iter()
            .filter(|r| r.name == m.name && r.finished && !r.rolled_back);
        for r in recorded {
            if !checksum_matches(&m.script, &r.checksum) {
                warn!(
                    "migration {} was changed after it was applied (its checksum differs from the recorded one); the change is not applied",
                    m.name
                );
            }
        }
    }
}

/// The schema Prisma migrates for this URL: its `schema` parameter, else `public`
/// (prisma-engines `PostgresNativeUrl::schema`). Prisma Client reads the app's tables
/// there, qualified with it.
pub fn schema_of(target: &PgTarget) -> &str {
    target.url_param("schema").unwrap_or("public")
}

/// [`schema_of`] for a raw URL (`public` when it does not parse).
pub fn schema_in(url: &str) -> String {
    crate::url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query
                .into_iter()
                .rev()
                .find(|(k, _)| k == "schema")
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| "public".into())
}

/// Points the session at `schema` for the migrations, so the scripts' unqualified
/// names and `_prisma_migrations` land where Prisma Client reads them:
/// - with `?schema=` (`explicit`), as Prisma's engine does: `SET search_path = "schema"`,
///   nothing else on the path (quaint `set_search_path`);
/// - without, Prisma uses `public` for everything it reads but leaves the session's
///   search_path, so a role-named schema first on it (`CREATE SCHEMA app AUTHORIZATION
///   app`) would get the tables. When the session's current schema is not `public`,
///   `public` is put first on the path (the rest kept, e.g. an `extensions` schema);
///   otherwise nothing changes.
///
/// A `_prisma_migrations` found in the session's default schema but not in `schema` is
/// refused: that history was recorded elsewhere (by an earlier dockhand, or a
/// `prisma migrate deploy` whose URL had no `schema`), and applying it all again here
/// would duplicate every table.
pub async fn use_schema(client: &Client, schema: &str, explicit: bool) -> Result<(), MigrateError> {
    let elsewhere: Option<String> = client
        .query_typed_opt(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = '_prisma_migrations' AND c.relkind IN ('r', 'p') \
             AND n.nspname = current_schema() AND n.nspname <> $1 \
             AND NOT EXISTS (SELECT 1 FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace \
                             WHERE c2.relname = '_prisma_migrations' AND n2.nspname = $1)",
            &[(&schema, Type::TEXT)],
        )
        .await
        .map_err(|e| err(format!("looking for _prisma_migrations: {}", classify(&e))))?
        .map(|r| r.get(0));
    if let Some(other) = elsewhere {
        return Err(err(format!(
            "_prisma_migrations is in schema {other:?} (the session's default search_path), not in {schema:?}, the schema Prisma uses for this URL{}: the migrations were recorded there by an earlier dockhand or by `prisma migrate deploy` with a URL without ?schema=. If the app's tables are in {other:?}, add ?schema={other} to the URL (Prisma Client reads them there only then); else move them and _prisma_migrations to {schema:?} (ALTER TABLE ... SET SCHEMA {schema})",
            if schema == "public" { " (no ?schema= in the URL)" } else { "" }
        )));
    }
    let sql = if explicit {
        "SELECT set_config('search_path', quote_ident($1::text), false)"
    } else {
        "SELECT CASE WHEN current_schema() IS NOT DISTINCT FROM $1::text THEN current_setting('search_path') \
         ELSE set_config('search_path', quote_ident($1::text) || coalesce(nullif(', ' || current_setting('search_path'), ', '), ''), false) END"
    };
    client
        .query_typed(sql, &[(&schema, Type::TEXT)])
        .await
        .map_err(|e| {
            err(format!(
                "setting search_path to {schema:?}: {}",
                classify(&e)
            ))
        })?;
    Ok(())
}

/// Prisma's `_prisma_migrations` DDL (Postgres flavour).
const CREATE_TABLE: &str = "CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);";

/// Creates the schema when it is missing and `_prisma_migrations` as `migrate deploy`
/// does, refusing a schema that already has tables (P3005).
async fn initialize(client: &Client, schema: &str) -> Result<(), MigrateError> {
    let schema_exists: bool = client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[(&schema, Type::TEXT)],
        )
        .await
        .map_err(|e| db_fail(&e, "looking for the schema"))?
        .get(0);
    if !schema_exists {
        // as Prisma's engine does on connecting (`setup_connection`)
        let create: String = client
            .query_typed_one(
                "SELECT format('CREATE SCHEMA %I', $1::text)",
                &[(&schema, Type::TEXT)],
            )
            .await
            .map_err(|e| db_fail(&e, "creating the schema"))?
            .get(0);
        client.batch_execute(&create).await.map_err(|e| {
            db_fail(
                &e,
                &format!("creating schema {schema:?} (the URL's schema=)"),
            )
        })?;
        info!("created schema {schema:?}");
    }
    let exists: bool = client
        .query_typed_one("SELECT to_regclass('_prisma_migrations') IS NOT NULL", &[])
        .await
        .map_err(|e| db_fail(&e, "reading _prisma_migrations"))?
        .get(0);
    if exists {
        return Ok(());
    }
    let tables: Vec<String> = client
        .query_typed(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = $1 ORDER BY 1 LIMIT 5",
            &[(&schema, Type::TEXT)],
        )
        .await
        .map_err(|e| db_fail(&e, "listing the schema's tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() {
        return Err(err(format!(
            "P3005: the database schema {schema:?} is not empty (tables {}) and has no _prisma_migrations: baseline it first (https://pris.ly/d/migrate-baseline): mark the migrations that already ran as applied with `npx prisma migrate resolve --applied <name>`",
            tables.join(", ")
        )));
    }
    client
        .batch_execute(CREATE_TABLE)
        .await
        .map_err(|e| db_fail(&e, "creating _prisma_migrations"))?;
    Ok(())
}

/// Applies the pending migrations, one after another, as `migrate deploy` does, in
/// `schema` (the session's search_path already points there, see [`use_schema`]).
///
/// Where dockhand differs, it is to keep the history true:
/// - a script that fails leaves the session in its own aborted transaction when it
///   opened one (`BEGIN; ... COMMIT;`): it is rolled back before anything else runs, so
///   the failure (or the lock timeout) is recorded and the retry starts clean;
/// - a script that opens a transaction it never commits is a failure, not an applied
///   migration (everything it did is rolled back when the session ends);
/// - `lock_timeout` is lifted for a script a retry could not repeat safely: one that
///   commits part way, and a lone statement that waits for older transactions by design
///   (`CREATE INDEX CONCURRENTLY`, which a timeout leaves behind as an INVALID index);
/// - an INVALID index that an interrupted `CREATE INDEX CONCURRENTLY` left behind is
///   dropped before the statement runs again (it would fail with "already exists", or
///   skip with `IF NOT EXISTS` and leave the index unusable).
pub async fn apply(client: &Client, dir: &Path, schema: &str) -> Result<Vec<String>, MigrateError> {
    let migrations = load(dir)?;
    initialize(client, schema).await?;
    let rows = rows(client).await?.unwrap_or_default();
    refuse_failed(&rows)?;
    let mut applied = Vec::new();
    for m in pending(&migrations, &rows) {
        apply_one(client, m).await?;
        applied.push(m.name.clone());
    }
    Ok(applied)
}

async fn apply_one(client: &Client, m: &Migration) -> Result<(), MigrateError> {
    let stmts = sql::split(&m.script);
    let atomic = sql::is_atomic(&stmts);
    let lone = match stmts.as_slice() {
        [one] => sql::non_transactional(one).map(|n| (one, n)),
        _ => None,
    };
    let waits = lone
        .as_ref()
        .filter(|(_, n)| n.waits_for_old_transactions)
        .map(|(_, n)| n.what);
    let lifted = if waits.is_some() || !atomic {
        lift_lock_timeout(client).await?
    } else {
        None
    };
    if lifted.is_some() {
        match waits {
            Some(what) => info!(
                "migration {}: {what} waits for every older transaction by design, so it runs without lock_timeout (it does not hold up the app's queries meanwhile)",
                m.name
            ),
            None => warn!(
                "migration {} commits part way (its own BEGIN/COMMIT): it runs without --ddl-lock-timeout, since a retry after a lock timeout could apply its first part twice",
                m.name
            ),
        }
    }
    let result = apply_script(client, m, lone.as_ref().map(|(s, _)| *s), atomic).await;
    if let Some(previous) = lifted {
        let restored = client
            .batch_execute(&format!("SET lock_timeout = '{previous}'"))
            .await
            .map_err(|e| err(format!("restoring lock_timeout: {}", classify(&e))));
        result?;
        return restored;
    }
    result
}

/// Sets `lock_timeout` to 0 for the session; the previous value when it was not 0.
async fn lift_lock_timeout(client: &Client) -> Result<Option<String>, MigrateError> {
    let rows = client
        .simple_query("SHOW lock_timeout")
        .await
        .map_err(|e| err(format!("reading lock_timeout: {}", classify(&e))))?;
    let previous = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    match previous {
        Some(p) if p != "0" && !p.contains('\'') => {
            client
                .batch_execute("SET lock_timeout = 0")
                .await
                .map_err(|e| err(format!("setting lock_timeout: {}", classify(&e))))?;
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

/// Drops the INVALID index an interrupted `CREATE INDEX CONCURRENTLY` of `stmt` left
/// behind (only an index of that name, on that table, marked invalid).
async fn drop_invalid_index(
    client: &Client,
    stmt: &sql::Statement<'_>,
) -> Result<(), MigrateError> {
    let Some((name, table)) = sql::created_index(stmt) else {
        return Ok(());
    };
    let drop: Option<String> = client
        .query_typed_opt(
            "SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', n.nspname, ic.relname) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace \
             WHERE ic.relname = $1 AND i.indrelid = to_regclass($2::text) AND NOT i.indisvalid",
            &[(&name, Type::TEXT), (&table, Type::TEXT)],
        )
        .await
        .map_err(|e| db_fail(&e, "looking for an INVALID index left behind"))?
        .map(|r| r.get(0));
    if let Some(drop) = drop {
        warn!(
            "dropping the INVALID index {name:?} that an interrupted CREATE INDEX CONCURRENTLY left behind, before building it again"
        );
        client
            .batch_execute(&drop)
            .await
            .map_err(|e| db_fail(&e, &format!("dropping the INVALID index {name:?}")))?;
    }
    Ok(())
}

/// True when the session is inside a transaction block: the first statement of a
/// transaction has `transaction_timestamp() = statement_timestamp()` (PostgreSQL docs,
/// "Current Date/Time"), a later one in an open block a later statement time.
async fn in_transaction_block(client: &Client) -> Result<bool, MigrateError> {
    let rows = client
        .simple_query("SELECT transaction_timestamp() <> statement_timestamp()")
        .await
        .map_err(|e| db_fail(&e, "checking the migration's transaction"))?;
    Ok(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))))
}

/// Records, runs and records one migration script (see [`apply`]).
async fn apply_script(
    client: &Client,
    m: &Migration,
    lone: Option<&sql::Statement<'_>>,
    atomic: bool,
) -> Result<(), MigrateError> {
    if let Some(stmt) = lone {
        drop_invalid_index(client, stmt).await?;
    }
    let id: String = client
        .query_typed_one(
            "INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES (gen_random_uuid()::text, $1, now(), $2) RETURNING id",
            &[(&m.checksum, Type::VARCHAR), (&m.name, Type::VARCHAR)],
        )
        .await
        .map_err(|e| db_fail(&e, "recording the migration's start"))?
        .get(0);
    info!("applying migration {}", m.name);
    let outcome = client.batch_execute(&m.script).await;
    let left_open = match &outcome {
        Ok(()) => in_transaction_block(client).await?,
        Err(_) => false,
    };
    if outcome.is_err() || left_open {
        // The script's own transaction, aborted or left open: nothing of it is kept,
        // and the session can record what happened.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let failure = match outcome {
        Ok(()) if !left_open => None,
        Ok(()) => Some((
            err(format!(
                "migration {} failed: it opens a transaction (BEGIN) that it never commits, so nothing it did was kept (rolled back). Add COMMIT; at its end",
                m.name
            )),
            "the script opens a transaction (BEGIN) that it never commits: rolled back".to_string(),
        )),
        Err(e) => Some(failed_script(client, m, &id, &e, atomic).await?),
    };
    if let Some((failure, logs)) = failure {
        let _ = client
            .query_typed(
                "UPDATE _prisma_migrations SET logs = $1 WHERE id = $2",
                &[(&logs, Type::TEXT), (&id, Type::VARCHAR)],
            )
            .await;
        return Err(failure);
    }
    record_applied(client, &id).await
}

/// The error of a script the server failed, and the logs recorded with it. A lock
/// timeout of an all-or-nothing script is no failed migration: its row is deleted
/// and the timeout comes back as `Err`, to be retried.
async fn failed_script(
    client: &Client,
    m: &Migration,
    id: &str,
    e: &tokio_postgres::Error,
    atomic: bool,
) -> Result<(MigrateError, String), MigrateError> {
    let failure = db_fail(
        e,
        &format!(
            "migration {} failed: {}",
            m.name,
            db_error_text(e, Some(&m.script), 0)
        ),
    );
    if failure.kind() == MigrateKind::LockTimeout && atomic {
        // Waiting for a lock is not a failed migration, and an all-or-nothing
        // script left nothing behind: forget the attempt.
        client
            .query_typed(
                "DELETE FROM _prisma_migrations WHERE id = $1",
                &[(&id, Type::VARCHAR)],
            )
            .await
            .map_err(|e| db_fail(&e, "forgetting the attempt"))?;
        return Err(failure);
    }
    let logs = format!("{e}: {}", classify(e).message());
    let failure = if failure.kind() == MigrateKind::LockTimeout {
        err(format!(
            "{}: the script commits part way, so it is not retried",
            failure.message()
        ))
    } else {
        failure
    };
    Ok((failure, logs))
}

/// Records a script as applied: its step counted, its finish time set.
async fn record_applied(client: &Client, id: &str) -> Result<(), MigrateError> {
    client
        .query_typed(
            "UPDATE _prisma_migrations SET applied_steps_count = applied_steps_count + 1 WHERE id = $1",
            &[(&id, Type::VARCHAR)],
        )
        .await
        .map_err(|e| db_fail(&e, "recording the migration"))?;
    client
        .query_typed(
            "UPDATE _prisma_migrations SET finished_at = now() WHERE id = $1",
            &[(&id, Type::VARCHAR)],
        )
        .await
        .map_err(|e| db_fail(&e, "recording the migration"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_accept_either_line_ending() {
        let lf = "CREATE TABLE a (id int);\nSELECT 1;\n";
        let crlf = lf.replace('\n', "\r\n");
        let sum_lf = crate::migrate::script::hex_sha256(lf.as_bytes());
        let sum_crlf = crate::migrate::script::hex_sha256(crlf.as_bytes());
        assert!(checksum_matches(lf, &sum_lf) && checksum_matches(&crlf, &sum_crlf));
        assert!(checksum_matches(&crlf, &sum_lf) && checksum_matches(lf, &sum_crlf));
        assert!(!checksum_matches("other", &sum_lf));
    }

    #[test]
    fn prismas_multi_line_coloured_logs_read_on_one_line() {
        assert_eq!(
            one_line("Database error:\nERROR: relation \"Nope\" does not exist\n\nPosition:\n\u{1b}[1m  1\u{1b}[0m ALTER\r\n"),
            "Database error: ERROR: relation \"Nope\" does not exist Position: 1 ALTER"
        );
    }

    #[test]
    fn failed_rows_block_with_guidance() {
        let row = |name: &str, finished, rolled_back| Row {
            name: name.into(),
            checksum: String::new(),
            finished,
            rolled_back,
            logs: Some("boom".into()),
            started_at: "t".into(),
        };
        assert!(refuse_failed(&[row("a", true, false), row("b", false, true)]).is_ok());
        let e = refuse_failed(&[row("a", true, false), row("c", false, false)]).unwrap_err();
        assert!(
            e.message().contains("P3009")
                && e.message().contains("`c`")
                && e.message().contains("--rolled-back"),
            "{e}"
        );
        let m = |n: &str| Migration {
            name: n.into(),
            script: String::new(),
            checksum: String::new(),
        };
        let ms = [m("a"), m("b"), m("c")];
        // b was rolled back: pending again; c failed (no finished) but not rolled back: applied
        let p = pending(
            &ms,
            &[
                row("a", true, false),
                row("b", false, true),
                row("c", false, false),
            ],
        );
        assert_eq!(p.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }
}
