//! The names of point-in-time recovery's files: which spool files pg_receivewal has
//! completed, what a stored WAL file is called and which WAL file a stored name holds,
//! and the rule for a slot's name. A leaf, so the pipeline (archive.rs), the settings
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

/// True for the files pg_receivewal completes: a segment (24 hex digits) or a
/// timeline history file (`00000002.history`). `.partial` and anything else are not.
pub fn is_wal_file(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    (name.len() == 24 && hex(name))
        || name
            .strip_suffix(".history")
            .is_some_and(|t| t.len() == 8 && hex(t))
}

/// The stored backup name of the spool file `path`.
pub fn stored_name(path: &Path, unique: &str) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("_wal-{file}-{unique}")
}

/// The WAL file a stored name holds (`_wal-000000010000000000000003-<stamp>`).
pub fn file_of(stored: &str) -> Option<&str> {
    let rest = stored.strip_prefix("_wal-")?;
    let file = rest.split_once('-')?.0;
    is_wal_file(file).then_some(file)
}
