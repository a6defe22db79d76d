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
        Self::start_under(&[], init, app_args, wait_ready)
    }

    /// Like [`Namespace::start_with`], with `unshare` itself started by `parent` (e.g.
    /// `env --ignore-signal=SEGV`), which sets what the init inherits.
    pub fn start_under(
        parent: &[&str],
        init: Init,
        app_args: &[&str],
        wait_ready: bool,
    ) -> Namespace {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = match parent.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
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

// Scenarios shared by tests/pid1.rs (dockhand) and tests/reference_inits.rs (tini,
// dumb-init, no init): the same steps, observed the same way, for any init.

const LONG: Duration = Duration::from_secs(30);

/// The catchable signals a forwarding test sends, one at a time.
pub const CATCHABLE: [&str; 13] = [
    "SIGHUP",
    "SIGQUIT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
    "SIGWINCH",
    "SIGURG",
    "SIGPWR",
    "SIGVTALRM",
    "SIGPROF",
    "SIGXCPU",
    "SIGIO",
    "SIGRTMIN+3",
];

pub fn names(sigs: &[&str]) -> Vec<String> {
    sigs.iter().map(|s| s.to_string()).collect()
}

pub fn signum(name: &str) -> i32 {
    dockhand::signals::parse_signal(name, false).unwrap()
}

/// Waits until the app has recorded `n` signals.
pub fn await_records(ns: &Namespace, n: usize) -> Vec<String> {
    crate::wait_until(Duration::from_secs(10), || ns.recorded().len() >= n);
    ns.recorded()
}

/// Sends [`CATCHABLE`] one at a time (each must arrive before the next is sent), then
/// SIGTERM: what the app recorded, and the exit status.
pub fn forward_catchable(init: Init) -> (Vec<String>, Option<i32>) {
    let mut ns = Namespace::start(init.clone(), &[]);
    for (i, s) in CATCHABLE.iter().enumerate() {
        ns.signal_raw(signum(s));
        assert_eq!(
            await_records(&ns, i + 1).len(),
            i + 1,
            "{}: {s} not forwarded",
            init.name()
        );
    }
    ns.signal(Signal::SIGTERM);
    let code = ns.wait(LONG);
    (ns.recorded(), code)
}

/// True when SIGUSR1 sent to PID 1 reaches the app's own child.
pub fn grandchild_gets_usr1(init: Init) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("gc");
    let mut ns = Namespace::start(init, &["--grandchild-record", gc.to_str().unwrap()]);
    ns.signal(Signal::SIGUSR1);
    await_records(&ns, 1);
    let reached = crate::wait_until(Duration::from_millis(500), || !read_lines(&gc).is_empty());
    ns.signal(Signal::SIGTERM);
    assert!(ns.wait(LONG).is_some());
    reached
}

/// How many of a thousand orphans the app leaves behind are still zombies.
pub fn zombies_left(init: Init) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("zombies");
    let mut ns = Namespace::start(
        init,
        &["--orphans", "1000", "--zombies", z.to_str().unwrap()],
    );
    let zombies = read_lines(&z)[0].parse().unwrap();
    ns.signal(Signal::SIGKILL);
    ns.wait(LONG);
    zombies
}

/// The app exits on SIGTERM at once and its child needs 0.5 s to clean up: the exit
/// status, and what the child recorded (nothing when it was killed first).
pub fn grandchild_term_handler(init: Init) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("gc");
    let mut ns = Namespace::start(init, &["--grandchild", gc.to_str().unwrap()]);
    ns.signal(Signal::SIGTERM);
    let code = ns.wait(LONG);
    (code, read_lines(&gc), ns.stderr())
}

/// Runs `init_argv COMMAND` as PID 1 of a new namespace: exit status and stderr.
pub fn run_command(init_argv: &[&str], command: &str) -> (i32, String) {
    let out = Command::new("unshare")
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(["--pid", "--fork", "--mount-proc"])
        .args(init_argv)
        .arg(command)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On a terminal: (the app's group is the foreground group, PID 1 is in it too).
pub fn foreground_groups(init: Init) -> (bool, bool) {
    let (mut ns, _tty) = start_on_a_tty(init, &[]);
    let (pid1, app) = (ns.init_pid(), app_pid(&ns));
    let (app_pgrp, tpgid) = (stat_field(app, 3), stat_field(app, 6));
    let pid1_in_foreground = stat_field(pid1, 3) == tpgid;
    ns.signal(Signal::SIGTERM);
    ns.wait(LONG);
    (app_pgrp == tpgid, pid1_in_foreground)
}

/// (init pid, the orphan's parent as it saw it, init's stderr, exit status).
pub fn orphan_outside_a_namespace(init: &Init) -> (u32, i32, String, Option<i32>) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let orphan = dir.path().join("orphan");
    let stderr = dir.path().join("stderr");
    let argv = init.argv();
    let mut child = Command::new(&argv[0])
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(&argv[1..])
        .arg("python3")
        .arg(crate::pid1::sigapp())
        .arg("--orphan")
        .arg(&orphan)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    crate::wait_until(LONG, || !read_lines(&orphan).is_empty());
    let parent: i32 = read_lines(&orphan)
        .first()
        .expect("the orphan never reported")
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = crate::wait_until(LONG, || matches!(child.try_wait(), Ok(Some(_))));
    let code = if status {
        child.wait().ok().and_then(|s| s.code())
    } else {
        None
    };
    let _ = child.kill();
    (pid, parent, std::fs::read_to_string(&stderr).unwrap(), code)
}

/// The app's host pid: the only child of the namespace's PID 1.
pub fn app_pid(ns: &Namespace) -> i32 {
    let init = ns.init_pid();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

/// Field `n` after the command name in /proc/PID/stat (3 = pgrp, 6 = tpgid).
pub fn stat_field(pid: i32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    rest.split(' ')
        .nth(n - 1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(-1)
}

pub fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 2..].chars().next())
        .unwrap_or('?')
}

/// Starts INIT as PID 1 on a new pseudo-terminal, as `docker run -it` does.
pub fn start_on_a_tty(init: Init, app_args: &[&str]) -> (Namespace, std::fs::File) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).unwrap();
    let master: OwnedFd = pty.master;
    let slave: OwnedFd = pty.slave;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(init.argv())
        .arg("python3")
        .arg(crate::pid1::sigapp())
        .arg("--record")
        .arg(dir.path().join("record"))
        .arg("--ready")
        .arg(dir.path().join("ready"))
        .args(app_args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    let slave_fd = slave.as_raw_fd();
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::libc::setsid();
            nix::libc::ioctl(slave_fd, nix::libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let ns = Namespace::adopt(dir, init, cmd.spawn().unwrap());
    drop(slave);
    (ns, std::fs::File::from(master))
}
