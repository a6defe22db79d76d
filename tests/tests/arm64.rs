//! The ARM64 static binaries (target/static/aarch64/, built by scripts/build-static
//! with cargo-zigbuild) run under qemu-user: healthcheck against a live HTTP server and
//! a live PostgreSQL, the entrypoint as PID 1 of a real PID namespace (SIGTERM passed on,
//! an orphan reaped, the exit status mirrored), and a backup and restore round trip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dockhand_tests::bins::root;
use dockhand_tests::http::{Behaviour, HttpServer};
use dockhand_tests::pg::Postgres;
use dockhand_tests::pid1::{init_pid_of, read_lines, sigapp};
use dockhand_tests::run::{finish, Run};

const LONG: Duration = Duration::from_secs(120);

fn arm64(name: &str) -> PathBuf {
    let p = root().join("target/static/aarch64").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-static",
        p.display()
    );
    let desc = Command::new("file").arg("-b").arg(&p).output().unwrap();
    let desc = String::from_utf8_lossy(&desc.stdout);
    assert!(
        desc.contains("aarch64") && desc.contains("statically linked"),
        "{desc}"
    );
    p
}

fn qemu() -> &'static str {
    assert!(
        Command::new("qemu-aarch64-static")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-aarch64-static is missing: run scripts/setup"
    );
    "qemu-aarch64-static"
}

fn under_qemu(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = Command::new(qemu())
        .arg(arm64(bin))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, LONG)
}

#[test]
fn arm64_healthcheck_probes_http_and_postgres() {
    let http = HttpServer::start(Behaviour::Fixed {
        status: 200,
        body: "ok".into(),
    });
    let pg = Postgres::start();
    let r = under_qemu(
        "healthcheck",
        &[
            "-v",
            "--expect-body",
            "ok",
            &format!("http://localhost:{}/", http.port),
            &pg.url(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stdout.contains("SELECT 1"), "{}", r.output());
    let wrong = pg.url_with("app", "wrong", "app");
    let r = under_qemu("healthcheck", &[&wrong], &[]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("password authentication failed"),
        "{}",
        r.output()
    );
}

#[test]
fn arm64_entrypoint_as_pid_1_forwards_term_reaps_and_mirrors_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let (record, ready, orphan) = (
        dir.path().join("record"),
        dir.path().join("ready"),
        dir.path().join("orphan"),
    );
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", qemu()])
        .arg(arm64("entrypoint"))
        .args(["--", "python3"])
        .arg(sigapp())
        .arg("--record")
        .arg(&record)
        .arg("--ready")
        .arg(&ready)
        .arg("--orphan")
        .arg(&orphan)
        .args(["--term-exit", "7"])
        .env("ENTRYPOINT_FILE_VARS", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        dockhand_tests::wait_until(LONG, || ready.exists()),
        "the app never started"
    );
    // the orphan's parent, once its own parent is gone, is the entrypoint (PID 1)
    assert!(dockhand_tests::wait_until(LONG, || !read_lines(&orphan).is_empty()));
    assert_eq!(read_lines(&orphan), ["1"]);
    let pid1 = init_pid_of(child.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(7), "{}", r.output());
    // the app got the SIGTERM; then the orphan (it inherited the app's recorder) got
    // its own, from the ordered shutdown, before the entrypoint exited
    assert_eq!(read_lines(&record), ["SIGTERM", "SIGTERM"]);
}

#[test]
fn arm64_backup_and_restore_round_trip() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 5000) i;");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let r = under_qemu("backup", &["now", "--verify", "true"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let r = under_qemu("backup", &["restore", "latest"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let db = r.stdout.trim().to_string();
    let sum = |db: &str| {
        pg.psql_db(
            db,
            "SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM t",
        )
    };
    assert_eq!(sum(&db), sum("app"));
}
