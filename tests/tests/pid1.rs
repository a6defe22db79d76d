//! `entrypoint` as PID 1, in real PID namespaces, side by side with Debian's tini and
//! dumb-init (and with no init at all), so that each test shows it can tell a correct
//! init from one that is not: the same scenario, different expected outcomes.

use std::time::Duration;

use dockhand_tests::pid1::{read_lines, Init, Namespace};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

fn names(sigs: &[&str]) -> Vec<String> {
    sigs.iter().map(|s| s.to_string()).collect()
}

fn signum(name: &str) -> i32 {
    dockhand::signals::parse_signal(name, false).unwrap()
}

/// Waits until the app has recorded `n` signals.
fn await_records(ns: &Namespace, n: usize) -> Vec<String> {
    dockhand_tests::wait_until(Duration::from_secs(10), || ns.recorded().len() >= n);
    ns.recorded()
}

#[test]
fn forwards_every_catchable_signal_and_never_sigchld() {
    let sent = [
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
    for init in [
        Init::dockhand(&[]),
        Init::tini(&[]),
        Init::dumb_init(&["--single-child"]),
    ] {
        let mut ns = Namespace::start(init.clone(), &[]);
        for (i, s) in sent.iter().enumerate() {
            ns.signal_raw(signum(s));
            // One at a time, so the order is the order sent.
            assert_eq!(
                await_records(&ns, i + 1).len(),
                i + 1,
                "{}: {s} not forwarded",
                init.name()
            );
        }
        ns.signal(Signal::SIGTERM);
        assert_eq!(ns.wait(LONG), Some(0), "{}: {}", init.name(), ns.stderr());
        let mut want = names(&sent);
        want.push("SIGTERM".into());
        assert_eq!(ns.recorded(), want, "{}", init.name());
    }
}

#[test]
fn process_group_mode_reaches_the_apps_children() {
    // (init, does the grandchild get SIGUSR1?)
    let cases = [
        (Init::dockhand(&[]), false),
        (Init::dockhand(&["--process-group"]), true),
        (Init::tini(&[]), false),
        (Init::tini(&["-g"]), true),
        (Init::dumb_init(&["--single-child"]), false),
        (Init::dumb_init(&[]), true),
    ];
    for (init, group) in cases {
        let dir = tempfile::tempdir().unwrap();
        let gc = dir.path().join("gc");
        let mut ns = Namespace::start(init.clone(), &["--grandchild-record", gc.to_str().unwrap()]);
        ns.signal(Signal::SIGUSR1);
        await_records(&ns, 1);
        let reached =
            dockhand_tests::wait_until(Duration::from_millis(500), || !read_lines(&gc).is_empty());
        assert_eq!(
            reached,
            group,
            "{} {:?}: grandchild got {:?}",
            init.name(),
            init.argv(),
            read_lines(&gc)
        );
        ns.signal(Signal::SIGTERM);
        assert!(ns.wait(LONG).is_some());
    }
}

#[test]
fn rewrite_maps_signals() {
    let mut ns = Namespace::start(
        Init::dockhand(&["--rewrite", "USR1:USR2", "--rewrite", "HUP:0"]),
        &[],
    );
    ns.signal(Signal::SIGHUP); // dropped
    ns.signal(Signal::SIGUSR1);
    assert_eq!(await_records(&ns, 1), names(&["SIGUSR2"]));
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0));
    assert_eq!(ns.recorded(), names(&["SIGUSR2", "SIGTERM"]));

    // dumb-init rewrites too (numbers only); tini passes USR1 through unchanged.
    let mut d = Namespace::start(Init::dumb_init(&["--rewrite", "10:12"]), &[]);
    d.signal(Signal::SIGUSR1);
    assert_eq!(await_records(&d, 1), names(&["SIGUSR2"]));
    let mut t = Namespace::start(Init::tini(&[]), &[]);
    t.signal(Signal::SIGUSR1);
    assert_eq!(await_records(&t, 1), names(&["SIGUSR1"]));
    for ns in [&mut d, &mut t] {
        ns.signal(Signal::SIGTERM);
        ns.wait(LONG);
    }
}

