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

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use cron::Schedule;
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

impl Between {
    fn noun(self) -> &'static str {
        match self {
            Between::Base => "base backup",
            Between::Drill => "drill",
        }
    }
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
    let d = Daemon::new(runner, stop, drills)?;
    d.announce();
    // After a failed run, retries with backoff come before the next scheduled time.
    // (the delay, and when: a deadline, which base backups and drills between runs
    // do not push back)
    let mut retry: Option<(Duration, DateTime<Utc>)> = None;
    if runner.settings.on_start && !stop.is_requested() {
        retry = d.next_retry(d.run_once(), None);
    }
    while !stop.is_requested() {
        match d.next(retry.map(|(_, at)| at)) {
            Next::Never => {
                warn!("the schedule has no future time: nothing more to do");
                // Stay up (a restarting container helps no one) until stopped.
                stop.sleep_until(SystemTime::now() + Duration::from_secs(u32::MAX as u64));
                break;
            }
            Next::Between(at, what) => {
                d.log_next(what.noun(), at, "");
                if stop.sleep_until(SystemTime::from(at)) {
                    break;
                }
                match what {
                    Between::Base => base_backup(runner),
                    Between::Drill => {
                        drill::daemon_drill(runner, "latest", drills);
                    }
                }
            }
            Next::Run(at, is_retry) => {
                let why = if is_retry {
                    " (a retry of the failed run)"
                } else {
                    ""
                };
                d.log_next("backup", at, why);
                if stop.sleep_until(SystemTime::from(at)) {
                    break;
                }
                let ok = d.run_once();
                retry = d.next_retry(ok, if is_retry { retry } else { None });
            }
        }
    }
    info!("backup daemon stopped");
    Ok(0)
}

/// The daemon's schedules, parsed once, and what it needs for a run.
struct Daemon<'a> {
    runner: &'a Runner,
    stop: &'a Stop,
    drills: &'a DaemonDrills,
    schedule: Schedule,
    base_schedule: Option<Schedule>,
    drill_schedule: Option<Schedule>,
    tz: Tz,
}

/// What the daemon does next.
enum Next {
    /// A run at this time; true when it retries a failed one.
    Run(DateTime<Utc>, bool),
    /// A base backup or a drill, before the next run.
    Between(DateTime<Utc>, Between),
    /// Nothing ever again (a schedule with no future time).
    Never,
}

impl<'a> Daemon<'a> {
    fn new(
        runner: &'a Runner,
        stop: &'a Stop,
        drills: &'a DaemonDrills,
    ) -> Result<Daemon<'a>, BackupError> {
        let s = &runner.settings;
        let parse = |expr: &str| parse_schedule(expr).map_err(usage);
        Ok(Daemon {
            runner,
            stop,
            drills,
            schedule: parse(&s.schedule)?,
            base_schedule: s.base_schedule.as_deref().map(parse).transpose()?,
            drill_schedule: match &drills.when {
                When::Cron(expr) => Some(parse(expr)?),
                _ => None,
            },
            tz: parse_timezone(&s.timezone).map_err(usage)?,
        })
    }

    /// The start-up line: the schedule, its zone, and where backups go.
    fn announce(&self) {
        let s = &self.runner.settings;
        let places = [
            s.dir.as_ref().map(|d| d.display().to_string()),
            s.s3.as_ref()
                .map(|b| format!("s3://{}/{}", b.bucket, b.prefix)),
        ];
        info!(
            "backup daemon: schedule {:?} in {}, to {}",
            s.schedule,
            self.tz.name(),
            places
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" and ")
        );
    }

    fn log_next(&self, what: &str, at: DateTime<Utc>, why: &str) {
        info!(
            "next {what} at {}{why}",
            at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S %Z")
        );
    }

    /// The next run (scheduled, or the retry when earlier), unless a base backup or a
    /// drill on its own schedule comes first (the earlier of the two; a base backup
    /// first at the same time).
    fn next(&self, retry_at: Option<DateTime<Utc>>) -> Next {
        let now = Utc::now();
        let scheduled = next_after(&self.schedule, self.tz, now);
        let run = match (scheduled, retry_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Next::Never,
        };
        let between = [
            (self.base_schedule.as_ref(), Between::Base),
            (self.drill_schedule.as_ref(), Between::Drill),
        ]
        .into_iter()
        .filter_map(|(schedule, what)| Some((next_after(schedule?, self.tz, now)?, what)))
        .filter(|(at, _)| *at < run)
        .min_by_key(|(at, _)| *at);
        match between {
            Some((at, what)) => Next::Between(at, what),
            None => Next::Run(
                run,
                retry_at.is_some_and(|r| r == run) && scheduled != Some(run),
            ),
        }
    }

    /// The retry after a run, from now: none after a success (or with retries off),
    /// else the first delay, doubled after each failed retry up to 15 minutes.
    fn next_retry(
        &self,
        ok: bool,
        retry: Option<(Duration, DateTime<Utc>)>,
    ) -> Option<(Duration, DateTime<Utc>)> {
        let first = self.runner.settings.retry_delay;
        if ok || first.is_zero() {
            return None;
        }
        let delay = retry.map_or(first, |(d, _)| (d * 2).min(Duration::from_secs(900)));
        Some((
            delay,
            Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
        ))
    }

    /// One run, with its drills when `after-backup`; true when it succeeded. Before
    /// it, PostgreSQL is waited for, so a cold `docker compose up` does not fail the
    /// first run on "connection refused".
    fn run_once(&self) -> bool {
        let (runner, stop) = (self.runner, self.stop);
        let timeout = runner.settings.wait_timeout;
        if let Err(e) = runner.wait_for_database(timeout, &|| stop.is_requested()) {
            if stop.is_requested() {
                return true;
            }
            warn!("{e}; trying the run anyway");
        }
        let r = runner.run();
        if matches!(self.drills.when, When::AfterBackup) {
            for o in &r.made {
                if o.manifest.kind == super::manifest::Content::Database && !stop.is_requested() {
                    drill::daemon_drill(runner, &o.manifest.name, self.drills);
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
    }
}
