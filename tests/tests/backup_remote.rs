//! `backup` end to end with everything real: PostgreSQL, an S3-compatible server (moto),
//! the `age` tool and PID namespaces. Round trips through S3 with encryption, restore
//! safety, retention with foreign files, the daemon across a database restart, and
//! faults: S3 unreachable, SIGTERM mid-upload, PostgreSQL stopped mid-dump, a full disk.

use dockhand_tests::env;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dockhand_tests::bins::bin;
use dockhand_tests::pg::Postgres;
use dockhand_tests::run::Run;
use dockhand_tests::s3::S3;
use dockhand_tests::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    dockhand_tests::run::command(&bin("backup"), args, &env)
}

fn backup(args: &[&str], env: &[(String, String)]) -> Run {
    dockhand_tests::run::run(command(args, env), Duration::from_secs(600))
}

fn spawn(args: &[&str], env: &[(String, String)]) -> Child {
    command(args, env).spawn().unwrap()
}

fn finish(child: Child) -> Run {
    dockhand_tests::run::finish(child, Duration::from_secs(600))
}

/// Keys in the bucket (one page is enough for these tests).
fn keys(s3: &S3, bucket: &str) -> Vec<String> {
    let (status, body) = s3.request("GET", &format!("/{bucket}?list-type=2"), b"");
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(String::from)
        .collect()
}

/// Multipart uploads started and neither completed nor aborted.
fn incomplete_uploads(s3: &S3, bucket: &str) -> usize {
    let (status, body) = s3.request("GET", &format!("/{bucket}?uploads"), b"");
    assert_eq!(status, 200, "{body}");
    body.matches("<UploadId>").count()
}

fn object(s3: &S3, bucket: &str, key: &str) -> Vec<u8> {
    let (status, body) = s3.request("GET", &format!("/{bucket}/{key}"), b"");
    assert_eq!(status, 200);
    body.into_bytes()
}

/// Schemas, an enum, jsonb, arrays, bytea, a large object, and `mb` megabytes of
/// incompressible-ish rows in `bulk.rows`.
fn seed(pg: &Postgres, mb: u32) {
    pg.psql("ALTER ROLE app CREATEDB");
    pg.psql_db(
        "app",
        &format!(
            "CREATE SCHEMA shop AUTHORIZATION app; CREATE SCHEMA bulk AUTHORIZATION app;
             SET ROLE app;
             CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
             CREATE TABLE shop.orders (id bigserial PRIMARY KEY, status shop.status, total numeric(12,2),
                 tags text[], meta jsonb, blob bytea);
             INSERT INTO shop.orders (status, total, tags, meta, blob)
                 SELECT (ARRAY['new','paid','shipped'])[1 + i % 3]::shop.status, i * 1.25, ARRAY['t' || i % 7],
                        jsonb_build_object('i', i), sha256(i::text::bytea)
                 FROM generate_series(1, 20000) i;
             SELECT lo_from_bytea(4242, convert_to(repeat('large object ', 10000), 'UTF8'));
             CREATE TABLE bulk.rows (id int, a text, b text);
             INSERT INTO bulk.rows SELECT i, md5(i::text) || md5((i * 7)::text), md5((i * 13)::text)
                 FROM generate_series(1, {}) i;",
            mb * 1024 * 1024 / 130
        ),
    );
}

/// Row counts and order-independent checksums of every table, and the large object.
fn fingerprint(pg: &Postgres, db: &str) -> String {
    pg.psql_db(
        db,
        "SELECT (SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM shop.orders t) || ' ' ||
                (SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM bulk.rows t) || ' ' ||
                (SELECT md5(lo_get(4242)))",
    )
}

fn age_keys(dir: &Path) -> (String, std::path::PathBuf) {
    let key = dir.join("key.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (scripts/setup installs age)");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&key).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (public, key)
}

fn pg_env(pg: &Postgres) -> Vec<(String, String)> {
    env(&[("DIRECT_URL", &pg.url())])
}

