//! PID 1: run the app as a child, forward signals to it, reap every zombie, and shut
//! the container down in order. The whole of the entrypoint's init logic is in this
//! file, read top to bottom (reading /proc and shedding code pages, which it calls,
//! are in the sibling modules):
//!
//! 1. [`crate::signals::block_all`] runs first in `main`: every asynchronous signal is blocked and
//!    later read from a signalfd. As PID 1 the kernel drops signals that have no
//!    handler, but a *blocked* signal is queued, so nothing sent during start-up is lost.
//! 2. [`run`] starts the command in its own process group. With a terminal on stdin
//!    that we own, the child's group becomes the terminal's foreground group (as tini
//!    does), so Ctrl-C and Ctrl-Z reach the app once, directly, as in a shell.
//!    When we are not PID 1 we become a child subreaper, so orphans still come to us.
//!    The child starts with the signal mask and dispositions our parent gave us (a
//!    signal it ignored or blocked stays so, as with tini), not with ours.
//! 3. Every signal is first looked up in `rewrite` (a rewrite to 0 drops it, whatever
//!    it is), then forwarded to the child (or its process group with `process_group`).
//!    SIGCHLD is never forwarded: it means "reap". SIGTSTP/SIGTTIN/SIGTTOU are
//!    forwarded and then, when not PID 1, we stop ourselves too (dumb-init's job
//!    control); SIGCONT is forwarded and gives the terminal back to the app. Fault
//!    signals (ABRT, SEGV, BUS, ...) sent with `kill` are forwarded as well (as
//!    dumb-init does); a real fault of this process still ends it. Signals that
//!    arrived before the app existed are logged and not delivered: SIGTERM, SIGINT
//!    and SIGQUIT then stop the container with 128+N without starting the app.
//! 4. Shutdown begins when the main child exits, or when SIGTERM/SIGINT arrives (a
//!    SIGTERM is passed on after `stop_delay`, so a load balancer can drain first; a
//!    second one during the delay passes it on at once). The stop signal goes to the
//!    app; once the app has exited, every remaining process gets SIGTERM. The wait
//!    ends the moment nothing is left; whatever remains when `grace` runs out
//!    (counted from the start of shutdown) gets SIGKILL. Signals that arrive during
//!    shutdown still reach the app (an app with its own escalation, such as
//!    PostgreSQL's TERM then INT, works); only a third SIGINT (Ctrl-C pressed three
//!    times) kills everything at once.
//! 5. The exit status mirrors the app: its exit code, or 128+N when signal N killed
//!    it, then `remap_exit`. A command that cannot be found exits 127, one that cannot
//!    be executed 126, each with a one-line message naming it.
//!
//! tini, dumb-init and catatonit exit as soon as the main child exits; as PID 1 that
//! makes the kernel SIGKILL every other process without its TERM handler running.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::codepages::shed_code_pages;
use super::proctable::{descendants, other_processes};
use crate::privileges::Credentials;
use crate::process::{self, prepare_child, spawn_error, SpawnError, SpawnKind};
use crate::signals::{fault_pipe, fault_signals, read_fault_pipe, signal_name};

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

/// Supervises `opts.command` until everything has exited; returns the exit status to
/// exit with. `signals` is what [`crate::signals::block_all`] returned.
pub fn run(opts: &Options, signals: &SigSet) -> Result<i32, SpawnError> {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        // Orphans of our descendants come to us instead of to the host's init.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a child subreaper ({e}): orphans of the app are not reaped here");
        }
    }
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| {
            SpawnError::new(SpawnKind::CannotRun, format!("cannot read signals: {e}"))
                .with_source(e)
        })?;
    let tty = terminal_in_foreground();

    // Signals that arrived before the app existed are not delivered to it: it could
    // not have handled them yet (a SIGHUP would kill a Python app at once). A stop
    // signal ends the container here, with its status, without starting the app.
    for sig in pending_before_start(&sfd) {
        let sent = rewrite(&opts.rewrite, sig);
        if sent == 0 || sig == libc::SIGCHLD {
            continue;
        }
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
            info!(
                "received {} before the app started: not starting it",
                signal_name(sig)
            );
            return Ok(128 + sig);
        }
        info!(
            "received {} before the app started: not delivered",
            signal_name(sig)
        );
    }

    let program = &opts.command[0];
    let mut cmd = std::process::Command::new(program);
    cmd.args(&opts.command[1..]);
    prepare_child(&mut cmd, opts.user.as_ref(), tty);
    let child = cmd
        .spawn()
        .map_err(|e| spawn_error(program, &e, opts.user.as_ref()))?;
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
    let code = sup.supervise(&sfd);
    // The process ends right after (at once, for the entrypoint): leave the signalfd
    // to the kernel instead of one more close(2) on the way out.
    std::mem::forget(sfd);
    Ok(code)
}

