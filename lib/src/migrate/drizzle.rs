//! drizzle-kit folders, applied and recorded exactly as drizzle-orm's own migrator
//! does, so that either tool can take over from the other. Two layouts:
//!
//! - **0.x** (`meta/_journal.json` lists `TAG.sql` files): a migration is pending when
//!   its journal `when` is newer than the newest `created_at` in
//!   `drizzle.__drizzle_migrations`; rows are (sha256 of the file, `when`). drizzle-orm
//!   silently skips a migration whose `when` is not later than the newest applied one
//!   and that was never recorded (branches merged out of order: features ship without
//!   their tables); dockhand refuses to start instead and names it. A migration counts
//!   as recorded when a row has its `when` as `created_at` (or its hash): a file edited
//!   after it was applied (a comment, git's CRLF) keeps its `when` but not its hash, and
//!   drizzle-orm rightly leaves it alone, so dockhand only warns.
//! - **1.0** (`<YYYYMMDDHHMMSS>_<name>/migration.sql`, no journal): a migration is
//!   pending when its folder name is not recorded; rows are (sha256, the folder time in
//!   UTC milliseconds, the folder name) in a table that also has `applied_at`. A 0.x
//!   table is upgraded in place first (columns added, names back-filled by matching
//!   `created_at` to the second, then by hash), as drizzle-orm 1.0's `up-migrations`
//!   does; a row that matches no folder stops the upgrade. Until then (status, or a
//!   start with nothing pending) the same matching is done in memory.
//!
//! Either way each file is split on `--> statement-breakpoint` and all pending
//! migrations run in one transaction. Every statement goes out as a simple query or an
//! unnamed prepared statement (`query_typed`), never a named one, so that the history
//! reads and writes also work through PgBouncer in transaction mode (`--allow-pooler`).

use std::collections::HashSet;
use std::path::Path;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Transaction};

use super::failure::{db_error_text, db_fail, err, MigrateError};
use super::script::{checksum_matches, read_script};
use crate::pg::classify;

/// One migration of either layout.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 0.x: the journal tag; 1.0: the folder name.
    pub name: String,
    /// 0.x: the journal `when`; 1.0: the folder time in UTC milliseconds.
    pub millis: i64,
    pub sql: String,
    /// Lowercase hex sha256 of the file's bytes.
    pub hash: String,
}

const TABLE: &str = "drizzle.__drizzle_migrations";

