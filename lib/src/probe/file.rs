//! The file probe (`file:///path?max-age=26h`): the file exists and was modified
//! recently, read from its modification time, which `backup` sets on its status file
//! to say whether the last run and drill succeeded. Its own module because it touches
//! no network at all.

use std::time::{Duration, SystemTime};

use crate::duration;
use crate::net::{transient, NetError};

pub(super) fn probe_file(
    path: &std::path::Path,
    max_age: Option<Duration>,
) -> Result<String, NetError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => transient("missing"),
        _ => transient(crate::error::io_reason(&e)),
    })?;
    let modified = meta
        .modified()
        .map_err(|e| transient(crate::error::io_reason(&e)))?;
    // `backup` dates its status file 2 s after the epoch while its last drill failed
    // (backup::status::DRILL_FAILED_SECS).
    if modified == SystemTime::UNIX_EPOCH + Duration::from_secs(2) {
        return Err(transient(
            "the last backup drill failed: the newest backup does not restore as it was taken (see last_drill in the file, and the backup's log)",
        ));
    }
    // `backup` dates its status file to the last success; 1970 means none yet.
    if modified <= SystemTime::UNIX_EPOCH + Duration::from_secs(1) {
        return Err(transient(
            "no successful run yet (the file is dated 1970-01-01: no backup has succeeded)",
        ));
    }
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    match max_age {
        Some(max) if age > max => Err(transient(format!(
            "stale: modified {} ago, max-age {}",
            duration::format(Duration::from_secs(age.as_secs())),
            duration::format(max)
        ))),
        _ => Ok(format!(
            "modified {} ago",
            duration::format(Duration::from_secs(age.as_secs()))
        )),
    }
}