/// Every signal pending now, from the signalfd and the fault-signal pipe.
fn pending_before_start(sfd: &SignalFd) -> Vec<i32> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = sfd.read_signal() {
        out.push(info.ssi_signo as i32);
    }
    out.extend(fault_signals());
    out
}

/// The signal to send for a received one, after `--rewrite` (0: drop it).
fn rewrite(table: &[(i32, i32)], sig: i32) -> i32 {
    table
        .iter()
        .find(|(from, _)| *from == sig)
        .map_or(sig, |(_, to)| *to)
}

/// The size of one `signalfd_siginfo` as the kernel writes it.
const SIGINFO: usize = std::mem::size_of::<libc::signalfd_siginfo>();

/// Reads whole `signalfd_siginfo` records into `buf`; the bytes read (0 when none is
/// pending: the signalfd is non-blocking).
#[inline(always)]
fn read_signals(sfd: &SignalFd, buf: &mut [u8]) -> usize {
    nix::unistd::read(sfd, buf).unwrap_or(0)
}

struct Supervisor<'a> {
    opts: &'a Options,
    main: Pid,
    pid1: bool,
    tty: bool,
}

/// Where shutdown stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// The app runs; no stop signal yet.
    Running,
    /// A SIGTERM is held for `--stop-delay`, to be sent (after rewrite) at `at`.
    Delayed { at: Instant, send: i32 },
    /// Shutdown began; whatever is left at `deadline` gets SIGKILL.
    Stopping { deadline: Instant },
    /// SIGKILL was sent; waiting for the last processes to go.
    Killed,
}

