//! Short, human reasons for low-level errors, as they appear in one-line reports
//! (`connection refused` rather than `Connection refused (os error 111)`).

use std::io;

/// Defines a module's error type: a message that says what went wrong and what to do,
/// shown as is (the callers redact it), with `Display` and `std::error::Error`.
#[macro_export]
macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
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
}
