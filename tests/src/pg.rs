//! A throwaway PostgreSQL cluster per test. `initdb` runs once per test process into a
//! template directory; each cluster is a copy of it (milliseconds instead of a second)
//! with its own port, socket directory and, optionally, TLS.
//!
//! Roles: `postgres` (superuser; trust over the Unix socket, for the harness itself)
//! and `app` (owner of database `app`) with a random password, SCRAM over TCP, so a
//! wrong password is a real authentication failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::certs::TestCa;
use crate::proc::{chown_to_service, service_command, Service};

/// The directory with `postgres`, `initdb`, `psql`, `pg_dump`: `DOCKHAND_PG_BIN`, or
/// the newest `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DOCKHAND_PG_BIN") {
        return p.into();
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions
        .last()
        .expect("no PostgreSQL version in /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// How the template cluster is made; part of its folder's name, so a change here (or
/// another PostgreSQL) makes a new one.
const TEMPLATE_ARGS: [&str; 9] = [
    "-U",
    "postgres",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
];

/// The initdb'd cluster every test cluster is copied from: one per PostgreSQL binary
/// folder and set of initdb arguments, made once in the temporary folder and shared by
/// every test process of every run (a test process used to make its own and leave it
/// behind). Made in a folder of its own and renamed into place, so two processes
/// racing to make it never see half of one.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (bin_dir(), TEMPLATE_ARGS).hash(&mut h);
        let base = std::env::temp_dir().join(format!("dockhand-pgtemplate-{:016x}", h.finish()));
        let data = base.join("data");
        if base.join("ready").exists() {
            return data;
        }
        let fresh = tempfile::Builder::new()
            .prefix("dockhand-pgtemplate-new-")
            .tempdir()
            .unwrap();
        chown_to_service(fresh.path());
        let status = service_command(bin_dir().join("initdb").to_str().unwrap())
            .arg("-D")
            .arg(fresh.path().join("data"))
            .args(TEMPLATE_ARGS)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        std::fs::write(fresh.path().join("ready"), b"").unwrap();
        // another process may have put its own in place meanwhile: then use that one
        if std::fs::rename(fresh.path(), &base).is_ok() {
            let _ = fresh.keep();
        }
        assert!(
            base.join("ready").exists(),
            "no template cluster at {}",
            base.display()
        );
        data
    })
}

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The `app` role's password.
    pub password: String,
    data: PathBuf,
    service: Option<Service>,
    pub ca: Option<TestCa>,
}

impl Postgres {
    /// A running cluster without TLS.
    pub fn start() -> Postgres {
        Self::create(None)
    }

    /// A running cluster with TLS enabled (certificate from a fresh [`TestCa`]).
    pub fn start_tls() -> Postgres {
        Self::create(Some(TestCa::new()))
    }

    /// A running cluster with TLS and the server certificate of `ca` (e.g.
    /// [`TestCa::expired`]).
    pub fn start_tls_with(ca: TestCa) -> Postgres {
        Self::create(Some(ca))
    }

    fn create(ca: Option<TestCa>) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("dockhand-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "copying the template cluster failed");
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 200\nshared_buffers = 32MB\nlog_min_messages = warning\n",
            dir.path().display()
        );
        if let Some(ca) = &ca {
            let (cert, key) = ca.install_server_files(&data);
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        chown_to_service(dir.path());
        let mut pg = Postgres {
            dir,
            port: 0,
            password: format!("pw-{}", crate::token(16)),
            data,
            service: None,
            ca,
        };
        pg.start_server();
        let pw = pg.password.clone();
        pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{pw}'"));
        pg.psql("CREATE DATABASE app OWNER app");
        pg
    }

    /// Starts (or restarts) the server on a free port; a new port each time unless it
    /// already had one.
    pub fn start_server(&mut self) {
        for _ in 0..5 {
            if self.port == 0 {
                self.port = crate::free_port();
            }
            let mut cmd = service_command(bin_dir().join("postgres").to_str().unwrap());
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-p")
                .arg(self.port.to_string());
            cmd.stdout(std::process::Stdio::null());
            cmd.stderr(
                std::fs::File::create(self.dir.path().join(format!("log-{}", self.port))).unwrap(),
            );
            let mut service = Service::spawn("postgres", cmd, Signal::SIGQUIT);
            let ready = crate::wait_until(Duration::from_secs(30), || {
                service.running() && self.pg_isready()
            });
            if ready {
                self.service = Some(service);
                return;
            }
            drop(service);
            self.port = 0; // port taken by someone else: try another
        }
        panic!(
            "PostgreSQL did not start; logs in {}",
            self.dir.path().display()
        );
    }

    /// Lets the `app` role make replication connections over TCP (pg_basebackup,
    /// pg_receivewal): REPLICATION, and a `pg_hba.conf` line whose database field is
    /// `replication` (`all` does not match those), put first. `wal_level = replica`
    /// and `max_wal_senders` are PostgreSQL's defaults.
    pub fn allow_replication(&self) {
        self.psql("ALTER ROLE app REPLICATION");
        let hba = self.data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        let line = "host replication app 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(&hba, format!("{line}{old}")).unwrap();
        self.psql("SELECT pg_reload_conf()");
    }

    /// Takes away what [`Postgres::allow_replication`] gave and any `replication`
    /// line initdb wrote, so replication connections are refused by `pg_hba.conf`.
    pub fn deny_replication_in_hba(&self) {
        let hba = self.data.join("pg_hba.conf");
        let kept: String = std::fs::read_to_string(&hba)
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) != Some("replication"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&hba, kept).unwrap();
        self.psql("SELECT pg_reload_conf()");
    }

    /// Stops the server (immediate shutdown); `start_server` brings it back.
    pub fn stop_server(&mut self) {
        self.service.take();
    }

    fn pg_isready(&self) -> bool {
        Command::new(bin_dir().join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "1",
            ])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `postgres://app:PASSWORD@127.0.0.1:PORT/app`.
    pub fn url(&self) -> String {
        self.url_with("app", &self.password, "app")
    }

    pub fn url_with(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}"))
    }

    /// As [`Postgres::psql_db`], with psql's error instead of a panic (for waiting on
    /// a server that may not be up yet).
    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("psql");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The server's log since it was last started (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log-{}", self.port)))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }
}
