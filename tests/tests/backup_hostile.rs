//! `backup` configured exactly as README.md and examples/ show it, and under hostile
//! input and faults: a password only in `PGPASSWORD_FILE`, secrets kept out of the
//! children's environment, damaged backups that must never be committed, stray
//! manifests, S3 unreachable, stalling or failing, names that collide, leftovers of
//! killed runs, a cancelled high-level zstd run, a cold start, the status before the
//! first success, flags given to the wrong command, restore targets that could be the
//! source (long names, concurrent restores, a `--to` naming no database) and globals
//! restored into a cluster that has roles. Each test failed before its fix.

use dockhand_tests::files;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use dockhand_tests::bins::bin;
use dockhand_tests::faulty::{Fault, FaultyS3};
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::run::{command, finish, run, Run};
use dockhand_tests::s3::S3;
use dockhand_tests::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(120);

fn backup(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(command(&bin("backup"), args, env), LONG)
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    command(&bin("backup"), args, env).spawn().unwrap()
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// The names `backup list` prints (first column), oldest first.
fn names(list: &Run) -> Vec<String> {
    list.stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// A file under /run/secrets/ (as compose mounts secrets), removed when dropped.
struct Secret(PathBuf);

impl Secret {
    fn new(content: &str) -> Secret {
        std::fs::create_dir_all("/run/secrets").expect("tests run as root (CI does)");
        let p = Path::new("/run/secrets")
            .join(format!("dockhand-backup-{}", dockhand_tests::token(12)));
        std::fs::write(&p, content).unwrap();
        Secret(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn seed(pg: &Postgres, db: &str, table: &str, rows: u32) {
    pg.psql(&format!("CREATE DATABASE {db} OWNER app"));
    pg.psql_db(
        db,
        &format!(
            "SET ROLE app; CREATE TABLE {table} (id int PRIMARY KEY, v text);
             INSERT INTO {table} SELECT i, md5(i::text) FROM generate_series(1, {rows}) i;"
        ),
    );
}

fn rows(pg: &Postgres, db: &str, table: &str) -> String {
    pg.psql_db(
        db,
        &format!("SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM {table} t"),
    )
}

fn databases(pg: &Postgres) -> Vec<String> {
    pg.psql("SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(String::from)
        .collect()
}

/// A directory of pg_dump/pg_restore/pg_dumpall/psql wrappers that record their
/// environment (`<dir>/env.<tool>.<pid>`) and run the real tool.
fn recording_tools(dir: &Path) -> PathBuf {
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for t in ["pg_dump", "pg_restore", "pg_dumpall", "psql"] {
        let script = format!(
            "#!/bin/sh\nenv > {}/env.{t}.$$\nexec {} \"$@\"\n",
            dir.display(),
            bin_dir().join(t).display()
        );
        let p = tools.join(t);
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    tools
}

// ---- 1, 2: the documented configuration, and what the children see -----------------

#[test]
fn the_readme_configuration_backs_up_and_restores_with_the_password_in_a_file() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    seed(&pg, "shop", "orders", 2000);
    // A generated password with every URL delimiter, only in the secret file.
    let password = "Pa/ss?wo#rd@1:x%";
    pg.psql(&format!("ALTER ROLE app PASSWORD '{password}'"));
    let secret = Secret::new(&format!("{password}\n"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app@127.0.0.1:{}/shop", pg.port);
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("PGPASSWORD_FILE", secret.path()),
        ("BACKUP_DIR", d),
    ];
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    r.assert_no_secret(password);
    let r = backup(&["restore", "latest"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let restored = r.stdout.trim().to_string();
    assert_eq!(rows(&pg, &restored, "orders"), rows(&pg, "shop", "orders"));
    r.assert_no_secret(password);
    // the password in the URL itself, unencoded, works the same
    let url = format!("postgres://app:{password}@127.0.0.1:{}/shop", pg.port);
    let r = backup(&["now"], &[("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    r.assert_no_secret(password);
}

#[test]
fn children_get_only_the_environment_they_need() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    seed(&pg, "shop", "orders", 100);
    let dir = tempfile::tempdir().unwrap();
    let tools = recording_tools(dir.path());
    let store = dir.path().join("store");
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", store.to_str().unwrap()),
        ("BACKUP_PG_BIN", tools.to_str().unwrap()),
        ("AWS_SECRET_ACCESS_KEY", "AwsSecretValue123"),
        ("SESSION_SECRET", "AppSecretValue456"),
        ("LANG", "C.UTF-8"),
    ];
    let r = backup(&["now", "--verify", "true"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let r = backup(&["restore", "latest"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let recorded: Vec<(String, String)> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("env."))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    let tools_seen: Vec<&str> = recorded
        .iter()
        .map(|(n, _)| n.split('.').nth(1).unwrap())
        .collect();
    assert!(
        tools_seen.contains(&"pg_dump") && tools_seen.contains(&"pg_restore"),
        "{tools_seen:?}"
    );
    for (name, env) in &recorded {
        for leak in [
            "AwsSecretValue123",
            "AppSecretValue456",
            "DIRECT_URL",
            "AWS_",
            "BACKUP_",
        ] {
            assert!(!env.contains(leak), "{name} got {leak}:\n{env}");
        }
        assert!(
            env.contains("LANG=C.UTF-8"),
            "{name}: the locale was dropped:\n{env}"
        );
        // every one that connects names itself (the --version probes do not connect)
        if env.contains("PGHOST=") {
            assert!(env.contains("PGAPPNAME=dockhand-backup"), "{name}:\n{env}");
            assert!(
                env.contains(&format!("PGPASSWORD={}", pg.password)),
                "{name}:\n{env}"
            );
        }
    }
}

// ---- 3: nothing damaged is ever committed -----------------------------------------

#[test]
fn a_damaged_backup_leaves_the_target_exactly_as_it_was() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    seed(&pg, "one", "alpha", 3000);
    seed(&pg, "two", "beta", 3000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/one", pg.password, pg.port);
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", d),
        ("BACKUP_DATABASES", "one,two"),
    ];
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let list = names(&backup(&["list"], &env));
    let one = list.iter().find(|n| n.starts_with("one-")).unwrap().clone();
    let two = list.iter().find(|n| n.starts_with("two-")).unwrap().clone();
    // two's dump copied over one's name: a complete, valid dump of the wrong database
    std::fs::copy(
        dir.path().join(format!("{two}.dump.zst")),
        dir.path().join(format!("{one}.dump.zst")),
    )
    .unwrap();
    let before = databases(&pg);
    let r = backup(&["restore", &one], &env);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.output());
    assert_eq!(databases(&pg), before, "a database was left behind");
    // into a populated database with --clean --yes: its rows stay
    let target = format!("postgres://app:{}@127.0.0.1:{}/one", pg.password, pg.port);
    let alpha = rows(&pg, "one", "alpha");
    let r = backup(
        &["restore", &one, "--to", &target, "--clean", "--yes"],
        &env,
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert_eq!(rows(&pg, "one", "alpha"), alpha);
    assert_eq!(
        pg.psql_db("one", "SELECT to_regclass('beta') IS NULL"),
        "t",
        "the wrong table arrived"
    );

    // single-bit flips anywhere in a backup: never committed
    let r = backup(&["now", "--databases", "one"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let fresh = names(&backup(&["list"], &env))
        .into_iter()
        .rfind(|n| n.starts_with("one-"))
        .unwrap();
    let file = dir.path().join(format!("{fresh}.dump.zst"));
    let good = std::fs::read(&file).unwrap();
    let n = good.len();
    for offset in [
        0,
        5,
        13,
        n / 7,
        n / 3,
        n / 2,
        2 * n / 3,
        n - 200,
        n - 30,
        n - 9,
        n - 4,
        n - 1,
    ] {
        let mut bad = good.clone();
        bad[offset] ^= 0x10;
        std::fs::write(&file, &bad).unwrap();
        let r = backup(
            &["restore", &fresh, "--to", &target, "--clean", "--yes"],
            &env,
        );
        assert_eq!(r.code, Some(1), "offset {offset}: {}", r.output());
        assert_eq!(
            rows(&pg, "one", "alpha"),
            alpha,
            "offset {offset}: the target changed"
        );
        assert_eq!(databases(&pg), before, "offset {offset}");
    }
    // and the intact one restores
    std::fs::write(&file, &good).unwrap();
    let r = backup(&["restore", &fresh], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(rows(&pg, r.stdout.trim(), "alpha"), alpha);
}

// ---- 4: a stray manifest cannot name a foreign file ---------------------------------

#[test]
fn prune_never_deletes_a_file_a_stray_manifest_names() {
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 100);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let status = dir.path().join("status.json");
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", d),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ];
    for _ in 0..2 {
        let r = backup(&["now"], &env);
        assert_eq!(r.code, Some(0), "{}", r.output());
    }
    let name = names(&backup(&["list"], &env))[0].clone();
    let m = std::fs::read_to_string(dir.path().join(format!("{name}.manifest.json"))).unwrap();
    // t3.manifest.json naming status.json; and a manifest under another backup's name
    let stray = m
        .replace(&format!("{name}.dump.zst"), "status.json")
        .replace(&name, "t3");
    std::fs::write(dir.path().join("t3.manifest.json"), &stray).unwrap();
    std::fs::write(dir.path().join("other.manifest.json"), &m).unwrap();
    let r = backup(&["prune", "--keep-last", "1"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(status.exists(), "prune deleted status.json");
    assert!(
        dir.path().join("t3.manifest.json").exists()
            && dir.path().join("other.manifest.json").exists()
    );
    assert_eq!(names(&backup(&["list"], &env)).len(), 1);
}

// ---- 5, 13: S3 down does not block the local copy; errors are one line -------------

#[test]
fn verify_and_restore_from_the_folder_do_not_need_s3() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    seed(&pg, "shop", "orders", 500);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let r = backup(&["now"], &[("DIRECT_URL", &url), ("BACKUP_DIR", d)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let down = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", d),
        ("BACKUP_S3_BUCKET", "b"),
        ("BACKUP_S3_ENDPOINT", "http://127.0.0.1:1"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "y"),
    ];
    for args in [
        &["verify", "latest", "--from", "local"][..],
        &["verify", "latest"][..],
        &["restore", "latest", "--from", "local"][..],
    ] {
        let r = backup(args, &down);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.output());
    }
    // listing S3 itself fails with one short line, no Debug structures
    let r = backup(&["list", "--remote"], &down);
    assert_eq!(r.code, Some(1), "{}", r.output());
    let msg = r.stderr.trim();
    assert!(
        msg.contains("cannot connect (connection refused)") && msg.contains("BACKUP_S3_ENDPOINT"),
        "{msg}"
    );
    for debug in [
        "DispatchFailure",
        "ConnectorError",
        "source:",
        "Some(",
        " { ",
    ] {
        assert!(!msg.contains(debug), "{msg}");
    }
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[test]
fn no_region_is_one_line_without_the_sdks_instance_metadata_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let r = backup(
        &[
            "list",
            "--remote",
            "--dir",
            dir.path().to_str().unwrap(),
            "--s3-bucket",
            "my-bucket",
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.output());
    assert!(
        r.stderr.contains("no AWS region") && r.stderr.contains("BACKUP_S3_REGION"),
        "{}",
        r.output()
    );
    for noise in ["IMDS", "FailedToLoadToken", "SdkBody"] {
        assert!(!r.stderr.contains(noise), "{}", r.output());
    }
}

#[test]
fn s3_errors_name_the_status_and_code() {
    let s3 = S3::shared();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3.endpoint();
    let r = backup(
        &["list", "--remote"],
        &[
            ("BACKUP_DIR", dir.path().to_str().unwrap()),
            ("BACKUP_S3_BUCKET", "no-such-bucket-here"),
            ("BACKUP_S3_ENDPOINT", &endpoint),
            ("AWS_ACCESS_KEY_ID", s3.access_key),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("HTTP 404 NoSuchBucket") && r.stderr.contains("check BACKUP_S3_BUCKET"),
        "{}",
        r.output()
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.output());
}

// ---- 6: names never collide ---------------------------------------------------------

#[test]
fn runs_in_the_same_second_get_distinct_names() {
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 10);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let started = Instant::now();
    let mut made = 0;
    while made < 3 || started.elapsed() < Duration::from_secs(1) && made < 6 {
        assert_eq!(backup(&["now"], &env).code, Some(0));
        made += 1;
    }
    let list = names(&backup(&["list"], &env));
    assert_eq!(list.len(), made, "{list:?}");
    let mut sorted = list.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), made);
}

// ---- 7, 9: a stop ends a run within the grace, whatever S3 or zstd does --------------

fn bulk(pg: &Postgres, mb: u32) {
    pg.psql_db(
        "app",
        &format!(
            "SET ROLE app; CREATE TABLE bulk (id int, a text, b text);
             INSERT INTO bulk SELECT i, md5(i::text) || md5((i * 7)::text), md5((i * 13)::text)
             FROM generate_series(1, {}) i;",
            mb * 1024 * 1024 / 130
        ),
    );
}

#[test]
fn sigterm_ends_a_run_whose_s3_stalls() {
    let pg = Postgres::start();
    bulk(&pg, 40);
    let s3 = S3::shared();
    let dir = tempfile::tempdir().unwrap();
    for fault in [Fault::StallUploadPart, Fault::StallAll] {
        let bucket = s3.bucket();
        let proxy = FaultyS3::start(s3.port, fault);
        let endpoint = proxy.endpoint();
        let d = dir.path().join(format!("{fault:?}"));
        let env = [
            ("DIRECT_URL", pg.url()),
            ("BACKUP_DIR", d.display().to_string()),
            ("BACKUP_S3_BUCKET", bucket.clone()),
            ("BACKUP_S3_ENDPOINT", endpoint),
            ("BACKUP_S3_PART_SIZE", "5MiB".into()),
            ("AWS_ACCESS_KEY_ID", s3.access_key.into()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key.into()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let child = spawn(&["now"], &env);
        std::thread::sleep(Duration::from_secs(3));
        let stopped = Instant::now();
        signal(&child, Signal::SIGTERM);
        let r = finish(child, LONG);
        assert!(
            stopped.elapsed() < Duration::from_secs(6),
            "{fault:?}: took {:?}",
            stopped.elapsed()
        );
        assert_eq!(r.code, Some(143), "{fault:?}: {}", r.output());
        assert!(
            files(&d).iter().all(|f| !f.ends_with(".partial")),
            "{fault:?}: {:?}",
            files(&d)
        );
    }
}

#[test]
fn the_daemon_stops_within_its_grace_when_s3_stalls() {
    let pg = Postgres::start();
    bulk(&pg, 40);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let proxy = FaultyS3::start(s3.port, Fault::StallUploadPart);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = proxy.endpoint();
    let url = pg.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_S3_BUCKET", bucket.as_str()),
        ("BACKUP_S3_ENDPOINT", endpoint.as_str()),
        ("BACKUP_S3_PART_SIZE", "5MiB"),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_STOP_GRACE", "2s"),
    ];
    let child = spawn(&[], &env);
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert!(
        stopped.elapsed() < Duration::from_secs(7),
        "took {:?}: {}",
        stopped.elapsed(),
        r.output()
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        files(dir.path()).iter().all(|f| !f.ends_with(".partial")),
        "{:?}",
        files(dir.path())
    );
}

#[test]
fn a_stop_at_zstd_level_19_does_not_wait_for_compression() {
    let pg = Postgres::start();
    bulk(&pg, 60);
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_ZSTD_LEVEL", "19"),
    ];
    let child = spawn(&["now"], &env);
    std::thread::sleep(Duration::from_secs(4));
    let stopped = Instant::now();
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopped.elapsed()
    );
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert!(
        files(dir.path()).iter().all(|f| !f.ends_with(".partial")),
        "{:?}",
        files(dir.path())
    );
}

// ---- 8: what a killed run left is cleaned up, and nothing else ----------------------

fn s3_uploads(s3: &S3, bucket: &str) -> Vec<String> {
    let (status, body) = s3.request("GET", &format!("/{bucket}?uploads"), b"");
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(String::from)
        .collect()
}

fn s3_keys(s3: &S3, bucket: &str) -> Vec<String> {
    let (status, body) = s3.request("GET", &format!("/{bucket}?list-type=2"), b"");
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(String::from)
        .collect()
}

#[test]
fn the_next_run_cleans_up_what_a_killed_run_left_and_nothing_else() {
    let pg = Postgres::start();
    bulk(&pg, 40);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let endpoint = s3.endpoint();
    let url = pg.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_S3_BUCKET", bucket.as_str()),
        ("BACKUP_S3_PREFIX", "p/"),
        ("BACKUP_S3_ENDPOINT", endpoint.as_str()),
        ("BACKUP_S3_PART_SIZE", "5MiB"),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
    ];
    // A foreign incomplete upload, under the prefix and named like another database's.
    for key in [
        "p/foreign.bin",
        "p/other-20260101T000000.000Z-abcd.dump.zst",
    ] {
        let (st, body) = s3.request("POST", &format!("/{bucket}/{key}?uploads"), b"");
        assert_eq!(st, 200, "{body}");
    }
    // This database's upload started a year ago, whose last part came just now.
    let old = "p/app-20251201T000000.000Z-abcd.dump.zst";
    let (st, body) = s3.request("POST", &format!("/{bucket}/{old}?uploads"), b"");
    assert_eq!(st, 200, "{body}");
    let id = body
        .split("<UploadId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    let (st, body) = s3.request(
        "PUT",
        &format!("/{bucket}/{old}?partNumber=1&uploadId={id}"),
        &[7u8; 1000],
    );
    assert_eq!(st, 200, "{body}");
    let child = spawn(&["now"], &env);
    assert!(
        wait_until(LONG, || s3_uploads(s3, &bucket).len() == 4),
        "no upload started"
    );
    signal(&child, Signal::SIGKILL);
    let _ = finish(child, LONG);
    let killed: Vec<String> = s3_uploads(s3, &bucket)
        .into_iter()
        .filter(|k| k.starts_with("p/app-2026"))
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    // Nothing in S3 says whether a run is alive (a run of the same database on another
    // server may be uploading): young uploads are left alone, by their start (the
    // time in the name, as the server may not tell) and by their newest part.
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stderr.contains("aborted"), "{}", r.output());
    assert_eq!(s3_uploads(s3, &bucket).len(), 4);
    // Once older than any run lasts, it is aborted (the proxy ages the dates the
    // server gives); still never another's, nor one whose name is young.
    let aged = FaultyS3::start(s3.port, Fault::Backdate);
    let aged_endpoint = aged.endpoint();
    let mut env = env;
    env[3] = ("BACKUP_S3_ENDPOINT", aged_endpoint.as_str());
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr
            .contains("aborted the incomplete upload of app-20251201T000000.000Z-abcd.dump.zst"),
        "{}",
        r.output()
    );
    assert_eq!(
        names(&backup(&["list"], &env)).len(),
        2,
        "a complete backup was taken for a leftover"
    );
    let mut left = s3_uploads(s3, &bucket);
    left.sort();
    assert_eq!(
        left,
        [
            killed[0].as_str(),
            "p/foreign.bin",
            "p/other-20260101T000000.000Z-abcd.dump.zst"
        ]
    );
}

#[test]
fn a_failed_manifest_put_leaves_no_data_object() {
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 100);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let proxy = FaultyS3::start(s3.port, Fault::FailManifestPut);
    let endpoint = proxy.endpoint();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let r = backup(
        &["now"],
        &[
            ("DIRECT_URL", url.as_str()),
            ("BACKUP_S3_BUCKET", bucket.as_str()),
            ("BACKUP_S3_ENDPOINT", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", s3.access_key),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("HTTP 500 InternalError"),
        "{}",
        r.output()
    );
    assert_eq!(s3_keys(s3, &bucket), Vec::<String>::new());
}

// ---- 17.3: two runs of one database never break each other ------------------------

/// A session that holds `table` in `db` exclusively, so a pg_dump of `db` waits (with
/// its destinations open) until this is dropped.
struct TableHeld(Child);

impl TableHeld {
    fn new(pg: &Postgres, db: &str, table: &str) -> TableHeld {
        let mut child = std::process::Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-U", "postgres", "-h"])
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-d", db])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;").unwrap();
        stdin.flush().unwrap();
        assert!(
            wait_until(LONG, || {
                pg.psql_db(
                db,
                &format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted")
            ) == "1"
            }),
            "the table lock was not taken"
        );
        TableHeld(child)
    }
}

impl Drop for TableHeld {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `child` to exit by itself (it is collected later).
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    wait_until(limit, || matches!(child.try_wait(), Ok(Some(_))))
}

fn partials(dir: &Path) -> usize {
    files(dir)
        .iter()
        .filter(|f| f.ends_with(".partial"))
        .count()
}

/// The environment of a run of `url` into the folder and the bucket.
fn both(url: &str, dir: &Path, s3: &S3, bucket: &str, endpoint: &str) -> Vec<(String, String)> {
    [
        ("DIRECT_URL", url),
        ("BACKUP_DIR", dir.to_str().unwrap()),
        ("BACKUP_S3_BUCKET", bucket),
        ("BACKUP_S3_ENDPOINT", endpoint),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn a_run_through_another_database_never_touches_a_live_runs_files() {
    // The scenario: one run connects to `postgres` with BACKUP_DATABASES=app,
    // another connects to `app`. The second used to take the first's live .partial
    // and upload for an interrupted run's, delete and abort them, and the first failed.
    let pg = Postgres::start();
    bulk(&pg, 2);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let endpoint = s3.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let through_postgres = pg.url_with("app", &pg.password, "postgres");
    let mut first_env = both(&through_postgres, dir.path(), s3, &bucket, &endpoint);
    first_env.push(("BACKUP_DATABASES".into(), "app".into()));
    let second_env = both(&pg.url(), dir.path(), s3, &bucket, &endpoint);

    let held = TableHeld::new(&pg, "app", "bulk");
    let first = spawn(&["now"], &refs(&first_env));
    assert!(
        wait_until(LONG, || partials(dir.path()) == 1
            && s3_uploads(s3, &bucket).len() == 1),
        "the first run did not start writing: {:?}",
        files(dir.path())
    );
    let mut second = spawn(&["now"], &refs(&second_env));
    // Refused at once (before the fix it went on, and waited for the table too).
    exits_within(&mut second, Duration::from_secs(30));
    drop(held);
    let second = finish(second, LONG);
    let first = finish(first, LONG);
    assert_eq!(first.code, Some(0), "{}", first.output());
    assert_eq!(second.code, Some(1), "{}", second.output());
    assert!(
        second
            .stderr
            .contains("another backup of this database is running (held by PostgreSQL session")
            && second.stderr.contains("dockhand-backup"),
        "{}",
        second.output()
    );
    assert!(
        !second.stderr.contains("interrupted run"),
        "{}",
        second.output()
    );
    // The first's backup is whole, in both places.
    let list = backup(&["list", "--remote"], &refs(&second_env));
    let made = names(&list);
    assert_eq!(made.len(), 1, "{}", list.stdout);
    assert!(list.stdout.contains("both"), "{}", list.stdout);
    for from in ["local", "s3"] {
        let r = backup(&["verify", &made[0], "--from", from], &refs(&second_env));
        assert_eq!(r.code, Some(0), "{from}: {}", r.output());
    }
    assert_eq!(partials(dir.path()), 0, "{:?}", files(dir.path()));
    assert!(s3_uploads(s3, &bucket).is_empty());
}

#[test]
fn a_run_of_the_same_database_on_another_server_never_touches_a_live_runs_files() {
    // Two servers (a primary and a standby, each with its sidecar) with one database
    // name, sharing the folder and the bucket: no advisory lock spans them, so the
    // folder's lock file and the age of S3 leftovers must.
    let one = Postgres::start();
    bulk(&one, 2);
    let two = Postgres::start();
    bulk(&two, 1);
    let s3 = S3::shared();
    let endpoint = s3.endpoint();
    let dir = tempfile::tempdir().unwrap();

    // Folder and bucket: the second is refused, naming the run that writes.
    let bucket = s3.bucket();
    let held = TableHeld::new(&one, "app", "bulk");
    let first = spawn(
        &["now"],
        &refs(&both(&one.url(), dir.path(), s3, &bucket, &endpoint)),
    );
    let first_pid = first.id();
    assert!(
        wait_until(LONG, || partials(dir.path()) == 1
            && s3_uploads(s3, &bucket).len() == 1),
        "the first run did not start writing"
    );
    let second_env = both(&two.url(), dir.path(), s3, &bucket, &endpoint);
    let mut second = spawn(&["now"], &refs(&second_env));
    exits_within(&mut second, Duration::from_secs(30));
    drop(held);
    let second = finish(second, LONG);
    let first = finish(first, LONG);
    assert_eq!(first.code, Some(0), "{}", first.output());
    assert_eq!(second.code, Some(1), "{}", second.output());
    assert!(
        second
            .stderr
            .contains("another backup is writing these files in")
            && second.stderr.contains(".app.lock")
            && second.stderr.contains(&format!("pid {first_pid} on ")),
        "{}",
        second.output()
    );
    let made = names(&backup(&["list", "--remote"], &refs(&second_env)));
    assert_eq!(made.len(), 1, "{made:?}");
    for from in ["local", "s3"] {
        let r = backup(&["verify", &made[0], "--from", from], &refs(&second_env));
        assert_eq!(r.code, Some(0), "{from}: {}", r.output());
    }
    assert!(
        files(dir.path()).iter().all(|f| !f.ends_with(".lock")),
        "a lock file was left: {:?}",
        files(dir.path())
    );

    // Only the bucket: both runs succeed, and the first's upload is never aborted.
    let bucket = s3.bucket();
    let only_s3 = |url: &str| {
        let mut e = both(url, dir.path(), s3, &bucket, &endpoint);
        e.retain(|(k, _)| k != "BACKUP_DIR");
        e
    };
    let held = TableHeld::new(&one, "app", "bulk");
    let first = spawn(&["now"], &refs(&only_s3(&one.url())));
    assert!(
        wait_until(LONG, || s3_uploads(s3, &bucket).len() == 1),
        "the first run did not start uploading"
    );
    let second = backup(&["now"], &refs(&only_s3(&two.url())));
    drop(held);
    let first = finish(first, LONG);
    assert_eq!(second.code, Some(0), "{}", second.output());
    assert!(!second.stderr.contains("aborted"), "{}", second.output());
    assert_eq!(first.code, Some(0), "{}", first.output());
    let made = names(&backup(&["list"], &refs(&only_s3(&one.url()))));
    assert_eq!(made.len(), 2, "{made:?}");
    for name in &made {
        let r = backup(&["verify", name], &refs(&only_s3(&one.url())));
        assert_eq!(r.code, Some(0), "{name}: {}", r.output());
    }
}

// ---- 17.5: a download cut short is resumed, and never called damage ----------------

#[test]
fn a_download_cut_short_is_resumed_and_never_reported_as_damage() {
    let pg = Postgres::start();
    bulk(&pg, 4);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let url = pg.url();
    let env = |endpoint: &str| -> Vec<(String, String)> {
        let mut e = both(&url, Path::new("/nonexistent"), s3, &bucket, endpoint);
        e.retain(|(k, _)| k != "BACKUP_DIR");
        e
    };
    let r = backup(&["now"], &refs(&env(&s3.endpoint())));
    assert_eq!(r.code, Some(0), "{}", r.output());

    // Cut once half-way (full Content-Length, then the connection closes): resumed.
    let proxy = FaultyS3::start(
        s3.port,
        Fault::CutGets {
            times: 1,
            after: 200_000,
        },
    );
    let r = backup(&["verify", "latest"], &refs(&env(&proxy.endpoint())));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("resuming"), "{}", r.output());

    // Cut every time: the run fails naming the network, and never says "damaged".
    let proxy = FaultyS3::start(
        s3.port,
        Fault::CutGets {
            times: usize::MAX,
            after: 0,
        },
    );
    let r = backup(&["verify", "latest"], &refs(&env(&proxy.endpoint())));
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("the download was cut off") && r.stderr.contains("not a damaged backup"),
        "{}",
        r.output()
    );
    assert!(!r.stderr.contains("is damaged"), "{}", r.output());
    assert!(!r.stderr.contains("checksum mismatch"), "{}", r.output());

    // A truly damaged object (same size, other bytes) still says so.
    let keys = s3_keys(s3, &bucket);
    let data = keys.iter().find(|k| k.ends_with(".dump.zst")).unwrap();
    let (status, manifest) = s3.request(
        "GET",
        &format!("/{bucket}/{}", data.replace(".dump.zst", ".manifest.json")),
        b"",
    );
    assert_eq!(status, 200, "{manifest}");
    let size: usize = manifest
        .split("\"size\":")
        .nth(1)
        .and_then(|s| s.trim().split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    let (status, body) = s3.request("PUT", &format!("/{bucket}/{data}"), &vec![0x5a; size]);
    assert_eq!(status, 200, "{body}");
    let r = backup(&["verify", "latest"], &refs(&env(&s3.endpoint())));
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("checksum mismatch") && r.stderr.contains("the backup is damaged"),
        "{}",
        r.output()
    );
}

// ---- 10, 12: a cold start, retries, and an honest status ----------------------------

#[test]
fn the_daemon_waits_for_a_late_database_and_retries_a_failed_run() {
    let mut pg = Postgres::start();
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    );
    pg.stop_server();
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let url = pg.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_SCHEDULE", "0 3 1 1 *"),
        ("BACKUP_WAIT_TIMEOUT", "1s"),
        ("BACKUP_RETRY_DELAY", "1s"),
    ];
    let child = spawn(&[], &env);
    // The first run gives up waiting and fails: the status says so honestly.
    assert!(wait_until(LONG, || std::fs::read_to_string(&status)
        .is_ok_and(|s| s.contains("fail"))));
    let h = run(
        command(
            &bin("healthcheck"),
            &[&format!("file://{}?max-age=26h", status.display())],
            &[],
        ),
        LONG,
    );
    assert_eq!(h.code, Some(1));
    assert!(h.stdout.contains("no successful run yet"), "{}", h.output());
    // The database comes up; a retry (not next year's slot) succeeds. (The status is
    // written when the whole run is done, after the backup file appears.)
    pg.start_server();
    assert!(
        wait_until(LONG, || files(dir.path())
            .iter()
            .any(|f| f.ends_with(".dump.zst"))
            && std::fs::read_to_string(&status)
                .is_ok_and(|s| s.contains("last_success"))),
        "no retry succeeded"
    );
    let h = run(
        command(
            &bin("healthcheck"),
            &[&format!("file://{}?max-age=26h", status.display())],
            &[],
        ),
        LONG,
    );
    assert_eq!(h.code, Some(0), "{}", h.output());
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("a retry of the failed run"),
        "{}",
        r.output()
    );
}

#[test]
fn a_cold_start_waits_for_the_database_before_the_first_run() {
    let mut pg = Postgres::start();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    pg.stop_server();
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let url = pg.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_SCHEDULE", "0 3 1 1 *"),
        ("BACKUP_RETRY_DELAY", "0"),
    ];
    let child = spawn(&[], &env);
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    assert!(wait_until(LONG, || files(dir.path())
        .iter()
        .any(|f| f.ends_with(".dump.zst"))));
    signal(&child, Signal::SIGTERM);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stderr.contains("run failed"), "{}", r.output());
}

// ---- 14, 15: messages and the command line -------------------------------------------

#[test]
fn an_old_pg_dump_in_backup_pg_bin_says_to_change_backup_pg_bin() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // a pg_dump that claims version 9
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let p = tools.join("pg_dump");
    std::fs::write(&p, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = pg.url();
    let r = backup(
        &["now"],
        &[
            ("DIRECT_URL", url.as_str()),
            ("BACKUP_DIR", dir.path().to_str().unwrap()),
            ("BACKUP_PG_BIN", tools.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("from BACKUP_PG_BIN="), "{}", r.output());
    assert!(!r.stderr.contains("or set BACKUP_PG_BIN"), "{}", r.output());
}

#[test]
fn each_command_takes_only_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        &["list", "--to", "postgres://x@h/db"][..],
        &["list", "--dry-run"][..],
        &["list", "--clean"][..],
        &["list", "--yes"][..],
        &["verify", "latest", "--clean"][..],
        &["prune", "--to", "postgres://x@h/db"][..],
        &["now", "--remote"][..],
        &["list", "--keep-last", "3"][..],
        &["list", "--schedule", "@daily"][..],
        &["now", "--level", "3"][..],
    ] {
        let mut a = args.to_vec();
        a.extend(["--dir", d]);
        let r = backup(&a, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.output());
    }
    let r = backup(&["list", "--dir", d], &[]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let help = backup(&["--help"], &[]);
    assert!(help.stdout.contains("--zstd-level"), "{}", help.stdout);
    let readme = std::fs::read_to_string(dockhand_tests::bins::root().join("README.md")).unwrap();
    assert!(readme.contains("`--zstd-level N`") && !readme.contains("`--level N`"));
}

#[test]
fn the_daemons_new_settings_reject_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (flag, env) in [
        ("--wait-timeout", "BACKUP_WAIT_TIMEOUT"),
        ("--retry-delay", "BACKUP_RETRY_DELAY"),
    ] {
        let r = backup(
            &["daemon", "--dir", d, flag, "soon"],
            &[("DIRECT_URL", "postgres://u:SECRETPW@h/db")],
        );
        assert_eq!(r.code, Some(2), "{flag}: {}", r.output());
        assert!(
            r.stderr.contains(env) && r.stderr.contains("invalid duration"),
            "{}",
            r.output()
        );
        r.assert_no_secret("SECRETPW");
        // and they belong to the daemon only
        let r = backup(&["list", "--dir", d, flag, "5s"], &[]);
        assert_eq!(r.code, Some(2), "{flag}: {}", r.output());
    }
}

// ---- issue 17, item 6: settings that do nothing, schedules that never run, ... -------

#[test]
fn settings_that_do_nothing_or_never_run_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = "postgres://app:SECRETPW@127.0.0.1:1/shop";
    for (args, env, says) in [
        // never fires: the daemon would idle for good
        (
            &["daemon"][..],
            &[("BACKUP_SCHEDULE", "0 0 30 2 *")][..],
            "never runs",
        ),
        (
            &["now"][..],
            &[("BACKUP_SCHEDULE", "0 0 31 4 *")][..],
            "never runs",
        ),
        (
            &["daemon"][..],
            &[("BACKUP_SCHEDULE", "61 * * * *")][..],
            "use 0-59",
        ),
        (&["now", "--gzip-level", "9"][..], &[][..], "--gzip-level"),
        (
            &["now"][..],
            &[("BACKUP_GZIP_LEVEL", "9")][..],
            "BACKUP_COMPRESSION=gzip",
        ),
        (
            &["now", "--compression", "gzip", "--zstd-level", "3"][..],
            &[][..],
            "--zstd-level",
        ),
        (
            &["now", "--s3-part-size", "16MiB"][..],
            &[][..],
            "--s3-part-size",
        ),
        (
            &["now"][..],
            &[("BACKUP_S3_PREFIX", "prod/app")][..],
            "BACKUP_S3_BUCKET",
        ),
        (
            &["now"][..],
            &[("BACKUP_AGE_RECIPIENT", ",")][..],
            "BACKUP_AGE_RECIPIENT",
        ),
        (&["now"][..], &[("BACKUP_AGE_RECIPIENT", " , ")][..], "age1"),
    ] {
        let mut a = args.to_vec();
        a.extend(["--dir", d]);
        let mut e = env.to_vec();
        e.push(("DIRECT_URL", url));
        let r = backup(&a, &e);
        assert_eq!(r.code, Some(2), "{args:?} {env:?}: {}", r.output());
        assert!(r.stderr.contains(says), "{args:?} {env:?}: {}", r.output());
        assert!(!r.stderr.contains("less than"), "{}", r.output());
        r.assert_no_secret("SECRETPW");
    }
    // a white-space BACKUP_DIR would create a folder named " "
    let cwd = tempfile::tempdir().unwrap();
    for blank in [" ", "\t"] {
        let mut c = command(
            &bin("backup"),
            &["now"],
            &[("DIRECT_URL", url), ("BACKUP_DIR", blank)],
        );
        c.current_dir(cwd.path());
        let r = run(c, LONG);
        assert_eq!(r.code, Some(2), "{}", r.output());
        assert!(r.stderr.contains("BACKUP_DIR"), "{}", r.output());
        assert_eq!(files(cwd.path()), Vec::<String>::new());
    }
    // invalid URLs and parameters are invalid input (2), not a failed run (1)
    let r = backup(
        &[
            "restore",
            "latest",
            "--dir",
            d,
            "--to",
            "mysql://u:SECRETPW@h/db",
        ],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("PostgreSQL URL"), "{}", r.output());
    r.assert_no_secret("SECRETPW");
    let bogus = "postgres://app:SECRETPW@127.0.0.1:1/shop?sslmode=bogus";
    let r = backup(&["restore", "latest", "--dir", d, "--to", bogus], &[]);
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("sslmode"), "{}", r.output());
    for command in ["now", "daemon", "list"] {
        let r = backup(&[command, "--dir", d], &[("DIRECT_URL", bogus)]);
        assert_eq!(r.code, Some(2), "{command}: {}", r.output());
        assert!(r.stderr.contains("sslmode=\"bogus\""), "{}", r.output());
        r.assert_no_secret("SECRETPW");
    }
}

#[test]
fn missing_aws_credentials_are_blamed_on_the_credentials() {
    let s3 = S3::shared();
    let dir = tempfile::tempdir().unwrap();
    let bucket = s3.bucket();
    let r = backup(
        &["list", "--remote"],
        &[
            ("BACKUP_DIR", dir.path().to_str().unwrap()),
            ("BACKUP_S3_BUCKET", bucket.as_str()),
            ("BACKUP_S3_ENDPOINT", &s3.endpoint()),
            ("HOME", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("no AWS credentials") && r.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        r.output()
    );
    assert!(!r.stderr.contains("BACKUP_S3_ENDPOINT"), "{}", r.output());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.output());
}

#[test]
fn the_metrics_file_is_readable_by_others_and_sighup_stops_the_daemon_as_documented() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 10);
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.prom");
    let status = dir.path().join("status.json");
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_SCHEDULE", "@yearly"),
    ];
    let child = spawn(&["daemon"], &env);
    assert!(wait_until(LONG, || metrics.exists() && status.exists()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // node_exporter runs as another user; the status file may hold an error's text
    assert_eq!(mode(&metrics), 0o644);
    assert_eq!(mode(&status), 0o600);
    signal(&child, Signal::SIGHUP);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("SIGHUP: stopping"), "{}", r.output());
    let readme = std::fs::read_to_string(dockhand_tests::bins::root().join("README.md")).unwrap();
    assert!(
        readme.contains("SIGHUP stops the daemon as SIGTERM does") && readme.contains("0644"),
        "README says what SIGHUP does to the daemon and the metrics file's mode"
    );
}

#[test]
fn pg_dump_gives_up_behind_an_access_exclusive_lock_and_names_the_blocker() {
    use std::io::Write;
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 10);
    // a migration left in an open transaction, holding ACCESS EXCLUSIVE
    let mut holder = std::process::Command::new(bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "shop",
        ])
        .arg("-h")
        .arg(pg.dir.path())
        .args(["-p", &pg.port.to_string()])
        .env("PGAPPNAME", "stuck-migration")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin
        .write_all(b"BEGIN; ALTER TABLE orders ADD COLUMN secret_col text DEFAULT 'hunter2';\n")
        .unwrap();
    stdin.flush().unwrap();
    assert!(wait_until(LONG, || {
        pg
        .psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted AND relation IS NOT NULL AND pid <> pg_backend_pid()")
        != "0"
    }));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let now = || {
        backup(
            &["now", "--lock-wait-timeout", "1s"],
            &[
                ("DIRECT_URL", url.as_str()),
                ("BACKUP_DIR", dir.path().to_str().unwrap()),
            ],
        )
    };
    // The backup role sees another role's session's name only, and is told how to see more.
    let r = now();
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("--lock-wait-timeout 1s")
            && r.stderr.contains("\"stuck-migration\"")
            && r.stderr.contains("pg_read_all_stats")
            && r.stderr.contains("holding ACCESS EXCLUSIVE on orders"),
        "{}",
        r.output()
    );
    r.assert_no_secret("hunter2");
    pg.psql("GRANT pg_read_all_stats TO app");
    let r = now();
    drop(stdin);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr
            .contains("\"stuck-migration\" from local, idle in transaction, in a transaction for ")
            && r.stderr.contains("holding ACCESS EXCLUSIVE on orders"),
        "{}",
        r.output()
    );
    r.assert_no_secret("hunter2");
    assert!(
        files(dir.path()).iter().all(|f| !f.contains("shop")),
        "{:?}",
        files(dir.path())
    );
    // the help says what the setting is for
    let help = backup(&["--help"], &[]);
    assert!(
        help.stdout.contains("BACKUP_LOCK_WAIT_TIMEOUT, default 5m"),
        "{}",
        help.stdout
    );
}

