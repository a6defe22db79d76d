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

/// The first scheduled time after `now`.
pub fn next_after(
    schedule: &cron::Schedule,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&now.with_timezone(&tz))
        .next()
        .map(|t| t.with_timezone(&Utc))
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
    let report = |runner: &Runner| {
        let r = runner.run();
        if r.failures.is_empty() {
            info!("run finished: {} backup(s) made", r.made.len());
        } else {
            error!("run failed: {}", r.failures.join("; "));
        }
    };
    if s.on_start && !stop.is_requested() {
        report(runner);
    }
    loop {
        if stop.is_requested() {
            break;
        }
        let Some(next) = next_after(&schedule, tz, Utc::now()) else {
            warn!("the schedule has no future time: nothing more to do");
            // Stay up (a restarting container helps no one) until stopped.
            stop.sleep_until(SystemTime::now() + Duration::from_secs(u32::MAX as u64));
            break;
        };
        info!(
            "next backup at {}",
            next.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
        );
        if stop.sleep_until(SystemTime::from(next)) {
            break;
        }
        report(runner);
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
