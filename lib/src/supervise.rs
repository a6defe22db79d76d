//! PID 1: run the app as a child, forward signals to it, reap every zombie, and shut
//! the container down in order. The whole of the entrypoint's init logic is in this
//! file, read top to bottom:
//!
//! 1. [`block_signals`] runs first in `main`: every asynchronous signal is blocked and
//!    later read from a signalfd. As PID 1 the kernel drops signals that have no
//!    handler, but a *blocked* signal is queued, so nothing sent during start-up is lost.
//! 2. [`run`] starts the command in its own process group. With a terminal on stdin
//!    that we own, the child's group becomes the terminal's foreground group (as tini
//!    does), so Ctrl-C and Ctrl-Z reach the app once, directly, as in a shell.
//!    When we are not PID 1 we become a child subreaper, so orphans still come to us.
//! 3. Signals are forwarded to the child (or its process group with `process_group`),
//!    after `rewrite`. SIGCHLD is never forwarded: it means "reap". SIGTSTP/SIGTTIN/
//!    SIGTTOU are forwarded and then, when not PID 1, we stop ourselves too (dumb-init's
//!    job control); SIGCONT is forwarded and gives the terminal back to the app.
//! 4. Shutdown begins when the main child exits, or when SIGTERM/SIGINT arrives (a
//!    SIGTERM is passed on after `stop_delay`, so a load balancer can drain first).
//!    The stop signal goes to the app; once the app has exited, every remaining
//!    process gets SIGTERM. The wait ends the moment nothing is left; whatever remains
//!    when `grace` runs out (counted from the start of shutdown) gets SIGKILL, and so
//!    does everything at once on a second SIGTERM/SIGINT. Only then do we exit.
//! 5. The exit status mirrors the app: its exit code, or 128+N when signal N killed
//!    it, then `remap_exit`. A command that cannot be found exits 127, one that cannot
//!    be executed 126, each with a one-line message naming it.
//!
//! tini, dumb-init and catatonit exit as soon as the main child exits; as PID 1 that
//! makes the kernel SIGKILL every other process without its TERM handler running.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::privileges::Credentials;

/// What to run and how to supervise it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The command and its arguments; the first is looked up in `PATH`.
    pub command: Vec<OsString>,
    /// Forward signals to the child's whole process group instead of the child.
    pub process_group: bool,
    /// Signal rewrites applied before forwarding: (received, sent); 0 sent = dropped.
    pub rewrite: Vec<(i32, i32)>,
    /// How long to hold a SIGTERM before passing it on.
    pub stop_delay: Duration,
    /// How long shutdown may take before the rest is SIGKILLed.
    pub grace: Duration,
    /// Exit status rewrites: (from, to).
    pub remap_exit: Vec<(i32, i32)>,
    /// Run the app as this user (`--user`).
    pub user: Option<Credentials>,
}

/// Signals that are raised by faults in this process and must keep their default
/// action: blocking them would hang us instead of dumping.
const SYNCHRONOUS: [Signal; 7] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGABRT,
];

/// Blocks every asynchronous signal in this (single-threaded) process and returns the
/// blocked set, to be read from a signalfd by [`run`]. Call it first thing in `main`.
pub fn block_signals() -> io::Result<SigSet> {
    let mut set = SigSet::all();
    for s in SYNCHRONOUS {
        set.remove(s);
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None).map_err(io::Error::from)?;
    Ok(set)
}

