//! Retention: which backups a policy keeps. Each database's backups (and the globals)
//! form their own series. A backup is kept when any rule keeps it:
//! `BACKUP_KEEP_LAST` (the newest N), `BACKUP_RETENTION_DAYS` (younger than N days),
//! and grandfather-father-son `BACKUP_KEEP_DAILY/WEEKLY/MONTHLY` (the newest backup of
//! each of the last N days, ISO weeks, months that have one, in UTC). With no rule set
//! nothing is deleted. Whatever the settings, the newest verified backup of a series is
//! kept (the newest backup when none is verified), so retention never leaves a series
//! without a restorable backup. Only backups with a dockhand manifest are ever
//! considered: anything else in the folder or under the prefix is never touched.
//! Stored WAL follows the base backups instead (run.rs: every segment from the
//! oldest kept one's start on).

use chrono::{DateTime, Datelike};

/// Maps a time to its day, ISO week or month.
type Bucket = fn(i64) -> i64;

/// The retention settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub days: Option<u32>,
    pub last: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

impl Policy {
    /// True when no rule is set: everything is kept.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    /// The series: the database name, or `globals`.
    pub series: String,
    /// Unix seconds.
    pub started: i64,
    pub verified: bool,
}

/// The decision for one backup, with the rules that keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    /// e.g. `last 7, daily`, or `older than every rule`.
    pub why: String,
}

/// Decides for every item; the result follows the order of `items`.
pub fn decide(items: &[Item], policy: &Policy, now: i64) -> Vec<Decision> {
    // The rules that keep each item, by its index.
    let mut why: Vec<Vec<&'static str>> = vec![Vec::new(); items.len()];
    for idx in series_newest_first(items) {
        if policy.is_empty() {
            for &i in &idx {
                why[i].push("no retention rule set");
            }
            continue;
        }
        keep_last_and_recent(items, &idx, policy, now, &mut why);
        keep_per_period(items, &idx, policy, &mut why);
        keep_newest_good(items, &idx, &mut why);
    }
    items
        .iter()
        .zip(why)
        .map(|(item, w)| Decision {
            name: item.name.clone(),
            keep: !w.is_empty(),
            why: if w.is_empty() {
                "no rule keeps it".into()
            } else {
                w.join(", ")
            },
        })
        .collect()
}

/// The indexes of each series' items, newest first (by start, then name).
fn series_newest_first(items: &[Item]) -> Vec<Vec<usize>> {
    let mut series: Vec<&str> = items.iter().map(|i| i.series.as_str()).collect();
    series.sort();
    series.dedup();
    series
        .into_iter()
        .map(|s| {
            let mut idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].series == s).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse((items[i].started, items[i].name.clone())));
            idx
        })
        .collect()
}

/// `BACKUP_KEEP_LAST` and `BACKUP_RETENTION_DAYS` over one series (`idx`, newest first).
fn keep_last_and_recent(
    items: &[Item],
    idx: &[usize],
    policy: &Policy,
    now: i64,
    why: &mut [Vec<&'static str>],
) {
    if let Some(last) = policy.last {
        for &i in idx.iter().take(last as usize) {
            why[i].push("last");
        }
    }
    if let Some(days) = policy.days {
        for &i in idx {
            if items[i].started >= now - i64::from(days) * 86_400 {
                why[i].push("days");
            }
        }
    }
}

/// `BACKUP_KEEP_DAILY/WEEKLY/MONTHLY` over one series (`idx`, newest first): the newest
/// backup of each of the last N days, ISO weeks, months that have one, in UTC.
fn keep_per_period(items: &[Item], idx: &[usize], policy: &Policy, why: &mut [Vec<&'static str>]) {
    let buckets: [(Option<u32>, &'static str, Bucket); 3] = [
        (policy.daily, "daily", |t| t.div_euclid(86_400)),
        (policy.weekly, "weekly", |t| {
            let d = DateTime::from_timestamp(t, 0)
                .unwrap_or_default()
                .iso_week();
            i64::from(d.year()) * 100 + i64::from(d.week())
        }),
        (policy.monthly, "monthly", |t| {
            let d = DateTime::from_timestamp(t, 0).unwrap_or_default();
            i64::from(d.year()) * 100 + i64::from(d.month())
        }),
    ];
    for (count, label, bucket) in buckets {
        let Some(count) = count else { continue };
        let mut seen: Vec<i64> = Vec::new();
        for &i in idx {
            let b = bucket(items[i].started);
            if !seen.contains(&b) {
                if seen.len() == count as usize {
                    break;
                }
                seen.push(b);
                why[i].push(label);
            }
        }
    }
}

/// Whatever the rules say, the newest verified backup of a series (`idx`, newest
/// first) is kept, the newest when none is verified.
fn keep_newest_good(items: &[Item], idx: &[usize], why: &mut [Vec<&'static str>]) {
    let protected = idx
        .iter()
        .find(|&&i| items[i].verified)
        .or(idx.first())
        .copied();
    if let Some(i) = protected {
        why[i].push(if items[i].verified {
            "newest verified"
        } else {
            "newest (none verified)"
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn items(ages_days: &[i64], now: i64) -> Vec<Item> {
        ages_days
            .iter()
            .enumerate()
            .map(|(n, a)| Item {
                name: format!("b{n}"),
                series: "db".into(),
                started: now - a * DAY,
                verified: false,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect()
    }

    #[test]
    fn rules() {
        let now = 1_700_000_000;
        let it = items(&[0, 1, 2, 3, 10, 40, 100, 400], now);
        assert_eq!(kept(&decide(&it, &Policy::default(), now)).len(), 8);
        let p = Policy {
            last: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&it, &p, now)), ["b0", "b1"]);
        let p = Policy {
            days: Some(30),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&it, &p, now)), ["b0", "b1", "b2", "b3", "b4"]);
        let p = Policy {
            monthly: Some(3),
            ..Default::default()
        };
        let k = decide(&it, &p, now);
        assert!(k[0].keep && !k[7].keep, "{k:?}");
        // 2023-11-14 was a Tuesday: the weekly rule keeps this week's newest (b0) and
        // the newest of the week before (b2, Sunday).
        let p = Policy {
            weekly: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&it, &p, now)), ["b0", "b2"]);
        // Two backups the same day: the daily rule keeps only the newer.
        let mut it2 = items(&[0, 1], now);
        it2.push(Item {
            name: "same-day-older".into(),
            series: "db".into(),
            started: it2[1].started - 60,
            verified: false,
        });
        let p = Policy {
            daily: Some(5),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&it2, &p, now)), ["b0", "b1"]);
    }

    #[test]
    fn the_newest_verified_backup_survives_any_policy() {
        let now = 1_700_000_000;
        let mut it = items(&[100, 200, 300], now);
        it[1].verified = true;
        let p = Policy {
            days: Some(1),
            ..Default::default()
        };
        let d = decide(&it, &p, now);
        assert_eq!(kept(&d), ["b1"]);
        assert!(d[1].why.contains("newest verified"));
        it[1].verified = false;
        assert_eq!(kept(&decide(&it, &p, now)), ["b0"]);
    }

    #[test]
    fn series_are_independent() {
        let now = 1_700_000_000;
        let mut it = items(&[5, 6], now);
        it[1].series = "other".into();
        let p = Policy {
            days: Some(1),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&it, &p, now)), ["b0", "b1"]);
    }
}
