//! Processes dockhand starts and signals: one safe `kill`, how a child is prepared
//! (process group, signal mask, user), what a failed start means (126/127, as a shell
//! says it), exit statuses, the slot through which a running migration command can be
//! signalled, and the panic hook every binary installs.
//!
//! Parts that need `nix` are built with the `pid1` feature; the panic hook is for all.

/// Makes every panic print one line and exit with `code`, so a bug can never produce
/// an exit status that means something else (Docker reserves 2 for health checks).
pub fn install_panic_hook(program: &'static str, code: i32) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "{program}: internal error{at}: {}; please report this",
            crate::redact::text(&msg)
        );
        std::process::exit(code);
    }));
}

#[cfg(feature = "pid1")]
pub use pid1::*;

#[cfg(feature = "pid1")]
mod pid1 {
    use std::ffi::OsString;
    use std::io;
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;

    use nix::libc;

    use crate::config::{invalid, ConfigError};
    use crate::error::{Error, Kind};
    use crate::privileges::Credentials;

    /// Sends `sig` to `pid` (a process group when negative, every process we may
    /// signal when -1): `Ok(true)` when it reached at least one process, `Ok(false)`
    /// when there was none (ESRCH: it has exited, which is no error), and the errno
    /// otherwise (EPERM, EINVAL), for the caller to report as tini does.
    pub fn kill(pid: i32, sig: i32) -> Result<bool, nix::errno::Errno> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, sig) } == 0 {
            return Ok(true);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::ESRCH => Ok(false),
            e => Err(e),
        }
    }

    /// Ends the process at once with `code`, as tini does: no destructors, no atexit
    /// handlers, no runtime clean-up (three system calls fewer on the way out). For the
    /// supervisor's end only: it holds nothing to flush (log lines are written whole to
    /// unbuffered stderr, stdout is not used).
    pub fn exit_now(code: i32) -> ! {
        // SAFETY: _exit(2) has no memory-safety preconditions and does not return.
        unsafe { libc::_exit(code) }
    }

    /// Replaces this process with a fresh copy of itself, run with `first` put before
    /// its original arguments: the memory of what ran before is gone, the PID (1)
    /// stays, and the blocked and pending signals carry over, as do (for the app) the
    /// signal dispositions and blocked set our parent gave us. Returns only when that
    /// cannot be done (no /proc).
    pub fn reexec_self(first: &str) -> nix::Error {
        use std::ffi::CString;
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let mut argv: Vec<CString> = std::env::args_os()
            .take(1)
            .filter_map(|a| CString::new(a.into_vec()).ok())
            .collect();
        argv.extend(CString::new(first).ok());
        argv.extend(
            std::env::args_os()
                .skip(1)
                .filter_map(|a| CString::new(a.into_vec()).ok()),
        );
        // The new image must see what our parent gave us, not what we changed; the
        // blocked set it cannot see (we block everything) goes in its environment.
        let (carry, mask) = crate::signals::carry_inherited();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != carry)
            .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
            .collect();
        env.extend(CString::new(format!("{carry}={mask}")).ok());
        crate::signals::restore_inherited();
        match nix::unistd::execve(c"/proc/self/exe", &argv, &env) {
            Err(e) => {
                // (they were set once already: setting them again cannot fail here in
                // a way the failed exec would not already report)
                let _ = crate::signals::set_fault_handlers();
                e
            }
            Ok(never) => match never {},
        }
    }

    /// A running child whose process group can be signalled from elsewhere: start-up's
    /// signal handling passes a stop signal on to a running `--migrate-cmd`.
    #[derive(Debug, Clone, Default)]
    pub struct ChildGroup(Arc<AtomicI32>);

    impl ChildGroup {
        /// Records the running child (its pid, which is its process group's id).
        pub fn set(&self, pid: u32) {
            self.0.store(pid as i32, Ordering::SeqCst);
        }

        /// The child has exited.
        pub fn clear(&self) {
            self.0.store(0, Ordering::SeqCst);
        }

        /// True while a child is recorded.
        pub fn is_running(&self) -> bool {
            self.0.load(Ordering::SeqCst) > 0
        }

        /// Sends `sig` to the child's process group: `Ok(false)` when none is
        /// running (or it has just exited).
        pub fn signal(&self, sig: i32) -> Result<bool, nix::errno::Errno> {
            let pgid = self.0.load(Ordering::SeqCst);
            if pgid > 0 {
                kill(-pgid, sig)
            } else {
                Ok(false)
            }
        }
    }

    /// Why a command could not be started, as a shell would report it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SpawnKind {
        /// No such file, or not in `PATH` (127).
        NotFound,
        /// Found but not executable, or the user switch failed (126).
        CannotRun,
    }

    impl Kind for SpawnKind {
        fn exit_code(self) -> u8 {
            match self {
                SpawnKind::NotFound => 127,
                SpawnKind::CannotRun => 126,
            }
        }
    }

    /// A command that could not be started.
    pub type SpawnError = Error<SpawnKind>;

    /// What a failed spawn of `program` means (run as `user`).
    pub fn spawn_error(
        program: &OsString,
        e: &io::Error,
        user: Option<&Credentials>,
    ) -> SpawnError {
        let name = program.to_string_lossy();
        if let (Some(c), Some(errno @ (libc::EPERM | libc::EINVAL))) = (user, e.raw_os_error()) {
            // SAFETY: geteuid(2) has no preconditions.
            let why = if unsafe { libc::geteuid() } != 0 {
                "the entrypoint must run as root to change user"
            } else {
                "the entrypoint runs as root, but in a user namespace (rootless Docker or Podman) only the ids in /proc/self/uid_map and gid_map exist"
            };
            return SpawnError::new(
                SpawnKind::CannotRun,
                format!(
                    "cannot run {name}: cannot switch to uid {} gid {}: {} ({why})",
                    c.uid,
                    c.gid,
                    if errno == libc::EPERM {
                        "operation not permitted"
                    } else {
                        "invalid argument"
                    }
                ),
            );
        }
        match e.kind() {
            io::ErrorKind::NotFound if name.contains('/') => SpawnError::new(
                SpawnKind::NotFound,
                format!("cannot run {name}: no such file"),
            ),
            io::ErrorKind::NotFound => SpawnError::new(
                SpawnKind::NotFound,
                format!("cannot run {name}: command not found in PATH"),
            ),
            io::ErrorKind::PermissionDenied => SpawnError::new(
                SpawnKind::CannotRun,
                format!(
                    "cannot run {name}: permission denied (is it executable, and not a directory?)"
                ),
            ),
            _ => SpawnError::new(
                SpawnKind::CannotRun,
                format!("cannot run {name}: {}", crate::error::io_reason(e)),
            ),
        }
    }

    /// Sets up a child the way every process dockhand starts needs it: its own process
    /// group, the signal mask and dispositions our parent gave us, not ours (this
    /// process blocks every signal, Rust ignores SIGPIPE, the fault signals have our
    /// handler: [`crate::signals::restore_inherited`]), the privileges of `user`
    /// (setgroups, setgid, setuid, `HOME`), and, with `tty`, the terminal's foreground.
    pub fn prepare_child(cmd: &mut std::process::Command, user: Option<&Credentials>, tty: bool) {
        cmd.process_group(0);
        if let Some(c) = user {
            cmd.env("HOME", &c.home);
        }
        // Everything the child needs is built here, before fork: with other threads alive
        // at fork (a runtime's), allocating in the child could wait forever on a lock that
        // a thread held at the moment of the fork.
        let ids: Option<(u32, u32, Vec<libc::gid_t>)> = user.map(|c| {
            (
                c.uid,
                c.gid,
                c.groups.iter().map(|g| *g as libc::gid_t).collect(),
            )
        });
        let mask = crate::signals::inherited_blocked();
        // SAFETY: between fork and exec the closure only calls async-signal-safe
        // functions (signal, an atomic load, sigprocmask, tcsetpgrp, getpid, setgroups,
        // setgid, setuid) and allocates nothing: `ids` and `mask` were built before the
        // fork, and the error it may return is an OS error code (no message is formatted).
        unsafe {
            cmd.pre_exec(move || {
                crate::signals::restore_inherited();
                libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
                if tty {
                    take_terminal();
                }
                if let Some((uid, gid, gids)) = &ids {
                    if libc::setgroups(gids.len(), gids.as_ptr()) != 0
                        || libc::setgid(*gid) != 0
                        || libc::setuid(*uid) != 0
                    {
                        // EPERM or EINVAL: spawn_error tells them from exec's errors.
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Parses an exit status 0..=255.
    pub fn parse_exit_code(s: &str) -> Result<i32, ConfigError> {
        s.trim()
            .parse::<i32>()
            .ok()
            .filter(|c| (0..=255).contains(c))
            .ok_or_else(|| {
                invalid(format!(
                    "invalid exit status {s:?}: use a number from 0 to 255"
                ))
            })
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
}

#[cfg(all(test, feature = "pid1"))]
mod tests {
    use super::*;

    #[test]
    fn kill_tells_a_process_gone_from_an_error() {
        // signal 0 to ourselves: delivered (checked only)
        assert_eq!(kill(std::process::id() as i32, 0), Ok(true));
        // a child that has exited and been reaped: no such process, no error
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(kill(pid, 0), Ok(false));
        // an invalid signal number is an error, with its errno
        assert_eq!(
            kill(std::process::id() as i32, 999),
            Err(nix::errno::Errno::EINVAL)
        );
        // a group with no process recorded
        assert_eq!(ChildGroup::default().signal(nix::libc::SIGTERM), Ok(false));
    }
}
