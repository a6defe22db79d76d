//! Signals, in one place: which signals each binary handles and how they are blocked,
//! the fault-signal handler, and signal names both ways.
//!
//! dockhand reads signals from a signalfd (the entrypoint) or a dedicated thread (the
//! backup commands), never from handlers: every handled signal is blocked before any
//! thread exists, so every thread inherits the mask and nothing sent early is lost
//! (as PID 1 the kernel drops a signal that has neither a handler nor a block). The
//! fault signals are the exception: blocking them would hang a faulting process, so
//! they keep a handler that tells a `kill` from another process (forwarded) from a
//! real fault (default action).
//!
//! What a process dockhand starts inherits is what dockhand's parent gave it, as with
//! tini: the signals dockhand changes for itself (the fault signals' handler, SIGPIPE,
//! which Rust's runtime ignores) and the blocked set are recorded before `main` runs
//! and given back to each child ([`restore_inherited`], [`inherited_blocked`]), so a
//! signal the parent ignored or blocked reaches the app ignored or blocked.

use std::io::{self, Write};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nix::libc;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};

use crate::config::{invalid, ConfigError};

/// The signals that stop start-up, a one-off command, or the backup daemon.
pub const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// The backup commands' handled set: [`STOP`], and SIGHUP (a closed terminal stops a
/// `backup now` as it would stop pg_dump).
pub const BACKUP: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
];

/// A set of the given signals.
pub fn set_of(signals: &[Signal]) -> SigSet {
    let mut s = SigSet::empty();
    for sig in signals {
        s.add(*sig);
    }
    s
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

/// The signals whose disposition dockhand changes in itself: [`SYNCHRONOUS`] (our
/// handler) and SIGPIPE (ignored by Rust's runtime before `main`). Every other signal
/// is only blocked, and a disposition of ignored passes through fork and exec as it is.
const CHANGED: [Signal; 8] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGABRT,
    Signal::SIGPIPE,
];

/// Which of [`CHANGED`] our parent left ignored (bit N for signal N).
static INHERITED_IGNORED: AtomicU64 = AtomicU64::new(0);

/// The signals our parent blocked (bit N-1 for signal N).
static INHERITED_BLOCKED: AtomicU64 = AtomicU64::new(0);

/// How a re-executed entrypoint learns the blocked set its first image inherited (by
/// then it blocks everything itself); read and removed before `main`, so neither we
/// nor the app see it.
const BLOCKED_VAR: &std::ffi::CStr = c"DOCKHAND_INHERITED_SIGMASK";

/// Runs [`record_inherited`] before `main`: Rust's runtime sets SIGPIPE to ignored
/// before any code of ours runs, so only a constructor can still see the parent's.
#[used]
#[link_section = ".init_array"]
static RECORD_INHERITED: extern "C" fn() = record_inherited;

extern "C" fn record_inherited() {
    // SAFETY: before `main` this process has one thread, so getenv and unsetenv race
    // with nothing; the string getenv returns is read before unsetenv frees it, and
    // sigprocmask with a null new set only reads the mask into a zeroed sigset_t.
    let blocked = unsafe {
        let carried = libc::getenv(BLOCKED_VAR.as_ptr());
        if carried.is_null() {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            (1..=64).fold(0u64, |bits, sig| {
                if libc::sigismember(&set, sig) == 1 {
                    bits | 1 << (sig - 1)
                } else {
                    bits
                }
            })
        } else {
            let bits = std::ffi::CStr::from_ptr(carried)
                .to_str()
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or(0);
            libc::unsetenv(BLOCKED_VAR.as_ptr());
            bits
        }
    };
    INHERITED_BLOCKED.store(blocked, Ordering::Relaxed);
    let mut ignored = 0u64;
    for sig in CHANGED {
        // SAFETY: sigaction with a null new action only reads the current one into a
        // zeroed struct of the right type.
        let is_ignored = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig as i32, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        };
        if is_ignored {
            ignored |= 1 << sig as i32;
        }
    }
    INHERITED_IGNORED.store(ignored, Ordering::Relaxed);
}

