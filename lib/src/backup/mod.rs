//! The backup sidecar's building blocks:
//! - [`settings`]: every `BACKUP_*` setting, read and checked once;
//! - [`dump`]: which `pg_dump` to run for the server's version, and its environment
//!   (the password goes through `PGPASSWORD`, never the command line);
//! - [`codec`]: the stream's stages, zstd or gzip, then age encryption, and the
//!   reverse for reading a backup back;
//! - [`s3`]: S3-compatible storage: streaming multipart upload (aborted on any
//!   failure), paginated listing, streaming download, deletion;
//! - [`archive`]: one run, `pg_dump -Fc` streamed through the codec and SHA-256 into
//!   every destination at once, each copy made visible only when complete, its manifest
//!   written last (a backup without a manifest does not exist);
//! - [`catalog`]: the backups in the folder and the bucket, from their manifests, and
//!   verification (checksum, then a full read by `pg_restore`);
//! - [`retention`]: which backups a policy keeps, and pruning;
//! - [`restore`]: a backup streamed back into a new (or, when confirmed, an existing)
//!   database; [`globals`]: a globals backup restored into a cluster that has roles;
//!   [`pgarchive`]: the data offsets a piped `pg_dump -Fc` lacks, filled in so that
//!   `restore --jobs` runs `pg_restore -j` at the speed of a seekable archive;
//! - [`drill`]: a backup restored into a scratch database and every table's rows
//!   compared with the exact counts of the dump, which proves that it restores;
//! - [`names`]: the names dockhand makes from database names, within PostgreSQL's
//!   63 bytes and distinct;
//! - [`run`]: one run (lock, dumps, verify, retention, status) and prune;
//! - [`daemon`]: the cron schedule, one run at a time, and a graceful stop;
//! - [`status`]: the status file whose modification time is the last success, ping URLs
//!   and Prometheus metrics;
//! - point-in-time recovery: [`base`] backups, [`wal`] streaming, [`recover`], the
//!   names of WAL files ([`walname`]), the check for gaps in the stored WAL
//!   ([`continuity`]), and [`pitr_drill`]: a recovery to the latest point run by a
//!   throwaway PostgreSQL, which proves the chain recovers.

pub mod archive;
pub mod base;
pub mod catalog;
pub mod codec;
pub mod continuity;
pub mod daemon;
pub mod drill;
pub mod dump;
pub mod globals;
pub mod manifest;
pub mod names;
pub mod pgarchive;
pub mod pitr_drill;
pub mod progress;
pub mod recover;
pub mod restore;
pub mod retention;
pub mod run;
pub mod s3;
pub mod schedule;
pub mod settings;
pub mod status;
pub mod wal;
pub mod walname;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use crate::config::ConfigError;
use crate::error::{Error, Kind};

/// How a backup operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// A run, list, verify, restore or prune failed (exit 1).
    Failed,
    /// Invalid settings or arguments (exit 2).
    Usage,
    /// Cancelled by a signal or the stop grace, where it was running (exit 1).
    Cancelled,
    /// A command stopped by signal N, as the command reports it (exit 128+N).
    Stopped(i32),
}

impl Kind for BackupKind {
    fn exit_code(self) -> u8 {
        match self {
            BackupKind::Usage => 2,
            BackupKind::Failed | BackupKind::Cancelled => 1,
            BackupKind::Stopped(sig) => (128 + sig).clamp(0, 255) as u8,
        }
    }
}

/// A failed backup operation; the message says what failed and never holds a password.
pub type BackupError = Error<BackupKind>;

pub(crate) fn err(msg: impl Into<String>) -> BackupError {
    BackupError::new(BackupKind::Failed, crate::redact::text(&msg.into()))
}

/// An operation stopped by a signal or the stop grace.
pub(crate) fn cancelled(msg: impl Into<String>) -> BackupError {
    BackupError::new(BackupKind::Cancelled, crate::redact::text(&msg.into()))
}

/// Settings that cannot be used, as a backup error (exit 2).
pub fn usage(e: ConfigError) -> BackupError {
    e.into_kind(BackupKind::Usage)
}

/// The error for an I/O failure on `path`: `PATH: reason`.
pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| {
        err(format!(
            "{}: {}",
            path.display(),
            crate::error::io_reason(&e)
        ))
        .with_source(e)
    }
}

