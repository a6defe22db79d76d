//! How the migration phase fails: [`MigrateError`] with its kinds (a lock timeout is
//! retried, anything else stops start-up with exit 4), and the server's error as one
//! line with the position it points at. Its own module because the formats
//! ([`super::drizzle`], [`super::prisma`]) and the phase that runs them
//! ([`super`]) all report through it, and the phase calls the formats: kept in
//! `mod.rs` it would make an import cycle.

use crate::error::{Error, Kind};
use crate::pg::classify;

/// How a migration phase failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateKind {
    /// A migration, the history table or the connection failed (exit 4).
    Failed,
    /// A statement gave up waiting for a lock held by live traffic (`--ddl-lock-timeout`):
    /// the attempt was rolled back and is retried until `--lock-timeout`.
    LockTimeout,
}

impl Kind for MigrateKind {
    fn exit_code(self) -> u8 {
        4
    }
}

/// A failed migration phase; the message names what failed and the server's error.
pub type MigrateError = Error<MigrateKind>;

pub(crate) fn err(msg: impl Into<String>) -> MigrateError {
    MigrateError::new(MigrateKind::Failed, crate::redact::text(&msg.into()))
}

/// Sorts a server error: SQLSTATE 55P03 (`lock_not_available`, what `lock_timeout`
/// raises) is a lock timeout, anything else a failure with `what` as the message.
pub(crate) fn db_fail(e: &tokio_postgres::Error, what: &str) -> MigrateError {
    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
        MigrateError::new(MigrateKind::LockTimeout, crate::redact::text(what))
    } else if what.contains(": ") || what.contains("failed") {
        err(what)
    } else {
        err(format!("{what}: {}", classify(e)))
    }
}

/// The server's error with SQLSTATE and, when the SQL is known, the line it points at.
/// `line_offset` is added to the line (a statement inside a larger file).
pub fn db_error_text(e: &tokio_postgres::Error, sql: Option<&str>, line_offset: usize) -> String {
    let Some(db) = e.as_db_error() else {
        return classify(e).message().to_string();
    };
    let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(tokio_postgres::error::ErrorPosition::Original(pos)) = db.position() {
        match sql {
            Some(sql) => {
                let upto: String = sql
                    .chars()
                    .take((*pos as usize).saturating_sub(1))
                    .collect();
                let line = upto.matches('\n').count() + 1 + line_offset;
                let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                s.push_str(&format!(" at line {line}, column {col}"));
            }
            None => s.push_str(&format!(" at character {pos}")),
        }
    }
    if let Some(d) = db.detail() {
        s.push_str(&format!("; {d}"));
    }
    s.push_str(transaction_hint(db.code()));
    s
}

/// What to do about a statement that cannot run where the migration tool runs it.
fn transaction_hint(code: &tokio_postgres::error::SqlState) -> &'static str {
    use tokio_postgres::error::SqlState;
    if *code == SqlState::ACTIVE_SQL_TRANSACTION {
        "; Prisma runs a migration outside a transaction only when its file holds that statement alone; refinery runs every migration in a transaction and drizzle all pending ones in one (as those tools do), so there use its plain form (CREATE INDEX without CONCURRENTLY) or run it separately"
    } else if code.code() == "55P04" {
        "; a value added with ALTER TYPE ... ADD VALUE cannot be used in the transaction that added it: use it in a later migration, applied in a later run (drizzle applies all pending migrations in one transaction)"
    } else {
        ""
    }
}