/// Gives the signals dockhand changed in itself the disposition its parent gave it:
/// ignored where the parent ignored them (as tini's `restore_signals` does), SIGPIPE at
/// its default otherwise. The fault signals' handler needs no undoing: exec resets a
/// handled signal to its default. For a child between fork and exec, and before we
/// re-execute ourselves; async-signal-safe (an atomic load and `signal`).
#[inline]
pub fn restore_inherited() {
    let ignored = INHERITED_IGNORED.load(Ordering::Relaxed);
    for sig in CHANGED {
        let sig = sig as i32;
        // SAFETY: signal(2) with SIG_IGN or SIG_DFL has no memory-safety preconditions.
        unsafe {
            if ignored & (1 << sig) != 0 {
                libc::signal(sig, libc::SIG_IGN);
            } else if sig == libc::SIGPIPE {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// The set of signals our parent blocked, for a child's mask (tini restores it too);
/// async-signal-safe (sigemptyset, sigaddset).
#[inline]
pub fn inherited_blocked() -> libc::sigset_t {
    let bits = INHERITED_BLOCKED.load(Ordering::Relaxed);
    // SAFETY: sigemptyset and sigaddset write into the zeroed set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if bits & (1 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
        set
    }
}

/// The environment entry that hands the blocked set our parent gave us to the image
/// we re-execute ourselves as (see [`BLOCKED_VAR`]).
pub fn carry_inherited() -> (&'static str, String) {
    (
        BLOCKED_VAR.to_str().unwrap_or_default(),
        format!("{:x}", INHERITED_BLOCKED.load(Ordering::Relaxed)),
    )
}

/// Blocks every asynchronous signal in this (single-threaded) process and returns the
/// blocked set, to be read from a signalfd by [`crate::supervise::run`]. Call it first thing in `main`.
/// The fault signals stay unblocked, with a handler that tells a `kill` from another
/// process (forwarded to the app, see [`fault_signals`]) from a real fault of ours
/// (default action: the process dies as it should).
pub fn block_all() -> io::Result<SigSet> {
    // Without them (no descriptor left for the pipe) only the forwarding of a fault
    // signal another process sends with kill is lost: say so, and block the rest.
    if let Err(e) = install_fault_handlers() {
        let _ = writeln!(
            io::stderr(),
            "warning: cannot install the fault-signal handlers ({e}): SIGSEGV, SIGBUS and the like sent with kill are not passed on"
        );
    }
    let mut set = SigSet::all();
    for s in SYNCHRONOUS {
        set.remove(s);
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None).map_err(io::Error::from)?;
    Ok(set)
}

/// The write end of the pipe that the fault-signal handler writes signal numbers to
/// (-1 until [`install_fault_handlers`] made it); the read end is [`FAULT_PIPE_READ`].
static FAULT_PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static FAULT_PIPE_READ: AtomicI32 = AtomicI32::new(-1);

fn install_fault_handlers() -> io::Result<()> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    FAULT_PIPE_READ.store(fds[0], Ordering::SeqCst);
    FAULT_PIPE_WRITE.store(fds[1], Ordering::SeqCst);
    set_fault_handlers()
}

/// Sets the fault-signal handler (again, after [`restore_inherited`] ran in this
/// process and the exec it prepared for failed).
pub fn set_fault_handlers() -> io::Result<()> {
    for sig in SYNCHRONOUS {
        // SAFETY: a zeroed sigaction is a valid value; the handler only calls
        // async-signal-safe functions (getpid, write, signal, raise).
        let set = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig as i32, &sa, std::ptr::null_mut())
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The fault-signal handler. Sent by another process (`kill`, si_code <= 0, another
/// pid): hand the number to the supervision loop through the pipe. Raised by a fault
/// here, or by ourselves (abort): restore the default action and let it happen.
extern "C" fn on_fault_signal(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; the calls
    // below are async-signal-safe.
    unsafe {
        let from_other =
            !info.is_null() && (*info).si_code <= 0 && (*info).si_pid() != libc::getpid();
        let fd = FAULT_PIPE_WRITE.load(Ordering::Relaxed);
        if from_other && fd >= 0 {
            let b = sig as u8;
            libc::write(fd, (&b as *const u8).cast(), 1);
            return;
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Reads fault-signal numbers from the pipe into `buf`; how many (0 when none).
// Inlined into the loop: the idle path stays in few code pages.
#[inline(always)]
pub fn read_fault_pipe(buf: &mut [u8]) -> usize {
    let fd = FAULT_PIPE_READ.load(Ordering::SeqCst);
    if fd < 0 {
        return 0;
    }
    // SAFETY: reads into the caller's buffer, at most its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    n.max(0) as usize
}

/// The read end of the fault-signal pipe, to poll beside the signalfd (`None` before
/// [`block_all`] made it).
#[inline(always)]
pub fn fault_pipe() -> Option<std::os::fd::BorrowedFd<'static>> {
    let fd = FAULT_PIPE_READ.load(Ordering::SeqCst);
    // SAFETY: once made, the pipe's read end stays open for the life of the process.
    (fd >= 0).then(|| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Fault signals (ABRT, SEGV, ...) that other processes sent us since the last call.
pub fn fault_signals() -> Vec<i32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = read_fault_pipe(&mut buf);
        out.extend(buf[..n].iter().map(|b| i32::from(*b)));
        if n < buf.len() {
            return out;
        }
    }
}

/// Parses a signal: `TERM`, `SIGTERM`, `15`, `RTMIN+3`; with `allow_zero`, `0` means none.
pub fn parse_signal(s: &str, allow_zero: bool) -> Result<i32, ConfigError> {
    let bad = || {
        invalid(format!(
            "unknown signal {s:?}: use a name such as TERM, QUIT, USR1, RTMIN+2, or a number"
        ))
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
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN().checked_add(off).ok_or_else(bad)?;
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
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMAX().checked_sub(off).ok_or_else(bad)?;
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
        assert_eq!(parse_signal("RTMAX-1", false), Ok(libc::SIGRTMAX() - 1));
        // offsets that overflow or carry their own sign are refused, never wrapped
        for bad in [
            "0",
            "FOO",
            "99",
            "RTMIN+99",
            "",
            "RTMIN+2147483647",
            "RTMAX--2147483648",
            "RTMAX-2147483647",
            "RTMAX--3",
            "RTMIN+-3",
            "RTMIN++3",
        ] {
            assert!(parse_signal(bad, false).is_err(), "{bad}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
    }
}