#[test]
fn an_encrypted_backup_in_s3_and_locally_restores_to_the_same_data() {
    let pg = Postgres::start();
    seed(&pg, 200);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let (public, key) = age_keys(dir.path());
    let folder = dir.path().join("backups");
    let mut e = pg_env(&pg);
    e.extend(s3.backup_env(&bucket, "nightly/app"));
    // The S3 secret as a Docker secret file.
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, format!("{}\n", s3.secret_key)).unwrap();
    e.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    e.extend(env(&[
        ("AWS_SECRET_ACCESS_KEY_FILE", secret.to_str().unwrap()),
        ("BACKUP_DIR", folder.to_str().unwrap()),
        ("BACKUP_AGE_RECIPIENT", &public),
        ("BACKUP_S3_PART_SIZE", "5MiB"),
    ]));
    let r = backup(&["now"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    let list = backup(&["list", "--remote"], &e);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let row = list.stdout.lines().nth(1).unwrap().to_string();
    assert!(row.contains(" both "), "{}", list.stdout);
    let name = row.split_whitespace().next().unwrap().to_string();
    let file = format!("{name}.dump.zst.age");
    let k = keys(s3, &bucket);
    assert!(
        k.contains(&format!("nightly/app/{file}"))
            && k.contains(&format!("nightly/app/{name}.manifest.json")),
        "{k:?}"
    );
    // Encrypted at rest: the real age tool decrypts it with the identity, zstd
    // decompresses it, and pg_restore reads the archive.
    let local = folder.join(&file);
    assert!(std::fs::read(&local)
        .unwrap()
        .starts_with(b"age-encryption.org/v1"));
    let toc = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -dc | {}/pg_restore --list | grep -c 'TABLE DATA'",
            key.display(),
            local.display(),
            dockhand_tests::pg::bin_dir().display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&toc.stdout).trim(), "2");

    // Without the identity there is no restore; with it, the S3 copy restores into a
    // new database with the same data.
    let r = backup(&["restore", "latest", "--from", "s3"], &e);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("BACKUP_AGE_IDENTITY"), "{}", r.stderr);
    let mut with_key = e.clone();
    with_key.push((
        "BACKUP_AGE_IDENTITY_FILE".into(),
        key.to_str().unwrap().into(),
    ));
    let r = backup(&["restore", "latest", "--from", "s3"], &with_key);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let restored = r.stdout.trim().to_string();
    assert!(restored.starts_with("app_restore_"), "{}", r.stdout);
    assert!(
        r.stderr.contains("tables") && r.stderr.contains("rows"),
        "{}",
        r.stderr
    );
    assert_eq!(fingerprint(&pg, &restored), fingerprint(&pg, "app"));

    // Verify reads the S3 copy end to end and records it in both manifests.
    let r = backup(&["verify", "latest", "--from", "s3"], &with_key);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let manifest = String::from_utf8(object(
        s3,
        &bucket,
        &format!("nightly/app/{name}.manifest.json"),
    ))
    .unwrap();
    assert!(manifest.contains("\"verified\": 1"), "{manifest}");
    assert!(!manifest.contains(&pg.password) && manifest.contains("\"encryption\": \"age\""));
    assert_eq!(incomplete_uploads(s3, &bucket), 0);
}

