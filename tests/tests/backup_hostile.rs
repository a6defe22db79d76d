//! `backup` configured exactly as README.md and examples/ show it, and under hostile
//! input and faults: a password only in `PGPASSWORD_FILE`, secrets kept out of the
//! children's environment, damaged backups that must never be committed, stray
//! manifests, S3 unreachable, stalling or failing, names that collide, leftovers of
//! killed runs, a cancelled high-level zstd run, a cold start, the status before the
//! first success, and flags given to the wrong command. Each test failed before its fix.

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

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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
