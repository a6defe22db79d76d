//! The status file (`BACKUP_STATUS_FILE`): JSON with the last success and the last
//! failure and its reason. Its modification time is always the time of the last
//! success, even when a failure is written, so `healthcheck
//! file:///backups/status.json?max-age=26h` reports a sidecar whose backups fail, or
//! that stopped running, as unhealthy. A failed drill ([`super::drill`]) dates the file
//! 2 s after the epoch until a drill passes again: the newest backup does not restore, so the
//! same healthcheck turns unhealthy at once, and `last_drill` says why. Also the
//! optional outward signals: pings to a healthchecks.io-style URL and a Prometheus
//! text-format metrics file.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::manifest::{Drill, Manifest};
use super::{io_err, unix_now as now, BackupError};
use crate::files::{write_atomic_dated, write_atomic_public};

/// Held while the status or the metrics file is read and written again: the daemon's
/// runs and its WAL streaming both update them.
static FILES: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    FILES.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let _held = lock();
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
    let dated = drill_failed(&v).then_some(drill_failed_date());
    save(path, &v, dated)
}

/// The status file's date while the last drill failed: 2 s after the epoch, which
/// `healthcheck file://` reports as a failed drill (and any `max-age` as stale).
pub const DRILL_FAILED_SECS: u64 = 2;

fn drill_failed_date() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(DRILL_FAILED_SECS)
}

/// Whether the last drill recorded in the status failed.
fn drill_failed(v: &serde_json::Value) -> bool {
    v["last_drill"]["ok"].as_bool() == Some(false)
}

/// The time the status file is dated at when no run succeeds now: the last success,
/// the epoch when there never was one, or [`DRILL_FAILED_SECS`] when the last drill failed.
fn dated(v: &serde_json::Value) -> SystemTime {
    let last_ok = v["last_success"]["unix"].as_i64().unwrap_or(0).max(0) as u64;
    if drill_failed(v) {
        drill_failed_date()
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_secs(last_ok)
    }
}

/// Records a drill of `backup`: a failed one dates the file at [`DRILL_FAILED_SECS`] (unhealthy
/// for any `max-age`) until a drill passes, which dates it at the last success again.
pub fn drill(path: &Path, backup: &str, d: &Drill) -> Result<(), BackupError> {
    let _held = lock();
    let mut v = read(path);
    v["last_drill"] = serde_json::json!({
        "time": crate::time::rfc3339(d.at, 0),
        "unix": d.at,
        "backup": backup,
        "ok": d.ok,
        "restore_seconds": d.seconds,
        "rows_missing": d.rows_missing,
        "problems": d.problems.iter().map(|p| crate::redact::text(p)).collect::<Vec<_>>(),
    });
    save(path, &v, Some(dated(&v)))
}

