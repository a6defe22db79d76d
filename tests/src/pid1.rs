//! PID 1 scenarios in real PID namespaces: `unshare --pid --fork --mount-proc INIT APP`
//! makes INIT (dockhand's entrypoint, Debian's tini or dumb-init, or nothing) PID 1 of
//! a fresh namespace, with the recording app `tests/fixtures/sigapp.py` as its child.
//! The test signals INIT from outside by its host PID, as `docker stop` does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Which init runs as PID 1, with its options.
#[derive(Clone, Debug)]
pub enum Init {
    Dockhand(Vec<String>),
    Tini(Vec<String>),
    DumbInit(Vec<String>),
    /// The app itself is PID 1.
    Bare,
}

impl Init {
    pub fn dockhand(opts: &[&str]) -> Init {
        Init::Dockhand(opts.iter().map(|s| s.to_string()).collect())
    }
    pub fn tini(opts: &[&str]) -> Init {
        Init::Tini(opts.iter().map(|s| s.to_string()).collect())
    }
    pub fn dumb_init(opts: &[&str]) -> Init {
        Init::DumbInit(opts.iter().map(|s| s.to_string()).collect())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Init::Dockhand(_) => "dockhand",
            Init::Tini(_) => "tini",
            Init::DumbInit(_) => "dumb-init",
            Init::Bare => "no init",
        }
    }

    /// The init's argv up to (not including) the app.
    pub fn argv(&self) -> Vec<String> {
        let (bin, opts, sep): (String, &[String], bool) = match self {
            Init::Dockhand(o) => (
                crate::bins::bin("entrypoint").display().to_string(),
                o,
                true,
            ),
            Init::Tini(o) => ("tini".into(), o, true),
            Init::DumbInit(o) => ("dumb-init".into(), o, true),
            Init::Bare => return Vec::new(),
        };
        let mut v = vec![bin];
        v.extend(opts.iter().cloned());
        if sep {
            v.push("--".into());
        }
        v
    }
}

/// The recording app's path.
pub fn sigapp() -> PathBuf {
    crate::bins::root().join("tests/fixtures/sigapp.py")
}

pub struct Namespace {
    pub dir: tempfile::TempDir,
    pub init: Init,
    child: Option<Child>,
    status: Option<i32>,
}

impl Namespace {
    /// Starts INIT as PID 1 of a new PID namespace, running sigapp with `app_args`
    /// (plus `--record` and `--ready` files in the namespace's directory), and waits
    /// until the app is ready.
    pub fn start(init: Init, app_args: &[&str]) -> Namespace {
        Self::start_with(init, app_args, true)
    }

    pub fn start_with(init: Init, app_args: &[&str], wait_ready: bool) -> Namespace {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc"])
            .env("ENTRYPOINT_FILE_VARS", "none")
            .args(init.argv())
            .arg("python3")
            .arg(sigapp())
            .arg("--record")
            .arg(dir.path().join("record"))
            .arg("--ready")
            .arg(dir.path().join("ready"))
            .args(app_args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        let child = cmd
            .spawn()
            .expect("unshare (util-linux) is needed: run scripts/setup");
        if wait_ready {
            return Namespace::adopt(dir, init, child);
        }
        Namespace {
            dir,
            init,
            child: Some(child),
            status: None,
        }
    }

    /// Wraps an `unshare` child started elsewhere (e.g. on a terminal) and waits until
    /// the app is ready.
    pub fn adopt(dir: tempfile::TempDir, init: Init, child: Child) -> Namespace {
        let mut ns = Namespace {
            dir,
            init,
            child: Some(child),
            status: None,
        };
        let ready = ns.path("ready");
        let ok = crate::wait_until(Duration::from_secs(30), || ready.exists() || ns.exited());
        assert!(
            ok && ready.exists(),
            "{}: the app never became ready: {}",
            ns.init.name(),
            ns.stderr()
        );
        ns
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The host PID of the namespace's PID 1 (the child of `unshare`).
    pub fn init_pid(&self) -> i32 {
        init_pid_of(self.child.as_ref().expect("running").id())
    }

    /// Sends `sig` to PID 1 from outside the namespace.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.init_pid()), sig).unwrap();
    }

    /// Sends a signal by number (real-time signals).
    pub fn signal_raw(&self, sig: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { nix::libc::kill(self.init_pid(), sig) }, 0);
    }

    fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
            use std::os::unix::process::ExitStatusExt;
            self.status = Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
            return true;
        }
        false
    }

    /// Waits up to `timeout` for the namespace to end; returns the exit status as
    /// `unshare` reports PID 1's (128+N for a signal), or `None` if it is still running.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        crate::wait_until(timeout, || self.exited());
        self.status
    }

    /// The signals the app recorded, in order.
    pub fn recorded(&self) -> Vec<String> {
        read_lines(&self.path("record"))
    }

    /// The pids of the app's helpers (from --ready).
    pub fn helpers(&self) -> Vec<i32> {
        read_lines(&self.path("ready"))
            .first()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }
}

/// The host PID of the PID 1 that `unshare --fork` (pid `unshare`) started.
pub fn init_pid_of(unshare: u32) -> i32 {
    let file = format!("/proc/{unshare}/task/{unshare}/children");
    let mut pid = 0;
    crate::wait_until(Duration::from_secs(10), || {
        pid = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        pid != 0
    });
    assert_ne!(pid, 0, "no PID 1 under unshare");
    pid
}

/// Lines of a file, empty when it does not exist.
pub fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.exited() {
            if let Some(child) = self.child.as_mut() {
                let unshare = child.id();
                // Killing PID 1 ends the namespace: the kernel kills the rest.
                if let Ok(c) =
                    std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                {
                    for p in c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
