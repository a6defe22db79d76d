//! The scheduled daemon (`backup`, `backup daemon`): runs on `BACKUP_SCHEDULE` in `TZ`
//! (see [`super::schedule`]). Runs never overlap: the next time is computed after a
//! run ends, and a run that overruns skips the times it missed.
//!
//! A schedule that never runs is refused before the daemon starts (settings check it).
//!
//! Stopping: the first SIGTERM/SIGINT/SIGQUIT, or SIGHUP (no reload: the settings come
//! from the environment, which only a restart changes), stops the schedule; a running
//! backup gets `BACKUP_STOP_GRACE` to finish, then is cancelled (pg_dump killed,
//! partial file removed, multipart upload aborted); a second signal cancels at once.
//! The daemon then exits 0.
//!
//! Drills (`BACKUP_DRILL`, see [`super::drill`]): `after-backup` drills each database
//! backup a run made, right after it; a cron expression drills the latest backup at
//! its own times, between runs. Base backups (`BACKUP_BASE_SCHEDULE`, with WAL
//! streaming) are taken at their own times between runs too, each followed by
//! retention; nothing the daemon does on a schedule ever overlaps another.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use tracing::{error, info, warn};

use super::drill::{self, DaemonDrills, When};
use super::run::Runner;
use super::schedule::{next_after, parse_schedule, parse_timezone};
use super::{usage, BackupError, Cancel};

/// The daemon's stop request, shared with the signal thread.
#[derive(Default)]
pub struct Stop {
    requested: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    pub fn request(&self) {
        if let Ok(mut r) = self.requested.lock() {
            *r = true;
        }
        self.cv.notify_all();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.lock().map(|r| *r).unwrap_or(true)
    }

    /// Sleeps until `t` (wall clock); true when a stop was requested first.
    pub fn sleep_until(&self, t: SystemTime) -> bool {
        let Ok(mut r) = self.requested.lock() else {
            return true;
        };
        loop {
            if *r {
                return true;
            }
            let left = match t.duration_since(SystemTime::now()) {
                Ok(d) if !d.is_zero() => d,
                _ => return false,
            };
            // Re-check the wall clock at least once a minute (suspend, clock steps).
            match self.cv.wait_timeout(r, left.min(Duration::from_secs(60))) {
                Ok((g, _)) => r = g,
                Err(_) => return true,
            }
        }
    }
}

/// How the signal thread reacts.
#[derive(Debug, Clone, Copy)]
pub enum OnSignal {
    /// The daemon: stop scheduling, give the running backup `grace`, then cancel.
    StopAfter(Duration),
    /// One command (`now`, `restore`, `verify`): cancel at once.
    CancelNow,
}

/// Starts the thread that waits for the backup commands' signals
/// ([`crate::signals::BACKUP`], blocked in `main` before any thread starts). Returns the
/// number of the first signal received, once there is one, through the slot.
pub fn watch_signals(
    mode: OnSignal,
    stop: Arc<Stop>,
    cancel: Arc<Cancel>,
) -> Arc<Mutex<Option<i32>>> {
    let first: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let slot = first.clone();
    std::thread::spawn(move || {
        let set = crate::signals::set_of(&crate::signals::BACKUP);
        let mut count = 0;
        while let Ok(sig) = set.wait() {
            count += 1;
            if let Ok(mut f) = slot.lock() {
                f.get_or_insert(sig as i32);
            }
            let name = sig.as_str();
            match (mode, count) {
                (OnSignal::StopAfter(grace), 1) => {
                    info!(
                        "{name}: stopping; a running backup has {} to finish",
                        crate::duration::format(grace)
                    );
                    stop.request();
                    let cancel = cancel.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(grace);
                        cancel.cancel(&format!(
                            "the stop grace of {} ran out",
                            crate::duration::format(grace)
                        ));
                    });
                }
                _ => {
                    stop.request();
                    cancel.cancel(&format!("{name} received"));
                }
            }
        }
    });
    first
}

/// What the daemon does between runs, on a schedule of its own.
#[derive(Debug, Clone, Copy)]
enum Between {
    Base,
    Drill,
}

/// A scheduled base backup, then retention (which also lets go of the WAL that only
/// older base backups needed).
fn base_backup(runner: &Runner) {
    match runner.base() {
        Ok(o) => {
            info!(
                "base backup {}: {} stored in {}",
                o.manifest.name,
                super::catalog::human_size(o.manifest.size),
                o.places()
            );
            for e in &o.errors {
                warn!(
                    "base backup {}: {e} (the copy in {} is kept)",
                    o.manifest.name,
                    o.places()
                );
            }
            if !runner.settings.retention.is_empty() {
                if let Err(e) = runner.prune(false) {
                    warn!("retention after the base backup: {e}");
                }
            }
        }
        Err(e) => error!("base backup failed: {e}"),
    }
}