#[test]
fn stop_delay_holds_sigterm_while_other_signals_pass() {
    // SIGTERM, then SIGUSR1: with a stop delay the app sees USR1 first and is still
    // serving; without one (tini) SIGTERM arrives first and ends it.
    let mut ns = Namespace::start(Init::dockhand(&["--stop-delay", "1s"]), &[]);
    ns.signal(Signal::SIGTERM);
    ns.signal(Signal::SIGUSR1);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert_eq!(ns.recorded(), names(&["SIGUSR1", "SIGTERM"]));
    assert!(
        ns.stderr()
            .contains("received SIGTERM; passing it on in 1s"),
        "{}",
        ns.stderr()
    );

    let mut t = Namespace::start(Init::tini(&[]), &[]);
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait(LONG), Some(0));
    assert_eq!(t.recorded()[0], "SIGTERM");
}

#[test]
fn a_second_sigterm_ends_the_stop_delay() {
    let mut ns = Namespace::start(Init::dockhand(&["--stop-delay", "1h"]), &[]);
    ns.signal(Signal::SIGTERM);
    // Identical signals coalesce while pending: send the second once the first is held.
    assert!(dockhand_tests::wait_until(LONG, || ns
        .stderr()
        .contains("passing it on in 1h")));
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert_eq!(ns.recorded(), names(&["SIGTERM"]));
}

#[test]
fn reaps_a_thousand_orphaned_zombies() {
    // (init, zombies left)
    for (init, reaps) in [
        (Init::dockhand(&[]), true),
        (Init::tini(&[]), true),
        (Init::dumb_init(&[]), true),
        (Init::Bare, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("zombies");
        let mut ns = Namespace::start(
            init.clone(),
            &["--orphans", "1000", "--zombies", z.to_str().unwrap()],
        );
        let zombies: usize = read_lines(&z)[0].parse().unwrap();
        if reaps {
            assert_eq!(zombies, 0, "{} left zombies", init.name());
        } else {
            assert!(
                zombies >= 900,
                "without an init, orphans stay zombies ({zombies})"
            );
        }
        ns.signal(Signal::SIGKILL);
        ns.wait(LONG);
    }
}

#[test]
fn exit_status_mirrors_the_app() {
    for init in [Init::dockhand(&[]), Init::tini(&[]), Init::dumb_init(&[])] {
        let mut ns = Namespace::start(init.clone(), &["--exit", "3"]);
        assert_eq!(ns.wait(LONG), Some(3), "{}", init.name());
    }
    // Killed by a signal: 128+N. The app's own USR1 handler is replaced by SIGKILL here.
    let mut ns = Namespace::start(Init::dockhand(&[]), &["--stubborn"]);
    let app = {
        let host_children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", ns.init_pid())).unwrap();
        host_children
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(app), Signal::SIGKILL).unwrap();
    assert_eq!(ns.wait(LONG), Some(137), "{}", ns.stderr());

    let mut ns = Namespace::start(
        Init::dockhand(&["--remap-exit", "143:0"]),
        &["--term-exit", "143"],
    );
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0));
    let mut ns = Namespace::start(Init::dockhand(&[]), &["--term-exit", "143"]);
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(143));
}

