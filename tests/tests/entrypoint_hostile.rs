//! `entrypoint` start-up under hostile input and signals at every phase: `_FILE`
//! variables that are plain paths, secret files holding NUL bytes, UTF-16 or naming a
//! FIFO, signals while waiting, while chowning and while a migration command runs,
//! and refinery files that refinery itself would skip; a `--user` id the kernel reads
//! as "no change", and the line naming a session that blocks a migration when the
//! server hides its details. Each test failed before its fix.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use dockhand_tests::bins::bin;
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::run::{command, finish, run, Run};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

fn entrypoint(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(command(&bin("entrypoint"), args, env), LONG)
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    command(&bin("entrypoint"), args, env).spawn().unwrap()
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// A secret file under /run/secrets/, removed when dropped.
struct RunSecret(std::path::PathBuf);

impl RunSecret {
    fn new(content: &[u8]) -> RunSecret {
        std::fs::create_dir_all("/run/secrets").expect("tests run as root (CI does)");
        let p =
            Path::new("/run/secrets").join(format!("dockhand-test-{}", dockhand_tests::token(12)));
        std::fs::write(&p, content).unwrap();
        RunSecret(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for RunSecret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn file_variables_that_are_plain_paths_are_left_alone() {
    let env = [
        ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        ("NIX_SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        (
            "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
            "/etc/ssl/certs/ca-certificates.crt",
        ),
        ("CONFIG_FILE", "/etc/hostname"),
        ("LOG_FILE", "/var/log/not-yet-created.log"),
        ("TF_CLI_CONFIG_FILE", "/nowhere/terraform.rc"),
    ];
    let r = entrypoint(&["--", "env"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    for (k, v) in env {
        assert!(
            r.stdout.contains(&format!("{k}={v}\n")),
            "{k} changed: {}",
            r.output()
        );
    }
    for name in ["SSL_CERT=", "CONFIG=", "LOG=", "TF_CLI_CONFIG="] {
        assert!(
            !r.stdout.lines().any(|l| l.starts_with(name)),
            "{name} was set"
        );
    }
    let r = entrypoint(&["--help"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
}

#[test]
fn secrets_under_run_secrets_and_our_own_variables_are_read() {
    let secret = RunSecret::new(b"s3cret-value\n");
    let dir = tempfile::tempdir().unwrap();
    let direct = dir.path().join("direct_url");
    std::fs::write(&direct, "postgres://app:pw@db/app\n").unwrap();
    let r = entrypoint(
        &["--", "env"],
        &[
            ("DB_PASSWORD_FILE", secret.path()),
            ("DIRECT_URL_FILE", direct.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stdout.contains("DB_PASSWORD=s3cret-value\n"),
        "{}",
        r.output()
    );
    assert!(
        r.stdout.contains("DIRECT_URL=postgres://app:pw@db/app\n"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("_FILE="), "{}", r.output());
    // the override still works both ways
    let r = entrypoint(
        &["--", "env"],
        &[
            ("DB_PASSWORD_FILE", secret.path()),
            ("ENTRYPOINT_FILE_VARS", "none"),
        ],
    );
    assert!(
        r.stdout
            .contains(&format!("DB_PASSWORD_FILE={}\n", secret.path())),
        "{}",
        r.output()
    );
    let r = entrypoint(
        &["--", "env"],
        &[
            ("CONFIG_FILE", "/etc/hostname"),
            ("ENTRYPOINT_FILE_VARS", "all"),
        ],
    );
    assert!(r.stdout.contains("CONFIG="), "{}", r.output());
}

#[test]
fn a_secret_file_that_cannot_be_an_env_value_is_named_not_printed() {
    for (content, problem) in [
        (&b"Sup3rSecret\0tail"[..], "NUL byte"),
        (
            &b"\xff\xfeS\x00u\x00p\x003\x00r\x00S\x00e\x00c\x00r\x00e\x00t\x00"[..],
            "UTF-16",
        ),
        (&b"Sup3rSecret\xff"[..], "not UTF-8"),
    ] {
        let secret = RunSecret::new(content);
        let r = entrypoint(&["--", "true"], &[("DB_PASSWORD_FILE", secret.path())]);
        assert_eq!(r.code, Some(2), "{}", r.output());
        assert!(
            r.stderr.contains("DB_PASSWORD_FILE") && r.stderr.contains(problem),
            "{}",
            r.output()
        );
        r.assert_no_secret("Sup3rSecret");
        r.assert_no_secret("tail");
        assert!(!r.stderr.contains("internal error"), "{}", r.output());
    }
}

#[test]
fn a_secret_that_is_a_fifo_or_a_directory_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, kind) in [
        (fifo.to_str().unwrap(), "FIFO"),
        (dir.path().to_str().unwrap(), "directory"),
    ] {
        let started = Instant::now();
        let r = entrypoint(&["--", "echo", "started"], &[("DIRECT_URL_FILE", path)]);
        assert_eq!(r.code, Some(2), "{}", r.output());
        assert!(r.stderr.contains(kind), "{}", r.output());
        assert!(!r.stdout.contains("started"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn signals_during_the_wait_are_not_delivered_to_the_app() {
    // SIGHUP while waiting: logged, not delivered (it would kill the app before it
    // installs its handler); the app then runs until SIGTERM.
    let port = dockhand_tests::free_port();
    let dir = tempfile::tempdir().unwrap();
    let (record, ready) = (dir.path().join("record"), dir.path().join("ready"));
    let sigapp = dockhand_tests::pid1::sigapp();
    let target = format!("tcp://127.0.0.1:{port}");
    let child = spawn(
        &[
            "--wait",
            &target,
            "--",
            "python3",
            sigapp.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
            "--ready",
            ready.to_str().unwrap(),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, Signal::SIGHUP);
    signal(&child, Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    assert!(
        dockhand_tests::wait_until(LONG, || ready.exists()),
        "the app never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(dockhand_tests::pid1::read_lines(&record), ["SIGTERM"]);
    assert!(
        r.stderr
            .contains("received SIGHUP before the app started: not delivered"),
        "{}",
        r.output()
    );
}

#[test]
fn term_int_and_quit_during_the_wait_stop_start_up() {
    for (sig, code) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGQUIT, 131),
    ] {
        let child = spawn(
            &["--wait", "tcp://127.0.0.1:1", "--", "echo", "started"],
            &[],
        );
        std::thread::sleep(Duration::from_millis(300));
        signal(&child, sig);
        let r = finish(child, LONG);
        assert_eq!(r.code, Some(code), "{sig}: {}", r.output());
        assert!(!r.stdout.contains("started"), "{sig}: the app started");
    }
}

#[test]
fn sigterm_during_a_long_chown_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for d in 0..100 {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            std::fs::File::create(sub.join(format!("f{f}"))).unwrap();
        }
    }
    let child = spawn(
        &[
            "--user",
            "nobody",
            "--chown",
            tree.to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[],
    );
    // The root is handed over first: once it is, the walk is under way.
    use std::os::unix::fs::MetadataExt;
    assert!(dockhand_tests::wait_until(LONG, || std::fs::metadata(
        &tree
    )
    .is_ok_and(|m| m.uid() != 0)));
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert!(!r.stdout.contains("started"), "the app started");
}

/// The python migration command: records that it started, and on SIGTERM cleans up
/// for `cleanup` seconds (or ignores it), then records that and exits 1.
fn migrate_cmd(dir: &Path, cleanup: &str) -> String {
    let script = dir.join("migrate.py");
    std::fs::write(
        &script,
        format!(
            r#"import os, signal, sys, time
d = sys.argv[1]
def term(*_):
    if "{cleanup}" == "ignore":
        return
    time.sleep(float("{cleanup}"))
    open(os.path.join(d, "cleaned"), "w").write(str(time.time()))
    os._exit(1)
signal.signal(signal.SIGTERM, term)
open(os.path.join(d, "started"), "w").write("1")
time.sleep(60)
"#
        ),
    )
    .unwrap();
    format!("python3 {} {}", script.display(), dir.display())
}

fn lock_held(pg: &Postgres) -> bool {
    pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        .trim()
        != "0"
}

#[test]
fn sigterm_during_migrate_cmd_waits_for_the_command_with_the_lock_held() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cmd = migrate_cmd(dir.path(), "1.5");
    let child = spawn(
        &["--migrate-cmd", &cmd, "--", "echo", "started"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert!(dockhand_tests::wait_until(LONG, || dir
        .path()
        .join("started")
        .exists()));
    assert!(lock_held(&pg));
    signal(&child, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(700));
    // the command is still cleaning up: the lock is still ours, so no other replica
    // can start its own migration command now
    assert!(
        lock_held(&pg),
        "the lock was released while the command still ran"
    );
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert!(
        dir.path().join("cleaned").exists(),
        "the command's TERM handler did not finish"
    );
    assert!(!r.stdout.contains("started"));
    assert!(dockhand_tests::wait_until(Duration::from_secs(10), || {
        !lock_held(&pg)
    }));
    r.assert_no_secret(&pg.password);
}

#[test]
fn a_migrate_cmd_that_ignores_sigterm_is_killed_after_the_grace() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cmd = migrate_cmd(dir.path(), "ignore");
    let child = spawn(
        &[
            "--grace",
            "1s",
            "--migrate-cmd",
            &cmd,
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    assert!(dockhand_tests::wait_until(LONG, || dir
        .path()
        .join("started")
        .exists()));
    let started = Instant::now();
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.stderr.contains("did not exit within 1s"),
        "{}",
        r.output()
    );
    // nothing of the command is left
    let left = std::process::Command::new("pgrep")
        .args(["-f", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the command still runs");
}

#[test]
fn refinery_files_that_refinery_would_skip_stop_start_up() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [
        ("V1__init.sql", "CREATE TABLE t1 (id int);"),
        ("V2__add-users.sql", "CREATE TABLE t2 (id int);"),
        ("V3__with space.sql", "CREATE TABLE t3 (id int);"),
        ("V4_single.sql", "CREATE TABLE t4 (id int);"),
        ("v5__lower.sql", "CREATE TABLE t5 (id int);"),
        ("V6__upper.SQL", "CREATE TABLE t6 (id int);"),
    ] {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let r = entrypoint(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    for name in [
        "V2__add-users.sql",
        "V3__with space.sql",
        "V4_single.sql",
        "v5__lower.sql",
        "V6__upper.SQL",
    ] {
        assert!(r.stderr.contains(name), "{name} not named: {}", r.output());
    }
    assert!(!r.stderr.contains("V1__init.sql"), "{}", r.output());
    assert!(!r.stdout.contains("started"));
    // nothing was applied
    assert_eq!(pg.psql("SELECT to_regclass('t1') IS NULL").trim(), "t");
}

#[test]
fn the_new_migration_flags_reject_bad_values() {
    for (args, want) in [
        (
            &["--ddl-lock-timeout", "soon", "--", "true"][..],
            "invalid duration",
        ),
        (
            &["--ddl-lock-timeout", "18446744073709551615", "--", "true"][..],
            "invalid duration",
        ),
        (
            &[
                "--migrations-format",
                "flyway",
                "--migrations",
                "/tmp",
                "--",
                "true",
            ][..],
            "use auto, refinery, drizzle or prisma",
        ),
        (&["--migrate-only"][..], "--migrate-only needs --migrations"),
    ] {
        let r = entrypoint(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.output());
        assert!(r.stderr.contains(want), "{args:?}: {}", r.output());
    }
    let r = entrypoint(&["--", "true"], &[("ENTRYPOINT_DDL_LOCK_TIMEOUT", "-1s")]);
    assert_eq!(r.code, Some(2), "{}", r.output());
    let r = entrypoint(
        &["--migrations", "/tmp"],
        &[("ENTRYPOINT_MIGRATE_ONLY", "maybe")],
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(
        r.stderr.contains("ENTRYPOINT_MIGRATE_ONLY"),
        "{}",
        r.output()
    );
}

#[test]
fn a_user_id_the_kernel_reads_as_no_change_is_refused_by_name() {
    // 4294967295 is (uid_t)-1: setuid refuses it, and "must run as root" was wrong
    for spec in ["4294967295", "4294967295:0", "1000:4294967295"] {
        let r = entrypoint(&["--user", spec, "--", "true"], &[]);
        assert_eq!(r.code, Some(2), "{spec}: {}", r.output());
        assert!(
            r.stderr.contains("4294967295") && !r.stderr.contains("must run as root"),
            "{spec}: {}",
            r.output()
        );
    }
    // Root in a user namespace that maps only uid 0 (rootless Docker and Podman map a
    // range): the kernel refuses uid 1000 although the entrypoint is root there.
    let r = run(
        command(
            std::path::Path::new("unshare"),
            &[
                "--user",
                "--map-root-user",
                bin("entrypoint").to_str().unwrap(),
                "--user",
                "1000",
                "--",
                "true",
            ],
            &[],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(126), "{}", r.output());
    assert!(
        r.stderr.contains("user namespace") && !r.stderr.contains("must run as root"),
        "{}",
        r.output()
    );
}

/// A psql session of the superuser, over the Unix socket, named `app_name`, running
/// `sql` until dropped.
struct Blocker(Child);

impl Blocker {
    fn new(pg: &Postgres, app_name: &str, sql: &str) -> Blocker {
        use std::io::Write;
        let mut child = std::process::Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-d", "app"])
            .env("PGAPPNAME", app_name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let started = dockhand_tests::wait_until(LONG, || {
            pg.psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app_name}' AND xact_start IS NOT NULL"
            )) != "0"
        });
        assert!(started, "the blocking session did not start");
        Blocker(child)
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_blocker_line_names_what_the_server_shows_and_what_it_hides() {
    let pg = Postgres::start();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE orders (id int);");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__note.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let migrate = |pg: &Postgres| {
        entrypoint(
            &[
                "--migrations",
                dir.path().to_str().unwrap(),
                "--ddl-lock-timeout",
                "300ms",
                "--lock-timeout",
                "2s",
                "--",
                "true",
            ],
            &[("DIRECT_URL", &pg.url())],
        )
    };
    let sql = "BEGIN; SELECT count(*) FROM orders; SELECT pg_sleep(60); COMMIT;";
    // Another role's session, without pg_read_all_stats: its role and name are
    // visible, its address, state, transaction and query are not (they were printed
    // as "from local, , in a transaction for 0s").
    // (its backend outlives psql in pg_sleep: ended here, so the next part sees one)
    let end_blocker = |pg: &Postgres| {
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nightly-dump'")
    };
    let blocker = Blocker::new(&pg, "nightly-dump", sql);
    let r = migrate(&pg);
    drop(blocker);
    end_blocker(&pg);
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("\"nightly-dump\"")
            && r.stderr.contains("role postgres")
            && r.stderr.contains("GRANT pg_read_all_stats TO app"),
        "{}",
        r.output()
    );
    assert!(
        !r.stderr.contains(", ,") && !r.stderr.contains("for 0s"),
        "{}",
        r.output()
    );
    // With the grant: how it is connected, its state, the age of its transaction
    // and its query.
    pg.psql("GRANT pg_read_all_stats TO app");
    let blocker = Blocker::new(&pg, "nightly-dump", sql);
    let r = migrate(&pg);
    drop(blocker);
    end_blocker(&pg);
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("over a Unix socket")
            && r.stderr.contains("active")
            && r.stderr.contains("in a transaction for ")
            && r.stderr.contains("pg_sleep"),
        "{}",
        r.output()
    );
    assert!(
        !r.stderr.contains("for 0s") && !r.stderr.contains("GRANT"),
        "{}",
        r.output()
    );
}

/// A command whose answer cannot be written ends as ripgrep's do: a reader that went
/// away is a quiet success, a full disk is exit 1 with a message; never the panic
/// hook's "internal error" (which `print!` reached before, exit 2).
#[test]
fn help_and_listings_on_a_closed_or_full_stdout() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().to_str().unwrap();
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 5] = [
        ("entrypoint", &["--help"], &[]),
        ("entrypoint", &["--version"], &[]),
        ("backup", &["--help"], &[]),
        ("backup", &["--version"], &[]),
        ("backup", &["list"], &[("BACKUP_DIR", dir)]),
    ];
    for (binary, args, env) in cases {
        // full: /dev/full takes nothing
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut cmd = command(&bin(binary), args, env);
        cmd.stdout(full);
        let r = run(cmd, Duration::from_secs(30));
        assert_eq!(
            r.code,
            Some(1),
            "{binary} {args:?} > /dev/full: {}",
            r.output()
        );
        assert!(
            r.stderr
                .contains("cannot write to stdout: no space left on device")
                && !r.stderr.contains("internal error"),
            "{binary} {args:?}: {}",
            r.output()
        );
        // closed: the reader is gone before anything is written
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = command(&bin(binary), args, env);
        cmd.stdout(writer);
        let r = run(cmd, Duration::from_secs(30));
        assert_eq!(
            r.code,
            Some(0),
            "{binary} {args:?} | (closed): {}",
            r.output()
        );
        assert_eq!(r.stderr, "", "{binary} {args:?}");
    }
}

/// `RUST_LOG_FILE` gives the level as every `NAME_FILE` gives its value, when
/// `RUST_LOG` is not set; as the app's environment may hold its own `RUST_LOG_FILE`
/// (the file it logs to), one that holds no level is a warning that does not echo the
/// file, never a failed start; a bad `RUST_LOG` itself still is (exit 2). The same for
/// `backup`.
#[test]
fn the_log_level_also_comes_from_name_file() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = dir.path().join("quiet");
    std::fs::write(&quiet, "error\n").unwrap();
    let quiet = quiet.to_str().unwrap();
    // at error level, the start-up's info lines are not written
    let r = entrypoint(
        &["--", "sh", "-c", "exit 7"],
        &[("RUST_LOG_FILE", quiet), ("ENTRYPOINT_STOP_DELAY", "0")],
    );
    assert_eq!(r.code, Some(7), "{}", r.output());
    let loud = entrypoint(&["--", "sh", "-c", "kill -TERM $$"], &[]);
    let quietened = entrypoint(
        &["--", "sh", "-c", "kill -TERM $$"],
        &[("RUST_LOG_FILE", quiet)],
    );
    assert!(
        quietened.stderr.len() <= loud.stderr.len(),
        "{}",
        quietened.output()
    );
    // the app's own log file: a warning, and the app starts
    let applog = dir.path().join("app.log");
    std::fs::write(&applog, "2026-12-07 started\nsecret-ish line\n").unwrap();
    let r = entrypoint(
        &["--", "sh", "-c", "exit 3"],
        &[("RUST_LOG_FILE", applog.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(3), "{}", r.output());
    assert!(
        r.stderr.contains("does not hold a log level"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("secret-ish"), "{}", r.stderr);
    let missing = dir.path().join("not-yet.log");
    let r = entrypoint(
        &["--", "sh", "-c", "exit 3"],
        &[("RUST_LOG_FILE", missing.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(3), "{}", r.output());
    // RUST_LOG wins over the file, and a bad RUST_LOG is still an error
    let r = entrypoint(
        &["--", "true"],
        &[("RUST_LOG", "loud"), ("RUST_LOG_FILE", quiet)],
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("RUST_LOG=\"loud\""), "{}", r.stderr);
    let r = run(
        command(
            &bin("backup"),
            &["list"],
            &[("RUST_LOG_FILE", applog.to_str().unwrap())],
        ),
        LONG,
    );
    assert_ne!(r.code, Some(101), "{}", r.output());
    assert!(
        r.stderr.contains("does not hold a log level"),
        "{}",
        r.stderr
    );
}
