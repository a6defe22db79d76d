//! The names of point-in-time recovery's files: which spool files pg_receivewal has
//! completed (and which one it is still writing), what a stored WAL file is called and
//! which WAL file a stored name holds, where a segment sits in the WAL, and the rule
//! for a slot's name. A leaf, so the pipeline (archive.rs), the settings, retention
//! and recovery can name WAL files without depending on the streaming in wal.rs.

use std::path::Path;

use crate::config::{invalid, ConfigError};

/// `BACKUP_WAL_SLOT`: PostgreSQL's rule for slot names (lower-case letters, digits,
/// underscores, at most 63), checked before anything reaches the server.
pub fn check_slot_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "BACKUP_WAL_SLOT={name:?}: a replication slot name is 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

fn hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// True for the files pg_receivewal completes: a segment (24 hex digits) or a
/// timeline history file (`00000002.history`). `.partial` and anything else are not.
pub fn is_wal_file(name: &str) -> bool {
    (name.len() == 24 && hex(name))
        || name
            .strip_suffix(".history")
            .is_some_and(|t| t.len() == 8 && hex(t))
}

/// The segment of the file pg_receivewal is still writing
/// (`000000010000000000000003.partial`), else `None`.
pub fn partial_segment(name: &str) -> Option<&str> {
    name.strip_suffix(".partial")
        .filter(|s| s.len() == 24 && hex(s))
}

/// The stored backup name of the spool file `path`.
pub fn stored_name(path: &Path, unique: &str) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("_wal-{file}-{unique}")
}

/// The WAL file a stored name holds (`_wal-000000010000000000000003-<stamp>`); a
/// stored partial segment holds none (see [`stored_file`]).
pub fn file_of(stored: &str) -> Option<&str> {
    stored_file(stored)
        .filter(|(_, partial)| !partial)
        .map(|(f, _)| f)
}

/// The WAL file a stored name holds, and whether it is a partial segment (stored
/// from `_wal-000000010000000000000003.partial-<stamp>`: the beginning of the segment,
/// which recovery uses under the segment's own name when no complete copy exists).
pub fn stored_file(stored: &str) -> Option<(&str, bool)> {
    let rest = stored.strip_prefix("_wal-")?;
    let file = rest.split_once('-')?.0;
    if is_wal_file(file) {
        Some((file, false))
    } else {
        partial_segment(file).map(|s| (s, true))
    }
}