#[test]
fn channel_binding_require_is_enforced_by_every_binary() {
    let tls = Postgres::start_tls();
    let plain = Postgres::start();
    seed(&tls, "shop", "orders", 10);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let healthcheck = |url: &str| run(command(&bin("healthcheck"), &[url], &[]), LONG);
    let entrypoint = |url: &str| {
        run(
            command(
                &bin("entrypoint"),
                &["--wait", "postgres", "--wait-timeout", "1h", "--", "true"],
                &[("DIRECT_URL", url)],
            ),
            LONG,
        )
    };
    let backup_now = |url: &str| backup(&["now"], &[("DIRECT_URL", url), ("BACKUP_DIR", d)]);
    // over TLS: SCRAM-SHA-256-PLUS, bound to the server's certificate (the server
    // checks the binding), for tokio-postgres and for pg_dump (PGCHANNELBINDING)
    let good = format!(
        "postgres://app:{}@127.0.0.1:{}/shop?sslmode=require&channel_binding=require",
        tls.password, tls.port
    );
    let r = healthcheck(&good);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let r = entrypoint(&good);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let tools = recording_tools(dir.path());
    let r = backup(
        &["now"],
        &[
            ("DIRECT_URL", good.as_str()),
            ("BACKUP_DIR", d),
            ("BACKUP_PG_BIN", tools.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    // (the first pg_dump call only asks its version)
    let dump_env = files(dir.path())
        .into_iter()
        .filter(|f| f.starts_with("env.pg_dump."))
        .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
        .find(|env| env.contains("PGDATABASE=shop"))
        .unwrap();
    assert!(dump_env.contains("PGCHANNELBINDING=require"), "{dump_env}");
    // over plain TCP: refused at once, never silently unbound
    let bad = format!("{}?channel_binding=require", plain.url());
    let r = healthcheck(&bad);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("did not use channel binding"),
        "{}",
        r.output()
    );
    let r = entrypoint(&bad);
    assert_eq!(r.code, Some(3), "{}", r.output());
    assert!(
        r.stderr.contains("did not use channel binding"),
        "{}",
        r.output()
    );
    let r = backup_now(&bad);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("did not use channel binding"),
        "{}",
        r.output()
    );
    // where TLS is never used, or the value is unknown: invalid configuration
    for bad in [
        format!("{}?channel_binding=require&sslmode=disable", plain.url()),
        format!("{}?channel_binding=always", plain.url()),
    ] {
        for r in [entrypoint(&bad), backup_now(&bad)] {
            assert_eq!(r.code, Some(2), "{}", r.output());
            assert!(r.stderr.contains("channel_binding"), "{}", r.output());
        }
        let r = healthcheck(&bad);
        assert_ne!(r.code, Some(0), "{}", r.output());
        assert!(r.output().contains("channel_binding"), "{}", r.output());
    }
}

// ---- issue 17: a restore never writes into its source; globals restore ---------------

/// `s` percent-encoded for a URL path.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A database named `name` (any characters) with `rows` rows in table `t`.
fn seed_named(pg: &Postgres, name: &str, rows: u32) {
    pg.psql(&format!("CREATE DATABASE {} OWNER app", sql_ident(name)));
    pg.psql_db(
        name,
        &format!(
            "SET ROLE app; CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, {rows}) i;"
        ),
    );
}

#[test]
fn a_default_restore_never_writes_into_its_source_whatever_the_name_length() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    // 63 bytes (PostgreSQL's limit): `<name>_restore_<time>` was cut back to <name>,
    // the source, which `--clean --yes` then overwrote
    let full = format!("Ünï \"q\"; {}", "d".repeat(63 - "Ünï \"q\"; ".len()));
    assert_eq!(full.len(), 63);
    // 50 bytes: cut inside the time, so every restore got the same name; 62 bytes of
    // two-byte characters: a cut must not split one
    let middle = "m".repeat(50);
    let wide = "é".repeat(31);
    let plain = "d".repeat(63);
    for name in [&plain, &full, &middle, &wide] {
        seed_named(&pg, name, 1000);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let url = format!(
            "postgres://app:{}@127.0.0.1:{}/{}",
            pg.password,
            pg.port,
            url_encode(name)
        );
        let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
        let r = backup(&["now"], &env);
        assert_eq!(r.code, Some(0), "{name}: {}", r.output());
        // rows written after the backup must survive every restore
        pg.psql_db(
            name,
            "INSERT INTO t SELECT i, 'after' FROM generate_series(1001, 1100) i",
        );
        let source = rows(&pg, name, "t");
        let mut made = Vec::new();
        for args in [
            &["restore", "latest"][..],
            &["restore", "latest", "--clean", "--yes"][..],
            &["restore", "latest"][..],
        ] {
            let r = backup(args, &env);
            assert_eq!(r.code, Some(0), "{name} {args:?}: {}", r.output());
            let restored = r.stdout.trim().to_string();
            assert!(restored.len() <= 63, "{restored}");
            assert_ne!(&restored, name, "{args:?}: restored into the source");
            assert!(restored.contains("_restore_"), "{restored}");
            assert_eq!(
                pg.psql_db(&restored, "SELECT count(*) FROM t"),
                "1000",
                "{restored}"
            );
            assert!(!made.contains(&restored), "{restored} reused: {made:?}");
            made.push(restored);
        }
        assert_eq!(rows(&pg, name, "t"), source, "{name}: the source changed");
        assert!(databases(&pg).contains(name));
    }
    // a --to that names no database connects to the user's; never when that is the source
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t AS SELECT 1 AS id");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let env = [("DIRECT_URL", pg.url()), ("BACKUP_DIR", d.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(backup(&["now"], &env).code, Some(0));
    pg.psql_db("app", "INSERT INTO t VALUES (2)");
    let bare = format!("postgres://app:{}@127.0.0.1:{}", pg.password, pg.port);
    let r = backup(
        &["restore", "latest", "--to", &bare, "--clean", "--yes"],
        &env,
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("name it in --to"), "{}", r.output());
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM t"), "2");
}