/// Records a failure, keeping the file's modification time at the last success (or
/// the epoch when there never was one).
pub fn failure(path: &Path, reason: &str) -> Result<(), BackupError> {
    let _held = lock();
    let mut v = read(path);
    v["last_failure"] = serde_json::json!({
        "time": crate::time::rfc3339(now(), 0),
        "unix": now(),
        "reason": crate::redact::text(reason),
    });
    save(path, &v, Some(dated(&v)))
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

/// A counter or gauge's value in a metrics file written before (0 when absent), so
/// that counters carry on across runs.
fn metric_value(old: &str, name: &str) -> f64 {
    old.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Writes Prometheus metrics in the text format, for node_exporter's textfile
/// collector (or any file-reading scraper): last success and failure times, the last
/// run's duration and size, and run counters (kept in the file itself). Mode 0644.
pub fn metrics(path: &Path, run: &RunMetrics) -> Result<(), BackupError> {
    let _held = lock();
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let value = |name: &str| metric_value(&old, name);
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
    // the drill's, the WAL's and the base backups' lines, written by
    // [`drill_metrics`], [`wal_metrics`] and [`base`], are kept
    let mut text = text;
    for l in old
        .lines()
        .filter(|l| is_drill_line(l) || is_wal_line(l) || is_base_line(l))
    {
        text.push_str(l);
        text.push('\n');
    }
    // 0644: node_exporter usually runs as another user, and the file holds counts and
    // times only. (The status file, which may hold an error's text, stays 0600.)
    write_atomic_public(path, text.as_bytes()).map_err(io_err(path))
}

/// Records a base backup (`backup base`, or the daemon's `BACKUP_BASE_SCHEDULE`) in
/// the status file (`last_base_backup`, and `last_failure` when it failed, as a failed
/// run) and the metrics file (`dockhand_backup_base_*`), keeping the file's date:
/// `made` is the backup's name, or `Err` with the reason it failed.
pub fn base(
    status: Option<&Path>,
    metrics: Option<&Path>,
    made: Result<&str, &str>,
) -> Result<(), BackupError> {
    let _held = lock();
    let t = now();
    if let Some(path) = status {
        let mut v = read(path);
        v["last_base_backup"] = match made {
            Ok(name) => serde_json::json!({
                "time": crate::time::rfc3339(t, 0),
                "unix": t,
                "ok": true,
                "name": name,
            }),
            Err(reason) => serde_json::json!({
                "time": crate::time::rfc3339(t, 0),
                "unix": t,
                "ok": false,
                "reason": crate::redact::text(reason),
            }),
        };
        if let Err(reason) = made {
            v["last_failure"] = serde_json::json!({
                "time": crate::time::rfc3339(t, 0),
                "unix": t,
                "reason": crate::redact::text(&format!("base backup: {reason}")),
            });
        }
        save(path, &v, Some(dated(&v)))?;
    }
    if let Some(path) = metrics {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let value = |name: &str| metric_value(&old, name);
        let mut ok = value("dockhand_backup_base_runs_total{result=\"success\"}");
        let mut failed = value("dockhand_backup_base_runs_total{result=\"failure\"}");
        let mut last_ok = value("dockhand_backup_base_last_success_timestamp_seconds");
        let mut last_fail = value("dockhand_backup_base_last_failure_timestamp_seconds");
        if made.is_ok() {
            ok += 1.0;
            last_ok = t as f64;
        } else {
            failed += 1.0;
            last_fail = t as f64;
        }
        let mut text: String = old
            .lines()
            .filter(|l| !is_base_line(l))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "# HELP dockhand_backup_base_last_success_timestamp_seconds Unix time of the last successful base backup.\n\
             # TYPE dockhand_backup_base_last_success_timestamp_seconds gauge\n\
             dockhand_backup_base_last_success_timestamp_seconds {last_ok}\n\
             # HELP dockhand_backup_base_last_failure_timestamp_seconds Unix time of the last failed base backup.\n\
             # TYPE dockhand_backup_base_last_failure_timestamp_seconds gauge\n\
             dockhand_backup_base_last_failure_timestamp_seconds {last_fail}\n\
             # HELP dockhand_backup_base_runs_total Base backups by result.\n\
             # TYPE dockhand_backup_base_runs_total counter\n\
             dockhand_backup_base_runs_total{{result=\"success\"}} {ok}\n\
             dockhand_backup_base_runs_total{{result=\"failure\"}} {failed}\n"
        ));
        write_atomic_public(path, text.as_bytes()).map_err(io_err(path))?;
    }
    Ok(())
}

/// A line of the metrics file that [`base`] writes.
fn is_base_line(l: &str) -> bool {
    l.contains("dockhand_backup_base_")
}

/// A line of the metrics file that [`drill_metrics`] writes.
fn is_drill_line(l: &str) -> bool {
    l.contains("dockhand_backup_drill_") || l.contains("dockhand_backup_restore_rows_missing")
}

/// A line of the metrics file that [`wal_metrics`] writes.
fn is_wal_line(l: &str) -> bool {
    l.contains("dockhand_backup_wal_")
}

/// The health of WAL streaming: the slot's lag on the server and the continuity of
/// the stored WAL (`None`: unknown, or no base backup to check from).
#[derive(Debug, Clone, Default)]
pub struct WalHealth {
    pub lag_bytes: Option<i64>,
    pub continuous: Option<bool>,
    /// What the continuity check found, for a person.
    pub continuity: Option<String>,
}

/// Records the WAL streaming's health in the status file (`wal`), keeping its date.
pub fn wal(path: &Path, h: &WalHealth) -> Result<(), BackupError> {
    let _held = lock();
    let mut v = read(path);
    let t = now();
    v["wal"] = serde_json::json!({
        "time": crate::time::rfc3339(t, 0),
        "unix": t,
        "lag_bytes": h.lag_bytes,
        "continuous": h.continuous,
        "continuity": h.continuity,
    });
    save(path, &v, Some(dated(&v)))
}

