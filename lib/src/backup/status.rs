//! The status file (`BACKUP_STATUS_FILE`): JSON with the last success and the last
//! failure and its reason. Its modification time is always the time of the last
//! success, even when a failure is written, so `healthcheck
//! file:///backups/status.json?max-age=26h` reports a sidecar whose backups fail, or
//! that stopped running, as unhealthy. Also the optional outward signals: pings to a
//! healthchecks.io-style URL and a Prometheus text-format metrics file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::manifest::Manifest;
use super::{io_err, unix_now as now, BackupError};
use crate::files::{write_atomic_dated, write_atomic_public};

fn read(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}))
}

/// Writes the status; `modified` dates the file (a failure keeps the last success's
/// time), set before the file appears so no reader ever sees it dated now.
fn save(
    path: &Path,
    v: &serde_json::Value,
    modified: Option<SystemTime>,
) -> Result<(), BackupError> {
    write_atomic_dated(
        path,
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
        modified,
    )
    .map_err(io_err(path))
}

/// Records a successful run and the backups it made.
pub fn success(path: &Path, made: &[Manifest]) -> Result<(), BackupError> {
    let mut v = read(path);
    let t = now();
    v["last_success"] = serde_json::json!({
        "time": crate::time::rfc3339(t, 0),
        "unix": t,
        "backups": made.iter().map(|m| serde_json::json!({
            "name": m.name,
            "file": m.file,
            "size": m.size,
            "sha256": m.sha256,
        })).collect::<Vec<_>>(),
    });
    save(path, &v, None)
}

/// Records a failure, keeping the file's modification time at the last success (or
/// the epoch when there never was one).
pub fn failure(path: &Path, reason: &str) -> Result<(), BackupError> {
    let mut v = read(path);
    v["last_failure"] = serde_json::json!({
        "time": crate::time::rfc3339(now(), 0),
        "unix": now(),
        "reason": crate::redact::text(reason),
    });
    let last_ok = v["last_success"]["unix"].as_i64().unwrap_or(0).max(0) as u64;
    save(
        path,
        &v,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(last_ok)),
    )
}

/// Pings `base` + `suffix` (`/start`, `""` for success, `/fail`), healthchecks.io
/// style. A ping that fails is a warning, never a failed backup.
pub fn ping(rt: &tokio::runtime::Handle, base: &str, suffix: &str) {
    let raw = format!("{base}{suffix}");
    let target = match crate::probe::Target::parse(&raw) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("ping {}: {e}", crate::redact::text(&raw));
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let opts = crate::probe::HttpOptions {
        expect_status: crate::probe::StatusSet::parse("200-399").unwrap_or_default(),
        ..Default::default()
    };
    let report = rt.block_on(crate::probe::probe(&target, &opts, deadline));
    match report.outcome {
        Ok(_) => tracing::debug!("pinged {}", report.target),
        Err(f) => tracing::warn!("ping {}: {}", report.target, f.message()),
    }
}

/// What the metrics file reports about the last run.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    pub success: bool,
    pub seconds: f64,
    pub bytes: u64,
}

/// Writes Prometheus metrics in the text format, for node_exporter's textfile
/// collector (or any file-reading scraper): last success and failure times, the last
/// run's duration and size, and run counters (kept in the file itself). Mode 0644.
pub fn metrics(path: &Path, run: &RunMetrics) -> Result<(), BackupError> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let value = |name: &str| -> f64 {
        old.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let now = now() as f64;
    let mut ok = value("dockhand_backup_runs_total{result=\"success\"}");
    let mut failed = value("dockhand_backup_runs_total{result=\"failure\"}");
    let mut last_ok = value("dockhand_backup_last_success_timestamp_seconds");
    let mut last_fail = value("dockhand_backup_last_failure_timestamp_seconds");
    if run.success {
        ok += 1.0;
        last_ok = now;
    } else {
        failed += 1.0;
        last_fail = now;
    }
    let text = format!(
        "# HELP dockhand_backup_last_success_timestamp_seconds Unix time of the last successful backup run.\n\
         # TYPE dockhand_backup_last_success_timestamp_seconds gauge\n\
         dockhand_backup_last_success_timestamp_seconds {last_ok}\n\
         # HELP dockhand_backup_last_failure_timestamp_seconds Unix time of the last failed backup run.\n\
         # TYPE dockhand_backup_last_failure_timestamp_seconds gauge\n\
         dockhand_backup_last_failure_timestamp_seconds {last_fail}\n\
         # HELP dockhand_backup_last_duration_seconds Duration of the last run.\n\
         # TYPE dockhand_backup_last_duration_seconds gauge\n\
         dockhand_backup_last_duration_seconds {:.3}\n\
         # HELP dockhand_backup_last_size_bytes Bytes stored by the last run.\n\
         # TYPE dockhand_backup_last_size_bytes gauge\n\
         dockhand_backup_last_size_bytes {}\n\
         # HELP dockhand_backup_runs_total Backup runs by result.\n\
         # TYPE dockhand_backup_runs_total counter\n\
         dockhand_backup_runs_total{{result=\"success\"}} {ok}\n\
         dockhand_backup_runs_total{{result=\"failure\"}} {failed}\n",
        run.seconds, run.bytes
    );
    // 0644: node_exporter usually runs as another user, and the file holds counts and
    // times only. (The status file, which may hold an error's text, stays 0600.)
    write_atomic_public(path, text.as_bytes()).map_err(io_err(path))
}
