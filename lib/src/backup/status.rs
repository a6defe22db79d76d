//! The status file (`BACKUP_STATUS_FILE`): JSON with the last success and the last
//! failure and its reason. Its modification time is always the time of the last
//! success, even when a failure is written, so `healthcheck
//! file:///backups/status.json?max-age=26h` reports a sidecar whose backups fail, or
//! that stopped running, as unhealthy.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::archive::{write_atomic, Manifest};
use super::{io_err, BackupError};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}))
}

fn save(path: &Path, v: &serde_json::Value) -> Result<(), BackupError> {
    write_atomic(
        path,
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(io_err(path))
}

/// Records a successful run.
pub fn success(path: &Path, m: &Manifest) -> Result<(), BackupError> {
    let mut v = read(path);
    v["last_success"] = serde_json::json!({
        "time": crate::log::rfc3339(m.finished, 0),
        "unix": m.finished,
        "name": m.name,
        "size": m.size,
        "sha256": m.sha256,
    });
    save(path, &v)
}

/// Records a failure, keeping the file's modification time at the last success (or
/// the epoch when there never was one).
pub fn failure(path: &Path, reason: &str) -> Result<(), BackupError> {
    let mut v = read(path);
    v["last_failure"] = serde_json::json!({
        "time": crate::log::rfc3339(now(), 0),
        "unix": now(),
        "reason": crate::url::redact_text(reason),
    });
    let last_ok = v["last_success"]["unix"].as_i64().unwrap_or(0).max(0) as u64;
    save(path, &v)?;
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(last_ok))
        .map_err(io_err(path))
}