#[test]
fn missing_and_unexecutable_commands() {
    use std::process::Command;
    let run = |init: &[&str], cmd: &str| {
        let out = Command::new("unshare")
            .env("ENTRYPOINT_FILE_VARS", "none")
            .args(["--pid", "--fork", "--mount-proc"])
            .args(init)
            .arg(cmd)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let e = dockhand_tests::bins::bin("entrypoint");
    let e = e.to_str().unwrap();
    let (code, err) = run(&[e, "--"], "no-such-command");
    assert_eq!(code, 127);
    assert_eq!(
        err,
        "entrypoint: cannot run no-such-command: command not found in PATH\n"
    );
    let (code, err) = run(&[e, "--"], "/etc/passwd");
    assert_eq!(code, 126);
    assert!(
        err.contains("cannot run /etc/passwd: permission denied"),
        "{err}"
    );
    // The others, as FIELD-NOTES records: tini 127, dumb-init 2.
    assert_eq!(run(&["tini", "--"], "no-such-command").0, 127);
    assert_eq!(run(&["dumb-init"], "no-such-command").0, 2);
}

#[test]
fn a_grandchild_gets_to_run_its_term_handler() {
    // The app exits on SIGTERM at once; its child needs 0.5 s to clean up. dockhand
    // waits; tini and dumb-init exit with the app and the kernel SIGKILLs the child.
    for (init, handled) in [
        (Init::dockhand(&[]), true),
        (Init::dockhand(&["--process-group"]), true),
        (Init::tini(&["-g"]), false),
        (Init::dumb_init(&[]), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gc = dir.path().join("gc");
        let mut ns = Namespace::start(init.clone(), &["--grandchild", gc.to_str().unwrap()]);
        ns.signal(Signal::SIGTERM);
        assert_eq!(ns.wait(LONG), Some(0), "{}: {}", init.name(), ns.stderr());
        let got = read_lines(&gc);
        assert_eq!(
            !got.is_empty(),
            handled,
            "{} {:?}: {got:?}",
            init.name(),
            init.argv()
        );
        if handled {
            assert_eq!(got, names(&["grandchild handled SIGTERM"]));
        }
    }
}

#[test]
fn a_process_ignoring_term_is_killed_after_the_grace() {
    let mut ns = Namespace::start(Init::dockhand(&["--grace", "1s"]), &["--stubborn"]);
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert!(
        ns.stderr()
            .contains("grace of 1s is over: killed 1 process(es)"),
        "{}",
        ns.stderr()
    );
}

#[test]
fn the_wait_ends_as_soon_as_everything_has_exited() {
    // A 1 h grace: ending at all (within the test's 30 s) means it did not sleep it out.
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("gc");
    let mut ns = Namespace::start(
        Init::dockhand(&["--grace", "1h"]),
        &["--grandchild", gc.to_str().unwrap()],
    );
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert!(!ns.stderr().contains("is over"), "{}", ns.stderr());
    assert_eq!(read_lines(&gc), names(&["grandchild handled SIGTERM"]));
}

#[test]
fn a_signal_sent_during_shutdown_reaches_the_app() {
    // PostgreSQL's escalation: TERM (smart shutdown), then INT (fast shutdown). The
    // app must get the INT, not a SIGKILL from its init.
    let mut ns = Namespace::start(
        Init::dockhand(&["--grace", "1h"]),
        &["--ignore-term", "--int-exit", "3"],
    );
    ns.signal(Signal::SIGTERM);
    await_records(&ns, 1);
    ns.signal(Signal::SIGINT);
    assert_eq!(ns.wait(LONG), Some(3), "{}", ns.stderr());
    assert_eq!(ns.recorded(), names(&["SIGTERM", "SIGINT"]));
}

#[test]
fn a_third_sigint_kills_at_once() {
    // The documented way to force a stop at a terminal: Ctrl-C three times.
    let mut ns = Namespace::start(
        Init::dockhand(&["--grace", "1h"]),
        &["--stubborn", "--ignore-term"],
    );
    for n in 1..=2 {
        ns.signal(Signal::SIGINT);
        await_records(&ns, n);
    }
    assert_eq!(
        ns.wait(Duration::from_millis(300)),
        None,
        "stopped too early"
    );
    ns.signal(Signal::SIGINT);
    assert_eq!(ns.wait(LONG), Some(137), "{}", ns.stderr());
    assert!(
        ns.stderr().contains("third SIGINT: killed"),
        "{}",
        ns.stderr()
    );
}

#[test]
fn a_signal_rewritten_to_zero_is_dropped_whatever_it_is() {
    let mut ns = Namespace::start(
        Init::dockhand(&["--rewrite", "INT:0", "--grace", "2s"]),
        &[],
    );
    ns.signal(Signal::SIGINT);
    // No grace timer may start: after more than the grace, the app still runs and
    // got nothing.
    assert_eq!(ns.wait(Duration::from_secs(3)), None, "{}", ns.stderr());
    assert!(ns.recorded().is_empty(), "{:?}", ns.recorded());
    // Nor does the dropped one count as a first stop signal.
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert_eq!(ns.recorded(), names(&["SIGTERM"]));
}

#[test]
fn fault_signals_sent_with_kill_are_forwarded() {
    let faults = [
        "SIGABRT", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS",
    ];
    let mut ns = Namespace::start(Init::dockhand(&[]), &[]);
    for (i, s) in faults.iter().enumerate() {
        ns.signal_raw(signum(s));
        assert_eq!(
            await_records(&ns, i + 1).len(),
            i + 1,
            "{s} not forwarded as PID 1"
        );
    }
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert_eq!(ns.recorded()[..faults.len()], names(&faults)[..]);
}

#[test]
fn fault_signals_do_not_kill_the_entrypoint_when_it_is_not_pid1() {
    let dir = tempfile::tempdir().unwrap();
    let (record, ready) = (dir.path().join("record"), dir.path().join("ready"));
    let mut child = std::process::Command::new(dockhand_tests::bins::bin("entrypoint"))
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(["--", "python3"])
        .arg(dockhand_tests::pid1::sigapp())
        .arg("--record")
        .arg(&record)
        .arg("--ready")
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(dockhand_tests::wait_until(LONG, || ready.exists()));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGABRT).unwrap();
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(10), || read_lines(&record).len() == 1),
        "SIGABRT not forwarded"
    );
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the entrypoint died of SIGABRT"
    );
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(read_lines(&record), names(&["SIGABRT", "SIGTERM"]));
}

