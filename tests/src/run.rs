//! Running a binary under test to completion with a time bound: its exit code and
//! output, and a check that no secret appears in either.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How a finished command ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both outputs, for assertion messages.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics when `secret` appears in the output.
    pub fn assert_no_secret(&self, secret: &str) {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "a secret leaked: {}",
            self.output()
        );
    }
}

/// `program` with only `PATH` and `env` in its environment, output captured.
pub fn command(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` up to `timeout` (then kills it and panics).
pub fn finish(child: Child, timeout: Duration) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        _ => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("the command did not finish within {timeout:?}");
        }
    }
}

/// Runs `cmd` to completion within `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Run {
    finish(cmd.spawn().expect("cannot start the command"), timeout)
}
