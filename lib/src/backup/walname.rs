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
