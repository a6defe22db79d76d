//! The README's demo, run with `scripts/demo`:
//! 1. the static `healthcheck` probing a live HTTP server and a live PostgreSQL (real
//!    services from the test harness), healthy, then unhealthy once they stop;
//! 2. an app with a worker child under the static `entrypoint` as PID 1 of a PID
//!    namespace, stopped with SIGTERM: the app stops, then its worker finishes its
//!    job, then the entrypoint exits with the app's status.

use std::process::Command;

use dockhand_tests::bins::static_bin;
use dockhand_tests::http::{Behaviour, HttpServer};
use dockhand_tests::pg::Postgres;

fn step(title: &str) {
    println!("\n\x1b[1m## {title}\x1b[0m");
}

/// Runs the static healthcheck as a user would, echoing the command (password hidden).
fn healthcheck(args: &[&str]) -> i32 {
    let shown: Vec<String> = args.iter().map(|a| dockhand::url::redact_text(a)).collect();
    println!("$ healthcheck {}", shown.join(" "));
    let status = Command::new(static_bin("healthcheck"))
        .args(args)
        .status()
        .unwrap();
    let code = status.code().unwrap_or(-1);
    println!(
        "(exit {code}: {})",
        if code == 0 { "healthy" } else { "unhealthy" }
    );
    code
}

fn main() {
    step("Start an HTTP app and a PostgreSQL (password auth)");
    let app = HttpServer::start(Behaviour::Fixed {
        status: 200,
        body: r#"{"status":"ok"}"#.into(),
    });
    let mut pg = Postgres::start();
    let http = format!("http://localhost:{}/api/health", app.port);
    let db = pg.url();
    println!("app:      {http}");
    println!("postgres: {}", dockhand::url::redact_text(&db));

    step("Both up: healthy (silent unless -v)");
    let healthy = healthcheck(&["-v", "--expect-body", "\"ok\"", &http, &db]);

    step("A wrong password fails at once, and the password is never printed");
    let wrong = pg.url_with("app", "wrong-password", "app");
    let wrong_pw = healthcheck(&[&wrong]);

    step("Stop both: unhealthy, one short line per target (what docker inspect keeps)");
    drop(app);
    pg.stop_server();
    let down = healthcheck(&["--timeout", "2s", &http, &db]);

    assert_eq!(
        (healthy, wrong_pw, down),
        (0, 1, 1),
        "the healthcheck demo did not behave as described"
    );

    let stopped = entrypoint_demo();
    println!();
    assert_eq!(
        stopped, 3,
        "the entrypoint demo did not behave as described"
    );
    println!("demo ok: healthy -> 0, wrong password -> 1, services down -> 1; docker-stop-style SIGTERM -> app's status 3");
}

/// The app: a worker that needs a moment to finish its job on SIGTERM, and a main
/// process that exits 3 on SIGTERM without waiting for it (as most apps do).
const APP: &str = r#"
sh -c 'trap "echo \"  worker: SIGTERM, finishing the current job...\"; sleep 0.5; echo \"  worker: job done, exiting\"; exit 0" TERM
       while :; do sleep 1 & wait $!; done' &
trap 'echo "  app: SIGTERM, closing the server, exit 3"; exit 3' TERM
echo "  app: serving (pid $$, worker pid $!)"
while :; do sleep 1 & wait $!; done
"#;

fn entrypoint_demo() -> i32 {
    use std::time::{Duration, Instant};
    step("entrypoint as PID 1: docker stop sends SIGTERM");
    println!("$ unshare --pid --fork --mount-proc entrypoint -- sh app.sh   # PID 1 of its own namespace, like a container");
    let mut child = Command::new("unshare")
        .env("ENTRYPOINT_FILE_VARS", "none")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(static_bin("entrypoint"))
        .args(["--grace", "5s", "--", "sh", "-c", APP])
        .spawn()
        .unwrap();
    let unshare = child.id();
    let init = || -> Option<i32> {
        let kids =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        kids.split_whitespace().next()?.parse().ok()
    };
    // Wait until PID 1 has started the app and the app its worker.
    dockhand_tests::wait_until(Duration::from_secs(10), || {
        init().is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid1 = init().expect("PID 1 is running");
    println!("$ kill -TERM {pid1}   # what docker stop does");
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let code = status.code().unwrap_or(-1);
    println!(
        "(exit {code} after {:.2}s: the app's own status, and the worker finished its job)",
        started.elapsed().as_secs_f64()
    );
    code
}
