//! The PID 1 scenarios of tests/pid1.rs run against the inits users would otherwise
//! pick: Debian's tini and dumb-init, and no init at all. These assert those tools'
//! behaviour (as FIELD-NOTES records it), which is what shows that each scenario can
//! tell a correct init from one that is not; dockhand's own results are in pid1.rs.

use std::time::Duration;

use dockhand_tests::pid1::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn tini_and_dumb_init_forward_every_catchable_signal() {
    for init in [Init::tini(&[]), Init::dumb_init(&["--single-child"])] {
        let (recorded, code) = forward_catchable(init.clone());
        assert_eq!(code, Some(0), "{}", init.name());
        let mut want = names(&CATCHABLE);
        want.push("SIGTERM".into());
        assert_eq!(recorded, want, "{}", init.name());
    }
}

#[test]
fn only_their_group_modes_reach_the_apps_children() {
    for (init, group) in [
        (Init::tini(&[]), false),
        (Init::tini(&["-g"]), true),
        (Init::dumb_init(&["--single-child"]), false),
        (Init::dumb_init(&[]), true),
    ] {
        assert_eq!(
            grandchild_gets_usr1(init.clone()),
            group,
            "{:?}",
            init.argv()
        );
    }
}

#[test]
fn dumb_init_rewrites_by_number_and_tini_does_not_rewrite() {
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
fn tini_passes_sigterm_on_at_once() {
    let mut t = Namespace::start(Init::tini(&[]), &[]);
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait(LONG), Some(0));
    assert_eq!(t.recorded()[0], "SIGTERM");
}

#[test]
fn inits_reap_orphans_and_no_init_leaves_zombies() {
    assert_eq!(zombies_left(Init::tini(&[])), 0);
    assert_eq!(zombies_left(Init::dumb_init(&[])), 0);
    let left = zombies_left(Init::Bare);
    assert!(
        left >= 900,
        "without an init, orphans stay zombies ({left})"
    );
}

#[test]
fn they_mirror_the_apps_exit_status() {
    for init in [Init::tini(&[]), Init::dumb_init(&[])] {
        let mut ns = Namespace::start(init.clone(), &["--exit", "3"]);
        assert_eq!(ns.wait(LONG), Some(3), "{}", init.name());
    }
}

#[test]
fn a_missing_command_gives_127_with_tini_and_2_with_dumb_init() {
    assert_eq!(run_command(&["tini", "--"], "no-such-command").0, 127);
    assert_eq!(run_command(&["dumb-init"], "no-such-command").0, 2);
}

#[test]
fn they_exit_with_the_app_so_the_kernel_kills_its_child() {
    for init in [Init::tini(&["-g"]), Init::dumb_init(&[])] {
        let (code, got, stderr) = grandchild_term_handler(init.clone());
        assert_eq!(code, Some(0), "{}: {stderr}", init.name());
        assert!(got.is_empty(), "{}: {got:?}", init.name());
    }
}

#[test]
fn tini_outside_a_namespace_warns_and_is_no_subreaper() {
    let (pid, parent, stderr, _) = orphan_outside_a_namespace(&Init::tini(&[]));
    assert_ne!(parent, pid as i32);
    assert!(stderr.contains("subreaper"), "{stderr}");
}

#[test]
fn dumb_init_stays_in_the_foreground_group_itself() {
    assert_eq!(
        foreground_groups(Init::dumb_init(&["--single-child"])),
        (true, true)
    );
}