/// Checks that `head` (a segment file's first 40 bytes at least) and its length `len`
/// are a WAL segment's: the first page's long header names this file's position, a
/// segment size equal to the file's and its timeline or an earlier one (the first
/// segment of a new timeline begins as a copy of the old timeline's, first page
/// included). A file pg_receivewal is still
/// creating is not: it first fills the new `.partial` with zeros up to the segment
/// size, and only then writes the first page (so a copy taken meanwhile is shorter and
/// all zeros, and PostgreSQL stops recovery on it with "has wrong size"). Read in
/// either byte order, as the server wrote it.
pub fn check_segment(file: &str, head: &[u8], len: u64) -> Result<(), String> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if file.len() != 24 || !hex(file) {
        return Err(format!("{file} is not a segment name"));
    }
    let num = |r: std::ops::Range<usize>| u64::from_str_radix(&file[r], 16).unwrap_or(0);
    let (tli, hi, lo) = (num(0..8), num(8..16), num(16..24));
    if head.len() < 40 {
        return Err(format!("{file}: {len} bytes, shorter than a page header"));
    }
    let fits = |le: bool| {
        let u16_at = |i: usize| {
            let b = [head[i], head[i + 1]];
            u64::from(if le {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            })
        };
        let u32_at = |i: usize| {
            let b: [u8; 4] = head[i..i + 4].try_into().unwrap_or_default();
            u64::from(if le {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        let u64_at = |i: usize| {
            let b: [u8; 8] = head[i..i + 8].try_into().unwrap_or_default();
            if le {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            }
        };
        let size = u32_at(32);
        let sized = size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size);
        sized
            && u16_at(2) & u64::from(XLP_LONG_HEADER) != 0
            && (1..=tli).contains(&u32_at(4))
            && size == len
            && u64_at(8) == (hi << 32) + lo * size
    };
    if fits(true) || fits(false) {
        Ok(())
    } else if head.iter().all(|&b| b == 0) {
        Err(format!(
            "{file}: {len} bytes of zeros, no page written yet (a copy taken while pg_receivewal was creating it)"
        ))
    } else {
        Err(format!(
            "{file}: {len} bytes whose first page does not describe this segment"
        ))
    }
}

/// The timeline and segment number of a 16 MiB WAL segment's name; `None` for
/// anything else (a history file).
pub fn segment(file: &str) -> Option<(u32, u64)> {
    if file.len() != 24 || !hex(file) {
        return None;
    }
    let tli = u32::from_str_radix(&file[..8], 16).ok()?;
    let hi = u64::from_str_radix(&file[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&file[16..], 16).ok()?;
    Some((tli, hi * 0x100 + lo))
}

/// The number of the 16 MiB segment holding `lsn` (`0/2000028`).
pub fn segment_of_lsn(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    let v = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
    Some(v >> 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 40 bytes of segment `lo` of log `hi` on timeline `tli` (16 MiB), as
    /// PostgreSQL 15 writes them on a little-endian machine.
    fn head(tli: u32, hi: u64, lo: u64, le: bool) -> Vec<u8> {
        let size: u32 = 16 << 20;
        let addr = (hi << 32) + lo * u64::from(size);
        let mut h = Vec::new();
        let put = |h: &mut Vec<u8>, b: &[u8]| {
            if le {
                h.extend(b.iter().rev());
            } else {
                h.extend(b);
            }
        };
        put(&mut h, &0xD110u16.to_be_bytes());
        put(&mut h, &0x0006u16.to_be_bytes());
        put(&mut h, &tli.to_be_bytes());
        put(&mut h, &addr.to_be_bytes());
        put(&mut h, &0u32.to_be_bytes());
        h.extend([0; 4]);
        put(&mut h, &7_312_345_678_901_234_567u64.to_be_bytes());
        put(&mut h, &size.to_be_bytes());
        put(&mut h, &8192u32.to_be_bytes());
        h
    }

    #[test]
    fn a_segment_is_one_whose_first_page_names_it() {
        let full = 16 << 20;
        let file = "000000010000000200000004";
        assert_eq!(check_segment(file, &head(1, 2, 4, true), full), Ok(()));
        assert_eq!(check_segment(file, &head(1, 2, 4, false), full), Ok(()));
        // pg_receivewal still filling the new file with zeros: shorter, no page
        let e = check_segment(file, &[0; 40], 16_703_488).unwrap_err();
        assert!(e.contains("zeros"), "{e}");
        assert!(check_segment(file, &[0; 40], full).is_err());
        // another segment's page, another timeline, a cut file, a short read
        assert!(check_segment(file, &head(1, 2, 5, true), full).is_err());
        assert!(check_segment(file, &head(2, 2, 4, true), full).is_err());
        // a new timeline's first segment starts with the old timeline's page
        let tli2 = "000000020000000200000004";
        assert_eq!(check_segment(tli2, &head(1, 2, 4, true), full), Ok(()));
        assert!(check_segment(tli2, &head(3, 2, 4, true), full).is_err());
        assert!(check_segment(file, &head(1, 2, 4, true), full - 8192).is_err());
        assert!(check_segment(file, &head(1, 2, 4, true)[..39], full).is_err());
        assert!(check_segment("00000001.history", &head(1, 2, 4, true), full).is_err());
        let mut short_header = head(1, 2, 4, true);
        short_header[2] = 0; // not a long header
        assert!(check_segment(file, &short_header, full).is_err());
    }
}