/// Parses a signal: `TERM`, `SIGTERM`, `15`, `RTMIN+3`; with `allow_zero`, `0` means none.
pub fn parse_signal(s: &str, allow_zero: bool) -> Result<i32, String> {
    let bad = || {
        format!("unknown signal {s:?}: use a name such as TERM, QUIT, USR1, RTMIN+2, or a number")
    };
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (n == 0 && allow_zero) || (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMAX() - off;
        return if n >= libc::SIGRTMIN() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

/// The name of a signal number (`SIGTERM`, `SIGRTMIN+3`).
pub fn signal_name(n: i32) -> String {
    match Signal::try_from(n) {
        Ok(s) => s.as_str().to_string(),
        Err(_) if n >= libc::SIGRTMIN() => format!("SIGRTMIN+{}", n - libc::SIGRTMIN()),
        Err(_) => format!("signal {n}"),
    }
}

/// Parses `FROM:TO` pairs, e.g. `TERM:QUIT` with `parse_signal` or `143:0`.
pub fn parse_pair<T>(
    s: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid {what} {s:?}: use FROM:TO"))?;
    Ok((parse(a)?, parse(b)?))
}

/// Parses an exit status 0..=255.
pub fn parse_exit_code(s: &str) -> Result<i32, String> {
    s.trim()
        .parse::<i32>()
        .ok()
        .filter(|c| (0..=255).contains(c))
        .ok_or_else(|| format!("invalid exit status {s:?}: use a number from 0 to 255"))
}

/// Why a command could not be started, as a shell would report it.
#[derive(Debug)]
pub struct SpawnError {
    pub message: String,
    /// 127 not found, 126 found but not executable.
    pub code: i32,
}

fn spawn_error(program: &OsString, e: &io::Error) -> SpawnError {
    let name = program.to_string_lossy();
    match e.kind() {
        io::ErrorKind::NotFound if name.contains('/') => SpawnError {
            message: format!("cannot run {name}: no such file"),
            code: 127,
        },
        io::ErrorKind::NotFound => SpawnError {
            message: format!("cannot run {name}: command not found in PATH"),
            code: 127,
        },
        io::ErrorKind::PermissionDenied => SpawnError {
            message: format!(
                "cannot run {name}: permission denied (is it executable, and not a directory?)"
            ),
            code: 126,
        },
        io::ErrorKind::Other if e.to_string().starts_with("cannot switch") => SpawnError {
            message: format!("cannot run {name}: {e}"),
            code: 126,
        },
        _ => SpawnError {
            message: format!("cannot run {name}: {}", crate::error::io_reason(e)),
            code: 126,
        },
    }
}

/// Sets up a child the way every process dockhand starts needs it: its own process
/// group, no signal blocked and SIGPIPE at its default (this process blocks them all and
/// Rust ignores SIGPIPE), the privileges of `user` (setgroups, setgid, setuid, `HOME`),
/// and, with `tty`, the terminal's foreground.
pub fn prepare_child(cmd: &mut std::process::Command, user: Option<&Credentials>, tty: bool) {
    cmd.process_group(0);
    let ids = user.map(|c| (c.uid, c.gid, c.groups.clone()));
    if let Some(c) = user {
        cmd.env("HOME", &c.home);
    }
    // SAFETY: only async-signal-safe calls (sigprocmask, signal, setgroups, setgid,
    // setuid, tcsetpgrp, getpid) between fork and exec; `ids` was allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            let empty = SigSet::empty();
            libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if tty {
                take_terminal();
            }
            if let Some((uid, gid, groups)) = &ids {
                let gids: Vec<libc::gid_t> = groups.iter().map(|g| *g as libc::gid_t).collect();
                if libc::setgroups(gids.len(), gids.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::other(format!(
                        "cannot switch to uid {uid} gid {gid}: {}",
                        io::Error::last_os_error()
                    )));
                }
            }
            Ok(())
        });
    }
}

/// Supervises `opts.command` until everything has exited; returns the exit status to
/// exit with. `signals` is what [`block_signals`] returned.
pub fn run(opts: &Options, signals: &SigSet) -> Result<i32, SpawnError> {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        // Orphans of our descendants come to us instead of to the host's init.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| SpawnError {
            message: format!("cannot read signals: {e}"),
            code: 126,
        })?;
    let tty = terminal_in_foreground();

    let program = &opts.command[0];
    let mut cmd = std::process::Command::new(program);
    cmd.args(&opts.command[1..]);
    prepare_child(&mut cmd, opts.user.as_ref(), tty);
    let child = cmd.spawn().map_err(|e| spawn_error(program, &e))?;
    let main = Pid::from_raw(child.id() as i32);
    drop(child); // we reap it ourselves with waitpid(-1)
    debug!(
        pid = main.as_raw(),
        pid1,
        process_group = opts.process_group,
        "started {}",
        program.to_string_lossy()
    );

    let sup = Supervisor {
        opts,
        main,
        pid1,
        tty,
    };
    shed_code_pages();
    Ok(sup.supervise(&sfd))
}

struct Supervisor<'a> {
    opts: &'a Options,
    main: Pid,
    pid1: bool,
    tty: bool,
}