/// Several failures of one operation, each kept whole (kind and cause) until it is
/// printed: one line, `; ` between them, is how logs, messages and the status file
/// show them.
#[derive(Debug, Clone)]
pub struct Failures<T>(Vec<T>);

impl<T> Default for Failures<T> {
    fn default() -> Self {
        Failures(Vec::new())
    }
}

impl<T> Failures<T> {
    pub fn push(&mut self, failure: T) {
        self.0.push(failure);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T: std::fmt::Display> Failures<T> {
    /// The failures on one line, `sep` between them.
    pub fn join(&self, sep: &str) -> String {
        let all: Vec<String> = self.0.iter().map(T::to_string).collect();
        all.join(sep)
    }
}

impl Failures<BackupError> {
    /// One error for them all: their messages joined, the first as its cause.
    pub(crate) fn into_error(self) -> BackupError {
        let message = self.join("; ");
        match self.0.into_iter().next() {
            Some(first) => err(message).with_source(first),
            None => err(message),
        }
    }
}

impl<'a, T> IntoIterator for &'a Failures<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

pub(crate) use crate::digest::hex;

pub(crate) use crate::time::unix_now;

/// A running `pg_dump`, `pg_restore` or `psql`: registered with a [`Cancel`], its
/// stderr collected (the first 64 KiB) on a thread so it can never block on a full pipe.
pub(crate) struct Tool {
    pub child: std::process::Child,
    /// The program, for messages.
    pub program: String,
    errors: std::thread::JoinHandle<String>,
}

impl Tool {
    /// Spawns `cmd` (stdin and stdout as the caller set them) with a clean signal mask.
    pub(crate) fn spawn(
        mut cmd: std::process::Command,
        cancel: &Cancel,
    ) -> Result<Tool, BackupError> {
        use std::io::Read;
        cmd.stderr(std::process::Stdio::piped());
        crate::process::prepare_child(&mut cmd, None, false);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|e| {
            err(format!(
                "cannot run {program}: {}",
                crate::error::io_reason(&e)
            ))
            .with_source(e)
        })?;
        cancel.track(child.id());
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut s);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            String::from_utf8_lossy(&s).into_owned()
        });
        Ok(Tool {
            child,
            program,
            errors,
        })
    }

    /// Waits for the tool; its status and stderr, or the cancellation.
    pub(crate) fn finish(
        mut self,
        cancel: &Cancel,
    ) -> Result<(std::process::ExitStatus, String), BackupError> {
        cancel.track(0);
        let status = self.child.wait();
        let messages = self.errors.join().unwrap_or_default();
        cancel.check()?;
        let status = status.map_err(|e| err(format!("{}: {e}", self.program)).with_source(e))?;
        Ok((status, messages))
    }
}

/// Stops a running backup or restore from another thread (the signal handler): sets a
/// flag the stream checks, and sends SIGTERM to the `pg_dump`/`pg_restore` it runs, so
/// its pipe ends at once and every destination is cleaned up.
#[derive(Debug, Default)]
pub struct Cancel {
    flag: AtomicBool,
    child: AtomicI32,
    reason: Mutex<String>,
    /// Wakes every async wait (an S3 part slot, an upload) at once.
    notify: tokio::sync::Notify,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels what runs now and whatever starts later.
    pub fn cancel(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_empty() {
                *r = reason.to_string();
            }
        }
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.kill_child();
    }

    /// Completes once cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// `Err` with the reason once cancelled.
    pub fn check(&self) -> Result<(), BackupError> {
        if self.is_cancelled() {
            let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
            Err(cancelled(format!("cancelled: {reason}")))
        } else {
            Ok(())
        }
    }

    /// Registers the running child (0 = none); kills it at once if already cancelled.
    pub(crate) fn track(&self, pid: u32) {
        self.child.store(pid as i32, Ordering::SeqCst);
        if self.is_cancelled() {
            self.kill_child();
        }
    }

    fn kill_child(&self) {
        let pid = self.child.load(Ordering::SeqCst);
        if pid > 0 {
            if let Err(e) = crate::process::kill(pid, nix::libc::SIGTERM) {
                tracing::warn!("cannot stop the running tool (pid {pid}): {e}");
            }
        }
    }
}
