//! The one shape of dockhand's errors, and short human reasons for low-level ones.
//!
//! Every domain (configuration, talking to a service, migrations, backups, starting a
//! process) has its own error type, [`Error<K>`] with its own kind enum, in the manner
//! of tokio-postgres: the kind answers the questions callers ask (can waiting help?
//! which exit status?), the message says what went wrong and what to do, for people,
//! and the lower error that caused it stays reachable through
//! [`std::error::Error::source`]. Messages are redacted where they are made (see
//! [`crate::redact`]): an error never carries a password out of the module that saw it.

use std::fmt;
use std::io;
use std::sync::Arc;

/// What a domain's error kinds must answer.
pub trait Kind: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The exit status a binary gives when an error of this kind ends it.
    fn exit_code(self) -> u8;
}

/// An error of one domain: a kind, a message, and the cause.
#[derive(Clone)]
pub struct Error<K: Kind> {
    kind: K,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl<K: Kind> Error<K> {
    /// An error of `kind` saying `message` (already redacted).
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The exit status for this error (see [`Kind::exit_code`]).
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// Puts what was being done in front of the message: `DIRECT_URL: ...`.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Rewrites the message (to scrub what a server echoed, say); kind and cause stay.
    pub fn map_message(mut self, f: impl FnOnce(&str) -> String) -> Self {
        self.message = f(&self.message);
        self
    }

    /// The same error in another domain: message and cause kept, a new kind.
    pub fn into_kind<L: Kind>(self, kind: L) -> Error<L> {
        Error {
            kind,
            message: self.message,
            source: self.source,
        }
    }
}

impl<K: Kind> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<K: Kind> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl<K: Kind> PartialEq for Error<K> {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl<K: Kind> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A short lower-case reason for an I/O error.
pub fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let s = match e.kind() {
        NotFound => "not found",
        PermissionDenied => "permission denied",
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset by peer",
        ConnectionAborted => "connection aborted",
        NotConnected => "not connected",
        AddrNotAvailable => "address not available",
        BrokenPipe => "connection closed by peer",
        TimedOut => "timed out",
        UnexpectedEof => "connection closed before a complete answer",
        _ => {
            return match e.raw_os_error() {
                Some(113) => "no route to host".into(),
                Some(101) => "network unreachable".into(),
                _ => strip_os_error(&e.to_string()),
            }
        }
    };
    s.to_string()
}

fn strip_os_error(s: &str) -> String {
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reasons() {
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(io_reason(&e), "connection refused");
        let e = io::Error::from_raw_os_error(113);
        assert_eq!(io_reason(&e), "no route to host");
        let e = io::Error::from_raw_os_error(28);
        assert_eq!(io_reason(&e), "no space left on device");
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Test {
        Bad,
    }

    impl Kind for Test {
        fn exit_code(self) -> u8 {
            7
        }
    }

    #[test]
    fn an_error_keeps_its_kind_and_its_cause() {
        use std::error::Error as _;
        let e = Error::new(Test::Bad, "cannot read x")
            .with_source(io::Error::from_raw_os_error(2))
            .context("BACKUP_DIR");
        assert_eq!(e.kind(), Test::Bad);
        assert_eq!(e.exit_code(), 7);
        assert_eq!(e.to_string(), "BACKUP_DIR: cannot read x");
        assert!(e.source().is_some());
    }
}