/// Reads a 0.x folder: the journal and the SQL files it names.
pub fn load(dir: &Path) -> Result<Vec<Entry>, MigrateError> {
    let journal_path = dir.join("meta/_journal.json");
    let text = std::fs::read_to_string(&journal_path).map_err(|e| {
        err(format!(
            "{}: {} (is this a drizzle-kit migrations folder?)",
            journal_path.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    let journal: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| err(format!("{}: invalid JSON: {e}", journal_path.display())))?;
    let entries = journal["entries"]
        .as_array()
        .ok_or_else(|| err(format!("{}: no \"entries\" list", journal_path.display())))?;
    let mut out = Vec::new();
    for e in entries {
        let tag = e["tag"]
            .as_str()
            .filter(|t| !t.contains('/') && !t.contains(".."))
            .ok_or_else(|| err(format!("{}: an entry has no tag", journal_path.display())))?;
        let when = e["when"].as_i64().ok_or_else(|| {
            err(format!(
                "{}: entry {tag} has no \"when\"",
                journal_path.display()
            ))
        })?;
        let (sql, hash) = read_script(&dir.join(format!("{tag}.sql")), "")?;
        out.push(Entry {
            name: tag.to_string(),
            millis: when,
            sql,
            hash,
        });
    }
    Ok(out)
}

/// True when `name` is a drizzle 1.0 folder name: 14 digits, then `_`.
pub fn is_v1_folder_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 15 && b[..14].iter().all(u8::is_ascii_digit) && b[14] == b'_'
}

/// The UTC milliseconds of a `YYYYMMDDHHMMSS` stamp (drizzle's `formatToMillis`).
pub fn folder_millis(name: &str) -> Option<i64> {
    let n = |a: usize, b: usize| name.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (h, mi, sec) = (n(8, 10)?, n(10, 12)?, n(12, 14)?);
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    // days from 1970-01-01 of a civil date (H. Hinnant's algorithm)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000)
}

/// Reads a 1.0 folder: every `<stamp>_<name>/migration.sql`, sorted by folder name.
pub fn load_v1(dir: &Path) -> Result<Vec<Entry>, MigrateError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        err(format!(
            "--migrations {}: {}",
            dir.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path().join("migration.sql");
        if !path.is_file() {
            continue;
        }
        let millis = folder_millis(&name)
            .filter(|_| is_v1_folder_name(&name))
            .ok_or_else(|| {
                err(format!(
                    "--migrations {}: {name}: a drizzle 1.0 folder must be named YYYYMMDDHHMMSS_name",
                    dir.display()
                ))
            })?;
        let (sql, hash) = read_script(&path, "")?;
        out.push(Entry {
            name,
            millis,
            sql,
            hash,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A row of the history table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i32,
    pub hash: String,
    pub created_at: Option<i64>,
    /// `None` in a 0.x table (or a row 0.x wrote).
    pub name: Option<String>,
}

/// The recorded rows, oldest first; empty when the table does not exist.
pub async fn rows(client: &Client) -> Result<Vec<Row>, MigrateError> {
    rows_of(client)
        .await
        .map_err(|e| err(format!("reading {TABLE}: {}", classify(&e))))
}

/// The rows through any client or transaction (a 0.x table has no `name`).
async fn rows_of<C: GenericClient>(c: &C) -> Result<Vec<Row>, tokio_postgres::Error> {
    if !table_exists(c).await? {
        return Ok(Vec::new());
    }
    let sql = if has_name_column(c).await? {
        "SELECT id, hash, created_at, name FROM drizzle.__drizzle_migrations ORDER BY id"
    } else {
        "SELECT id, hash, created_at, NULL::text FROM drizzle.__drizzle_migrations ORDER BY id"
    };
    Ok(c.query_typed(sql, &[])
        .await?
        .iter()
        .map(|r| Row {
            id: r.get(0),
            hash: r.get(1),
            created_at: r.get(2),
            name: r.get(3),
        })
        .collect())
}

/// 1.0: true when the history table is 0.x's (no `name` column), to be upgraded under
/// the lock even when nothing is pending.
pub async fn needs_upgrade(client: &Client) -> Result<bool, MigrateError> {
    let read = async {
        Ok::<_, tokio_postgres::Error>(
            table_exists(client).await? && !has_name_column(client).await?,
        )
    };
    read.await
        .map_err(|e| err(format!("reading {TABLE}: {}", classify(&e))))
}

async fn table_exists<C: GenericClient>(c: &C) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_typed_one(
        "SELECT to_regclass('drizzle.__drizzle_migrations') IS NOT NULL",
        &[],
    )
    .await?
    .get(0))
}

async fn has_name_column<C: GenericClient>(c: &C) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_typed_one(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'drizzle' AND table_name = '__drizzle_migrations' AND column_name = 'name')",
        &[],
    )
    .await?
    .get(0))
}

/// 0.x: the pending entries; `Err` naming any entry drizzle-orm would skip silently:
/// its `when` is not later than the newest applied, and it is not recorded (no row has
/// its `when`, none its hash).
pub fn pending_v0<'a>(entries: &'a [Entry], rows: &[Row]) -> Result<Vec<&'a Entry>, MigrateError> {
    let last = rows.iter().filter_map(|r| r.created_at).max();
    let skipped: Vec<&str> = entries
        .iter()
        .filter(|e| last.is_some_and(|l| e.millis <= l) && recorded_v0(e, rows).is_none())
        .map(|e| e.name.as_str())
        .collect();
    if !skipped.is_empty() {
        return Err(err(format!(
            "drizzle would skip {} without a word: {} (its journal \"when\" is not later than the newest applied migration, {}, and no row of drizzle.__drizzle_migrations records it; a branch merged out of order?). Give it a later \"when\" in meta/_journal.json (regenerate it with drizzle-kit), or apply its SQL by hand and record it",
            if skipped.len() == 1 { "this migration" } else { "these migrations" },
            skipped.join(", "),
            last.unwrap_or_default()
        )));
    }
    Ok(entries
        .iter()
        .filter(|e| last.is_none_or(|l| l < e.millis))
        .collect())
}

/// 0.x: the row that records `e`: the one whose `created_at` is its journal `when`
/// (what drizzle-orm wrote for it, whatever the file holds now), else one with its hash.
fn recorded_v0<'r>(e: &Entry, rows: &'r [Row]) -> Option<&'r Row> {
    rows.iter()
        .find(|r| r.created_at == Some(e.millis))
        .or_else(|| rows.iter().find(|r| r.hash == e.hash))
}

