//! `backup` end to end against a real PostgreSQL: a streamed, checksummed, atomically
//! written local backup that restores to the same data; verification that catches
//! damage; failures that leave nothing behind and are recorded in the status file
//! (whose age `healthcheck` reads); pg_dump version checks; no password anywhere.

use std::path::Path;
use std::process::Command;

use dockhand_tests::bins::bin;
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::run::Run;

fn backup(args: &[&str], env: &[(&str, &str)]) -> Run {
    let cmd = dockhand_tests::run::command(&bin("backup"), args, env);
    dockhand_tests::run::run(cmd, std::time::Duration::from_secs(600))
}

/// Every file in `dir`, with its content, as one string (for leak checks).
fn everything_in(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{}\n{}",
                e.path().display(),
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default())
            )
        })
        .collect()
}

fn seed(pg: &Postgres) {
    pg.psql_db(
        "app",
        "CREATE SCHEMA shop AUTHORIZATION app; CREATE SCHEMA audit AUTHORIZATION app;
         SET ROLE app;
         CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
         CREATE TABLE shop.orders (id bigserial PRIMARY KEY, status shop.status, total numeric(12,2),
             tags text[], meta jsonb, at timestamptz DEFAULT now());
         INSERT INTO shop.orders (status, total, tags, meta)
             SELECT (ARRAY['new','paid','shipped'])[1 + i % 3]::shop.status, i * 1.25, ARRAY['t' || i % 7],
                    jsonb_build_object('i', i, 'note', repeat('x', i % 50))
             FROM generate_series(1, 50000) i;
         CREATE TABLE audit.events (id int, payload bytea);
         INSERT INTO audit.events SELECT i, sha256(i::text::bytea) FROM generate_series(1, 20000) i;
         SELECT lo_from_bytea(4242, convert_to(repeat('large object ', 10000), 'UTF8'));",
    );
}

/// A checksum of every table's rows and of the large objects, for comparing databases.
fn fingerprint(pg: &Postgres, db: &str) -> String {
    pg.psql_db(
        db,
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM shop.orders t) || ' ' ||
                (SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM audit.events t) || ' ' ||
                (SELECT md5(lo_get(4242)))",
    )
}

