//! `entrypoint` start-up end to end, against a real PostgreSQL and a real PgBouncer in
//! transaction mode: secrets, required variables, waiting (late server, late name,
//! wrong password, TLS, timeout, SIGTERM), migrations (eight replicas at once, the
//! pooler refused, a failing migration, drizzle interoperability both ways, a command
//! under the lock) and privilege drop. No password may appear in any output.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dockhand_tests::bins::{bin, root};
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::pgbouncer::PgBouncer;
use dockhand_tests::run::Run;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

/// `entrypoint ARGS` with only PATH and `env` in its environment.
fn entrypoint(args: &[&str], env: &[(&str, &str)]) -> Command {
    dockhand_tests::run::command(&bin("entrypoint"), args, env)
}

fn finish(child: Child) -> Run {
    dockhand_tests::run::finish(child, LONG)
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    finish(entrypoint(args, env).spawn().unwrap())
}

fn assert_no_secret(r: &Run, secret: &str) {
    r.assert_no_secret(secret);
}

fn migrations(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    dir
}

// ---- waiting --------------------------------------------------------------------

#[test]
fn waits_for_a_server_that_starts_late() {
    let mut pg = Postgres::start();
    let url = pg.url();
    pg.stop_server();
    let child = entrypoint(
        &["--wait", "postgres", "--", "echo", "started"],
        &[("DIRECT_URL", &url)],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    let r = finish(child);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "started\n");
    assert!(r.stderr.contains("ready after"), "{}", r.stderr);
    assert_no_secret(&r, &pg.password);
}

#[test]
fn waits_for_a_name_that_resolves_late() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let target = format!("tcp://db-late.test:{}", pg.port);
    let child = entrypoint(
        &["--wait", &target, "--", "echo", "started"],
        &[("DOCKHAND_HOSTS", hosts.to_str().unwrap())],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 db-late.test\n").unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "started\n");
}