#[test]
fn the_app_exiting_on_its_own_stops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("gc");
    let mut ns = Namespace::start(
        Init::dockhand(&[]),
        &["--grandchild", gc.to_str().unwrap(), "--exit", "4"],
    );
    assert_eq!(ns.wait(LONG), Some(4), "{}", ns.stderr());
    assert_eq!(read_lines(&gc), names(&["grandchild handled SIGTERM"]));
    assert!(
        ns.stderr()
            .contains("app exited with status 4; stopping 1 remaining process(es)"),
        "{}",
        ns.stderr()
    );
}

/// Runs an init directly (not PID 1) with the app making an orphan; returns
/// (init pid, the orphan's parent as it saw it, init's stderr, exit status).
fn orphan_outside_a_namespace(init: &Init) -> (u32, i32, String, Option<i32>) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let orphan = dir.path().join("orphan");
    let stderr = dir.path().join("stderr");
    let argv = init.argv();
    let mut child = Command::new(&argv[0])
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(&argv[1..])
        .arg("python3")
        .arg(dockhand_tests::pid1::sigapp())
        .arg("--orphan")
        .arg(&orphan)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    dockhand_tests::wait_until(LONG, || !read_lines(&orphan).is_empty());
    let parent: i32 = read_lines(&orphan)
        .first()
        .expect("the orphan never reported")
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = dockhand_tests::wait_until(LONG, || matches!(child.try_wait(), Ok(Some(_))));
    let code = if status {
        child.wait().ok().and_then(|s| s.code())
    } else {
        None
    };
    let _ = child.kill();
    (pid, parent, std::fs::read_to_string(&stderr).unwrap(), code)
}

