//! A binary that is not an init (the backup daemon) running as PID 1 of its
//! container: it starts itself again as a child and becomes that child's init. This
//! is a use of the init loop, not a part of it, so it sits beside it.

use std::ffi::OsString;
use std::time::Duration;

use super::init::{run, Options};
use crate::process::SpawnError;

/// As PID 1, runs this same program again, with the same arguments, as a supervised
/// child (marked by the variable `worker`): the supervisor reaps every orphan in the
/// container and forwards signals, the child does the work, and at shutdown the child
/// gets `grace()` (read only when this process supervises). `None` when this
/// process is not PID 1 or is that child already, or (with a warning on stderr
/// naming `program`) when the signals cannot be blocked.
///
/// # Safety
///
/// Sets an environment variable: call it while this process has one thread, before
/// anything else can read or write the environment.
pub unsafe fn supervise_self(
    program: &str,
    worker: &str,
    grace: impl FnOnce() -> Duration,
) -> Option<Result<i32, SpawnError>> {
    if std::process::id() != 1 || std::env::var_os(worker).is_some() {
        return None;
    }
    let signals = match crate::signals::block_all() {
        Ok(s) => s,
        Err(e) => {
            // as tini warns when it cannot reap: the work goes on, unsupervised
            eprintln!("{program}: warning: cannot block signals ({e}): running as PID 1 without a supervisor, so orphans are not reaped");
            return None;
        }
    };
    // One thread, as the caller promises.
    std::env::set_var(worker, "1");
    let mut command = vec![OsString::from("/proc/self/exe")];
    command.extend(std::env::args_os().skip(1));
    let opts = Options {
        command,
        process_group: false,
        rewrite: Vec::new(),
        stop_delay: Duration::ZERO,
        grace: grace(),
        remap_exit: Vec::new(),
        user: None,
    };
    Some(run(&opts, &signals))
}
