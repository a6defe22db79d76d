//! The backup schedule, a leaf of the backup modules (settings checks it, the daemon
//! follows it): `BACKUP_SCHEDULE` is a standard 5-field crontab line (`0 2 * * *`), a
//! 6-field one with seconds first, or a shortcut (`@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`), in the time zone `TZ` (IANA name, default UTC; the zone
//! database is built in, so a scratch image needs no /usr/share/zoneinfo).
//!
//! Day-of-week numbers follow crontab (0 or 7 = Sunday); the `cron` crate counts
//! 1 = Sunday, so the field is translated. As in the `cron` crate, a line restricting
//! both day of month and day of week matches days that satisfy both.

use crate::config::{invalid, ConfigError};
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Parses a schedule (see the module docs).
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, ConfigError> {
    let e = expr.trim();
    let bad = |why: String| {
        invalid(format!(
            "BACKUP_SCHEDULE={expr:?}: {why}; use 5 crontab fields (minute hour day month weekday, e.g. \"0 2 * * *\") or @hourly/@daily/@weekly/@monthly"
        ))
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
        // Ranges checked here: the `cron` crate's message says "must be less than 59"
        // for a minute of 60 or more, when 59 itself is allowed.
        let names = ["minute", "hour", "day of month", "month"];
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12)];
        if fields.len() > 5 {
            field_in_range(fields[0], "second", (0, 59)).map_err(&bad)?;
        }
        for ((field, name), range) in rest.iter().zip(names).zip(ranges) {
            field_in_range(field, name, range).map_err(&bad)?;
        }
        let dow = weekday_field(rest[4]).map_err(|e| bad(e.to_string()))?;
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
    let schedule = cron::Schedule::from_str(&translated).map_err(|e| bad(e.to_string()))?;
    // A line that never matches (`0 0 30 2 *`, a past year) would leave the daemon
    // idle for good. Wall-clock times are searched (UTC stands in for any zone: every
    // zone has every date), to the `cron` crate's last year, 2100.
    if schedule.after(&Utc::now()).next().is_none() {
        return Err(invalid(format!(
            "BACKUP_SCHEDULE={expr:?} never runs (no date matches it, e.g. February 30th, or its years are past): fix the day, month or year fields, e.g. \"0 2 * * *\""
        )));
    }
    Ok(schedule)
}

/// Checks the numbers of a crontab field (lists, ranges and `/step`s of numbers or
/// names) against `lo..=hi`; names and `*` are left to the `cron` crate.
fn field_in_range(field: &str, name: &str, (lo, hi): (u32, u32)) -> Result<(), String> {
    for part in field.split(',') {
        let range = part.split_once('/').map_or(part, |(r, _)| r);
        for n in range.split('-') {
            if let Ok(v) = n.parse::<u32>() {
                if v < lo || v > hi {
                    return Err(format!("{name} {v} is out of range: use {lo}-{hi}"));
                }
            }
        }
    }
    Ok(())
}

/// Translates a crontab weekday field (0-7, Sunday = 0 or 7, names, ranges, steps,
/// lists) into the `cron` crate's numbering (1-7, Sunday = 1).
fn weekday_field(field: &str) -> Result<String, ConfigError> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let day = |s: &str| -> Result<u32, ConfigError> {
        let up = s.to_ascii_uppercase();
        if let Some(i) = NAMES.iter().position(|n| *n == up) {
            return Ok(i as u32);
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= 7)
            .ok_or_else(|| invalid(format!("weekday {s:?} is not 0-7 or SUN-SAT")))
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid(format!("step {s:?} is not a positive number")))?,
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
            return Err(invalid(format!("weekday range {range:?} runs backwards")));
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
pub fn parse_timezone(tz: &str) -> Result<chrono_tz::Tz, ConfigError> {
    let name = tz.trim().trim_start_matches(':');
    chrono_tz::Tz::from_str(name).map_err(|_| {
        invalid(format!(
            "TZ={tz:?} is not a time zone name: use e.g. UTC or Europe/Berlin"
        ))
    })
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
    fn schedules_that_never_run_are_refused() {
        for never in [
            "0 0 30 2 *",
            "0 0 31 4 *",
            "0 0 31 2,4,6,9,11 *",
            "0 0 0 1 1 * 2001",
        ] {
            let e = parse_schedule(never).unwrap_err();
            assert!(
                e.message().contains("never runs") && e.message().contains("BACKUP_SCHEDULE"),
                "{never}: {e}"
            );
        }
        // Rare is not never: February 29th comes every four years, Friday the 13th
        // (both fields must match) a few times a year.
        for rare in ["0 0 29 2 *", "0 0 13 * 5", "@yearly"] {
            let s = parse_schedule(rare).unwrap();
            let tz = parse_timezone("Europe/Berlin").unwrap();
            assert!(next_after(&s, tz, Utc::now()).is_some(), "{rare}");
        }
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
                e.message().contains("BACKUP_SCHEDULE") && e.message().contains("0 2 * * *"),
                "{e}"
            );
        }
        let e = parse_schedule("61 * * * *").unwrap_err();
        assert!(
            e.message().contains("minute 61 is out of range: use 0-59"),
            "{e}"
        );
        assert!(!e.message().contains("less than"), "{e}");
        for (bad, says) in [
            ("0 24 * * *", "hour 24 is out of range: use 0-23"),
            ("0 0 0 * *", "day of month 0 is out of range: use 1-31"),
            ("0 0 1 13 *", "month 13 is out of range: use 1-12"),
            ("0 0 1 1-13 *", "month 13 is out of range: use 1-12"),
            ("60 0 0 1 1 *", "second 60 is out of range: use 0-59"),
        ] {
            let e = parse_schedule(bad).unwrap_err();
            assert!(e.message().contains(says), "{bad}: {e}");
        }
        assert!(parse_schedule("59 23 31 12 *").is_ok());
        assert!(parse_schedule("*/15 0-23 1-31 1-12 0-7").is_ok());
        assert!(parse_timezone("Mars/Olympus")
            .unwrap_err()
            .message()
            .contains("Europe/Berlin"));
    }
}