impl Supervisor<'_> {
    fn supervise(&self, sfd: &SignalFd) -> i32 {
        let mut status: Option<i32> = None; // the app's exit status, once it exited
        let mut delayed_term: Option<Instant> = None; // when a held SIGTERM is passed on
        let mut deadline: Option<Instant> = None; // end of the grace, once shutdown began
        let mut others_told = false;
        let mut killed = false;
        let started_shutdown = |deadline: &mut Option<Instant>| {
            deadline.get_or_insert_with(|| Instant::now() + self.opts.grace);
        };
        loop {
            let no_children = self.reap(&mut status);
            if let Some(code) = status {
                if deadline.is_none() {
                    started_shutdown(&mut deadline);
                }
                if !others_told {
                    others_told = true;
                    // With no child left, a subreaper has no descendant at all: skip
                    // the /proc scan. As PID 1, `docker exec` strays are not children.
                    let n = if no_children && !self.pid1 {
                        0
                    } else {
                        self.signal_rest(libc::SIGTERM)
                    };
                    if n > 0 {
                        info!("app exited with status {code}; stopping {n} remaining process(es), grace {}", crate::duration::format(self.opts.grace));
                    }
                }
                if no_children && !self.strays_remain() {
                    return self.exit_code(code);
                }
            }
            let now = Instant::now();
            if delayed_term.is_some_and(|t| now >= t) {
                delayed_term = None;
                self.forward(libc::SIGTERM);
                started_shutdown(&mut deadline);
            }
            if !killed && deadline.is_some_and(|d| now >= d) {
                killed = true;
                let n = self.signal_rest(libc::SIGKILL)
                    + usize::from(status.is_none() && self.kill_main());
                warn!(
                    "grace of {} is over: killed {n} process(es)",
                    crate::duration::format(self.opts.grace)
                );
            }

            // Sleep until a signal, the next timer, or (after SIGKILL, or while strays
            // that are not our children remain) a short poll.
            let mut wake = [delayed_term, deadline.filter(|_| !killed)]
                .into_iter()
                .flatten()
                .min();
            if killed || (status.is_some() && no_children) {
                wake = Some(now + Duration::from_millis(20));
            }
            let timeout = match wake {
                None => PollTimeout::NONE,
                Some(t) => PollTimeout::try_from(
                    t.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
                )
                .unwrap_or(PollTimeout::MAX),
            };
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(sfd),
                PollFlags::POLLIN,
            )];
            let _ = poll(&mut fds, timeout);

            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                match sig {
                    libc::SIGCHLD => {}
                    libc::SIGTERM | libc::SIGINT => {
                        if deadline.is_some() && !killed {
                            killed = true;
                            let n = self.signal_rest(libc::SIGKILL)
                                + usize::from(status.is_none() && self.kill_main());
                            warn!(
                                "second {}: killed {n} process(es) without waiting",
                                signal_name(sig)
                            );
                        } else if sig == libc::SIGTERM
                            && !self.opts.stop_delay.is_zero()
                            && delayed_term.is_none()
                            && deadline.is_none()
                        {
                            delayed_term = Some(Instant::now() + self.opts.stop_delay);
                            info!(
                                "received SIGTERM; passing it on in {}",
                                crate::duration::format(self.opts.stop_delay)
                            );
                        } else if delayed_term.take().is_some() {
                            self.forward(libc::SIGTERM);
                            started_shutdown(&mut deadline);
                        } else if status.is_none() {
                            info!(
                                "received {}; stopping the app, grace {}",
                                signal_name(sig),
                                crate::duration::format(self.opts.grace)
                            );
                            self.forward(sig);
                            started_shutdown(&mut deadline);
                        }
                    }
                    libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                        self.forward(sig);
                        if !self.pid1 {
                            let _ = nix::sys::signal::raise(Signal::SIGSTOP);
                        }
                    }
                    libc::SIGCONT => {
                        self.forward(sig);
                        if self.tty {
                            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), self.main);
                        }
                    }
                    _ => self.forward(sig),
                }
            }
        }
    }

    /// Reaps every child that has changed state; records the app's exit status.
    /// Returns true when we have no children left.
    fn reap(&self, status: &mut Option<i32>) -> bool {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
            ) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.main => *status = Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.main => {
                    *status = Some(128 + sig as i32)
                }
                Ok(WaitStatus::Stopped(pid, _)) if pid == self.main && !self.pid1 && self.tty => {
                    // The app was suspended from the terminal: suspend ourselves too, so
                    // the shell that started us gets its prompt back.
                    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
                }
                Ok(WaitStatus::StillAlive) => return false,
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => return true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends `sig` (after rewriting) to the app or its process group.
    fn forward(&self, sig: i32) {
        let sent = self
            .opts
            .rewrite
            .iter()
            .find(|(from, _)| *from == sig)
            .map_or(sig, |(_, to)| *to);
        if sent == 0 {
            debug!("dropped {}", signal_name(sig));
            return;
        }
        let target = if self.opts.process_group {
            -self.main.as_raw()
        } else {
            self.main.as_raw()
        };
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(target, sent) };
        debug!(
            target,
            ok = rc == 0,
            "forwarded {} as {}",
            signal_name(sig),
            signal_name(sent)
        );
    }

    fn kill_main(&self) -> bool {
        let target = if self.opts.process_group {
            -self.main.as_raw()
        } else {
            self.main.as_raw()
        };
        // SAFETY: as above.
        unsafe { libc::kill(target, libc::SIGKILL) == 0 }
    }

    /// Signals every process that is left other than the app: as PID 1 everything in
    /// the namespace (kill(-1) skips init itself), otherwise our descendants. Returns
    /// how many there were.
    fn signal_rest(&self, sig: i32) -> usize {
        let targets = if self.pid1 {
            other_processes()
        } else {
            descendants(std::process::id() as i32)
        };
        let targets: Vec<i32> = targets
            .into_iter()
            .filter(|p| *p != self.main.as_raw())
            .collect();
        if targets.is_empty() {
            return 0;
        }
        if self.pid1 {
            // SAFETY: as above. From PID 1, kill(-1) reaches every other process.
            unsafe { libc::kill(-1, sig) };
        } else {
            for p in &targets {
                // SAFETY: as above.
                unsafe { libc::kill(*p, sig) };
            }
        }
        targets.len()
    }

    /// As PID 1, processes that are not our children (entered with `docker exec`)
    /// may still run after our last child is reaped.
    fn strays_remain(&self) -> bool {
        self.pid1 && !other_processes().is_empty()
    }

    fn exit_code(&self, code: i32) -> i32 {
        let code = self
            .opts
            .remap_exit
            .iter()
            .find(|(from, _)| *from == code)
            .map_or(code, |(_, to)| *to);
        debug!("exiting with status {code}");
        code
    }
}