#[test]
fn a_local_backup_restores_to_the_same_data() {
    let pg = Postgres::start();
    seed(&pg);
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let env = [("DIRECT_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = dir.path().to_str().unwrap();
    let r = backup(
        &["now", "--dir", d, "--status-file", status.to_str().unwrap()],
        &env,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    let list = backup(&["list", "--dir", d], &[]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let name = list
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(name.starts_with("app-"), "{}", list.stdout);
    let file = dir.path().join(format!("{name}.dump.zst"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !everything_in(dir.path()).contains(".partial"),
        "a temporary file was left"
    );

    let r = backup(&["verify", "latest", "--dir", d], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let listed = backup(&["list", "--dir", d], &[]).stdout;
    assert!(
        // VERIFIED, then DRILLED (not drilled: " no" at the end)
        !listed.lines().nth(1).unwrap().contains(" no "),
        "verify was not recorded: {listed}"
    );

    // Restore with pg_restore into a new database; the data must be the same.
    pg.psql("CREATE DATABASE restored OWNER app");
    let restore = format!(
        "zstd -dc {} | {}/pg_restore --no-owner -h {} -p {} -U postgres -d restored",
        file.display(),
        bin_dir().display(),
        pg.dir.path().display(),
        pg.port
    );
    let st = Command::new("sh").arg("-c").arg(&restore).status().unwrap();
    assert!(st.success(), "pg_restore failed");
    assert_eq!(fingerprint(&pg, "restored"), fingerprint(&pg, "app"));

    // The status file names the success; healthcheck finds it fresh.
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(text.contains(&name), "{text}");
    let hc = Command::new(bin("healthcheck"))
        .arg(format!("file://{}?max-age=1h", status.display()))
        .status()
        .unwrap();
    assert!(hc.success());
    assert!(
        !everything_in(dir.path()).contains(&pg.password),
        "a password reached the folder"
    );
}

#[test]
fn verify_catches_a_damaged_or_truncated_backup() {
    let pg = Postgres::start();
    seed(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(
        backup(&["now", "--dir", d], &[("DIRECT_URL", &pg.url())]).code,
        Some(0)
    );
    let manifest_path = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let file = manifest_path
        .to_string_lossy()
        .replace(".manifest.json", ".dump.zst");
    let data = std::fs::read(&file).unwrap();
    std::fs::write(&file, &data[..data.len() / 2]).unwrap();
    let r = backup(&["verify", "latest", "--dir", d], &[]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);

    // Even with a manifest that matches the truncated file, the full read fails.
    let sum = {
        let out = Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let old = manifest
        .split("\"sha256\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let size = format!("\"size\": {}", data.len());
    let forged = manifest
        .replace(&old, &sum)
        .replace(&size, &format!("\"size\": {}", data.len() / 2));
    std::fs::write(&manifest_path, forged).unwrap();
    let r = backup(&["verify", "latest", "--dir", d], &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot read the backup")
            || r.stderr.contains("pg_restore could not read it"),
        "{}",
        r.stderr
    );
}

#[test]
fn failures_leave_nothing_and_are_recorded_without_passwords() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let status = dir.path().join("status.json");
    let s = status.to_str().unwrap();

    // Wrong password: no backup, failure recorded, the file's age says "no success".
    let wrong = pg.url_with("app", "not-the-password", "app");
    let r = backup(
        &["now", "--dir", d, "--status-file", s],
        &[("DIRECT_URL", &wrong)],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not-the-password"));
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(
        text.contains("last_failure") && !text.contains("not-the-password"),
        "{text}"
    );
    let hc = Command::new(bin("healthcheck"))
        .arg(format!("file://{s}?max-age=26h"))
        .output()
        .unwrap();
    assert!(
        !hc.status.success(),
        "a sidecar that never succeeded must look stale"
    );

    // pg_dump itself fails (a table app may not read): nothing partial is visible.
    pg.psql_db(
        "app",
        "CREATE TABLE secret_table (x int); REVOKE ALL ON secret_table FROM PUBLIC",
    );
    let r = backup(
        &["now", "--dir", d, "--status-file", s],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("pg_dump failed") && r.stderr.contains("permission denied"),
        "{}",
        r.stderr
    );
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        vec!["status.json".to_string()],
        "only the status file may exist"
    );
    assert_eq!(
        backup(&["list", "--dir", d], &[]).stdout.lines().count(),
        1,
        "no backup listed"
    );
    assert!(!everything_in(dir.path()).contains(&pg.password));
}

#[test]
fn pgbouncer_in_transaction_mode_is_refused_before_anything_runs() {
    let pg = Postgres::start();
    let bouncer = dockhand_tests::pgbouncer::PgBouncer::start(&pg);
    let dir = tempfile::tempdir().unwrap();
    let r = backup(
        &["now", "--dir", dir.path().to_str().unwrap()],
        &[("DIRECT_URL", &bouncer.url())],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("transaction pooler") && r.stderr.contains("DIRECT_URL"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // No advisory lock was left on a pooled server connection: the direct URL works.
    let r = backup(
        &["now", "--dir", dir.path().to_str().unwrap()],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_clearly() {
    let pg = Postgres::start();
    let fake = tempfile::tempdir().unwrap();
    let script = fake.path().join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = backup(
        &["now", "--dir", dir.path().to_str().unwrap()],
        &[
            ("DIRECT_URL", &pg.url()),
            ("BACKUP_PG_BIN", fake.path().to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(1));
    let major = pg.psql("SHOW server_version_num").parse::<u32>().unwrap() / 10000;
    assert!(
        r.stderr
            .contains(&format!("server is {major}, pg_dump is 9 ("))
            && r.stderr
                .contains(&format!("install postgresql-client-{major}")),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_input_exits_2() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["frobnicate"], &[], "unknown command"),
        (&["now"], &[], "set BACKUP_DIR"),
        (
            &["now", "--dir", "/tmp/x", "--zstd-level", "99"],
            &[],
            "from 1 to 19",
        ),
        (
            &["now", "--dir", "/tmp/x"],
            &[("BACKUP_ZSTD_THREADS", "many")],
            "from 0 to 256",
        ),
        (&["verify", "--dir", "/tmp/x"], &[], "needs a backup name"),
        (
            &["daemon", "--dir", "/tmp/x"],
            &[
                ("DIRECT_URL", "postgres://a@h/db"),
                ("BACKUP_SCHEDULE", "0 25 * * *"),
            ],
            "BACKUP_SCHEDULE",
        ),
        (
            &["now", "--dir", "/tmp/x"],
            &[("TZ", "Mars/Olympus")],
            "Europe/Berlin",
        ),
        (
            &["now", "--dir", "/tmp/x"],
            &[("BACKUP_AGE_RECIPIENT", "age1notakey")],
            "age-keygen",
        ),
        (
            &["now"],
            &[("BACKUP_S3_BUCKET", "b"), ("BACKUP_S3_ENDPOINT", "ftp://x")],
            "BACKUP_S3_ENDPOINT",
        ),
        (
            &["now", "--dir", "/tmp/x"],
            &[("BACKUP_COMPRESSION", "lz4")],
            "zstd",
        ),
        (
            &["now", "--dir", "/tmp/x"],
            &[("BACKUP_KEEP_LAST", "0")],
            "BACKUP_KEEP_LAST",
        ),
        (&["now", "--dir", "/tmp/x"], &[], "set DIRECT_URL"),
        (
            &["restore", "latest", "--from", "ftp"],
            &[],
            "use local or s3",
        ),
        (&["restore", "latest", "--dir", "/tmp/x"], &[], "--to"),
        (
            &["restore", "latest", "--dir", "/tmp/x", "--to", "nonsense"],
            &[],
            "--to: invalid URL",
        ),
        (
            &["prune", "--dir", "/tmp/x", "--keep-daily", "soon"],
            &[],
            "BACKUP_KEEP_DAILY",
        ),
        (
            &["now", "--dir", "/tmp/x", "--compression", "brotli"],
            &[],
            "gzip",
        ),
        (&["list"], &[], "BACKUP_DIR"),
        (
            &["daemon", "--dir", "/tmp/x", "--tz", "Mars/Olympus"],
            &[],
            "Europe/Berlin",
        ),
        (
            &["now", "--dir", "/tmp/x", "--s3-part-size", "1KiB"],
            &[("BACKUP_S3_BUCKET", "b")],
            "5MiB",
        ),
        (
            &[
                "now",
                "--dir",
                "/tmp/x",
                "--direct-url",
                "postgres://a:b@h/d",
            ],
            &[],
            "invalid option",
        ),
        (&["--bogus"], &[], "invalid option"),
    ];
    for (args, env, want) in cases {
        let r = backup(args, env);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    for (url, code) in [
        ("postgres://u:topsecret@h:0/db", 2),
        ("postgres://u:topsecret@127.0.0.1:1/db", 1),
    ] {
        let r = backup(&["now", "--dir", "/tmp/x"], &[("DIRECT_URL", url)]);
        assert_eq!(r.code, Some(code), "{url}: {}", r.stderr);
        assert!(!r.stderr.contains("topsecret"), "{}", r.stderr);
    }
}

/// `restore --jobs` fills in the data offsets of the decoded archive, which pg_dump
/// cannot write into a pipe: the oracle is pg_dump itself, which writes them when its
/// output is a file. Both dumps of the same unchanged database must then be the same
/// bytes past the header (which holds the time of the dump), offsets included.
#[test]
fn the_offsets_filled_into_a_piped_archive_are_the_ones_pg_dump_writes() {
    use dockhand::backup::pgarchive::{fill_offsets, read, OFFSET_NOT_SET, OFFSET_SET};
    let pg = Postgres::start();
    seed(&pg);
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE public.empty (id int); CREATE TABLE public.small AS SELECT 1 AS id;
         SELECT lo_from_bytea(4243, '\\x00ff'::bytea);",
    );
    let dir = tempfile::tempdir().unwrap();
    let (seek, pipe) = (dir.path().join("seek.dump"), dir.path().join("pipe.dump"));
    let pg_dump = bin_dir().join("pg_dump");
    let dump = |shell: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(shell)
            .env("DUMP", &pg_dump)
            .env("URL", pg.url())
            .env("SEEK", &seek)
            .env("PIPE", &pipe)
            .status()
            .unwrap();
        assert!(st.success(), "{shell}");
    };
    dump(r#""$DUMP" -Fc -Z0 -f "$SEEK" "$URL""#);
    dump(r#""$DUMP" -Fc -Z0 "$URL" | cat > "$PIPE""#);
    let before = read(&pipe).unwrap();
    let with_data: Vec<_> = before
        .entries
        .iter()
        .filter(|e| e.flag == OFFSET_NOT_SET)
        .collect();
    assert!(with_data.len() >= 5, "tables and large objects: {before:?}");
    let filled = fill_offsets(&pipe).unwrap();
    assert_eq!(filled.set, with_data.len());
    let (ours, theirs) = (read(&pipe).unwrap(), read(&seek).unwrap());
    assert_eq!(ours.entries, theirs.entries);
    assert!(ours.entries.iter().any(|e| e.flag == OFFSET_SET));
    // past the header's time fields, byte for byte
    let (a, b) = (std::fs::read(&pipe).unwrap(), std::fs::read(&seek).unwrap());
    assert_eq!(a.len(), b.len());
    // magic, versions, sizes, format (11 bytes), compression (1 byte from archive
    // version 1.15, a 5-byte integer before), 7 time fields of 5 bytes
    let header = 11 + 5 + 7 * 5;
    assert!(
        a[header..] == b[header..],
        "the archives differ past the header"
    );
    // and pg_restore -j restores it
    pg.psql("CREATE DATABASE copy OWNER app");
    let st = Command::new(bin_dir().join("pg_restore"))
        .args(["--exit-on-error", "-j", "2", "--no-owner"])
        .arg(format!(
            "--dbname={}",
            pg.url().rsplit_once('/').unwrap().0.to_owned() + "/copy"
        ))
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fingerprint(&pg, "copy"), fingerprint(&pg, "app"));
}