/// 1.0: the entries whose folder name is not recorded. Rows without a name (a 0.x
/// table not yet upgraded) are matched to folders as the upgrade would match them; a
/// row that matches no folder is an error, as it is for the upgrade.
pub fn pending_v1<'a>(entries: &'a [Entry], rows: &[Row]) -> Result<Vec<&'a Entry>, MigrateError> {
    let (matched, unmatched) = match_unnamed(rows, entries);
    if !unmatched.is_empty() {
        return Err(unmatched_rows(&unmatched));
    }
    let names: HashSet<&str> = rows
        .iter()
        .filter_map(|r| r.name.as_deref())
        .chain(matched.iter().map(|(_, n)| n.as_str()))
        .collect();
    Ok(entries
        .iter()
        .filter(|e| !names.contains(e.name.as_str()))
        .collect())
}

/// Warns, naming the file, about each applied migration whose file has changed since
/// (its hash differs from the recorded one, other than in line endings): the change is
/// not applied, by drizzle-orm either. Warns too about recorded migrations that no
/// file stands for any more (deleted, or an older deploy): drizzle-orm goes on
/// regardless, and so do we.
pub fn warn_changed(entries: &[Entry], rows: &[Row], v1: bool) {
    let (matched, _) = match_unnamed(rows, entries);
    let row_of = |e: &Entry| {
        if v1 {
            rows.iter()
                .find(|r| r.name.as_deref() == Some(e.name.as_str()))
                .or_else(|| {
                    matched
                        .iter()
                        .find(|(_, n)| *n == e.name)
                        .and_then(|(id, _)| rows.iter().find(|r| r.id == *id))
                })
        } else {
            recorded_v0(e, rows)
        }
    };
    let mut accounted = HashSet::new();
    for e in entries {
        if let Some(r) = row_of(e) {
            accounted.insert(r.id);
            if !checksum_matches(&e.sql, &r.hash) {
                tracing::warn!(
                    "drizzle migration {} was changed after it was applied (its sha256 differs from the one recorded in drizzle.__drizzle_migrations); the change is not applied: put it in a new migration",
                    e.name
                );
            }
        }
    }
    let gone: Vec<String> = rows
        .iter()
        .filter(|r| !accounted.contains(&r.id))
        .map(|r| match (&r.name, r.created_at) {
            (Some(n), _) => n.clone(),
            (None, Some(at)) => format!("id {} (created_at {at})", r.id),
            (None, None) => format!("id {}", r.id),
        })
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            "drizzle.__drizzle_migrations records {} that no migration file here stands for (deleted, or this is older code than the database's): {}",
            if gone.len() == 1 { "a migration" } else { "migrations" },
            gone.join(", ")
        );
    }
}

/// Applies the pending migrations of a folder in one transaction, as drizzle-orm does
/// (0.x or 1.0 by `v1`); `first` (`SET LOCAL ...`) starts the transaction when given.
pub async fn apply(
    client: &mut Client,
    dir: &Path,
    v1: bool,
    first: Option<&str>,
) -> Result<Vec<String>, MigrateError> {
    let entries = if v1 { load_v1(dir)? } else { load(dir)? };
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_fail(&e, "starting the migration transaction"))?;
    if let Some(first) = first {
        tx.batch_execute(first)
            .await
            .map_err(|e| db_fail(&e, "setting lock_timeout"))?;
    }
    tx.batch_execute(r#"CREATE SCHEMA IF NOT EXISTS "drizzle""#)
        .await
        .map_err(|e| db_fail(&e, "creating the drizzle schema"))?;
    let exists = table_exists(&tx)
        .await
        .map_err(|e| db_fail(&e, "reading drizzle.__drizzle_migrations"))?;
    if !exists {
        let ddl = if v1 {
            r#"CREATE TABLE IF NOT EXISTS "drizzle"."__drizzle_migrations" (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint, name text, applied_at timestamp with time zone DEFAULT now())"#
        } else {
            r#"CREATE TABLE IF NOT EXISTS "drizzle"."__drizzle_migrations" (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)"#
        };
        tx.batch_execute(ddl)
            .await
            .map_err(|e| db_fail(&e, "creating drizzle.__drizzle_migrations"))?;
    } else if v1 {
        upgrade_table(&tx, &entries).await?;
    }
    let rows = rows_of(&tx)
        .await
        .map_err(|e| db_fail(&e, "reading drizzle.__drizzle_migrations"))?;
    let pending: Vec<&Entry> = if v1 {
        pending_v1(&entries, &rows)?
    } else {
        pending_v0(&entries, &rows)?
    };
    let mut applied = Vec::new();
    for entry in pending {
        apply_entry(&tx, entry, v1).await?;
        applied.push(entry.name.clone());
    }
    tx.commit()
        .await
        .map_err(|e| db_fail(&e, "committing the migrations"))?;
    Ok(applied)
}