#[test]
fn not_pid1_it_becomes_a_quiet_subreaper() {
    let (pid, parent, stderr, code) = orphan_outside_a_namespace(&Init::dockhand(&[]));
    assert_eq!(
        parent, pid as i32,
        "the orphan was not reparented to the entrypoint"
    );
    // No warning about not being PID 1 (tini's), only the shutdown it did.
    assert!(
        !stderr.contains("subreaper") && !stderr.contains("warn"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopping 1 remaining process(es)"),
        "{stderr}"
    );
    // It stopped the orphan too (its descendant) and exited with the app's status.
    assert_eq!(code, Some(0));
    // tini without -s: warns, and the orphan goes elsewhere.
    let (tpid, tparent, tstderr, _) = orphan_outside_a_namespace(&Init::tini(&[]));
    assert_ne!(tparent, tpid as i32);
    assert!(tstderr.contains("subreaper"), "{tstderr}");
}

/// The app's host pid: the only child of the namespace's PID 1.
fn app_pid(ns: &Namespace) -> i32 {
    let init = ns.init_pid();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

/// Field `n` after the command name in /proc/PID/stat (3 = pgrp, 6 = tpgid).
fn stat_field(pid: i32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    rest.split(' ')
        .nth(n - 1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(-1)
}

fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 2..].chars().next())
        .unwrap_or('?')
}

/// Starts INIT as PID 1 on a new pseudo-terminal, as `docker run -it` does.
fn start_on_a_tty(init: Init, app_args: &[&str]) -> (Namespace, std::fs::File) {
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
        .arg(dockhand_tests::pid1::sigapp())
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

#[test]
fn ctrl_c_and_ctrl_z_on_a_terminal_behave_as_in_a_shell() {
    use std::io::Write;
    // Ctrl-C: the app gets SIGINT once (from the terminal, not again from PID 1).
    let (mut ns, mut tty) = start_on_a_tty(Init::dockhand(&[]), &[]);
    tty.write_all(b"\x03").unwrap();
    await_records(&ns, 1);
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    assert_eq!(ns.recorded(), names(&["SIGINT", "SIGTERM"]));

    // Ctrl-C ends an app that exits on SIGINT, with its status.
    let (mut ns, mut tty) = start_on_a_tty(Init::dockhand(&[]), &["--int-exit", "130"]);
    tty.write_all(b"\x03").unwrap();
    assert_eq!(ns.wait(LONG), Some(130), "{}", ns.stderr());

    // Ctrl-Z suspends the app; SIGCONT to PID 1 resumes it.
    let (mut ns, mut tty) = start_on_a_tty(Init::dockhand(&[]), &["--default", "SIGTSTP"]);
    let app = app_pid(&ns);
    tty.write_all(b"\x1a").unwrap();
    assert!(
        dockhand_tests::wait_until(LONG, || process_state(app) == 'T'),
        "not stopped"
    );
    ns.signal(Signal::SIGCONT);
    assert!(
        dockhand_tests::wait_until(LONG, || process_state(app) != 'T'),
        "not resumed"
    );
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());

    // Who gets Ctrl-C is the terminal's foreground process group (tpgid): with dockhand
    // the app's group only; dumb-init without its own session stays in it itself, so
    // Ctrl-C reaches it too and it forwards a second one.
    for (init, pid1_in_foreground) in [
        (Init::dockhand(&[]), false),
        (Init::dumb_init(&["--single-child"]), true),
    ] {
        let (mut ns, _tty) = start_on_a_tty(init.clone(), &[]);
        let (pid1, app) = (ns.init_pid(), app_pid(&ns));
        let (app_pgrp, tpgid) = (stat_field(app, 3), stat_field(app, 6));
        assert_eq!(
            app_pgrp,
            tpgid,
            "{}: the app's group is not in the foreground",
            init.name()
        );
        assert_eq!(
            stat_field(pid1, 3) == tpgid,
            pid1_in_foreground,
            "{}",
            init.name()
        );
        ns.signal(Signal::SIGTERM);
        ns.wait(LONG);
    }
}