#[test]
fn a_wrong_password_fails_at_once_without_waiting() {
    let pg = Postgres::start();
    let url = pg.url_with("app", "wrong-secret", "app");
    // A one-hour timeout: finishing at all means it did not wait.
    let r = run(
        &[
            "--wait",
            "postgres",
            "--wait-timeout",
            "1h",
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("password authentication failed for user \"app\" (waiting cannot fix this)"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "", "the app must not start");
    assert_no_secret(&r, "wrong-secret");
}

#[test]
fn waits_over_tls() {
    let pg = Postgres::start_tls();
    let ca = pg.ca.as_ref().unwrap().ca_pem.display().to_string();
    let good = format!("{}?sslmode=verify-full&sslrootcert={ca}", pg.url());
    let r = run(
        &["--wait", "postgres", "--", "true"],
        &[("DIRECT_URL", &good)],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // An untrusted certificate is permanent: no waiting.
    let bad = format!("{}?sslmode=verify-full", pg.url());
    let r = run(
        &["--wait", "postgres", "--wait-timeout", "1h", "--", "true"],
        &[("DIRECT_URL", &bad)],
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("is not trusted"), "{}", r.stderr);
    assert_no_secret(&r, &pg.password);
}

#[test]
fn waiting_times_out_with_exit_3() {
    let port = dockhand_tests::free_port();
    let target = format!("tcp://127.0.0.1:{port}");
    let r = run(
        &[
            "--wait",
            &target,
            "--wait-timeout",
            "1s",
            "--",
            "echo",
            "started",
        ],
        &[("DATABASE_URL", "postgres://app@db/app")],
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "gave up waiting after 1s: {target}: connection refused"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    // Nothing migrates and nothing waits for postgres: no word about DIRECT_URL.
    assert!(!r.stderr.contains("DIRECT_URL"), "{}", r.stderr);
}

#[test]
fn sigterm_while_waiting_ends_start_up_with_143_as_pid1() {
    let port = dockhand_tests::free_port();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(bin("entrypoint"))
        .args([
            "--wait",
            &format!("tcp://127.0.0.1:{port}"),
            "--wait-timeout",
            "1h",
            "--",
            "echo",
            "started",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let init = dockhand_tests::pid1::init_pid_of(child.id());
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(143), "{}", r.stderr);
    assert!(
        r.stderr.contains("SIGTERM during start-up: stopped"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

// ---- migrations -----------------------------------------------------------------

#[test]
fn eight_replicas_at_once_apply_every_migration_exactly_once() {
    let pg = Postgres::start();
    let dir = migrations(&[
        (
            "V1__accounts.sql",
            "CREATE TABLE accounts (id serial PRIMARY KEY, email text UNIQUE);",
        ),
        (
            "V2__slow_index.sql",
            "SELECT pg_sleep(1); CREATE INDEX accounts_email ON accounts (email);",
        ),
        (
            "V3__orders.sql",
            "CREATE TABLE orders (id serial PRIMARY KEY, account int REFERENCES accounts);",
        ),
        (
            "V4__seed.sql",
            "INSERT INTO accounts (email) VALUES ('a@example.com');",
        ),
    ]);
    let url = pg.url();
    let children: Vec<Child> = (0..8)
        .map(|i| {
            entrypoint(
                &[
                    "--wait",
                    "postgres",
                    "--migrations",
                    dir.path().to_str().unwrap(),
                    "--",
                    "echo",
                    &format!("app {i} started"),
                ],
                &[("DIRECT_URL", &url)],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let runs: Vec<Run> = children.into_iter().map(finish).collect();
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.code, Some(0), "replica {i}: {}", r.stderr);
        assert_eq!(r.stdout, format!("app {i} started\n"));
        assert_no_secret(r, &pg.password);
    }
    let migrators = runs
        .iter()
        .filter(|r| r.stderr.contains("applied migration V1__accounts"))
        .count();
    assert_eq!(migrators, 1, "exactly one replica migrates");
    assert!(runs.iter().any(|r| r
        .stderr
        .contains("waiting for another replica to finish migrating")));
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM refinery_schema_history"),
        "4"
    );
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM accounts"),
        "1",
        "the seed ran once"
    );
    // Nothing pending now: no lock, nothing applied.
    let r = run(
        &["--migrations", dir.path().to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("migrations: nothing to apply"),
        "{}",
        r.stderr
    );
}

#[test]
fn migrating_through_pgbouncer_is_refused_and_database_url_reaches_the_app() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    let dir = migrations(&[("V1__t.sql", "CREATE TABLE t (id int);")]);
    let r = run(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &bouncer.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr.contains("goes through a transaction pooler"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    assert_no_secret(&r, &pg.password);

    // The app keeps DATABASE_URL (PgBouncer); migrations use DIRECT_URL.
    let r = run(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo \"$DATABASE_URL|$DIRECT_URL\"",
        ],
        &[("DATABASE_URL", &bouncer.url()), ("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.trim(), format!("{}|{}", bouncer.url(), pg.url()));
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM refinery_schema_history"),
        "1"
    );
    // Without DIRECT_URL, DATABASE_URL is used, with a warning.
    let r = run(
        &["--migrations", dir.path().to_str().unwrap(), "--", "true"],
        &[("DATABASE_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("DIRECT_URL is not set"), "{}", r.stderr);
}

#[test]
fn a_failing_migration_stops_start_up_and_names_the_error() {
    let pg = Postgres::start();
    let dir = migrations(&[
        ("V1__ok.sql", "CREATE TABLE ok (id int);"),
        (
            "V2__broken.sql",
            "CREATE TABLE half (id int);\nSELECT 1;\nSELEC oops;\n",
        ),
    ]);
    let r = run(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr.contains("migration V2__broken failed: syntax error at or near \"SELEC\" (SQLSTATE 42601) at line 3, column 1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "", "the app must not start");
    // V1 committed with its history row; V2's transaction left nothing behind.
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT string_agg(name, ',') FROM refinery_schema_history"
        ),
        "ok"
    );
    assert_eq!(pg.psql_db("app", "SELECT to_regclass('half') IS NULL"), "t");
    assert_no_secret(&r, &pg.password);
}

#[test]
fn migrate_cmd_gets_the_direct_url_and_runs_under_the_lock() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = dir.path().join("migrate.sh");
    std::fs::write(
        &script,
        "echo \"$DATABASE_URL\" > \"$OUT\"\n\"$PSQL\" \"$DATABASE_URL\" -Atc \"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted\" >> \"$OUT\"\n",
    )
    .unwrap();
    let psql = bin_dir().join("psql");
    let cmd = format!("sh {}", script.display());
    let r = run(
        &["--migrate-cmd", &cmd, "--", "true"],
        &[
            ("DATABASE_URL", &bouncer.url()),
            ("DIRECT_URL", &pg.url()),
            ("OUT", out.to_str().unwrap()),
            ("PSQL", psql.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        lines,
        format!("{}\n1\n", pg.url()),
        "the command saw the direct URL and the held lock"
    );
    assert_no_secret(&r, &pg.password);
    // A failing command stops start-up.
    let r = run(
        &["--migrate-cmd", "sh -c 'exit 9'", "--", "echo", "started"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr.contains("failed with exit status 9"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

/// The drizzle fixture copied to a temporary folder with its node_modules unpacked.
fn drizzle_fixture() -> tempfile::TempDir {
    let src = std::env::var_os("DOCKHAND_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
        .join("fixtures/drizzle-app");
    assert!(
        src.exists(),
        "{} is missing (shared/ beside the checkout)",
        src.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(src.join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc node_modules.tar.zst | tar xf -")
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "unpacking node_modules failed (zstd, tar)");
    dir
}

fn drizzle_migrate(app: &Path, url: &str) {
    let out = Command::new("node")
        .arg(app.join("drizzle-migrate.js"))
        .env("DATABASE_URL", url)
        .env("MIGRATIONS_DIR", app.join("drizzle"))
        .output()
        .expect("node is needed for the drizzle fixture");
    assert!(
        out.status.success(),
        "drizzle's migrator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drizzle_rows(pg: &Postgres) -> String {
    pg.psql_db("app", "SELECT id || '|' || hash || '|' || created_at FROM drizzle.__drizzle_migrations ORDER BY id")
}

#[test]
fn drizzle_folders_interoperate_with_drizzle_orm_both_ways() {
    let app = drizzle_fixture();
    let expected =
        std::fs::read_to_string(app.path().join("expected-drizzle-migrations.txt")).unwrap();
    let folder = app.path().join("drizzle");
    let folder = folder.to_str().unwrap();

    // dockhand first: the rows are exactly drizzle-orm's; then drizzle finds nothing to do.
    let pg = Postgres::start();
    let r = run(
        &[
            "--migrations",
            folder,
            "--migrations-format",
            "drizzle",
            "--",
            "true",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(drizzle_rows(&pg), expected.trim());
    let tables = pg.psql_db(
        "app",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    drizzle_migrate(app.path(), &pg.url());
    assert_eq!(
        drizzle_rows(&pg),
        expected.trim(),
        "drizzle re-applied something"
    );
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        tables
    );

    // drizzle first: dockhand finds nothing pending.
    let pg2 = Postgres::start();
    drizzle_migrate(app.path(), &pg2.url());
    let r = run(
        &[
            "--migrations",
            folder,
            "--migrations-format",
            "drizzle",
            "--",
            "true",
        ],
        &[("DIRECT_URL", &pg2.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("migrations: nothing to apply"),
        "{}",
        r.stderr
    );
    assert_eq!(drizzle_rows(&pg2), expected.trim());
}

#[test]
fn a_drizzle_0_x_file_edited_after_it_was_applied_is_a_warning_and_drizzle_orm_agrees() {
    // drizzle-orm applies the folder; then one applied file gets a comment appended and
    // another git's CRLF line endings: their hashes change, their journal "when" does not.
    let app = drizzle_fixture();
    let expected =
        std::fs::read_to_string(app.path().join("expected-drizzle-migrations.txt")).unwrap();
    let folder = app.path().join("drizzle");
    let pg = Postgres::start();
    drizzle_migrate(app.path(), &pg.url());
    assert_eq!(drizzle_rows(&pg), expected.trim());
    // the fixture's files are read-only
    assert!(Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(&folder)
        .status()
        .unwrap()
        .success());
    let edit = |f: &str, change: &dyn Fn(String) -> String| {
        let p = folder.join(f);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, change(text)).unwrap();
    };
    edit("0001_notifications.sql", &|t| {
        format!("{t}\n-- reviewed: keep notifications forever\n")
    });
    edit("0000_bootstrap.sql", &|t| t.replace('\n', "\r\n"));
    let args = [
        "--migrations",
        folder.to_str().unwrap(),
        "--",
        "echo",
        "started",
    ];
    let r = run(&args, &[("DIRECT_URL", &pg.url())]);
    // drizzle-orm would start (it runs only what is newer than the newest row): so do we,
    // naming the edited file; CRLF alone is no edit
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "started\n");
    assert!(
        r.stderr
            .contains("0001_notifications was changed after it was applied"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("0000_bootstrap"), "{}", r.stderr);
    assert!(!r.stderr.contains("skip"), "{}", r.stderr);
    drizzle_migrate(app.path(), &pg.url());
    assert_eq!(drizzle_rows(&pg), expected.trim(), "drizzle ran something");

    // a new migration arrives: both apply it and only it, once
    let journal = folder.join("meta/_journal.json");
    edit("meta/_journal.json", &|t| {
        let end = t.rfind(']').unwrap();
        format!(
            "{},\n    {{\n      \"idx\": 3,\n      \"version\": \"7\",\n      \"when\": 1795460099000,\n      \"tag\": \"0003_audit\",\n      \"breakpoints\": true\n    }}\n  {}",
            t[..end].trim_end(),
            &t[end..]
        )
    });
    assert!(journal.exists());
    std::fs::write(
        folder.join("0003_audit.sql"),
        "CREATE TABLE audit (id int);",
    )
    .unwrap();
    let r = run(&args, &[("DIRECT_URL", &pg.url())]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("applied migration 0003_audit"),
        "{}",
        r.stderr
    );
    drizzle_migrate(app.path(), &pg.url());
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) || ' ' || max(created_at) FROM drizzle.__drizzle_migrations"
        ),
        "4 1795460099000"
    );
}

// ---- secrets, required variables, privileges, bad input ----------------------------

#[test]
fn secrets_come_from_files() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("direct_url");
    std::fs::write(&url_file, format!("{}\n", pg.url())).unwrap();
    let secret = dir.path().join("api_key");
    std::fs::write(&secret, "key-123\n").unwrap();
    let r = run(
        &[
            "--wait",
            "postgres",
            "--",
            "sh",
            "-c",
            "echo \"$API_KEY|${API_KEY_FILE:-unset}\"",
        ],
        &[
            ("DIRECT_URL_FILE", url_file.to_str().unwrap()),
            ("API_KEY_FILE", secret.to_str().unwrap()),
            // API_KEY's file is not under /run/secrets: it is loaded when named
            ("ENTRYPOINT_FILE_VARS", "DIRECT_URL,API_KEY"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "key-123|unset\n");
    assert_no_secret(&r, &pg.password);

    let r = run(
        &["--", "true"],
        &[
            ("API_KEY", "x"),
            ("API_KEY_FILE", secret.to_str().unwrap()),
            ("ENTRYPOINT_FILE_VARS", "all"),
        ],
    );
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("both API_KEY and API_KEY_FILE are set"),
        "{}",
        r.stderr
    );
    let r = run(&["--", "true"], &[("DIRECT_URL_FILE", "/nonexistent/key")]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("DIRECT_URL_FILE: cannot read /nonexistent/key: no such file"),
        "{}",
        r.stderr
    );
    // Only the named ones when asked.
    let r = run(
        &["--", "sh", "-c", "echo \"${LOG_FILE}\""],
        &[
            ("LOG_FILE", "/var/log/app.log"),
            ("ENTRYPOINT_FILE_VARS", "API_KEY"),
        ],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "/var/log/app.log\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn required_variables_are_listed_together() {
    let r = run(
        &[
            "--require-env",
            "DATABASE_URL,SESSION_SECRET,PORT",
            "--",
            "echo",
            "started",
        ],
        &[("PORT", "3000")],
    );
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("required environment variables not set: DATABASE_URL, SESSION_SECRET"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    let r = run(
        &["--", "echo", "started"],
        &[("ENTRYPOINT_REQUIRE_ENV", "PORT"), ("PORT", "1")],
    );
    assert_eq!(r.code, Some(0));
}

#[test]
fn privileges_are_dropped_for_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), "x").unwrap();
    let report = data.join("status");
    let script = format!(
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status > {0}; echo \"HOME=$HOME\" >> {0}",
        report.display()
    );
    let r = run(
        &[
            "--user",
            "nobody",
            "--chown",
            data.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let status = std::fs::read_to_string(&report).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(
        status.contains("Gid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("Groups:\t65534"), "{status}");
    assert!(status.contains("HOME=/nonexistent"), "{status}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(data.join("sub/file")).unwrap().uid(),
        65534
    );
    // The supervisor stays root; the app does not.
    let r = run(
        &["--user", "65534:65534", "--", "sh", "-c", "id -u; id -g"],
        &[],
    );
    assert_eq!(r.stdout, "65534\n65534\n", "{}", r.stderr);
}

#[test]
fn bad_start_up_input_exits_2_with_a_clear_message() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--wait-timeout", "soon", "--", "true"],
            &[],
            "invalid duration \"soon\"",
        ),
        (
            &["--wait", "ftp://x", "--", "true"],
            &[],
            "unknown scheme \"ftp\"",
        ),
        (
            &["--wait", "postgres", "--", "true"],
            &[],
            "needs DIRECT_URL",
        ),
        (
            &[
                "--migrations",
                "/tmp",
                "--migrations-format",
                "flyway",
                "--",
                "true",
            ],
            &[],
            "use auto, refinery, drizzle or prisma",
        ),
        (
            &["--migrations", "/tmp", "--migrate-cmd", "x", "--", "true"],
            &[],
            "choose one",
        ),
        (
            &["--migrate-cmd", "echo 'oops", "--", "true"],
            &[],
            "unclosed '",
        ),
        (
            &["--user", "no-such-user", "--", "true"],
            &[],
            "not in /etc/passwd",
        ),
        (
            &["--chown", "/tmp/x", "--", "true"],
            &[],
            "--chown needs --user",
        ),
        (
            &["--wait", "postgres", "--", "true"],
            &[("DIRECT_URL", "postgres://u:topsecret@h:99999/db")],
            "not a number from 1 to 65535",
        ),
        (
            &["--", "true"],
            &[("LOG_FORMAT", "xml")],
            "use text or json",
        ),
        (
            &["--grace", "x", "--", "true"],
            &[],
            "invalid duration \"x\"",
        ),
        (
            &["--stop-delay", "never", "--", "true"],
            &[],
            "invalid duration \"never\"",
        ),
        (
            &["--lock-timeout", "x", "--", "true"],
            &[],
            "--lock-timeout",
        ),
        (&["--rewrite", "TERM", "--", "true"], &[], "use FROM:TO"),
        (
            &["--rewrite", "TERM:NOPE", "--", "true"],
            &[],
            "unknown signal \"NOPE\"",
        ),
        (
            &["--remap-exit", "143:300", "--", "true"],
            &[],
            "from 0 to 255",
        ),
        (
            &["--", "true"],
            &[("ENTRYPOINT_PROCESS_GROUP", "maybe")],
            "not a boolean",
        ),
        (
            &["--", "true"],
            &[("ENTRYPOINT_ALLOW_POOLER", "perhaps")],
            "not a boolean",
        ),
        (
            &["--", "true"],
            &[("ENTRYPOINT_GRACE", "long")],
            "ENTRYPOINT_GRACE",
        ),
        (&["--bogus", "--", "true"], &[], "invalid option '--bogus'"),
        (&[], &[], "no command to run"),
    ];
    for (args, env, want) in cases {
        let r = run(args, env);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{args:?}: {:?} does not mention {want:?}",
            r.stderr
        );
        assert!(!r.stderr.contains("topsecret"), "{}", r.stderr);
    }
}

// ---- the URLs Prisma and node-postgres users write --------------------------------------

/// `backup ARGS` with only PATH and `env` in its environment.
fn backup(args: &[&str], env: &[(&str, &str)]) -> Run {
    finish(
        dockhand_tests::run::command(&bin("backup"), args, env)
            .spawn()
            .unwrap(),
    )
}

fn healthcheck(args: &[&str]) -> Run {
    finish(
        dockhand_tests::run::command(&bin("healthcheck"), args, &[])
            .spawn()
            .unwrap(),
    )
}

/// `prisma init` writes `?schema=public`, Prisma's guides add pool settings and
/// `pgbouncer=true`, node-postgres users `application_name` and `options`: each URL
/// works for the entrypoint (wait and migrate), healthcheck and `backup now` (whose
/// pg_dump gets libpq settings only: libpq refuses parameters it does not know).
#[test]
fn the_urls_prisma_and_node_postgres_users_write_work_for_every_binary() {
    let pg = Postgres::start();
    let folder = root().join("tests/fixtures/prisma-app/migrations");
    let f = folder.to_str().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let b = backups.path().to_str().unwrap();
    let base = pg.url();
    for query in [
        "?schema=public",
        "?schema=public&connection_limit=5&pool_timeout=10",
        "?pgbouncer=true&connection_limit=1",
        "?connect_timeout=10&application_name=web-prod",
        "?options=-c%20search_path%3Dfoo&schema=public",
        "?schema=public&socket_timeout=30&statement_cache_size=0&sslmode=disable",
    ] {
        let url = format!("{base}{query}");
        let r = run(
            &[
                "--wait",
                "postgres",
                "--migrations",
                f,
                "--",
                "echo",
                "started",
            ],
            &[("DIRECT_URL", &url)],
        );
        assert_eq!(r.code, Some(0), "{query}: {}", r.output());
        assert_eq!(r.stdout, "started\n", "{query}");
        assert_no_secret(&r, &pg.password);
        // Prisma's PgBouncer mode on the migration URL is worth a word
        assert_eq!(
            r.stderr.contains("says pgbouncer=true"),
            query.contains("pgbouncer=true"),
            "{query}: {}",
            r.output()
        );
        let r = healthcheck(&[&url]);
        assert_eq!(r.code, Some(0), "{query}: {}", r.output());
        let r = backup(&["now", "--dir", b], &[("DIRECT_URL", &url)]);
        assert_eq!(r.code, Some(0), "{query}: {}", r.output());
        assert_no_secret(&r, &pg.password);
    }
    // Prisma's tables and history are where Prisma Client reads them
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT to_regclass('public._prisma_migrations') IS NOT NULL AND to_regclass('public.\"User\"') IS NOT NULL"
        ),
        "t"
    );
    // a misspelt parameter is still refused, named, with exit 2 (healthcheck: 1)
    let bad = format!("{base}?schema=public&conection_limit=5");
    let r = run(
        &["--wait", "postgres", "--", "echo", "started"],
        &[("DIRECT_URL", &bad)],
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(
        r.stderr.contains("unknown parameter \"conection_limit\""),
        "{}",
        r.output()
    );
    assert_no_secret(&r, &pg.password);
    let r = healthcheck(&[&bad]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("conection_limit"), "{}", r.output());
    let r = backup(&["now", "--dir", b], &[("DIRECT_URL", &bad)]);
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("conection_limit"), "{}", r.output());
    for (hostile, says) in [
        ("?pgbouncer=yes", "pgbouncer=\"yes\""),
        ("?schema=", "schema=\"\""),
        ("?schema=a%00b", "schema=\"a\\0b\""),
        (
            "?connection_limit=5&sslidentity=client.p12",
            "client certificates",
        ),
    ] {
        let r = run(
            &["--wait", "postgres", "--", "true"],
            &[("DIRECT_URL", &format!("{base}{hostile}"))],
        );
        assert_eq!(r.code, Some(2), "{hostile}: {}", r.output());
        assert!(r.stderr.contains(says), "{hostile}: {}", r.output());
        assert_no_secret(&r, &pg.password);
    }
}

#[test]
fn remap_exit_given_twice_for_one_status_keeps_the_last() {
    let r = run(
        &[
            "--remap-exit",
            "3:4",
            "--remap-exit",
            "3:5",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
        &[],
    );
    assert_eq!(r.code, Some(5), "{}", r.output());
    // the list in the variable likewise
    let r = run(
        &["--", "sh", "-c", "exit 3"],
        &[("ENTRYPOINT_REMAP_EXIT", "3:4,3:6")],
    );
    assert_eq!(r.code, Some(6), "{}", r.output());
}
