//! The README's demo: the static `healthcheck` probing a live HTTP server and a live
//! PostgreSQL (real services from the test harness), healthy, then unhealthy once
//! they stop. Run it with `scripts/demo`.

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

    println!();
    assert_eq!(
        (healthy, wrong_pw, down),
        (0, 1, 1),
        "the demo did not behave as described"
    );
    println!("demo ok: healthy -> 0, wrong password -> 1, services down -> 1");
}