#[test]
fn restore_never_overwrites_without_confirmation() {
    let pg = Postgres::start();
    seed(&pg, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut e = pg_env(&pg);
    e.extend(env(&[
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_COMPRESSION", "gzip"),
    ]));
    assert_eq!(backup(&["now"], &e).code, Some(0));
    let original = fingerprint(&pg, "app");
    // The backup is a plain gzip stream of a custom-format archive.
    let gz = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().ends_with(".dump.gz"))
        .unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -t {}", gz.path().display()))
        .status()
        .unwrap();
    assert!(st.success());

    // Change the live database, then try to restore over it.
    pg.psql_db("app", "DELETE FROM shop.orders WHERE id % 2 = 0");
    let changed = fingerprint(&pg, "app");
    let to = pg.url();
    let r = backup(&["restore", "latest", "--to", &to], &e);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("not empty") && r.stderr.contains("--clean"),
        "{}",
        r.stderr
    );
    let r = backup(&["restore", "latest", "--to", &to, "--clean"], &e);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(
        fingerprint(&pg, "app"),
        changed,
        "refused restores changed nothing"
    );

    // A restore that fails half way (a table outside the backup blocks dropping its
    // schema) leaves the target as it was: one transaction.
    pg.psql_db("app", "CREATE TABLE shop.blocker (x int)");
    let r = backup(&["restore", "latest", "--to", &to, "--clean", "--yes"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("pg_restore failed") && r.stderr.contains("blocker"),
        "{}",
        r.stderr
    );
    assert_eq!(fingerprint(&pg, "app"), changed);
    pg.psql_db("app", "DROP TABLE shop.blocker");

    let r = backup(&["restore", "latest", "--to", &to, "--clean", "--yes"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(fingerprint(&pg, "app"), original);
    assert!(!format!("{}{}", r.stdout, r.stderr).contains(&pg.password));
}

/// Copies a real backup under another name, as if made `days` ago.
fn forge(dir: &Path, name: &str, new_name: &str, days: i64, verified: bool) {
    let m = std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap();
    let started: i64 = m
        .split("\"started\": ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let at = started - days * 86_400;
    let mut forged = m.replace(name, new_name).replace(
        &format!("\"started\": {started}"),
        &format!("\"started\": {at}"),
    );
    if verified {
        forged = forged.replace("\"verified\": null", &format!("\"verified\": {at}"));
    }
    std::fs::write(dir.join(format!("{new_name}.manifest.json")), forged).unwrap();
    std::fs::copy(
        dir.join(format!("{name}.dump.zst")),
        dir.join(format!("{new_name}.dump.zst")),
    )
    .unwrap();
}

#[test]
fn retention_deletes_only_its_own_old_backups_locally_and_in_s3() {
    let pg = Postgres::start();
    seed(&pg, 1);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut e = pg_env(&pg);
    e.extend(env(&[("BACKUP_DIR", d.to_str().unwrap())]));
    assert_eq!(backup(&["now"], &e).code, Some(0));
    let name = backup(&["list"], &e)
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // 12 older backups, one a day; the one from 9 days ago was verified.
    for days in 1..=12 {
        forge(d, &name, &format!("app-old{days:02}"), days, days == 9);
    }
    // Foreign files: a dump without a manifest, notes, a manifest pointing outside.
    std::fs::write(d.join("app-19990101T000000Z.dump.zst"), b"not ours").unwrap();
    std::fs::write(d.join("notes.txt"), b"keep me").unwrap();
    std::fs::write(
        d.join("evil.manifest.json"),
        std::fs::read_to_string(d.join("app-old12.manifest.json"))
            .unwrap()
            .replace("app-old12.dump.zst", "../outside.txt"),
    )
    .unwrap();
    // The same set in S3, plus a foreign object under the prefix and one beside it.
    for f in std::fs::read_dir(d).unwrap().flatten() {
        let body = std::fs::read(f.path()).unwrap();
        let (st, _) = s3.request(
            "PUT",
            &format!("/{bucket}/p/{}", f.file_name().to_string_lossy()),
            &body,
        );
        assert_eq!(st, 200);
    }
    s3.request(
        "PUT",
        &format!("/{bucket}/elsewhere/app-old01.dump.zst"),
        b"x",
    );
    e.extend(s3.backup_env(&bucket, "p"));
    e.extend(env(&[
        ("BACKUP_KEEP_LAST", "2"),
        ("BACKUP_KEEP_DAILY", "4"),
    ]));

    let before = std::fs::read_dir(d).unwrap().count();
    let dry = backup(&["prune", "--dry-run"], &e);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert_eq!(
        dry.stdout.matches("would delete").count(),
        8,
        "{}",
        dry.stdout
    );
    assert_eq!(
        std::fs::read_dir(d).unwrap().count(),
        before,
        "dry run deleted something"
    );
    assert_eq!(
        keys(s3, &bucket).len(),
        before + 1,
        "dry run deleted something in S3"
    );

    let r = backup(&["prune"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let listed = backup(&["list", "--remote"], &e).stdout;
    let kept: Vec<&str> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    // The newest 2, the newest of each of the last 4 days, the verified one.
    for want in [name.as_str(), "app-old01", "app-old02", "app-old03"] {
        assert!(kept.contains(&want), "{want}: {listed}");
    }
    assert!(
        kept.contains(&"app-old09"),
        "the newest verified backup must stay: {listed}"
    );
    assert_eq!(kept.len(), 5, "{listed}");
    assert!(
        listed.lines().skip(1).all(|l| l.contains(" both ")),
        "{listed}"
    );
    for foreign in [
        "app-19990101T000000Z.dump.zst",
        "notes.txt",
        "evil.manifest.json",
    ] {
        assert!(d.join(foreign).exists(), "{foreign} was deleted");
    }
    let k = keys(s3, &bucket);
    for foreign in [
        "p/app-19990101T000000Z.dump.zst",
        "p/notes.txt",
        "elsewhere/app-old01.dump.zst",
    ] {
        assert!(
            k.iter().any(|x| x == foreign),
            "{foreign} was deleted from S3: {k:?}"
        );
    }
    assert_eq!(
        k.iter()
            .filter(|x| x.starts_with("p/") && x.ends_with(".dump.zst"))
            .count(),
        6,
        "{k:?}"
    );
}

#[test]
fn s3_down_keeps_the_local_copy_and_reports_the_failure() {
    let pg = Postgres::start();
    seed(&pg, 1);
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let folder = dir.path().join("b");
    let mut e = pg_env(&pg);
    let s3 = S3::shared();
    e.extend(s3.backup_env("nobucket", ""));
    e.retain(|(k, _)| k != "BACKUP_S3_ENDPOINT");
    let closed = format!("http://127.0.0.1:{}", dockhand_tests::free_port());
    e.extend(env(&[
        ("BACKUP_S3_ENDPOINT", &closed),
        ("BACKUP_DIR", folder.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ]));
    let r = backup(&["now"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://nobucket/") && r.stderr.contains("is kept"),
        "{}",
        r.stderr
    );
    let listed = backup(&["list"], &e).stdout;
    assert_eq!(
        listed.lines().count(),
        2,
        "the local copy must be listed: {listed}"
    );
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(
        text.contains("last_failure") && !text.contains("last_success"),
        "{text}"
    );
}

#[test]
fn sigterm_mid_upload_aborts_the_multipart_upload() {
    let pg = Postgres::start();
    seed(&pg, 60);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = pg_env(&pg);
    e.extend(s3.backup_env(&bucket, "x"));
    e.extend(env(&[
        ("BACKUP_S3_PART_SIZE", "5MiB"),
        ("BACKUP_ZSTD_LEVEL", "1"),
    ]));
    let child = spawn(&["now"], &e);
    let started = wait_until(Duration::from_secs(60), || {
        incomplete_uploads(s3, &bucket) > 0
    });
    assert!(started, "no upload started");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(143), "{}", r.stderr);
    assert_eq!(
        incomplete_uploads(s3, &bucket),
        0,
        "an incomplete upload was left"
    );
    assert!(keys(s3, &bucket).is_empty(), "{:?}", keys(s3, &bucket));
}

#[test]
fn postgres_stopping_mid_dump_is_a_recorded_failure_and_the_next_run_succeeds() {
    let mut pg = Postgres::start();
    seed(&pg, 120);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("b");
    let status = dir.path().join("status.json");
    let mut e = pg_env(&pg);
    e.extend(env(&[
        ("BACKUP_DIR", folder.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_ZSTD_LEVEL", "6"),
    ]));
    let child = spawn(&["now"], &e);
    let writing = wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&folder)
            .map(|d| {
                d.flatten().any(|f| {
                    f.file_name().to_string_lossy().ends_with(".partial")
                        && f.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false)
                })
            })
            .unwrap_or(false)
    });
    assert!(writing, "the dump did not start");
    pg.stop_server();
    let r = finish(child);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("pg_dump failed"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().count(),
        0,
        "something partial is visible"
    );
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(text.contains("pg_dump failed"), "{text}");
    pg.start_server();
    let mut e = pg_env(&pg);
    e.extend(env(&[("BACKUP_DIR", folder.to_str().unwrap())]));
    let r = backup(&["now"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn a_full_disk_fails_cleanly() {
    let pg = Postgres::start();
    seed(&pg, 20);
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted
        && dockhand_tests::skip::missing(
            dockhand_tests::skip::Need::Root,
            Some("mount -t tmpfs failed (it needs root)".into()),
        )
    {
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let status = tempfile::NamedTempFile::new().unwrap();
    let mut e = pg_env(&pg);
    e.extend(env(&[
        ("BACKUP_DIR", mnt.path().to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.path().to_str().unwrap()),
    ]));
    let r = backup(&["now"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("no space left on device"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(mnt.path()).unwrap().count(),
        0,
        "the partial file was left"
    );
    let text = std::fs::read_to_string(status.path()).unwrap();
    assert!(text.contains("no space left"), "{text}");
}

#[test]
fn all_databases_and_the_globals() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE second OWNER app");
    pg.psql("ALTER ROLE app SUPERUSER");
    pg.psql("CREATE ROLE reporting NOLOGIN");
    pg.psql_db("second", "CREATE TABLE t AS SELECT 1 AS x");
    let dir = tempfile::tempdir().unwrap();
    let mut e = pg_env(&pg);
    e.extend(env(&[
        ("BACKUP_DIR", dir.path().to_str().unwrap()),
        ("BACKUP_DATABASES", "all"),
        ("BACKUP_GLOBALS", "true"),
    ]));
    let r = backup(&["now"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let listed = backup(&["list"], &e).stdout;
    for want in [" app ", " second ", " postgres ", "(globals)"] {
        assert!(listed.contains(want), "{want}: {listed}");
    }
    assert!(!listed.contains("template"), "{listed}");
    let globals = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().ends_with(".sql.zst"))
        .unwrap();
    let sql = Command::new("zstd")
        .arg("-dc")
        .arg(globals.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sql.stdout).contains("CREATE ROLE reporting"));
}

fn status_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn the_daemon_runs_on_schedule_survives_a_database_restart_and_stops_cleanly() {
    let mut pg = Postgres::start();
    seed(&pg, 1);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("b");
    let status = dir.path().join("status.json");
    let metrics = dir.path().join("metrics.prom");
    let ping = dockhand_tests::http::HttpServer::start(dockhand_tests::http::Behaviour::Fixed {
        status: 200,
        body: "OK".into(),
    });
    let mut e = pg_env(&pg);
    e.extend(env(&[
        ("BACKUP_DIR", folder.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "*/2 * * * * *"),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_KEEP_LAST", "2"),
        // a run waits this long for the stopped database, then fails and is recorded
        ("BACKUP_WAIT_TIMEOUT", "1s"),
        (
            "BACKUP_PING_URL",
            &format!("http://127.0.0.1:{}/ping/abc", ping.port),
        ),
    ]));
    let child = spawn(&[], &e);
    let count = || {
        std::fs::read_dir(&folder)
            .map(|d| {
                d.flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".manifest.json"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || count() >= 2),
        "no scheduled backups"
    );
    pg.stop_server();
    assert!(
        wait_until(Duration::from_secs(30), || status_text(&status)
            .contains("last_failure")),
        "the failed run was not recorded"
    );
    pg.start_server();
    let failed_at = std::fs::metadata(&status).unwrap().modified().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::fs::metadata(&status).unwrap().modified().unwrap() > failed_at
        }),
        "no success after the database came back"
    );
    // Retention ran after each success: never more than 2 kept.
    assert!(count() <= 2, "{}", count());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("backup daemon stopped"), "{}", r.stderr);
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        m.contains("dockhand_backup_runs_total{result=\"failure\"}"),
        "{m}"
    );
    let reqs = ping.requests().join("\n");
    for path in [
        "GET /ping/abc/start ",
        "GET /ping/abc ",
        "GET /ping/abc/fail ",
    ] {
        assert!(reqs.contains(path), "{path} was not pinged: {reqs}");
    }
    assert!(!status_text(&status).contains(&pg.password));
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin("backup"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DIRECT_URL", pg.url())
        .env("BACKUP_DIR", dir.path())
        .env("BACKUP_SCHEDULE", "@yearly")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let init = dockhand_tests::pid1::init_pid_of(child.id());
    // An orphan: its parent (nsenter's shell) exits at once; it is reparented to PID 1.
    let st = Command::new("nsenter")
        .args([
            "-t",
            &init.to_string(),
            "-p",
            "--",
            "sh",
            "-c",
            "sleep 0.3 & exit 0",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
            .filter(|s| {
                let after = s.rsplit(") ").next().unwrap_or("");
                let f: Vec<&str> = after.split(' ').collect();
                f.first() == Some(&"Z") && f.get(1) == Some(&init.to_string().as_str())
            })
            .count()
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(zombies(), 0, "an orphan was left a zombie");
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("backup daemon stopped"), "{}", r.stderr);
}

#[test]
fn list_remote_reads_every_page_of_a_large_prefix() {
    let pg = Postgres::start();
    let s3 = S3::shared();
    let bucket = s3.bucket();
    // 1,001 foreign objects that sort before the backup: it lands on the second page.
    for i in 0..1001 {
        let (st, _) = s3.request("PUT", &format!("/{bucket}/p/0-foreign-{i:04}.txt"), b"x");
        assert_eq!(st, 200);
    }
    let mut e = pg_env(&pg);
    e.extend(s3.backup_env(&bucket, "elsewhere"));
    // Settings as flags override the environment.
    let r = backup(&["now", "--s3-prefix", "p"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let listed = backup(&["list", "--remote", "--s3-prefix", "p/"], &e);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: Vec<&str> = listed.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", listed.stdout);
    assert!(
        rows[0].starts_with("app-") && rows[0].contains(" s3 "),
        "{}",
        listed.stdout
    );
}

fn databases(pg: &Postgres) -> Vec<String> {
    pg.psql("SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(String::from)
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn restore_jobs_restores_the_same_rows_and_never_leaves_its_temporary_file() {
    let pg = Postgres::start();
    seed(&pg, 40);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (public, key) = age_keys(dir.path());
    let want = fingerprint(&pg, "app");
    // a plain backup in the folder, and an encrypted one in the folder and in S3
    let plain = dir.path().join("plain");
    let mut p = pg_env(&pg);
    p.extend(env(&[
        ("BACKUP_DIR", plain.to_str().unwrap()),
        ("BACKUP_TMP_DIR", tmp.to_str().unwrap()),
    ]));
    assert_eq!(backup(&["now"], &p).code, Some(0));
    let mut e = pg_env(&pg);
    e.extend(s3.backup_env(&bucket, "jobs"));
    e.extend(env(&[
        ("BACKUP_DIR", dir.path().join("enc").to_str().unwrap()),
        ("BACKUP_AGE_RECIPIENT", &public),
        ("BACKUP_AGE_IDENTITY_FILE", key.to_str().unwrap()),
        ("BACKUP_TMP_DIR", tmp.to_str().unwrap()),
    ]));
    assert_eq!(backup(&["now"], &e).code, Some(0));

    for (env, args) in [
        (&p, &["restore", "latest", "--jobs", "1"][..]),
        (&p, &["restore", "latest", "--jobs", "3"][..]),
        (
            &e,
            &["restore", "latest", "--jobs", "3", "--from", "local"][..],
        ),
        (
            &e,
            &["restore", "latest", "--jobs", "2", "--from", "s3"][..],
        ),
    ] {
        let r = backup(args, env);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.output());
        let parallel = !args.contains(&"1");
        assert_eq!(
            r.stderr.contains("pg_restore with"),
            parallel,
            "{args:?}: {}",
            r.stderr
        );
        // each job seeks to its table: the decoded archive's data offsets are filled in
        assert!(!r.stderr.contains("offsets not filled in"), "{}", r.stderr);
        assert_eq!(fingerprint(&pg, r.stdout.trim()), want, "{args:?}");
        assert!(
            dir_entries(&tmp).is_empty(),
            "{args:?}: {:?}",
            dir_entries(&tmp)
        );
    }

    // no room (here: no such folder): streamed with one job, and said so
    let mut no_room = p.clone();
    no_room.push(("BACKUP_TMP_DIR".into(), "/nonexistent/dockhand".into()));
    let r = backup(&["restore", "latest", "--jobs", "2"], &no_room);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("restoring with one job"), "{}", r.stderr);
    assert_eq!(fingerprint(&pg, r.stdout.trim()), want);

    // SIGTERM while the decoded file exists: no file, no database left
    let before = databases(&pg);
    let child = spawn(&["restore", "latest", "--jobs", "2"], &p);
    assert!(
        wait_until(Duration::from_secs(120), || !dir_entries(&tmp).is_empty()),
        "no temporary file appeared"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let r = finish(child);
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert!(dir_entries(&tmp).is_empty(), "{:?}", dir_entries(&tmp));
    assert_eq!(databases(&pg), before);

    // a damaged backup: refused before pg_restore, no file, no database
    let file = std::fs::read_dir(&plain)
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().ends_with(".dump.zst"))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let r = backup(&["restore", "latest", "--jobs", "2"], &p);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("checksum mismatch") || r.stderr.contains("cannot read"),
        "{}",
        r.stderr
    );
    assert!(dir_entries(&tmp).is_empty(), "{:?}", dir_entries(&tmp));
    assert_eq!(databases(&pg), before);
}