/// Runs one migration's statements (split at drizzle's `--> statement-breakpoint`) in
/// the transaction and records it in the history table.
async fn apply_entry(tx: &Transaction<'_>, entry: &Entry, v1: bool) -> Result<(), MigrateError> {
    let mut line = 0;
    for stmt in entry.sql.split("--> statement-breakpoint") {
        if !stmt.trim().is_empty() {
            tx.batch_execute(stmt).await.map_err(|e| {
                db_fail(
                    &e,
                    &format!(
                        "migration {} failed: {}",
                        entry.name,
                        db_error_text(&e, Some(stmt), line)
                    ),
                )
            })?;
        }
        line += stmt.matches('\n').count();
    }
    let recorded = if v1 {
        tx.query_typed(
            r#"INSERT INTO "drizzle"."__drizzle_migrations" ("hash", "created_at", "name") VALUES ($1, $2, $3)"#,
            &[
                (&entry.hash, Type::TEXT),
                (&entry.millis, Type::INT8),
                (&entry.name, Type::TEXT),
            ],
        )
        .await
    } else {
        tx.query_typed(
            r#"INSERT INTO "drizzle"."__drizzle_migrations" ("hash", "created_at") VALUES ($1, $2)"#,
            &[(&entry.hash, Type::TEXT), (&entry.millis, Type::INT8)],
        )
        .await
    };
    recorded.map_err(|e| db_fail(&e, "recording the migration"))?;
    Ok(())
}

/// Upgrades a 0.x history table to 1.0's shape (drizzle-orm 1.0 `up-migrations/pg`):
/// `name` and `applied_at` columns, names back-filled for every row by its
/// `created_at` truncated to the second, then by hash; a row matching no folder stops.
async fn upgrade_table(tx: &Transaction<'_>, entries: &[Entry]) -> Result<(), MigrateError> {
    let has_name = has_name_column(tx)
        .await
        .map_err(|e| db_fail(&e, "reading drizzle.__drizzle_migrations"))?;
    if has_name {
        return Ok(());
    }
    let rows = rows_of(tx)
        .await
        .map_err(|e| db_fail(&e, "reading drizzle.__drizzle_migrations"))?;
    let (matched, unmatched) = match_unnamed(&rows, entries);
    if !unmatched.is_empty() {
        return Err(unmatched_rows(&unmatched));
    }
    tx.batch_execute(
        r#"ALTER TABLE "drizzle"."__drizzle_migrations" ADD COLUMN IF NOT EXISTS "name" text; ALTER TABLE "drizzle"."__drizzle_migrations" ADD COLUMN IF NOT EXISTS "applied_at" timestamp with time zone DEFAULT now()"#,
    )
    .await
    .map_err(|e| db_fail(&e, "upgrading drizzle.__drizzle_migrations"))?;
    for (id, name) in matched {
        tx.query_typed(
            r#"UPDATE "drizzle"."__drizzle_migrations" SET "name" = $1, "applied_at" = NULL WHERE "id" = $2"#,
            &[(&name, Type::TEXT), (&id, Type::INT4)],
        )
        .await
        .map_err(|e| db_fail(&e, "upgrading drizzle.__drizzle_migrations"))?;
    }
    tracing::info!("upgraded drizzle.__drizzle_migrations to drizzle 1.0's layout");
    Ok(())
}

/// The folder each row without a name stands for, as drizzle-orm 1.0's upgrade finds it:
/// by `created_at` truncated to the second, then by hash; and the ids of the rows that
/// match no folder.
fn match_unnamed(rows: &[Row], entries: &[Entry]) -> (Vec<(i32, String)>, Vec<i32>) {
    let mut matched = Vec::new();
    let mut unmatched = Vec::new();
    for row in rows.iter().filter(|r| r.name.is_none()) {
        let second = row.created_at.map(|c| c / 1000 * 1000);
        let by_time: Vec<&Entry> = entries
            .iter()
            .filter(|e| Some(e.millis) == second)
            .collect();
        let found = match by_time.len() {
            1 => Some(by_time[0]),
            0 => entries.iter().find(|e| e.hash == row.hash),
            _ => by_time.into_iter().find(|e| e.hash == row.hash),
        };
        match found {
            Some(e) => matched.push((row.id, e.name.clone())),
            None => unmatched.push(row.id),
        }
    }
    (matched, unmatched)
}