/// Runs the daemon until stopped; returns the exit status (0).
pub fn run(runner: &Runner, stop: &Stop) -> Result<i32, BackupError> {
    run_drilling(runner, stop, &DaemonDrills::default())
}

/// [`run`], with drills (`BACKUP_DRILL`): after every backup, or on their own schedule.
pub fn run_drilling(
    runner: &Runner,
    stop: &Stop,
    drills: &DaemonDrills,
) -> Result<i32, BackupError> {
    let s = &runner.settings;
    let schedule = parse_schedule(&s.schedule).map_err(usage)?;
    let drill_schedule = match &drills.when {
        When::Cron(expr) => Some(parse_schedule(expr).map_err(usage)?),
        _ => None,
    };
    let base_schedule = match &s.base_schedule {
        Some(expr) => Some(parse_schedule(expr).map_err(usage)?),
        None => None,
    };
    let tz = parse_timezone(&s.timezone).map_err(usage)?;
    info!(
        "backup daemon: schedule {:?} in {}, to {}",
        s.schedule,
        tz.name(),
        [
            s.dir.as_ref().map(|d| d.display().to_string()),
            s.s3.as_ref()
                .map(|b| format!("s3://{}/{}", b.bucket, b.prefix)),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
    );
    // One run; true when it succeeded. Before it, PostgreSQL is waited for, so a cold
    // `docker compose up` does not fail the first run on "connection refused".
    let report = |runner: &Runner| -> bool {
        if let Err(e) = runner.wait_for_database(s.wait_timeout, &|| stop.is_requested()) {
            if stop.is_requested() {
                return true;
            }
            warn!("{e}; trying the run anyway");
        }
        let r = runner.run();
        if matches!(drills.when, When::AfterBackup) {
            for o in &r.made {
                if o.manifest.kind == super::manifest::Content::Database && !stop.is_requested() {
                    drill::daemon_drill(runner, &o.manifest.name, drills);
                }
            }
        }
        if r.failures.is_empty() {
            info!("run finished: {} backup(s) made", r.made.len());
            true
        } else {
            error!("run failed: {}", r.failures.join("; "));
            false
        }
    };
    // After a failed run, retries with backoff come before the next scheduled time.
    let mut retry: Option<Duration> = None;
    let next_retry = |ok: bool, retry: Option<Duration>| -> Option<Duration> {
        if ok || s.retry_delay.is_zero() {
            None
        } else {
            Some(retry.map_or(s.retry_delay, |d| (d * 2).min(Duration::from_secs(900))))
        }
    };
    if s.on_start && !stop.is_requested() {
        let ok = report(runner);
        retry = next_retry(ok, retry);
    }
    loop {
        if stop.is_requested() {
            break;
        }
        let scheduled = next_after(&schedule, tz, Utc::now());
        let retry_at =
            retry.map(|d| Utc::now() + chrono::Duration::from_std(d).unwrap_or_default());
        let next = match (scheduled, retry_at) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => {
                    warn!("the schedule has no future time: nothing more to do");
                    // Stay up (a restarting container helps no one) until stopped.
                    stop.sleep_until(SystemTime::now() + Duration::from_secs(u32::MAX as u64));
                    break;
                }
            },
        };
        // A drill or a base backup on its own schedule, when it comes before the next
        // run (the earlier of the two; a base backup first at the same time).
        let between = [
            (base_schedule.as_ref(), Between::Base),
            (drill_schedule.as_ref(), Between::Drill),
        ]
        .into_iter()
        .filter_map(|(schedule, what)| Some((next_after(schedule?, tz, Utc::now())?, what)))
        .filter(|(at, _)| *at < next)
        .min_by_key(|(at, _)| *at);
        if let Some((at, what)) = between {
            info!(
                "next {} at {}",
                match what {
                    Between::Base => "base backup",
                    Between::Drill => "drill",
                },
                at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
            );
            if stop.sleep_until(SystemTime::from(at)) {
                break;
            }
            match what {
                Between::Base => base_backup(runner),
                Between::Drill => {
                    drill::daemon_drill(runner, "latest", drills);
                }
            }
            continue;
        }
        let is_retry = retry_at.is_some_and(|r| r == next) && scheduled != Some(next);
        info!(
            "next backup at {}{}",
            next.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
            if is_retry {
                " (a retry of the failed run)"
            } else {
                ""
            }
        );
        if stop.sleep_until(SystemTime::from(next)) {
            break;
        }
        let ok = report(runner);
        retry = if is_retry {
            next_retry(ok, retry)
        } else {
            next_retry(ok, None)
        };
    }
    info!("backup daemon stopped");
    Ok(0)
}