/// Writes the WAL streaming's metrics into the metrics file, keeping the others:
/// `dockhand_backup_wal_lag_bytes` and `dockhand_backup_wal_continuous` (each only
/// when known).
pub fn wal_metrics(path: &Path, h: &WalHealth) -> Result<(), BackupError> {
    let _held = lock();
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| !is_wal_line(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(lag) = h.lag_bytes {
        text.push_str(&format!(
            "# HELP dockhand_backup_wal_lag_bytes WAL the replication slot holds on the server, not yet received by the sidecar.\n\
             # TYPE dockhand_backup_wal_lag_bytes gauge\n\
             dockhand_backup_wal_lag_bytes {lag}\n"
        ));
    }
    if let Some(c) = h.continuous {
        text.push_str(&format!(
            "# HELP dockhand_backup_wal_continuous Whether every WAL segment from the oldest base backup's start to the newest is stored (1) or not (0).\n\
             # TYPE dockhand_backup_wal_continuous gauge\n\
             dockhand_backup_wal_continuous {}\n",
            u8::from(c)
        ));
    }
    write_atomic_public(path, text.as_bytes()).map_err(io_err(path))
}

/// Writes the last drill's metrics into the metrics file, keeping the run's lines:
/// whether it passed, when, how long the restore took (the measured recovery time),
/// and the rows the restored copy lacked.
pub fn drill_metrics(path: &Path, d: &Drill) -> Result<(), BackupError> {
    let _held = lock();
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| !is_drill_line(l))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "# HELP dockhand_backup_drill_success Whether the last drill restored the backup with every table's rows (1) or not (0).\n\
         # TYPE dockhand_backup_drill_success gauge\n\
         dockhand_backup_drill_success {}\n\
         # HELP dockhand_backup_drill_timestamp_seconds Unix time of the last drill.\n\
         # TYPE dockhand_backup_drill_timestamp_seconds gauge\n\
         dockhand_backup_drill_timestamp_seconds {}\n\
         # HELP dockhand_backup_drill_duration_seconds Seconds the last drill's restore took (the measured recovery time).\n\
         # TYPE dockhand_backup_drill_duration_seconds gauge\n\
         dockhand_backup_drill_duration_seconds {:.3}\n\
         # HELP dockhand_backup_restore_rows_missing Rows of the backup the last drill's restored copy lacked.\n\
         # TYPE dockhand_backup_restore_rows_missing gauge\n\
         dockhand_backup_restore_rows_missing {}\n",
        u8::from(d.ok),
        d.at,
        d.seconds,
        d.rows_missing
    ));
    write_atomic_public(path, text.as_bytes()).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test (removed at the end of the test process's run).
    fn folder(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockhand-status-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mtime(p: &Path) -> SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn a_failed_drill_dates_the_status_at_the_epoch_until_one_passes() {
        let dir = folder("drill");
        let path = dir.join("status.json");
        success(&path, &[]).unwrap();
        let fresh = mtime(&path);
        assert!(fresh > SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let mut d = Drill {
            at: now(),
            ok: false,
            seconds: 1.0,
            rows_missing: 3,
            problems: vec!["public.t: 3 rows in the backup, 0 restored".into()],
        };
        drill(&path, "app-x", &d).unwrap();
        assert_eq!(mtime(&path), drill_failed_date());
        // a later successful run does not hide it, nor does a failed one
        success(&path, &[]).unwrap();
        assert_eq!(mtime(&path), drill_failed_date());
        failure(&path, "x").unwrap();
        assert_eq!(mtime(&path), drill_failed_date());
        let v = read(&path);
        assert_eq!(
            v["last_drill"]["problems"][0],
            "public.t: 3 rows in the backup, 0 restored"
        );
        d.ok = true;
        drill(&path, "app-x", &d).unwrap();
        assert!(mtime(&path) > SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_and_drill_metrics_keep_each_other() {
        let dir = folder("metrics");
        let path = dir.join("m.prom");
        metrics(
            &path,
            &RunMetrics {
                success: true,
                seconds: 1.0,
                bytes: 5,
            },
        )
        .unwrap();
        let d = Drill {
            at: 7,
            ok: false,
            seconds: 2.0,
            rows_missing: 4,
            problems: vec![],
        };
        drill_metrics(&path, &d).unwrap();
        metrics(
            &path,
            &RunMetrics {
                success: true,
                seconds: 1.0,
                bytes: 5,
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("dockhand_backup_drill_success 0\n"), "{text}");
        assert!(
            text.contains("dockhand_backup_restore_rows_missing 4\n"),
            "{text}"
        );
        assert!(
            text.contains("dockhand_backup_runs_total{result=\"success\"} 2\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE dockhand_backup_drill_success").count(),
            1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