impl Supervisor<'_> {
    /// The loop, tini-style: reap, act on a deadline, sleep, handle signals.
    fn supervise(&self, sfd: &SignalFd) -> i32 {
        let mut status: Option<i32> = None; // the app's exit status, once it exited
        let mut state = Shutdown::Running;
        let mut others_told = false;
        let mut interrupts = 0; // SIGINTs received (the third one forces the stop)
        loop {
            let no_children = self.reap(&mut status);
            if let Some(code) = status {
                if matches!(state, Shutdown::Running | Shutdown::Delayed { .. }) {
                    state = self.begin_shutdown();
                }
                // (when it told no one, nothing else lived a moment ago: no second look)
                let mut alone = false;
                if !others_told {
                    others_told = true;
                    alone = self.stop_the_rest(code, no_children) == 0;
                }
                if no_children && (alone || !self.strays_remain()) {
                    return self.exit_code(code);
                }
            }
            state = self.on_deadline(state, status.is_none());
            let (signals, faults) = self.sleep(sfd, state, status.is_some() && no_children);
            // Nothing here allocates: the idle loop touches as little code as it can
            // (its pages fault back in after shed_code_pages, 64 KiB at a time). Only
            // what poll found ready is read, up to 8 signals a read(2).
            if signals {
                let mut buf = [0u8; SIGINFO * 8];
                loop {
                    let n = read_signals(sfd, &mut buf);
                    for info in buf[..n].chunks_exact(SIGINFO) {
                        let sig = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                        state =
                            self.on_signal(sig as i32, state, status.is_some(), &mut interrupts);
                    }
                    if n < buf.len() {
                        break;
                    }
                }
            }
            if faults {
                let mut buf = [0u8; 16];
                loop {
                    let n = read_fault_pipe(&mut buf);
                    for b in &buf[..n] {
                        state =
                            self.on_signal(i32::from(*b), state, status.is_some(), &mut interrupts);
                    }
                    if n < buf.len() {
                        break;
                    }
                }
            }
        }
    }

    /// The grace starts now.
    // Inlined into the loop: the idle path stays in few code pages.
    #[inline(always)]
    fn begin_shutdown(&self) -> Shutdown {
        Shutdown::Stopping {
            deadline: Instant::now() + self.opts.grace,
        }
    }

    /// Once the app has exited, every other process gets SIGTERM.
    /// Returns how many it signalled (0: nothing else lives).
    #[cold]
    fn stop_the_rest(&self, code: i32, no_children: bool) -> usize {
        // With no child left, a subreaper has no descendant at all: skip the /proc
        // scan. As PID 1, `docker exec` strays are not children.
        // As PID 1, kill(-1, 0) says in one system call whether anything else lives.
        let n = if no_children && (!self.pid1 || process::kill(-1, 0) == Ok(false)) {
            0
        } else {
            self.signal_rest(libc::SIGTERM)
        };
        if n > 0 {
            info!(
                "app exited with status {code}; stopping {n} remaining process(es), grace {}",
                crate::duration::format(self.opts.grace)
            );
        }
        n
    }

    /// Passes on a held SIGTERM when its delay is over; SIGKILLs everything when the
    /// grace is over.
    // Inlined into the loop: the idle path stays in few code pages.
    #[inline(always)]
    fn on_deadline(&self, state: Shutdown, app_running: bool) -> Shutdown {
        let now = Instant::now();
        match state {
            Shutdown::Delayed { at, send } if now >= at => {
                self.send(send);
                self.begin_shutdown()
            }
            Shutdown::Stopping { deadline } if now >= deadline => {
                let n = self.kill_everything(app_running);
                warn!(
                    "grace of {} is over: killed {n} process(es)",
                    crate::duration::format(self.opts.grace)
                );
                Shutdown::Killed
            }
            other => other,
        }
    }

    fn kill_everything(&self, app_running: bool) -> usize {
        self.signal_rest(libc::SIGKILL) + usize::from(app_running && self.kill_main())
    }

    /// Sleeps until a signal, the next timer, or (after SIGKILL, or while strays that
    /// are not our children remain) a short poll.
    // Inlined into the loop: the idle path stays in few code pages.
    #[inline(always)]
    /// Returns whether the signalfd and the fault pipe are readable.
    fn sleep(&self, sfd: &SignalFd, state: Shutdown, waiting_for_strays: bool) -> (bool, bool) {
        let now = Instant::now();
        let wake = match state {
            Shutdown::Killed => Some(now + Duration::from_millis(20)),
            _ if waiting_for_strays => Some(now + Duration::from_millis(20)),
            Shutdown::Delayed { at, .. } => Some(at),
            Shutdown::Stopping { deadline } => Some(deadline),
            Shutdown::Running => None,
        };
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(
                t.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
            )
            .unwrap_or(PollTimeout::MAX),
        };
        let signals = PollFd::new(std::os::fd::AsFd::as_fd(sfd), PollFlags::POLLIN);
        let pipe = fault_pipe();
        let mut fds = [
            signals,
            PollFd::new(
                pipe.unwrap_or(std::os::fd::AsFd::as_fd(sfd)),
                PollFlags::POLLIN,
            ),
        ];
        let n = if pipe.is_some() { 2 } else { 1 };
        match poll(&mut fds[..n], timeout) {
            Ok(_) => {
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), n == 2 && ready(&fds[1]))
            }
            Err(nix::errno::Errno::EINTR) => (false, false),
            Err(e) => {
                // (ENOMEM: the loop goes on, reaping and timing out, a little later;
                // both are read then, as before any poll)
                warn!("waiting for signals failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                (true, true)
            }
        }
    }

    /// One received signal: rewrite first (0 drops it, whatever it is), then the rule
    /// for what arrived.
    #[cold]
    fn on_signal(
        &self,
        sig: i32,
        state: Shutdown,
        app_exited: bool,
        interrupts: &mut u32,
    ) -> Shutdown {
        if sig == libc::SIGCHLD {
            return state; // reaping happens at the top of the loop
        }
        let send = rewrite(&self.opts.rewrite, sig);
        if send == 0 {
            debug!("dropped {} (--rewrite)", signal_name(sig));
            return state;
        }
        if sig == libc::SIGINT {
            *interrupts += 1;
        }
        match sig {
            libc::SIGTERM | libc::SIGINT => match state {
                Shutdown::Running => self.stop_the_app(sig, send),
                Shutdown::Delayed { send: held, .. } => self.end_the_delay(held, send),
                Shutdown::Stopping { .. } | Shutdown::Killed => {
                    self.stop_signal_while_stopping(send, state, app_exited, *interrupts)
                }
            },
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                self.send(send);
                if !self.pid1 {
                    stop_ourselves();
                }
                state
            }
            libc::SIGCONT => {
                self.send(send);
                self.give_back_the_terminal();
                state
            }
            _ => {
                self.send(send);
                state
            }
        }
    }

    /// The first SIGTERM or SIGINT: hold a SIGTERM for `--stop-delay`, or pass the
    /// signal on and start the grace.
    fn stop_the_app(&self, sig: i32, send: i32) -> Shutdown {
        if sig == libc::SIGTERM && !self.opts.stop_delay.is_zero() {
            info!(
                "received SIGTERM; passing it on in {}",
                crate::duration::format(self.opts.stop_delay)
            );
            return Shutdown::Delayed {
                at: Instant::now() + self.opts.stop_delay,
                send,
            };
        }
        info!(
            "received {}; stopping the app, grace {}",
            signal_name(sig),
            crate::duration::format(self.opts.grace)
        );
        self.send(send);
        self.begin_shutdown()
    }

    /// A second stop signal during the delay: no more waiting. The held signal goes
    /// first, then this one when it differs.
    fn end_the_delay(&self, held: i32, send: i32) -> Shutdown {
        self.send(held);
        if send != held {
            self.send(send);
        }
        self.begin_shutdown()
    }

    /// A stop signal once shutdown began: passed on to the app while it runs; the
    /// third SIGINT kills everything at once.
    fn stop_signal_while_stopping(
        &self,
        send: i32,
        state: Shutdown,
        app_exited: bool,
        interrupts: u32,
    ) -> Shutdown {
        if interrupts >= 3 && state != Shutdown::Killed {
            let n = self.kill_everything(!app_exited);
            warn!("third SIGINT: killed {n} process(es) without waiting");
            return Shutdown::Killed;
        }
        if !app_exited {
            self.send(send);
        }
        state
    }

    /// After SIGCONT, the app's group is the terminal's foreground group again.
    fn give_back_the_terminal(&self) {
        if self.tty {
            if let Err(e) = nix::unistd::tcsetpgrp(std::io::stdin(), self.main) {
                warn!("cannot give the terminal back to the app: {e}");
            }
        }
    }

    /// Reaps every child that has changed state; records the app's exit status.
    /// Returns true when we have no children left.
    // Inlined into the loop: the idle path stays in few code pages.
    #[inline(always)]
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
                    stop_ourselves();
                }
                Ok(WaitStatus::StillAlive) => return false,
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => return true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends `sig` (already rewritten) to the app or its process group.
    fn send(&self, sig: i32) {
        let target = if self.opts.process_group {
            -self.main.as_raw()
        } else {
            self.main.as_raw()
        };
        match process::kill(target, sig) {
            Ok(true) => debug!(target, "sent {}", signal_name(sig)),
            // as tini: the app was already gone
            Ok(false) => debug!(
                target,
                "the app was gone when {} was sent",
                signal_name(sig)
            ),
            Err(e) => warn!(target, "cannot send {} to the app: {e}", signal_name(sig)),
        }
    }

    fn kill_main(&self) -> bool {
        let target = if self.opts.process_group {
            -self.main.as_raw()
        } else {
            self.main.as_raw()
        };
        match process::kill(target, libc::SIGKILL) {
            Ok(sent) => sent,
            Err(e) => {
                warn!(target, "cannot SIGKILL the app: {e}");
                false
            }
        }
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
        // From PID 1, kill(-1) reaches every other process.
        let pids: &[i32] = if self.pid1 { &[-1] } else { &targets };
        for p in pids {
            if let Err(e) = process::kill(*p, sig) {
                warn!("cannot send {} to process {p}: {e}", signal_name(sig));
            }
        }
        targets.len()
    }

    /// As PID 1, processes that are not our children (entered with `docker exec`)
    /// may still run after our last child is reaped.
    fn strays_remain(&self) -> bool {
        // (an error other than ESRCH: there is something we may not signal)
        self.pid1 && process::kill(-1, 0) != Ok(false) && !other_processes().is_empty()
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

/// True when stdin is a terminal whose foreground process group is ours.
fn terminal_in_foreground() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|g| g == nix::unistd::getpgrp())
}

