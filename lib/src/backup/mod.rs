//! The backup sidecar's building blocks:
//! - [`dump`]: which `pg_dump` to run for the server's version, and its environment
//!   (the password goes through `PGPASSWORD`, never the command line);
//! - [`archive`]: one run, streamed `pg_dump -Fc` -> zstd -> SHA-256 -> a local file
//!   written under a temporary name, fsynced, renamed, mode 0600, with its manifest
//!   written last (a backup without a manifest does not exist);
//! - [`catalog`]: the backups in a folder, from their manifests, and verification
//!   (checksum, then a full read by `pg_restore`);
//! - [`status`]: the status file whose modification time is the last success, for
//!   `healthcheck file:///...?max-age=26h`.

pub mod archive;
pub mod catalog;
pub mod dump;
pub mod status;

crate::message_error!(
    /// A failed backup operation; the message says what failed and never holds a password.
    BackupError
);

pub(crate) fn err(msg: impl Into<String>) -> BackupError {
    BackupError(crate::url::redact_text(&msg.into()))
}

/// The error for an I/O failure on `path`: `PATH: reason`.
pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| {
        err(format!(
            "{}: {}",
            path.display(),
            crate::error::io_reason(&e)
        ))
    }
}

/// Hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
