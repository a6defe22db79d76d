//! `entrypoint` as PID 1, in real PID namespaces. The scenarios are shared with
//! tests/reference_inits.rs, which runs them against Debian's tini and dumb-init (and
//! no init at all) to show that each one can tell a correct init from one that is not.

use std::time::Duration;

use dockhand_tests::pid1::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn forwards_every_catchable_signal_and_never_sigchld() {
    let (recorded, code) = forward_catchable(Init::dockhand(&[]));
    assert_eq!(code, Some(0));
    let mut want = names(&CATCHABLE);
    want.push("SIGTERM".into());
    assert_eq!(recorded, want);
}

#[test]
fn process_group_mode_reaches_the_apps_children() {
    assert!(!grandchild_gets_usr1(Init::dockhand(&[])));
    assert!(grandchild_gets_usr1(Init::dockhand(&["--process-group"])));
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
}

#[test]
fn stop_delay_holds_sigterm_while_other_signals_pass() {
    // SIGTERM, then SIGUSR1: with a stop delay the app sees USR1 first and is still
    // serving (without one, as with tini, SIGTERM arrives first and ends it).
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
    assert_eq!(zombies_left(Init::dockhand(&[])), 0);
}

#[test]
fn exit_status_mirrors_the_app() {
    let mut ns = Namespace::start(Init::dockhand(&[]), &["--exit", "3"]);
    assert_eq!(ns.wait(LONG), Some(3));
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
    let e = dockhand_tests::bins::bin("entrypoint");
    let e = e.to_str().unwrap();
    let (code, err) = run_command(&[e, "--"], "no-such-command");
    assert_eq!(code, 127);
    assert_eq!(
        err,
        "entrypoint: cannot run no-such-command: command not found in PATH\n"
    );
    let (code, err) = run_command(&[e, "--"], "/etc/passwd");
    assert_eq!(code, 126);
    assert!(
        err.contains("cannot run /etc/passwd: permission denied"),
        "{err}"
    );
}

#[test]
fn a_grandchild_gets_to_run_its_term_handler() {
    // The app exits on SIGTERM at once; its child needs 0.5 s to clean up: the
    // entrypoint waits for it (tini and dumb-init exit with the app, and the kernel
    // SIGKILLs the child: tests/reference_inits.rs).
    for init in [Init::dockhand(&[]), Init::dockhand(&["--process-group"])] {
        let (code, got, stderr) = grandchild_term_handler(init.clone());
        assert_eq!(code, Some(0), "{:?}: {stderr}", init.argv());
        assert_eq!(
            got,
            names(&["grandchild handled SIGTERM"]),
            "{:?}",
            init.argv()
        );
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

    // Who gets Ctrl-C is the terminal's foreground process group (tpgid): the app's
    // group only (dumb-init stays in it itself: tests/reference_inits.rs).
    assert_eq!(foreground_groups(Init::dockhand(&[])), (true, false));
}

/// `env --ignore-signal=S...`: a parent that ignores `signals`.
fn parent_ignoring(signals: &[&str]) -> Vec<String> {
    let mut v = vec!["env".to_string()];
    v.extend(signals.iter().map(|s| format!("--ignore-signal={s}")));
    v
}

/// A field of /proc/self/status holding a signal mask (`SigIgn`, `SigBlk`).
fn sigmask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} line"))
}

#[test]
fn signals_the_parent_ignored_or_blocked_reach_the_app_so_as_with_tini() {
    // tini's own sigconf test: what the init's parent ignored or blocked, the app finds
    // ignored or blocked, the fault signals (whose forwarding handler replaced the
    // disposition) and SIGPIPE (which Rust's runtime sets to ignored in every
    // program) included; nothing else.
    let ignored = ["SEGV", "BUS", "FPE", "PIPE", "INT", "HUP"];
    let blocked = ["TERM", "ILL", "USR2", "RTMIN+2"];
    let neither = [
        "ILL", "ABRT", "TRAP", "SYS", "TERM", "QUIT", "USR1", "TTOU", "XFSZ", "USR2", "RTMIN+2",
        "SEGV", "PIPE", "INT",
    ];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wait = format!("tcp://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let entrypoint = dockhand_tests::bins::bin("entrypoint")
        .display()
        .to_string();
    let bit = |s: &str| 1u64 << (signum(&format!("SIG{s}")) - 1);
    // tini (the reference), then the entrypoint straight to supervising, and with a
    // start-up phase (after which it re-executes itself)
    for init in [
        vec!["tini", "--"],
        vec![&entrypoint, "--"],
        vec![&entrypoint, "--wait", &wait, "--"],
    ] {
        for parent_sets in [true, false] {
            let mut parent = parent_ignoring(if parent_sets { &ignored } else { &[] });
            if parent_sets {
                parent.extend(blocked.iter().map(|s| format!("--block-signal={s}")));
            }
            let out = std::process::Command::new(&parent[0])
                .args(&parent[1..])
                .args(["unshare", "--pid", "--fork", "--mount-proc"])
                .args(&init)
                .args(["cat", "/proc/self/status"])
                .env("ENTRYPOINT_FILE_VARS", "none")
                .output()
                .unwrap();
            assert!(out.status.success(), "{init:?}: {out:?}");
            let status = String::from_utf8_lossy(&out.stdout);
            for (field, set) in [("SigIgn", &ignored[..]), ("SigBlk", &blocked[..])] {
                let mask = sigmask(&status, field);
                let set = if parent_sets { set } else { &[][..] };
                for s in neither.iter().chain(set) {
                    assert_eq!(
                        mask & bit(s) != 0,
                        set.contains(s),
                        "{init:?}, parent sets {parent_sets}: SIG{s} in {field} ({mask:x})"
                    );
                }
            }
        }
    }
    // what carried the blocked set through the re-execution is not the app's
    let out = std::process::Command::new("env")
        .arg("--block-signal=TERM")
        .args([&entrypoint, "--wait", &wait, "--", "env"])
        .env("ENTRYPOINT_FILE_VARS", "none")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("DOCKHAND"),
        "{out:?}"
    );
}

#[test]
fn fault_signals_the_parent_ignored_are_still_forwarded_to_an_app_that_handles_them() {
    let parent = parent_ignoring(&["SEGV", "BUS"]);
    let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
    let mut ns = Namespace::start_under(&parent, Init::dockhand(&[]), &[], true);
    ns.signal(Signal::SIGSEGV);
    assert_eq!(
        await_records(&ns, 1),
        names(&["SIGSEGV"]),
        "{}",
        ns.stderr()
    );
    ns.signal(Signal::SIGBUS);
    assert_eq!(await_records(&ns, 2), names(&["SIGSEGV", "SIGBUS"]));
    ns.signal(Signal::SIGTERM);
    assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
}

#[test]
fn rewrite_given_twice_for_one_signal_keeps_the_last_as_dumb_init_does() {
    for init in [
        Init::dumb_init(&["--single-child", "--rewrite", "10:1", "--rewrite", "10:12"]),
        Init::dockhand(&["--rewrite", "USR1:HUP", "--rewrite", "USR1:USR2"]),
    ] {
        let mut ns = Namespace::start(init.clone(), &[]);
        ns.signal(Signal::SIGUSR1);
        assert_eq!(
            await_records(&ns, 1),
            names(&["SIGUSR2"]),
            "{}: {}",
            init.name(),
            ns.stderr()
        );
        ns.signal(Signal::SIGTERM);
        assert_eq!(ns.wait(LONG), Some(0), "{}", ns.stderr());
    }
}
