//! The scheduled daemon (`backup`, `backup daemon`): runs on `BACKUP_SCHEDULE`, a
//! standard 5-field crontab line (`0 2 * * *`), a 6-field one with seconds first, or a
//! shortcut (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), in the time zone
//! `TZ` (IANA name, default UTC; the zone database is built in, so a scratch image
//! needs no /usr/share/zoneinfo). Runs never overlap: the next time is computed after a
//! run ends, and a run that overruns skips the times it missed.
//!
//! Stopping: the first SIGTERM/SIGINT stops the schedule; a running backup gets
//! `BACKUP_STOP_GRACE` to finish, then is cancelled (pg_dump killed, partial file
//! removed, multipart upload aborted); a second signal cancels at once. The daemon
//! then exits 0.
//!
//! Day-of-week numbers follow crontab (0 or 7 = Sunday); the `cron` crate counts
//! 1 = Sunday, so the field is translated. As in the `cron` crate, a line restricting
//! both day of month and day of week matches days that satisfy both.

use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use super::run::Runner;
use super::Cancel;

/// Parses a schedule (see the module docs).
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    let e = expr.trim();
    let bad = |why: String| {
        format!(
            "BACKUP_SCHEDULE={expr:?}: {why}; use 5 crontab fields (minute hour day month weekday, e.g. \"0 2 * * *\") or @hourly/@daily/@weekly/@monthly"
        )
    };
    let translated = if e.starts_with('@') {
        e.to_string()
    } else {
        let fields: Vec<&str> = e.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0".to_string(), &fields[..]),
            6 | 7 => (fields[0].to_string(), &fields[1..]),
            n => return Err(bad(format!("{n} fields"))),
        };
        let dow = weekday_field(rest[4]).map_err(bad)?;
        let mut out = vec![
            sec,
            rest[0].into(),
            rest[1].into(),
            rest[2].into(),
            rest[3].into(),
            dow,
        ];
        if rest.len() == 6 {
            out.push(rest[5].into());
        }
        out.join(" ")
    };
    cron::Schedule::from_str(&translated).map_err(|e| bad(e.to_string()))
}

