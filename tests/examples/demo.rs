//! The README's demo, run with `scripts/demo`:
//! 1. the static `healthcheck` probing a live HTTP server and a live PostgreSQL (real
//!    services from the test harness), healthy, then unhealthy once they stop;
//! 2. two replicas of an app under `entrypoint`, started at once against a PostgreSQL
//!    that starts late, with PgBouncer in front: both wait, one migrates (over
//!    DIRECT_URL) while the other waits for the lock, both then serve through PgBouncer;
//! 3. an app with a worker child under the static `entrypoint` as PID 1 of a PID
//!    namespace, stopped with SIGTERM: the app stops, then its worker finishes its
//!    job, then the entrypoint exits with the app's status;
//! 4. the `backup` sidecar: one run to a local folder and to the S3-compatible server
//!    (moto) at once, `backup list --remote`, a restore into a new database with the
//!    same rows, and the healthcheck reading the sidecar's status file.

use std::process::Command;

use dockhand_tests::bins::static_bin;
use dockhand_tests::http::{Behaviour, HttpServer};
use dockhand_tests::pg::Postgres;

fn step(title: &str) {
    println!("\n\x1b[1m## {title}\x1b[0m");
}

/// Runs the static healthcheck as a user would, echoing the command (password hidden).
fn healthcheck(args: &[&str]) -> i32 {
    let shown: Vec<String> = args.iter().map(|a| dockhand::redact::text(a)).collect();
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
    println!("postgres: {}", dockhand::redact::text(&db));

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

    let replicas = replicas_demo();
    assert!(replicas, "the replicas demo did not behave as described");

    let stopped = entrypoint_demo();
    println!();
    assert_eq!(
        stopped, 3,
        "the entrypoint demo did not behave as described"
    );
    backup_demo();
    println!("demo ok: healthy -> 0, wrong password -> 1, services down -> 1; docker-stop-style SIGTERM -> app's status 3; backup to folder and S3, listed, restored with the same rows, status fresh");
}

fn replicas_demo() -> bool {
    use dockhand_tests::pgbouncer::PgBouncer;
    use std::process::Stdio;
    step("Two replicas start at once; PostgreSQL starts late; PgBouncer in front");
    let mut pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    pg.stop_server();
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [
        (
            "V1__accounts.sql",
            "CREATE TABLE accounts (id serial PRIMARY KEY, email text UNIQUE);",
        ),
        (
            "V2__email_index.sql",
            "SELECT pg_sleep(1); CREATE INDEX accounts_email ON accounts (email);",
        ),
        (
            "V3__seed.sql",
            "INSERT INTO accounts (email) VALUES ('ada@example.com'), ('grace@example.com');",
        ),
    ] {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let psql = dockhand_tests::pg::bin_dir().join("psql");
    let app = format!(
        "echo \"serving; $({} \"$DATABASE_URL\" -Atc 'SELECT count(*) FROM accounts') accounts, read through PgBouncer\"",
        psql.display()
    );
    println!(
        "DATABASE_URL={} (PgBouncer, for the app)",
        dockhand::redact::text(&bouncer.url())
    );
    println!(
        "DIRECT_URL={} (PostgreSQL, for migrations)",
        dockhand::redact::text(&pg.url())
    );
    println!("$ entrypoint --wait postgres --migrations ./migrations -- app   # twice, at once");
    let replicas: Vec<_> = (1..=2)
        .map(|_| {
            Command::new(static_bin("entrypoint"))
                .args([
                    "--wait",
                    "postgres",
                    "--migrations",
                    dir.path().to_str().unwrap(),
                    "--",
                    "sh",
                    "-c",
                    &app,
                ])
                .env("ENTRYPOINT_FILE_VARS", "none")
                .env("DIRECT_URL", pg.url())
                .env("DATABASE_URL", bouncer.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!("(PostgreSQL starts now, 2 s late)");
    pg.start_server();
    let mut ok = true;
    for (i, r) in replicas.into_iter().enumerate() {
        let out = r.wait_with_output().unwrap();
        println!(
            "--- replica {} (exit {}):",
            i + 1,
            out.status.code().unwrap_or(-1)
        );
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        ok &= out.status.success() && String::from_utf8_lossy(&out.stdout).contains("2 accounts");
    }
    ok
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

fn backup_demo() {
    use dockhand_tests::s3::S3;
    step("The backup sidecar: one run to a local folder and to S3 at once");
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE orders (id int PRIMARY KEY, total numeric, note text);
         INSERT INTO orders SELECT i, i * 1.5, md5(i::text) FROM generate_series(1, 100000) i;",
    );
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("backups");
    let status = folder.join("status.json");
    let env: Vec<(String, String)> = [
        ("DIRECT_URL", pg.url()),
        ("BACKUP_DIR", folder.display().to_string()),
        ("BACKUP_S3_BUCKET", bucket.clone()),
        ("BACKUP_S3_PREFIX", "prod/app".into()),
        ("BACKUP_S3_ENDPOINT", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.into()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.into()),
        ("BACKUP_STATUS_FILE", status.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in &env {
        println!("{k}={}", dockhand::redact::text(v));
    }
    let run = |args: &[&str]| {
        println!("$ backup {}", args.join(" "));
        let out = Command::new(static_bin("backup"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        assert!(out.status.success(), "backup {args:?} failed");
        stdout
    };
    run(&["now"]);
    step("backup list --remote: every backup, where its copies are");
    run(&["list", "--remote"]);
    step("Restore into a new database (never over an existing one without --clean and a confirmation)");
    let restored = run(&["restore", "latest", "--from", "s3"])
        .trim()
        .to_string();
    let count = |db: &str| {
        pg.psql_db(
            db,
            "SELECT count(*) || ' rows, sum ' || sum(total) FROM orders",
        )
    };
    println!(
        "app:       {}\n{restored}: {}",
        count("app"),
        count(&restored)
    );
    assert_eq!(count("app"), count(&restored), "the restore differs");
    step("The sidecar's HEALTHCHECK reads its status file: fresh after a success");
    let fresh = healthcheck(&[&format!("file://{}?max-age=26h", status.display())]);
    assert_eq!(fresh, 0, "the status file is not fresh");
}
