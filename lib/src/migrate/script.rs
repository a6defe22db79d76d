//! A migration file as the tools read it: its text and the lowercase hex SHA-256 of
//! its bytes (what drizzle and Prisma record), and Prisma's comparison that accepts
//! either line ending. Shared by the formats; its own module so they need nothing from
//! the phase that calls them.

use std::path::Path;

use super::failure::{err, MigrateError};

/// Lowercase hex SHA-256 (the checksum Prisma and drizzle record).
pub(crate) use crate::digest::sha256_hex as hex_sha256;

/// Reads a migration file: its text and the lowercase hex SHA-256 of its bytes as they
/// are (what drizzle and Prisma record). `hint` is added to a read error.
pub(crate) fn read_script(path: &Path, hint: &str) -> Result<(String, String), MigrateError> {
    let bytes = std::fs::read(path).map_err(|e| {
        err(format!(
            "{}: {}{hint}",
            path.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    let checksum = hex_sha256(&bytes);
    let text =
        String::from_utf8(bytes).map_err(|_| err(format!("{}: not UTF-8", path.display())))?;
    Ok((text, checksum))
}

/// Prisma's `script_matches_checksum`: the file as it is, or with its line endings
/// converted either way.
pub(crate) fn checksum_matches(script: &str, checksum: &str) -> bool {
    let variants = [
        script.to_string(),
        script.replace("\r\n", "\n"),
        script.replace("\r\n", "\n").replace('\n', "\r\n"),
    ];
    variants
        .iter()
        .any(|v| hex_sha256(v.as_bytes()) == checksum)
}
