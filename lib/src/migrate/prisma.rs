//! Prisma migration folders, applied and recorded exactly as `prisma migrate deploy`
//! does (prisma-engines: `schema-engine/core/src/commands/apply_migrations.rs`,
//! `sql_migration_persistence.rs`, the Postgres flavour), so that either tool can take
//! over from the other, without the Prisma CLI and its engines in the image:
//!
//! - the folder holds `migration_lock.toml` (`provider = "postgresql"`, else P3019) and
//!   one `<timestamp>_<name>/migration.sql` per migration, applied in name order;
//! - `_prisma_migrations` is created with Prisma's DDL, in the current schema; a schema
//!   that already has tables but no `_prisma_migrations` is refused (P3005, baseline);
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
//! migration: its row is deleted again and the migration is retried by the caller.

use std::path::Path;

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{db_fail, err, MigrateError, MigrateKind};
use crate::pg::classify;

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
            super::read_script(&path, " (every migration folder needs its migration.sql)")?;
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

/// P3009: failed migrations block every start, with Prisma's guidance.
pub fn refuse_failed(rows: &[Row]) -> Result<(), MigrateError> {
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.finished && !r.rolled_back)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = failed
        .iter()
        .map(|r| {
            let logs = r
                .logs
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| format!(" with the logs: {l}"))
                .unwrap_or_default();
            format!(
                "the `{}` migration started at {} failed{logs}",
                r.name, r.started_at
            )
        })
        .collect();
    let name = &failed[0].name;
    Err(err(format!(
        "P3009: migrate found failed migrations in the target database, new migrations will not be applied: {}. Fix the database, then mark it: `npx prisma migrate resolve --rolled-back \"{name}\"` (to apply the corrected file again) or `--applied \"{name}\"` (if you finished it by hand); without the Prisma CLI: UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '{name}' AND finished_at IS NULL",
        details.join("; ")
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

/// Prisma's `script_matches_checksum`: the file as it is, or with its line endings
/// converted either way.
pub(crate) fn checksum_matches(script: &str, checksum: &str) -> bool {
    let variants = [
        script.to_string(),
        script.replace("\r\n", "\n"),
        script.replace("\r\n", "\n").replace('\n', "\r\n"),
    ];
    variants
        .iter()
        .any(|v| super::hex_sha256(v.as_bytes()) == checksum)
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

/// Creates `_prisma_migrations` as `migrate deploy` does, refusing a schema that
/// already has tables (P3005).
async fn initialize(client: &Client) -> Result<(), MigrateError> {
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
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = current_schema() ORDER BY 1 LIMIT 5",
            &[],
        )
        .await
        .map_err(|e| db_fail(&e, "listing the schema's tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() {
        return Err(err(format!(
            "P3005: the database schema is not empty (tables {}) and has no _prisma_migrations: baseline it first (https://pris.ly/d/migrate-baseline): mark the migrations that already ran as applied with `npx prisma migrate resolve --applied <name>`",
            tables.join(", ")
        )));
    }
    client
        .batch_execute(CREATE_TABLE)
        .await
        .map_err(|e| db_fail(&e, "creating _prisma_migrations"))?;
    Ok(())
}

/// Applies the pending migrations, one after another, as `migrate deploy` does.
pub async fn apply(client: &Client, dir: &Path) -> Result<Vec<String>, MigrateError> {
    let migrations = load(dir)?;
    initialize(client).await?;
    let rows = rows(client).await?.unwrap_or_default();
    refuse_failed(&rows)?;
    let mut applied = Vec::new();
    for m in pending(&migrations, &rows) {
        let id: String = client
            .query_typed_one(
                "INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES (gen_random_uuid()::text, $1, now(), $2) RETURNING id",
                &[(&m.checksum, Type::VARCHAR), (&m.name, Type::VARCHAR)],
            )
            .await
            .map_err(|e| db_fail(&e, "recording the migration's start"))?
            .get(0);
        info!("applying migration {}", m.name);
        match client.batch_execute(&m.script).await {
            Ok(()) => {
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
                applied.push(m.name.clone());
            }
            Err(e) => {
                let failure = db_fail(
                    &e,
                    &format!(
                        "migration {} failed: {}",
                        m.name,
                        super::db_error_text(&e, Some(&m.script), 0)
                    ),
                );
                if failure.kind() == MigrateKind::LockTimeout {
                    // Waiting for a lock is not a failed migration: forget the attempt.
                    let _ = client
                        .query_typed(
                            "DELETE FROM _prisma_migrations WHERE id = $1",
                            &[(&id, Type::VARCHAR)],
                        )
                        .await;
                } else {
                    let logs = format!("{e}: {}", classify(&e).message());
                    let _ = client
                        .query_typed(
                            "UPDATE _prisma_migrations SET logs = $1 WHERE id = $2",
                            &[(&logs, Type::TEXT), (&id, Type::VARCHAR)],
                        )
                        .await;
                }
                return Err(failure);
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_accept_either_line_ending() {
        let lf = "CREATE TABLE a (id int);\nSELECT 1;\n";
        let crlf = lf.replace('\n', "\r\n");
        let sum_lf = crate::migrate::hex_sha256(lf.as_bytes());
        let sum_crlf = crate::migrate::hex_sha256(crlf.as_bytes());
        assert!(checksum_matches(lf, &sum_lf) && checksum_matches(&crlf, &sum_crlf));
        assert!(checksum_matches(&crlf, &sum_lf) && checksum_matches(lf, &sum_crlf));
        assert!(!checksum_matches("other", &sum_lf));
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