fn unmatched_rows(ids: &[i32]) -> MigrateError {
    err(format!(
        "upgrading drizzle.__drizzle_migrations to drizzle 1.0: {} recorded migration(s) (ids {}) match no folder here; the folder is missing migrations the database has",
        ids.len(),
        ids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_and_times() {
        assert!(is_v1_folder_name("20260115093000_init"));
        assert!(!is_v1_folder_name("0000_init"));
        assert!(!is_v1_folder_name("20260115093000"));
        // drizzle's formatToMillis: Date.UTC of the stamp
        assert_eq!(
            folder_millis("20260115093000_init"),
            Some(1_768_469_400_000)
        );
        assert_eq!(folder_millis("20261332000000_x"), None);
        assert_eq!(folder_millis("19700101000000_x"), Some(0));
        assert_eq!(
            folder_millis("20240229235959_leap"),
            Some(1_709_251_199_000)
        );
        assert_eq!(folder_millis("20230229000000_x"), None);
    }

    fn entry(name: &str, millis: i64, hash: &str) -> Entry {
        Entry {
            name: name.into(),
            millis,
            sql: String::new(),
            hash: hash.into(),
        }
    }

    #[test]
    fn out_of_order_0x_migrations_are_refused_by_name() {
        let entries = [
            entry("0000_a", 1000, "h0"),
            entry("0001_b", 3000, "h1"),
            entry("0002_late", 2000, "h2"),
        ];
        let rows = [
            Row {
                id: 1,
                hash: "h0".into(),
                created_at: Some(1000),
                name: None,
            },
            Row {
                id: 2,
                hash: "h1".into(),
                created_at: Some(3000),
                name: None,
            },
        ];
        let e = pending_v0(&entries, &rows).unwrap_err();
        assert!(
            e.message().contains("0002_late") && !e.message().contains("0001_b"),
            "{e}"
        );
        let fine = [
            entry("0000_a", 1000, "h0"),
            entry("0001_b", 3000, "h1"),
            entry("0002_c", 4000, "h2"),
        ];
        let p = pending_v0(&fine, &rows).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "0002_c");
    }

    #[test]
    fn an_edited_0x_file_is_recorded_by_its_when_not_skipped() {
        let row = |id, hash: &str, at| Row {
            id,
            hash: hash.into(),
            created_at: Some(at),
            name: None,
        };
        let rows = [row(1, "h0", 1000), row(2, "h1", 3000)];
        // 0000_a edited (new hash, same when): applied, not "skipped"; nothing pending
        let entries = [entry("0000_a", 1000, "edited"), entry("0001_b", 3000, "h1")];
        assert!(pending_v0(&entries, &rows).unwrap().is_empty());
        // a file recorded only by its hash (its when rewritten): applied as before
        let entries = [entry("0000_a", 999, "h0"), entry("0001_b", 3000, "h1")];
        assert!(pending_v0(&entries, &rows).unwrap().is_empty());
        // recorded by neither: the out-of-order case
        let entries = [entry("0000_a", 1000, "h0"), entry("0000_x", 2000, "hx")];
        assert!(pending_v0(&entries, &rows).is_err());
    }

    #[test]
    fn v1_status_over_a_0x_table_matches_rows_as_the_upgrade_does() {
        let entries = [
            entry("20260101000000_a", 1_000_000, "h0"),
            entry("20260102000000_b", 2_000_000, "h1"),
        ];
        // 0.x rows: created_at in milliseconds (matched to the second), no names
        let rows = [Row {
            id: 1,
            hash: "other".into(),
            created_at: Some(1_000_342),
            name: None,
        }];
        let p = pending_v1(&entries, &rows).unwrap();
        assert_eq!(
            p.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["20260102000000_b"]
        );
        let stray = [Row {
            id: 7,
            hash: "nope".into(),
            created_at: Some(5),
            name: None,
        }];
        let e = pending_v1(&entries, &stray).unwrap_err();
        assert!(e.message().contains("ids 7"), "{e}");
    }

    #[test]
    fn v1_pending_is_by_name_so_out_of_order_folders_apply() {
        let entries = [
            entry("20260101000000_a", 1, "h0"),
            entry("20260102000000_b", 2, "h1"),
            entry("20260103000000_c", 3, "h2"),
        ];
        let rows = [
            Row {
                id: 1,
                hash: "h0".into(),
                created_at: Some(1),
                name: Some("20260101000000_a".into()),
            },
            Row {
                id: 2,
                hash: "h2".into(),
                created_at: Some(3),
                name: Some("20260103000000_c".into()),
            },
        ];
        let p = pending_v1(&entries, &rows).unwrap();
        assert_eq!(
            p.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["20260102000000_b"]
        );
    }
}
