//! Name resolution and TCP connection for probes, correct in a static binary in a
//! `FROM scratch` image:
//! - `localhost` and `*.localhost` always mean the loopback addresses (RFC 6761), even
//!   when the image has no `/etc/hosts`;
//! - `/etc/hosts` is read directly (Docker bind-mounts one; compose adds `extra_hosts`),
//!   no glibc NSS involved;
//! - anything else goes to the system resolver (musl reads `/etc/resolv.conf`).
//!
//! Connecting tries every address, IPv6 and IPv4, starting the next one when the
//! previous fails or has not answered within 250 ms (RFC 8305 "happy eyeballs", in
//! short). busybox wget resolves `localhost` to `::1` only and fails against servers
//! that listen on IPv4; this does not.

use crate::error::{Error, Kind};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The hosts file read when `DOCKHAND_HOSTS` is not set.
pub const DEFAULT_HOSTS: &str = "/etc/hosts";

/// Where `/etc/hosts` is read from; `DOCKHAND_HOSTS` (or `DOCKHAND_HOSTS_FILE`)
/// overrides it. A binary checks the variable as it parses its settings, so an error
/// here (both forms set, an unreadable file) was reported already: then the default.
pub fn hosts_file() -> std::path::PathBuf {
    crate::config::var("DOCKHAND_HOSTS")
        .ok()
        .flatten()
        .unwrap_or_else(|| DEFAULT_HOSTS.into())
        .into()
}

/// Whether waiting can help: the question every caller of a failed network
/// operation asks (the entrypoint's wait, the backup's wait for its database, the
/// probe's retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Refused, not resolvable yet, starting up, too many connections: try again.
    Transient,
    /// Wrong password, missing database, bad certificate, bad configuration: waiting
    /// will not help.
    Permanent,
}

impl Kind for Retry {
    /// The entrypoint's "a service never became ready".
    fn exit_code(self) -> u8 {
        3
    }
}

/// Why talking to a service failed (resolving, connecting, TLS, a protocol's answer),
/// as a short reason that never holds a password.
pub type NetError = Error<Retry>;

/// A failure that waiting may cure.
pub fn transient(reason: impl Into<String>) -> NetError {
    Error::new(Retry::Transient, reason)
}

/// A failure that waiting will not cure.
pub fn permanent(reason: impl Into<String>) -> NetError {
    Error::new(Retry::Permanent, reason)
}

impl NetError {
    /// True when waiting will not help.
    pub fn is_permanent(&self) -> bool {
        self.kind() == Retry::Permanent
    }
}

/// The largest hosts file read (Docker's has a few lines; big blocklists a few MiB).
const MAX_HOSTS_FILE: u64 = 16 * 1024 * 1024;

/// Resolves `host` to socket addresses with `port`, in the order to try them.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, NetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        ]);
    }
    // Bounded and never blocking (a FIFO or /dev/zero there is skipped); a line that
    // is not UTF-8 spoils that line only.
    if let Ok(bytes) = crate::files::read_regular(&hosts_file(), MAX_HOSTS_FILE) {
        let text = String::from_utf8_lossy(&bytes);
        let ips = hosts_lookup(&text, &lower);
        if !ips.is_empty() {
            return Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect());
        }
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(transient(format!("host {host} has no address")))
            } else {
                Ok(addrs)
            }
        }
        Err(_) => Err(transient(format!("host {host} not found"))),
    }
}

/// All addresses `/etc/hosts` gives for `name`, in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|alias| alias.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

const STAGGER: Duration = Duration::from_millis(250);

/// Connects to the first address that accepts, trying them in order with a stagger.
pub async fn connect_addrs(addrs: &[SocketAddr]) -> Result<TcpStream, NetError> {
    let mut pending = addrs.iter().copied();
    let mut attempts = JoinSet::new();
    let mut last_err: Option<io::Error> = None;
    loop {
        if let Some(addr) = pending.next() {
            attempts.spawn(async move { TcpStream::connect(addr).await });
        } else if attempts.is_empty() {
            let reason = last_err
                .map(|e| crate::error::io_reason(&e))
                .unwrap_or_else(|| "no address to connect to".into());
            return Err(transient(reason));
        }
        let more = pending.len() > 0;
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Some(Ok(Err(e))) => last_err = Some(e),
                Some(Err(_)) | None => {}
            },
            _ = tokio::time::sleep(STAGGER), if more => {}
        }
    }
}

/// Resolves and connects.
pub async fn connect(host: &str, port: u16) -> Result<TcpStream, NetError> {
    let addrs = resolve(host, port).await?;
    connect_addrs(&addrs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lookup() {
        let text = "127.0.0.1 localhost\n# 10.0.0.9 db\n10.0.0.5   db db.internal # comment\n::1 db\nbad line\n10.0.0.5 db\n";
        let ips = hosts_lookup(text, "db");
        assert_eq!(
            ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(hosts_lookup(text, "nothere").is_empty());
        // names match whatever their case in the file or in the query
        assert_eq!(hosts_lookup(text, "DB.INTERNAL").len(), 1);
        assert_eq!(hosts_lookup("10.0.0.7 MiXed.Case\n", "mixed.case").len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn localhost_without_hosts_file_and_fallback_to_ipv4() {
        let addrs = resolve("LOCALHOST", 80).await.unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(addrs[0].is_ipv6() && addrs[1].is_ipv4());
        // A server on IPv4 only: ::1 is refused, 127.0.0.1 accepts.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = connect("localhost", port).await.unwrap();
        assert!(s.peer_addr().unwrap().is_ipv4());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refused_reports_short_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect("127.0.0.1", port).await.unwrap_err();
        assert_eq!(e.message(), "connection refused");
    }
}
