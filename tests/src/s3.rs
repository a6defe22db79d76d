//! A real S3-compatible server: moto in server mode, installed by scripts/setup into
//! the project's venv (`.venv/bin/moto_server`, or `DOCKHAND_MOTO` to override). One
//! server per test process, started on first use from a thread that lives as long as
//! the process (the server's parent-death signal is tied to it); each test takes its
//! own bucket with [`S3::bucket`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::proc::Service;

pub struct S3 {
    pub port: u16,
    pub access_key: &'static str,
    pub secret_key: &'static str,
    pub region: &'static str,
}

fn moto_path() -> PathBuf {
    std::env::var_os("DOCKHAND_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::bins::root().join(".venv/bin/moto_server"))
}

impl S3 {
    /// The process's S3 server, started on first use.
    pub fn shared() -> &'static S3 {
        static S3_SERVER: OnceLock<S3> = OnceLock::new();
        S3_SERVER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let moto = moto_path();
                assert!(
                    moto.exists(),
                    "{} is missing: run scripts/setup",
                    moto.display()
                );
                for _ in 0..5 {
                    let port = crate::free_port();
                    let mut cmd = std::process::Command::new("setpriv");
                    cmd.args(["--pdeathsig", "KILL", "--"])
                        .arg(&moto)
                        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    let mut service = Service::spawn("moto_server", cmd, Signal::SIGTERM);
                    if crate::wait_until(Duration::from_secs(60), || {
                        service.running() && crate::port_open(port)
                    }) {
                        tx.send(port).unwrap();
                        // Keep the server (and this thread, its parent-death anchor) alive.
                        loop {
                            std::thread::park();
                        }
                    }
                }
                panic!("moto_server did not start");
            });
            let port = rx.recv().expect("moto_server did not start");
            S3 {
                port,
                access_key: "testing",
                secret_key: "testing",
                region: "us-east-1",
            }
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment `backup` needs for `bucket` (under `prefix`) on this server.
    pub fn backup_env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("BACKUP_S3_BUCKET", bucket),
            ("BACKUP_S3_PREFIX", prefix),
            ("BACKUP_S3_ENDPOINT", &self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.access_key),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key),
            ("AWS_REGION", self.region),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a fresh bucket and returns its name.
    pub fn bucket(&self) -> String {
        let name = format!("test-{}", crate::token(12));
        let (status, _) = self.request("PUT", &format!("/{name}"), b"");
        assert_eq!(status, 200, "creating bucket {name} failed");
        name
    }

    /// A raw request with a dummy signature (moto reads the key id, not the signature); returns status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: AWS4-HMAC-SHA256 Credential={}/20260101/{}/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n",
            self.port,
            body.len(),
            self.access_key,
            self.region
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}
