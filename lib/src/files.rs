//! Bounded reads of the files users point dockhand at (secrets, `/etc/hosts`, CA
//! bundles). A path can name anything: a FIFO that never gets a writer would hang the
//! read forever, `/dev/zero` would grow without end, a directory gives a confusing
//! error. So only regular files (after following symlinks, as Kubernetes secrets are)
//! are read, and never more than a stated size.
//!
//! And the one way dockhand makes a small file appear whole or not at all
//! ([`write_atomic`]: status files, manifests).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file could not be read, in a few words (never its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The path does not exist.
    Missing,
    /// A directory, FIFO, socket or device.
    NotRegular(&'static str),
    /// Larger than the limit (in bytes).
    TooLarge(u64),
    /// Any other I/O error, as a short reason.
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("no such file"),
            ReadError::NotRegular(kind) => write!(f, "it is a {kind}, not a regular file"),
            ReadError::TooLarge(max) => write!(f, "larger than {} KiB", max / 1024),
            ReadError::Io(r) => f.write_str(r),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Io(crate::error::io_reason(&e)),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular(if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device"
        }));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    // Opened without blocking, should the file have been swapped for a FIFO since.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(path)
            .map_err(io)?
    };
    if !file.metadata().map_err(io)?.file_type().is_file() {
        return Err(ReadError::NotRegular("special file"));
    }
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(out)
}

/// `O_NONBLOCK` on Linux (x86_64 and aarch64 alike); std has no constant for it and
/// the base layer links no libc bindings.
const O_NONBLOCK: i32 = 0o4000;

/// Writes `data` to `path` atomically with mode 0600 (temporary name, fsync, rename,
/// fsync of the folder).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_dated(path, data, None)
}

/// [`write_atomic`], with the file's modification time set to `modified` before it
/// appears under its name (a freshness check must never see it dated now first).
pub fn write_atomic_dated(
    path: &Path,
    data: &[u8],
    modified: Option<std::time::SystemTime>,
) -> io::Result<()> {
    write_atomic_with(path, data, modified, 0o600)
}

/// [`write_atomic`], but readable by everyone (0644 whatever the umask), for a file
/// that holds no secret and is read by another user (the backup metrics, read by
/// node_exporter).
pub fn write_atomic_public(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, data, None, 0o644)
}

fn write_atomic_with(
    path: &Path,
    data: &[u8],
    modified: Option<std::time::SystemTime>,
    mode: u32,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = partial_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if mode != 0o600 {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(data)?;
        if let Some(t) = modified {
            f.set_modified(t)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.partial` beside `path`: hidden, and never taken for a backup.
pub fn partial_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile_dir();
        let f = dir.join("f");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(read_regular(&f, 10).unwrap(), b"abc");
        assert_eq!(read_regular(&f, 2), Err(ReadError::TooLarge(2)));
        assert_eq!(
            read_regular(&dir, 10),
            Err(ReadError::NotRegular("directory"))
        );
        assert_eq!(read_regular(&dir.join("none"), 10), Err(ReadError::Missing));
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular("device"))
        );
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        assert_eq!(read_regular(&fifo, 10), Err(ReadError::NotRegular("FIFO")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dockhand-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