#[test]
fn concurrent_default_restores_of_one_backup_get_their_own_databases() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    seed(&pg, "shop", "orders", 20000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let before = databases(&pg);
    let children: Vec<Child> = (0..3)
        .map(|_| spawn(&["restore", "latest"], &env))
        .collect();
    let mut made: Vec<String> = Vec::new();
    for c in children {
        let r = finish(c, LONG);
        assert_eq!(r.code, Some(0), "{}", r.output());
        made.push(r.stdout.trim().to_string());
    }
    let mut distinct = made.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{made:?}");
    for db in &made {
        assert!(!before.contains(db), "{db} existed before");
        assert_eq!(rows(&pg, db, "orders"), rows(&pg, "shop", "orders"), "{db}");
    }
}

/// One role's attributes, settings and memberships, comparable across clusters.
fn role_state(pg: &Postgres, role: &str) -> String {
    pg.psql(&format!(
        "SELECT r.rolcanlogin || ' ' || r.rolconnlimit || ' ' || coalesce(array_to_string(r.rolconfig, ','), '-')
                || ' ' || coalesce((SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m
                                     JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '-')
                || ' ' || coalesce(a.rolpassword, '-')
         FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = '{}'",
        role.replace('\'', "''")
    ))
}

#[test]
fn a_globals_backup_restores_into_its_own_cluster_and_into_a_fresh_one() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app SUPERUSER");
    let weird = "we\"ird; rôle";
    let ts_dir = tempfile::tempdir().unwrap();
    dockhand_tests::proc::chown_to_service(ts_dir.path());
    pg.psql(&format!(
        "CREATE ROLE reporting NOLOGIN CONNECTION LIMIT 3;
         CREATE ROLE {w} LOGIN PASSWORD 'pw;x''y';
         GRANT reporting TO {w};
         ALTER ROLE reporting SET work_mem = '8MB';
         COMMENT ON ROLE reporting IS 'read; only';",
        w = sql_ident(weird)
    ));
    pg.psql(&format!(
        "CREATE TABLESPACE ts OWNER reporting LOCATION '{}'",
        ts_dir.path().display()
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let env = [
        ("DIRECT_URL", pg.url()),
        ("BACKUP_DIR", d.to_string()),
        ("BACKUP_GLOBALS", "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let globals = names(&backup(&["list"], &env))
        .into_iter()
        .find(|n| n.starts_with("_globals-"))
        .unwrap();
    let want_reporting = role_state(&pg, "reporting");
    let want_weird = role_state(&pg, weird);

    // into its own cluster, after changes: attributes, settings, memberships return;
    // nothing is dropped
    pg.psql(&format!(
        "ALTER ROLE reporting LOGIN CONNECTION LIMIT 5; ALTER ROLE reporting RESET work_mem;
         REVOKE reporting FROM {w}; CREATE ROLE extra;
         ALTER TABLESPACE ts OWNER TO app;",
        w = sql_ident(weird)
    ));
    let r = backup(&["restore", &globals], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    for line in [
        "updated role \"reporting\"",
        "updated role \"app\"",
        "updated role \"postgres\"",
        "updated tablespace \"ts\"",
    ] {
        assert!(r.stdout.contains(line), "{line}: {}", r.output());
    }
    assert!(!r.stdout.contains("created role"), "{}", r.output());
    assert_eq!(role_state(&pg, "reporting"), want_reporting);
    assert_eq!(role_state(&pg, weird), want_weird);
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'extra'"),
        "1"
    );
    assert_eq!(
        pg.psql("SELECT pg_get_userbyid(spcowner) FROM pg_tablespace WHERE spcname = 'ts'"),
        "reporting"
    );

    // into a fresh cluster (its own postgres and app, another password): the missing
    // roles and the tablespace are created, the others updated; the role the restore
    // connects as keeps its password
    pg.psql("DROP TABLESPACE ts"); // frees the directory for the fresh cluster
    let fresh = Postgres::start();
    fresh.psql("ALTER ROLE app SUPERUSER");
    let app_password = fresh.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'");
    let r = backup(&["restore", &globals, "--to", &fresh.url()], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    for line in [
        "created role \"reporting\"".to_string(),
        format!("created role {weird:?}"),
        "updated role \"app\"".to_string(),
        "updated role \"postgres\"".to_string(),
        "created tablespace \"ts\"".to_string(),
        "kept the password of role \"app\"".to_string(),
    ] {
        assert!(r.stdout.contains(&line), "{line}: {}", r.output());
    }
    assert_eq!(role_state(&fresh, "reporting"), want_reporting);
    assert_eq!(role_state(&fresh, weird), want_weird);
    assert_eq!(
        fresh.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'"),
        app_password
    );
    assert_eq!(
        fresh.psql("SELECT pg_get_userbyid(spcowner) FROM pg_tablespace WHERE spcname = 'ts'"),
        "reporting"
    );

    // a tablespace that cannot be created (its directory is in use): nothing changes
    let third = Postgres::start();
    third.psql("ALTER ROLE app SUPERUSER");
    let r = backup(&["restore", &globals, "--to", &third.url()], &env);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("tablespace \"ts\""), "{}", r.output());
    assert_eq!(
        third.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'reporting'"),
        "0"
    );
}

/// A manifest a later dockhand wrote (a newer `format`) is not half read: `list` skips
/// it and says why, and `restore latest` takes the newest backup this build reads. A
/// broken manifest is named too, never skipped in silence.
#[test]
fn a_manifest_of_a_newer_format_is_skipped_and_said_so() {
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 10);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let r = backup(&["now"], &[("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let manifest = files(dir.path())
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join(&manifest)).unwrap();
    // the same backup, as a later format would name a newer one
    let newer_name = "shop-20991231T000000Z";
    let newer = text
        .replace("\"format\": 1", "\"format\": 2")
        .replace(manifest.trim_end_matches(".manifest.json"), newer_name);
    assert!(newer.contains("\"format\": 2"), "{newer}");
    let data = files(dir.path())
        .into_iter()
        .find(|f| f.ends_with(".dump.zst"))
        .unwrap();
    std::fs::copy(
        dir.path().join(&data),
        dir.path()
            .join(data.replace(manifest.trim_end_matches(".manifest.json"), newer_name)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(format!("{newer_name}.manifest.json")),
        newer,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("shop-broken.manifest.json"),
        "{\"format\": 1",
    )
    .unwrap();
    let r = backup(&["list"], &[("BACKUP_DIR", d)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stdout.contains(newer_name), "{}", r.output());
    assert!(
        r.stderr.contains(&format!("{newer_name}.manifest.json: skipped: manifest format 2, newer than this backup reads (1)")),
        "{}",
        r.output()
    );
    assert!(
        r.stderr
            .contains("shop-broken.manifest.json: skipped: not valid JSON"),
        "{}",
        r.output()
    );
    pg.psql("CREATE DATABASE newer_copy OWNER app");
    let to = format!(
        "postgres://app:{}@127.0.0.1:{}/newer_copy",
        pg.password, pg.port
    );
    let r = backup(
        &["restore", "latest", "--to", to.as_str()],
        &[("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains(&format!(
            "restored {}",
            manifest.trim_end_matches(".manifest.json")
        )),
        "{}",
        r.output()
    );
}

/// Runs `backup ARGS` with stderr on a terminal (a pty); returns its exit code and
/// what the terminal showed.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = command(&bin("backup"), args, env);
    cmd.stderr(std::process::Stdio::from(pty.slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last writer (the child) has closed the terminal
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    });
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap())
}

/// A person running `backup now`, `verify` or `restore` at a terminal sees a progress
/// bar on it; with stderr piped (a log collector, the daemon) there is none, only the
/// log lines.
#[test]
fn a_terminal_shows_a_progress_bar_and_logs_never_do() {
    let pg = Postgres::start();
    seed(&pg, "shop", "orders", 2000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{}@127.0.0.1:{}/shop", pg.password, pg.port);
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let (code, shown) = on_a_terminal(&["now"], &env);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains(": dumped ["), "{shown}");
    let (code, shown) = on_a_terminal(&["verify", "latest"], &env);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains(": read [########################]") && shown.contains("(100%)"),
        "{shown}"
    );
    assert!(!shown.contains(&pg.password), "{shown}");
    // piped: no bar, no terminal controls
    let r = backup(&["verify", "latest"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains('['),
        "{}",
        r.output()
    );
}
