//! Child processes of the harness: run as an unprivileged user when we are root, die
//! with their parent, stop on drop.

use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// True when the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The uid/gid services run as when we are root.
pub const SERVICE_UID: u32 = 65534;

/// A command that runs `program` as `nobody` when we are root (services such as
/// PostgreSQL refuse root), with SIGTERM as parent-death signal.
pub fn service_command(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    if is_root() {
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    }
    c.args(["--pdeathsig", "TERM", "--", program]);
    c
}

/// Gives a path to the service user.
pub fn chown_to_service(path: &std::path::Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} failed", path.display());
    }
}

/// A running child that is stopped (signal, then SIGKILL) when dropped.
pub struct Service {
    pub name: &'static str,
    child: Option<Child>,
    stop_signal: Signal,
}

impl Service {
    pub fn spawn(name: &'static str, mut cmd: Command, stop_signal: Signal) -> Service {
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {name}: {e} (run scripts/setup to install the test services)")
        });
        Service {
            name,
            child: Some(child),
            stop_signal,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the process and waits for it (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, self.stop_signal);
            let ok = crate::wait_until(std::time::Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !ok {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
