//! A redis-server on a free loopback port, optionally with a password.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::proc::Service;

pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    _dir: tempfile::TempDir,
    _service: Service,
}

impl Redis {
    pub fn start(password: Option<&str>) -> Redis {
        Self::start_with(password, &[])
    }

    /// A redis-server with extra command-line settings (`--rename-command AUTH ""`,
    /// TLS ports...).
    pub fn start_with(password: Option<&str>, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = crate::free_port();
            let mut cmd = std::process::Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null());
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw]);
            }
            cmd.args(extra);
            let mut service = Service::spawn("redis-server", cmd, Signal::SIGTERM);
            if crate::wait_until(Duration::from_secs(10), || {
                service.running() && crate::port_open(port)
            }) {
                return Redis {
                    port,
                    password: password.map(String::from),
                    _dir: dir,
                    _service: service,
                };
            }
        }
        panic!("redis-server did not start (run scripts/setup)");
    }
}