/// Translates a crontab weekday field (0-7, Sunday = 0 or 7, names, ranges, steps,
/// lists) into the `cron` crate's numbering (1-7, Sunday = 1).
fn weekday_field(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let day = |s: &str| -> Result<u32, String> {
        let up = s.to_ascii_uppercase();
        if let Some(i) = NAMES.iter().position(|n| *n == up) {
            return Ok(i as u32);
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= 7)
            .ok_or_else(|| format!("weekday {s:?} is not 0-7 or SUN-SAT"))
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step {s:?} is not a positive number"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None if step > 1 => (day(r)?, 6),
                None => (day(r)?, day(r)?),
            },
        };
        if lo > hi {
            return Err(format!("weekday range {range:?} runs backwards"));
        }
        let mut d = lo;
        while d <= hi {
            days[(d % 7) as usize] = true;
            d += step;
        }
    }
    Ok(days
        .iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(d, _)| (d + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// Parses `TZ` (an IANA name such as `Europe/Berlin`; a leading `:` is allowed).
pub fn parse_timezone(tz: &str) -> Result<chrono_tz::Tz, String> {
    let name = tz.trim().trim_start_matches(':');
    chrono_tz::Tz::from_str(name)
        .map_err(|_| format!("TZ={tz:?} is not a time zone name: use e.g. UTC or Europe/Berlin"))
}

/// The first scheduled time after `now`, as cron does around daylight saving:
/// schedules match wall-clock times in `tz`; a wall-clock time that does not exist
/// (skipped by a spring-forward) runs at the first instant after the change; one that
/// exists twice (the repeated hour of a fall-back) runs once, at its first occurrence.
/// (The `cron` crate alone skips a non-existent time, and the day with it: a daily
/// 02:00 job in Europe/Berlin would not run on the last Sunday of March.)
pub fn next_after(
    schedule: &cron::Schedule,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::{LocalResult, TimeZone};
    // Wall-clock times, computed on a zone without transitions (UTC as a stand-in).
    let wall_now = now.with_timezone(&tz).naive_local().and_utc();
    for wall in schedule.after(&wall_now).take(10_000) {
        let wall = wall.naive_utc();
        let at = match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => gap_end(tz, wall)?,
        };
        if at > now {
            return Some(at);
        }
    }
    None
}

/// The instant a spring-forward gap containing the wall-clock time `wall` ends: the
/// first instant whose local time is later than `wall`.
fn gap_end(tz: chrono_tz::Tz, wall: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    use chrono::TimeZone;
    // Before the gap, a few hours earlier, the wall clock is unambiguous.
    let before = tz
        .from_local_datetime(&(wall - chrono::Duration::hours(4)))
        .earliest()?
        .with_timezone(&Utc);
    let (mut lo, mut hi) = (before.timestamp(), before.timestamp() + 8 * 3600);
    let later = |t: i64| {
        DateTime::from_timestamp(t, 0).is_some_and(|u| u.with_timezone(&tz).naive_local() > wall)
    };
    if !later(hi) {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if later(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

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

/// The signals the backup commands handle; blocked in `main` before any thread starts
/// (every thread inherits the mask) and read by [`watch_signals`].
pub fn signal_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
    ] {
        s.add(sig);
    }
    s
}

/// Starts the thread that waits for the signals of [`signal_set`]. Returns the
/// number of the first signal received, once there is one, through the slot.
pub fn watch_signals(
    mode: OnSignal,
    stop: Arc<Stop>,
    cancel: Arc<Cancel>,
) -> Arc<Mutex<Option<i32>>> {
    let first: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let slot = first.clone();
    std::thread::spawn(move || {
        let set = signal_set();
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

/// Runs the daemon until stopped; returns the exit status (0).
pub fn run(runner: &Runner, stop: &Stop) -> Result<i32, String> {
    let s = &runner.settings;
    let schedule = parse_schedule(&s.schedule)?;
    let tz = parse_timezone(&s.timezone)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn crontab_weekdays_mean_what_crontab_says() {
        let tz = parse_timezone("UTC").unwrap();
        // 2026-11-23 is a Monday.
        let mon = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let next = |e: &str| next_after(&parse_schedule(e).unwrap(), tz, mon).unwrap();
        assert_eq!(next("0 2 * * 0").to_rfc3339(), "2026-11-29T02:00:00+00:00"); // Sunday
        assert_eq!(next("0 2 * * 7").to_rfc3339(), "2026-11-29T02:00:00+00:00");
        assert_eq!(next("0 2 * * 2").to_rfc3339(), "2026-11-24T02:00:00+00:00"); // Tuesday
        assert_eq!(
            next("0 2 * * MON-FRI").to_rfc3339(),
            "2026-11-24T02:00:00+00:00"
        );
        assert_eq!(
            next("0 2 * * 5-7").to_rfc3339(),
            "2026-11-27T02:00:00+00:00"
        );
        assert_eq!(next("30 3 * * *").to_rfc3339(), "2026-11-24T03:30:00+00:00");
        assert_eq!(next("@daily").to_rfc3339(), "2026-11-24T00:00:00+00:00");
        assert_eq!(
            next("*/5 * * * * *").to_rfc3339(),
            "2026-11-23T12:00:05+00:00"
        );
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        let t = next_after(&parse_schedule("0 2 * * *").unwrap(), berlin, mon).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T01:00:00+00:00");
    }

    #[test]
    fn daylight_saving_runs_as_cron_does() {
        let daily = parse_schedule("0 2 * * *").unwrap();
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        let at = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
        // Spring forward 2027-03-28 02:00 CET -> 03:00 CEST: 02:00 does not exist; it
        // runs at the change (01:00Z), not 47 hours later.
        let next = next_after(&daily, berlin, at(2027, 3, 27, 1, 0)).unwrap();
        assert_eq!(next, at(2027, 3, 28, 1, 0));
        assert_eq!(
            next_after(&daily, berlin, next).unwrap(),
            at(2027, 3, 29, 0, 0)
        );
        // Fall back 2027-10-31 03:00 CEST -> 02:00 CET: 02:00 happens twice, runs once.
        let next = next_after(&daily, berlin, at(2027, 10, 30, 0, 0)).unwrap();
        assert_eq!(next, at(2027, 10, 31, 0, 0));
        assert_eq!(
            next_after(&daily, berlin, next).unwrap(),
            at(2027, 11, 1, 1, 0)
        );
        // An hourly job over the repeated hour: each wall-clock time once.
        let hourly = parse_schedule("30 * * * *").unwrap();
        let mut t = at(2027, 10, 30, 23, 0);
        let mut runs = Vec::new();
        for _ in 0..4 {
            t = next_after(&hourly, berlin, t).unwrap();
            runs.push(t.with_timezone(&berlin).format("%H:%M %Z").to_string());
        }
        assert_eq!(runs, ["01:30 CEST", "02:30 CEST", "03:30 CET", "04:30 CET"]);
        // Every 15 minutes across a gap: the times inside it run once, at its end.
        let quarter = parse_schedule("*/15 * * * *").unwrap();
        let ny = parse_timezone("America/New_York").unwrap();
        let mut t = at(2027, 3, 14, 6, 50); // 01:50 EST
        let mut runs = Vec::new();
        for _ in 0..3 {
            t = next_after(&quarter, ny, t).unwrap();
            runs.push(t.with_timezone(&ny).format("%H:%M %Z").to_string());
        }
        assert_eq!(runs, ["03:00 EDT", "03:15 EDT", "03:30 EDT"]);
        // Lord Howe: a 30-minute shift.
        let lh = parse_timezone("Australia/Lord_Howe").unwrap();
        let half = parse_schedule("15 2 * * *").unwrap();
        let next = next_after(&half, lh, at(2027, 10, 2, 12, 0)).unwrap();
        assert_eq!(next.with_timezone(&lh).format("%H:%M").to_string(), "02:30");
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        for bad in [
            "",
            "0 2 * *",
            "0 25 * * *",
            "0 2 * * 8",
            "@sometimes",
            "0 2 * * 5-1",
        ] {
            let e = parse_schedule(bad).unwrap_err();
            assert!(
                e.contains("BACKUP_SCHEDULE") && e.contains("0 2 * * *"),
                "{e}"
            );
        }
        assert!(parse_timezone("Mars/Olympus")
            .unwrap_err()
            .contains("Europe/Berlin"));
    }
}
