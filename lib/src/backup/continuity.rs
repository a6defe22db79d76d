//! WAL continuity, as WAL-G's `wal-verify` checks it: recovery from a base backup
//! replays every segment from the one it starts in, so one missing segment ends
//! recovery there, silently losing everything after it. The stored segments
//! (complete or partial, any timeline) are checked from the oldest base backup's start
//! to the newest segment stored; the status, the metrics and `verify` report a gap.
//! A leaf beside the names it reads (walname.rs) and the manifests.

use super::manifest::{Content, Manifest};
use super::walname::{segment, segment_of_lsn, stored_file};

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    /// The base backup the check starts from.
    pub base: String,
    /// The newest segment stored, if any.
    pub newest: Option<String>,
    /// The missing segments, as ranges of names (`first..=last`).
    pub gaps: Vec<(String, String)>,
}

impl Continuity {
    /// True when every segment from the base backup's start to the newest is stored.
    pub fn is_continuous(&self) -> bool {
        self.newest.is_some() && self.gaps.is_empty()
    }

    /// The gaps, for a message: `000000010000000000000005 to ...07, ...`.
    pub fn describe(&self) -> String {
        if self.newest.is_none() {
            return format!(
                "no WAL segment from the start of the base backup {} is stored",
                self.base
            );
        }
        let gaps: Vec<String> = self
            .gaps
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.clone()
                } else {
                    format!("{a} to {b}")
                }
            })
            .collect();
        if gaps.is_empty() {
            format!(
                "continuous from the base backup {} to {}",
                self.base,
                self.newest.as_deref().unwrap_or("")
            )
        } else {
            format!(
                "WAL missing after the base backup {}: {} (recovery stops before the first; the newest stored is {})",
                self.base,
                gaps.join(", "),
                self.newest.as_deref().unwrap_or("")
            )
        }
    }
}

/// The name of segment `seg` on timeline `tli`.
fn name(tli: u32, seg: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", seg / 0x100, seg % 0x100)
}

/// Checks the WAL stored among `manifests` from the start of `base` (the oldest base
/// backup when `None`); `None` when there is no base backup with a WAL range.
pub fn check(manifests: &[&Manifest], base: Option<&str>) -> Option<Continuity> {
    let wal: Vec<&str> = manifests
        .iter()
        .filter(|m| m.kind == Content::Wal)
        .map(|m| m.name.as_str())
        .collect();
    check_names(manifests, &wal, base)
}

