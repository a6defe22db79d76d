//! Base backups for point-in-time recovery: the server major's `pg_basebackup`, run
//! as pg_dump is (the same clean libpq environment), writes the whole cluster as one
//! tar to its stdout (`-D - -Ft -X none`), which goes through the same pipeline as a
//! dump (archive.rs: zstd or gzip, age, SHA-256, folder and S3, manifest). The WAL it
//! needs is not in the tar: it is streamed offsite beside it, so the manifest records
//! the range of WAL (start and end positions, timeline) that makes it consistent.
//!
//! A replication connection needs a role with REPLICATION and a `pg_hba.conf` line
//! whose database field is `replication` (`all` does not match it): pg_basebackup's
//! own refusal is explained in those words.

use std::process::Command;

use super::dump::{self, Tools};
use super::{err, BackupError};
use crate::pg::PgTarget;

/// `pg_basebackup` writing one tar of the cluster to stdout, without WAL, after a
/// fast checkpoint (a spread one makes the backup wait up to minutes for nothing).
pub fn command(tools: &Tools, target: &PgTarget, label: &str) -> Command {
    let mut c = dump::libpq_command(&tools.pg_basebackup(), Some(target));
    // Its refusals are matched by [`explain`]: untranslated.
    c.env("LC_MESSAGES", "C")
        .env_remove("LC_ALL")
        .env_remove("LANGUAGE");
    c.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
    ]);
    c.arg(format!("--label={label}"));
    c
}

/// The server's current WAL position and timeline. Read before pg_basebackup starts
/// and after it ended, they bound the range its backup needs (pg_basebackup reports
/// its own positions only when it fetches the WAL itself, which `-X none` does not):
/// keeping WAL from the earlier and recovering past the later is always enough.
pub async fn position(target: &PgTarget) -> Result<(String, u32), BackupError> {
    let url = &target.url;
    let client = target
        .connect()
        .await
        .map_err(|e| err(format!("{url}: {e}")).with_source(e))?;
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())",
            &[],
        )
        .await
        .map_err(|e| {
            err(format!(
                "{url}: reading the WAL position: {}",
                crate::pg::classify(&e)
            ))
        })?;
    let lsn: String = row.get(0);
    let timeline: i32 = row.get(1);
    Ok((lsn, timeline as u32))
}

/// pg_basebackup's refusal, with what to change on the server when it is about
/// replication access.
pub fn explain(reason: &str) -> String {
    if reason.contains("pg_hba.conf") && reason.contains("replication") {
        format!("{reason} (add a pg_hba.conf line for the role whose database field is `replication`: `all` does not match replication connections)")
    } else if reason.contains("replication role")
        || reason.contains("permission denied to start WAL sender")
    {
        format!("{reason} (the role needs REPLICATION: ALTER ROLE ... REPLICATION)")
    } else if reason.contains("number of requested standby connections exceeds")
        || reason.contains("max_wal_senders")
    {
        format!("{reason} (raise max_wal_senders on the server)")
    } else {
        reason.to_string()
    }
}
