//! The test harness: real services for end-to-end tests, each started on free
//! loopback ports in its own temporary directory and stopped when dropped, so tests
//! can run in parallel without sharing state.
//!
//! - [`pg::Postgres`]: a throwaway PostgreSQL cluster (Debian's postgresql; initdb runs
//!   once per test process, each cluster is a copy), password authentication for a test
//!   role, optional TLS.
//! - [`pgbouncer::PgBouncer`]: a real PgBouncer in transaction pooling mode in front.
//! - [`s3::S3`]: a real S3-compatible server (moto in server mode, from the project's
//!   venv), one per test process, with [`s3::S3::bucket`] giving each test its own bucket.
//! - [`redis::Redis`]: a redis-server.
//! - [`http::HttpServer`]: HTTP and HTTPS servers with scripted answers (status, body,
//!   chunked, never answering), and [`certs::TestCa`] for TLS.
//! - [`bins`]: paths of the binaries under test; [`docker`]: whether a Docker engine answers.
//!
//! Services that must not run as root (PostgreSQL, PgBouncer) run as `nobody` through
//! `setpriv`, with a parent-death signal so nothing outlives a crashed test.

pub mod bins;
pub mod certs;
pub mod docker;
pub mod faulty;
pub mod http;
pub mod load;
pub mod pg;
pub mod pgbouncer;
pub mod pid1;
pub mod proc;
pub mod redis;
pub mod run;
pub mod s3;
pub mod skip;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A command's environment from `(name, value)` pairs.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The file names in `dir`, sorted (none when it is missing).
pub fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Polls `ready` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

/// A random-enough token for passwords and names (no external crate needed).
pub fn token(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}
