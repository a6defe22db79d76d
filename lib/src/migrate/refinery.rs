//! refinery folders (`V1__name.sql`), applied and checked by refinery's own runner as
//! refinery would: the files loaded (and those refinery would skip without a word
//! named), the history read, its refusals of edited, deleted or skipped migrations
//! made at every start, and its errors told as the server's. Its own module because
//! the other formats are applied by dockhand's code ([`super::drizzle`],
//! [`super::prisma`]) and this one by refinery's, through the [`Unnamed`] adapter.

use std::path::Path;

use tokio_postgres::Client;

use super::failure::{db_error_text, db_fail, err, MigrateError};
use crate::pg::classify;

pub(super) fn load_refinery(dir: &Path) -> Result<Vec<refinery::Migration>, MigrateError> {
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

/// Applies the folder's pending migrations with refinery's own runner (its checks of
/// the history on, as refinery has them), each in a transaction that starts with
/// `first` when given; the names of those applied.
pub(super) async fn apply(
    client: &mut Client,
    dir: &Path,
    first: Option<String>,
) -> Result<Vec<String>, MigrateError> {
    let migrations = load_refinery(dir)?;
    let report = refinery::Runner::new(&migrations)
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut Unnamed { client, first })
        .await
        .map_err(|e| refinery_error(&e, &migrations))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
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

pub(super) async fn refinery_applied(
    client: &mut Client,
) -> Result<Vec<refinery::Migration>, MigrateError> {
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
pub(super) fn refinery_verify(
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
/// the phase's module doc ([`super`]). Each migration runs in its own transaction, as
/// refinery's tokio-postgres driver does, starting with `first` when given
/// (`SET LOCAL ...`).
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
}