/// Suspends this process (the app was suspended from the terminal).
fn stop_ourselves() {
    if let Err(e) = nix::sys::signal::raise(Signal::SIGSTOP) {
        warn!("cannot suspend: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(stop_delay: Duration, rewrite: Vec<(i32, i32)>) -> Options {
        Options {
            command: vec!["sleep".into(), "30".into()],
            process_group: false,
            rewrite,
            stop_delay,
            grace: Duration::from_secs(10),
            remap_exit: vec![(143, 0)],
            user: None,
        }
    }

    /// A child standing in for the app, and the supervisor's view of it (reaped with
    /// waitpid, as the supervisor reaps).
    #[allow(clippy::zombie_processes)]
    fn with_app(o: &Options, test: impl FnOnce(&Supervisor, Pid)) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let main = Pid::from_raw(child.id() as i32);
        let sup = Supervisor {
            opts: o,
            main,
            pid1: false,
            tty: false,
        };
        test(&sup, main);
        let _ = process::kill(main.as_raw(), libc::SIGKILL);
        let _ = waitpid(main, None);
    }

    fn still_running(pid: Pid) -> bool {
        matches!(
            waitpid(pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        )
    }

    #[test]
    fn rewrites_and_exit_remaps_apply_as_given() {
        let table = [(libc::SIGUSR1, libc::SIGHUP), (libc::SIGWINCH, 0)];
        assert_eq!(rewrite(&table, libc::SIGUSR1), libc::SIGHUP);
        assert_eq!(rewrite(&table, libc::SIGWINCH), 0);
        assert_eq!(rewrite(&table, libc::SIGTERM), libc::SIGTERM);
        let o = opts(Duration::ZERO, Vec::new());
        with_app(&o, |sup, _| {
            assert_eq!(sup.exit_code(143), 0);
            assert_eq!(sup.exit_code(3), 3);
        });
    }

    #[test]
    fn sigterm_passes_on_at_once_and_starts_the_grace() {
        let o = opts(Duration::ZERO, Vec::new());
        with_app(&o, |sup, main| {
            let mut interrupts = 0;
            let state = sup.on_signal(libc::SIGTERM, Shutdown::Running, false, &mut interrupts);
            assert!(matches!(state, Shutdown::Stopping { .. }), "{state:?}");
            assert_eq!(
                waitpid(main, None).unwrap(),
                WaitStatus::Signaled(main, Signal::SIGTERM, false)
            );
        });
    }

    #[test]
    fn a_held_sigterm_waits_for_its_delay_or_a_second_one() {
        let o = opts(Duration::from_secs(60), Vec::new());
        with_app(&o, |sup, main| {
            let mut interrupts = 0;
            let state = sup.on_signal(libc::SIGTERM, Shutdown::Running, false, &mut interrupts);
            assert!(matches!(state, Shutdown::Delayed { .. }), "{state:?}");
            // the deadline has not come: nothing is sent
            let state = sup.on_deadline(state, true);
            assert!(matches!(state, Shutdown::Delayed { .. }), "{state:?}");
            std::thread::sleep(Duration::from_millis(50));
            assert!(still_running(main));
            // a second SIGTERM ends the delay
            let state = sup.on_signal(libc::SIGTERM, state, false, &mut interrupts);
            assert!(matches!(state, Shutdown::Stopping { .. }), "{state:?}");
            assert_eq!(
                waitpid(main, None).unwrap(),
                WaitStatus::Signaled(main, Signal::SIGTERM, false)
            );
        });
    }

    #[test]
    fn a_signal_rewritten_to_0_is_dropped_and_sigchld_is_never_forwarded() {
        let o = opts(Duration::ZERO, vec![(libc::SIGTERM, 0)]);
        with_app(&o, |sup, main| {
            let mut interrupts = 0;
            let state = sup.on_signal(libc::SIGTERM, Shutdown::Running, false, &mut interrupts);
            assert_eq!(state, Shutdown::Running);
            let state = sup.on_signal(libc::SIGCHLD, state, false, &mut interrupts);
            assert_eq!(state, Shutdown::Running);
            std::thread::sleep(Duration::from_millis(50));
            assert!(still_running(main), "a dropped signal reached the app");
        });
    }
}