/// Drops this binary's clean code and constant pages from our resident set. Start-up
/// touched far more of them than supervising needs, and the kernel maps them 64 KiB at
/// a time; what the supervision loop uses faults back in from the page cache.
///
/// Only mappings of the executable that are read-only *and* hold no private copy of a
/// page (smaps `Anonymous: 0 kB`) are dropped: a RELRO segment, relocated by the loader
/// and then made read-only, would lose its relocations.
fn shed_code_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping's header: "start-end perms offset dev inode path".
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            current = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) if !perms.contains('w') && std::path::Path::new(path) == exe => {
                    Some((a, b))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let (Some((a, b)), Some("0")) = (current.take(), f.next()) {
                // SAFETY: a read-only private mapping of our own executable with no
                // private page: dropping it only makes the next access read the file.
                unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
            }
        }
    }
}

/// True when stdin is a terminal whose foreground process group is ours.
fn terminal_in_foreground() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|g| g == nix::unistd::getpgrp())
}

/// In the child, before exec: become the terminal's foreground process group.
fn take_terminal() {
    // SAFETY: async-signal-safe libc calls only.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpid());
        libc::signal(libc::SIGTTOU, old);
    }
}

/// Live processes in our PID namespace other than us (zombies excluded), from /proc.
fn other_processes() -> Vec<i32> {
    let me = std::process::id() as i32;
    proc_table()
        .into_iter()
        .filter(|p| p.pid != me && !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// Live descendants of `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let table = proc_table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in table.iter().filter(|p| p.ppid == parent) {
            if !p.zombie {
                out.push(p.pid);
            }
            frontier.push(p.pid);
        }
    }
    out
}

struct ProcEntry {
    pid: i32,
    ppid: i32,
    zombie: bool,
}

fn proc_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ppid ...": comm may contain spaces and parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(ProcEntry {
            pid,
            ppid,
            zombie: state == "Z" || state == "X",
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("TERM", false), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigquit", false), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("10", false), Ok(10));
        assert_eq!(parse_signal("RTMIN+2", false), Ok(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("0", true), Ok(0));
        for bad in ["0", "FOO", "99", "RTMIN+99", ""] {
            assert!(parse_signal(bad, false).is_err(), "{bad}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
    }

    #[test]
    fn pairs() {
        assert_eq!(
            parse_pair("TERM:QUIT", "rewrite", |s| parse_signal(s, true)),
            Ok((15, 3))
        );
        assert_eq!(parse_pair("143:0", "remap", parse_exit_code), Ok((143, 0)));
        assert!(parse_pair("143", "remap", parse_exit_code)
            .unwrap_err()
            .contains("FROM:TO"));
        assert!(parse_pair("143:300", "remap", parse_exit_code)
            .unwrap_err()
            .contains("0 to 255"));
    }
}
