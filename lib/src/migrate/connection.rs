//! The connection migrations run over: which URL (`DIRECT_URL`, else `DATABASE_URL`
//! with a warning), the refusal of a transaction pooler, and the session set up as the
//! folder's own tool would. Its own module because both the phase and
//! `--migrate-status` connect this way before they read or change anything.

use tokio_postgres::Client;
use tracing::warn;

use super::detect::Format;
use super::failure::{err, MigrateError};
use super::prisma;
use crate::config::ConfigError;
use crate::pg::PgTarget;

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

/// Connects for `--migrate-status`: the same checks as a run, no lock.
pub async fn connect_for_status(target: &PgTarget) -> Result<Client, MigrateError> {
    target
        .connect()
        .await
        .map_err(|e| err(format!("{}: {e}", target.url)).with_source(e))
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
