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
    let mut stored: Vec<(u64, u32)> = wal
        .iter()
        .filter_map(|name| segment(stored_file(name)?.0))
        .map(|(t, s)| (s, t))
        .filter(|(s, t)| *s >= start && *t >= tli)
        .collect();
    stored.sort();
    stored.dedup_by_key(|(s, _)| *s);
    let newest = stored.last().map(|(s, t)| name(*t, *s));
    let mut gaps = Vec::new();
    let mut expected = start;
    for (s, t) in &stored {
        if *s > expected {
            gaps.push((name(*t, expected), name(*t, s - 1)));
        }
        expected = s + 1;
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
        assert_eq!(check(&[&s3], None), None);
    }
}