/// [`check`] with the stored WAL given by name (`_wal-...`), as a listing of S3 gives
/// them without reading a manifest each.
pub fn check_names(bases: &[&Manifest], wal: &[&str], base: Option<&str>) -> Option<Continuity> {
    let (start, tli, base) = bases
        .iter()
        .filter(|m| m.kind == Content::Base && base.is_none_or(|b| m.name == b))
        .filter_map(|m| {
            let w = m.wal.as_ref()?;
            Some((segment_of_lsn(&w.start)?, w.timeline, m.name.clone()))
        })
        .min()?;
    let stored: std::collections::HashSet<(u64, u32)> = wal
        .iter()
        .filter_map(|name| segment(stored_file(name)?.0))
        .map(|(t, s)| (s, t))
        .filter(|(s, t)| *s >= start && *t >= tli)
        .collect();
    // After a timeline switch (a recovery that promoted), recovery follows the newest
    // timeline from where it begins: each segment is expected on the newest timeline
    // stored from that segment or before, and an older timeline's segments past that
    // point belong to the history left behind.
    let mut first_of: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for (s, t) in &stored {
        let f = first_of.entry(*t).or_insert(*s);
        *f = (*f).min(*s);
    }
    let expected_tli = |s: u64| {
        first_of
            .iter()
            .filter(|(_, f)| **f <= s)
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(tli)
    };
    let last = stored
        .iter()
        .filter(|(s, t)| *t == expected_tli(*s))
        .map(|(s, _)| *s)
        .max();
    let newest = last.map(|s| name(expected_tli(s), s));
    let mut gaps: Vec<(String, String)> = Vec::new();
    let mut open: Option<(u32, u64, u64)> = None;
    for s in last.into_iter().flat_map(|last| start..=last) {
        let t = expected_tli(s);
        if stored.contains(&(s, t)) {
            if let Some((t, a, b)) = open.take() {
                gaps.push((name(t, a), name(t, b)));
            }
        } else {
            open = match open {
                Some((ot, a, _)) if ot == t => Some((t, a, s)),
                Some((ot, a, b)) => {
                    gaps.push((name(ot, a), name(ot, b)));
                    Some((t, s, s))
                }
                None => Some((t, s, s)),
            };
        }
    }
    if let Some((t, a, b)) = open {
        gaps.push((name(t, a), name(t, b)));
    }
    Some(Continuity { base, newest, gaps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::WalRange;

    fn m(name: &str, kind: Content) -> Manifest {
        let mut m = Manifest::from_json(&format!(
            r#"{{"format":1,"name":"{name}","file":"{name}.{}.zst","kind":"{}","database":"","started":1,"finished":2,"dump_bytes":1,"size":1,"sha256":"x"}}"#,
            kind.ext(),
            kind.name()
        ))
        .unwrap();
        if kind == Content::Base {
            m.wal = Some(WalRange {
                timeline: 1,
                start: "0/3000028".into(),
                end: "0/3000100".into(),
            });
        }
        m
    }

    #[test]
    fn gaps_from_the_base_backup_to_the_newest_segment() {
        let base = m("_base-x", Content::Base);
        let seg = |n: u32, partial: bool| {
            m(
                &format!(
                    "_wal-0000000100000000000000{n:02X}{}-20260101T000000.000Z-abcd",
                    if partial { ".partial" } else { "" }
                ),
                Content::Wal,
            )
        };
        let (s2, s3, s4, s6) = (seg(2, false), seg(3, false), seg(4, false), seg(6, true));
        let c = check(&[&base, &s2, &s3, &s4], None).unwrap();
        assert!(c.is_continuous(), "{c:?}");
        let c = check(&[&base, &s3, &s6], None).unwrap();
        assert!(!c.is_continuous());
        assert_eq!(
            c.gaps,
            [(
                "000000010000000000000004".to_string(),
                "000000010000000000000005".to_string()
            )]
        );
        assert!(
            c.describe().contains("000000010000000000000004 to"),
            "{}",
            c.describe()
        );
        let c = check(&[&base], None).unwrap();
        assert!(!c.is_continuous() && c.describe().contains("no WAL segment"));
        // A recovery promoted timeline 2 in segment 4: from there on, timeline 2's
        // segments are the ones recovery replays; timeline 1's later ones are left
        // behind and fill no gap.
        let on = |tli: u32, n: u32| {
            m(
                &format!("_wal-{tli:08X}0000000000000{n:03X}-20260101T000000.000Z-abcd"),
                Content::Wal,
            )
        };
        let (a3, a4, a5, a6) = (on(1, 3), on(1, 4), on(1, 5), on(1, 6));
        let (b4, b5, b7) = (on(2, 4), on(2, 5), on(2, 7));
        let c = check(&[&base, &a3, &a4, &a5, &a6, &b4, &b5], None).unwrap();
        assert!(c.is_continuous(), "{c:?}");
        assert_eq!(c.newest.as_deref(), Some("000000020000000000000005"));
        let c = check(&[&base, &a3, &a4, &a5, &a6, &b4, &b7], None).unwrap();
        assert_eq!(
            c.gaps,
            [(
                "000000020000000000000005".to_string(),
                "000000020000000000000006".to_string()
            )],
            "{c:?}"
        );
        assert_eq!(c.newest.as_deref(), Some("000000020000000000000007"));
        assert_eq!(check(&[&s3], None), None);
    }
}
