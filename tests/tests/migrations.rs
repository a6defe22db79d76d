//! Migrations for every stack users run, against a real PostgreSQL: Prisma folders
//! applied natively (8 replicas at once, re-runs, a failing migration and its recovery,
//! the baseline refusal, Prisma's own lock), drizzle 1.0 folders (rows as drizzle-orm
//! 1.0 records them, the in-place upgrade of a 0.x table, out-of-order folders), the
//! 0.x out-of-order refusal, format detection, a migration blocked by live traffic
//! (lock_timeout, retries, the blocker named), the one-shot and status modes, the
//! checks of applied migrations at every start (refinery's refusals, the warnings), and
//! five replicas of each format at once through PgBouncer 1.18 in transaction mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dockhand_tests::bins::{bin, root};
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::pgbouncer::PgBouncer;
use dockhand_tests::run::{command, finish, run, Run};

const LONG: Duration = Duration::from_secs(90);

fn entrypoint(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(command(&bin("entrypoint"), args, env), LONG)
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    command(&bin("entrypoint"), args, env).spawn().unwrap()
}

/// A copy of a fixture folder in a temp dir (tests change it).
fn copy_fixture(rel: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(root().join(rel))
        .arg(dir.path().join("m"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let p = dir.path().join("m");
    (dir, p)
}

fn prisma_rows(pg: &Postgres) -> String {
    pg.psql_db(
        "app",
        "SELECT migration_name || '|' || checksum || '|' || (finished_at IS NOT NULL) || '|' || (rolled_back_at IS NOT NULL) || '|' || applied_steps_count || '|' || length(id) || '|' || (logs IS NULL) FROM _prisma_migrations ORDER BY started_at, migration_name",
    )
}

fn sha256_hex(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A session that holds a lock until dropped (psql reading its script from a pipe).
struct Holder(Child);

impl Holder {
    fn new(pg: &Postgres, app_name: &str, sql: &str) -> Holder {
        let mut child = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-d", "app"])
            .env("PGAPPNAME", app_name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let app = app_name.to_string();
        assert!(
            dockhand_tests::wait_until(LONG, || {
                pg
                .psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND (xact_start IS NOT NULL OR query LIKE '%advisory%')"))
                != "0"
            }),
            "the holder did not start"
        );
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Its session ends with it (a sleeping one is cancelled by the server).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- Prisma ---------------------------------------------------------------------------

#[test]
fn a_prisma_folder_is_applied_once_by_eight_replicas_and_recorded_as_prisma_does() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let d = dir.to_str().unwrap();
    let url = pg.url();
    let replicas: Vec<Child> = (0..8)
        .map(|_| spawn(&["--migrations", d, "--", "true"], &[("DIRECT_URL", &url)]))
        .collect();
    for c in replicas {
        let r = finish(c, LONG);
        assert_eq!(r.code, Some(0), "{}", r.output());
        r.assert_no_secret(&pg.password);
    }
    let names = [
        "20260101090000_init",
        "20260102090000_posts",
        "20260103090000_backfill_roles",
    ];
    let expected: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "{n}|{}|true|false|1|36|true",
                sha256_hex(&dir.join(n).join("migration.sql"))
            )
        })
        .collect();
    assert_eq!(prisma_rows(&pg), expected.join("\n"));
    // the CRLF file's checksum is of its bytes as they are
    let crlf = std::fs::read(dir.join(names[2]).join("migration.sql")).unwrap();
    assert!(crlf.windows(2).any(|w| w == b"\r\n"));
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT email || ':' || role FROM \"User\" ORDER BY id"
        ),
        "admin@example.com:ADMIN"
    );
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM pg_constraint WHERE conname = 'Post_authorId_fkey'"
        ),
        "1"
    );
    // a re-run is a no-op, and says which format it found
    let r = entrypoint(&["--migrations", d, "--", "true"], &[("DIRECT_URL", &url)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("is a Prisma folder") && r.stderr.contains("nothing to apply"),
        "{}",
        r.output()
    );
    // an applied file changed afterwards: a warning, not a failure
    let f = dir.join(names[0]).join("migration.sql");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("-- edited after deploy\n");
    std::fs::write(&f, text).unwrap();
    std::fs::create_dir_all(dir.join("20260104090000_more")).unwrap();
    std::fs::write(
        dir.join("20260104090000_more/migration.sql"),
        "ALTER TABLE \"Post\" ADD COLUMN \"body\" TEXT;\n",
    )
    .unwrap();
    let r = entrypoint(&["--migrations", d, "--", "true"], &[("DIRECT_URL", &url)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr
            .contains("20260101090000_init was changed after it was applied"),
        "{}",
        r.output()
    );
}

#[test]
fn a_failed_prisma_migration_blocks_starts_until_marked_rolled_back() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let d = dir.to_str().unwrap();
    let url = pg.url();
    let bad = dir.join("20260104090000_broken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("migration.sql"),
        "ALTER TABLE \"Post\" ADD COLUMN \"slug\" TEXT;\nALTER TABLE \"Nope\" ADD COLUMN x int;\n",
    )
    .unwrap();
    let r = entrypoint(
        &["--migrations", d, "--", "echo", "started"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("20260104090000_broken") && r.stderr.contains("\"Nope\" does not exist"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
    // the row: started, not finished, not rolled back, the error in logs
    let row = pg.psql_db("app", "SELECT (finished_at IS NULL) || '|' || (rolled_back_at IS NULL) || '|' || applied_steps_count || '|' || (logs LIKE '%Nope%') FROM _prisma_migrations WHERE migration_name = '20260104090000_broken'");
    assert_eq!(row, "true|true|0|true");
    // one simple-query batch, one implicit transaction: the first statement rolled back too
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'slug'"
        ),
        "0"
    );
    // every start is refused with Prisma's guidance, naming it
    let r = entrypoint(
        &["--migrations", d, "--", "echo", "started"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("P3009")
            && r.stderr
                .contains("migrate resolve --rolled-back \"20260104090000_broken\""),
        "{}",
        r.output()
    );
    // --migrate-status says failed, not pending, with its logs and the advice; exit 1
    let r = entrypoint(
        &["--migrate-status", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("failed   20260104090000_broken")
            && r.stdout.contains("\"Nope\" does not exist")
            && r.stdout.contains("--rolled-back \"20260104090000_broken\"")
            && r.stdout.contains("--applied \"20260104090000_broken\"")
            && r.stdout.contains("3 applied, 1 failed, 0 pending"),
        "{}",
        r.output()
    );
    // marked rolled back (as `prisma migrate resolve --rolled-back` does) and fixed: applies
    pg.psql_db("app", "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '20260104090000_broken'");
    std::fs::write(
        bad.join("migration.sql"),
        "ALTER TABLE \"Post\" ADD COLUMN \"slug\" TEXT;\n",
    )
    .unwrap();
    let r = entrypoint(
        &["--migrations", d, "--", "echo", "started"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM _prisma_migrations WHERE migration_name = '20260104090000_broken'"), "2");
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM _prisma_migrations WHERE migration_name = '20260104090000_broken' AND finished_at IS NOT NULL AND rolled_back_at IS NULL"), "1");
}

#[test]
fn a_schema_with_tables_but_no_prisma_history_is_refused_with_the_baseline_guidance() {
    let pg = Postgres::start();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE legacy (id int);");
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let r = entrypoint(
        &["--migrations", dir.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("P3005") && r.stderr.contains("legacy") && r.stderr.contains("baseline"),
        "{}",
        r.output()
    );
    // a lock file for another provider: P3019
    std::fs::write(dir.join("migration_lock.toml"), "provider = \"mysql\"\n").unwrap();
    let r = entrypoint(
        &["--migrations", dir.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("P3019") && r.stderr.contains("mysql"),
        "{}",
        r.output()
    );
}

#[test]
fn prismas_own_lock_is_taken_so_prisma_migrate_deploy_serialises_with_us() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let holder = Holder::new(&pg, "prisma-deploy", "SELECT pg_advisory_lock(72707369);");
    let child = spawn(
        &["--migrations", dir.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('\"User\"') IS NULL"),
        "t",
        "migrated under Prisma's lock"
    );
    drop(holder);
    let r = finish(child, LONG);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("Prisma's lock") && r.stderr.contains("prisma-deploy"),
        "{}",
        r.output()
    );
}

// ---- drizzle 1.0 ------------------------------------------------------------------------

fn drizzle_rows_v1(pg: &Postgres) -> String {
    pg.psql_db("app", "SELECT id || '|' || hash || '|' || created_at || '|' || name FROM drizzle.__drizzle_migrations ORDER BY id")
}

#[test]
fn a_drizzle_1_0_folder_is_recorded_as_drizzle_orm_1_0_records_it() {
    let pg = Postgres::start();
    let folder = root().join("tests/fixtures/drizzle-v1/drizzle");
    let expected = std::fs::read_to_string(
        root().join("tests/fixtures/drizzle-v1/expected-drizzle-migrations.txt"),
    )
    .unwrap();
    let r = entrypoint(
        &["--migrations", folder.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("is a drizzle 1.0 folder"),
        "{}",
        r.output()
    );
    assert_eq!(drizzle_rows_v1(&pg), expected.trim());
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM drizzle.__drizzle_migrations WHERE applied_at IS NOT NULL"
        ),
        "3"
    );
    // drizzle 1.0 applies folders whose name is not recorded, also older ones
    let (_t, dir) = copy_fixture("tests/fixtures/drizzle-v1/drizzle");
    std::fs::create_dir_all(dir.join("20200101000000_backport")).unwrap();
    std::fs::write(
        dir.join("20200101000000_backport/migration.sql"),
        "CREATE TABLE backport (id int);",
    )
    .unwrap();
    let r = entrypoint(
        &["--migrations", dir.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT name FROM drizzle.__drizzle_migrations ORDER BY id DESC LIMIT 1"
        ),
        "20200101000000_backport"
    );
}

#[test]
fn a_drizzle_0_x_table_is_upgraded_in_place_to_1_0() {
    let pg = Postgres::start();
    // 0.x first (the shared fixture, as drizzle-kit 0.x wrote it)
    let v0 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/drizzle-app/drizzle");
    let r = entrypoint(
        &["--migrations", v0.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("is a drizzle-kit 0.x folder"),
        "{}",
        r.output()
    );
    // then the same migrations in 1.0's layout: the table gains name and applied_at, names
    // are back-filled, nothing runs again
    let v1 = root().join("tests/fixtures/drizzle-v1/drizzle");
    let r = entrypoint(
        &["--migrations", v1.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("upgraded drizzle.__drizzle_migrations"),
        "{}",
        r.output()
    );
    let names = pg.psql_db("app", "SELECT string_agg(name, ',' ORDER BY id) || ' ' || count(*) || ' ' || count(applied_at) FROM drizzle.__drizzle_migrations");
    assert_eq!(
        names,
        "20261123185446_bootstrap,20261123185447_notifications,20261123185448_backfill 3 0"
    );
}

#[test]
fn a_drizzle_0_x_migration_drizzle_would_skip_is_refused_by_name() {
    let pg = Postgres::start();
    let v0 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/drizzle-app/drizzle");
    let r = entrypoint(
        &["--migrations", v0.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    // a merged branch adds a migration dated before the newest applied one
    let (_t, dir) = copy_fixture("../shared/fixtures/drizzle-app/drizzle");
    let journal = dir.join("meta/_journal.json");
    let mut j: serde_like::Journal = serde_like::read(&journal);
    j.add("0003_from_a_branch", 1795460086500);
    std::fs::write(
        dir.join("0003_from_a_branch.sql"),
        "CREATE TABLE from_branch (id int);",
    )
    .unwrap();
    j.write(&journal);
    let r = entrypoint(
        &[
            "--migrations",
            dir.to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("0003_from_a_branch") && r.stderr.contains("skip"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
}

/// Just enough JSON editing for a drizzle journal (no serde in the test crate).
mod serde_like {
    use std::path::Path;

    pub(super) struct Journal(String);

    pub(super) fn read(p: &Path) -> Journal {
        Journal(std::fs::read_to_string(p).unwrap())
    }

    impl Journal {
        pub(super) fn add(&mut self, tag: &str, when: i64) {
            let end = self.0.rfind(']').unwrap();
            let head = self.0[..end].trim_end().to_string();
            let entry = format!(
                ",\n    {{\n      \"idx\": 3,\n      \"version\": \"7\",\n      \"when\": {when},\n      \"tag\": \"{tag}\",\n      \"breakpoints\": true\n    }}\n  "
            );
            self.0 = format!("{head}{entry}{}", &self.0[end..]);
        }
        pub(super) fn write(&self, p: &Path) {
            std::fs::write(p, &self.0).unwrap();
        }
    }
}

#[test]
fn migrate_status_sees_a_0_x_history_through_1_0_folders_as_a_run_does() {
    let pg = Postgres::start();
    let v0 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/drizzle-app/drizzle");
    let r = entrypoint(
        &["--migrations", v0.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    // the same migrations laid out as drizzle 1.0 folders (drizzle-kit up)
    let v1 = root().join("tests/fixtures/drizzle-v1/drizzle");
    let v1 = v1.to_str().unwrap();
    let r = entrypoint(
        &["--migrate-status", "--migrations", v1],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stdout.contains("3 applied, 0 pending")
            && r.stdout.contains("applied  20261123185446_bootstrap"),
        "{}",
        r.output()
    );
    // status changed nothing: the table is still 0.x's
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'drizzle' AND column_name = 'name'"),
        "0"
    );
    // a history row that no folder matches: status says what a run would
    pg.psql_db(
        "app",
        "INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('feed', 1795460099123)",
    );
    let r = entrypoint(
        &["--migrate-status", "--migrations", v1],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_ne!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("match no folder"), "{}", r.output());
    pg.psql_db(
        "app",
        "DELETE FROM drizzle.__drizzle_migrations WHERE hash = 'feed'",
    );
    // and a start agrees: it applies nothing (it upgrades the table, as drizzle-orm 1.0)
    let r = entrypoint(
        &["--migrations", v1, "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stderr.contains("applied migration"), "{}", r.output());
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM drizzle.__drizzle_migrations"),
        "3"
    );
}

#[test]
fn refinery_refuses_an_edited_or_deleted_applied_migration_at_every_start() {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("V1__users.sql"),
        "CREATE TABLE users (id int);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("V2__posts.sql"),
        "CREATE TABLE posts (id int);",
    )
    .unwrap();
    let start = |expect: i32| {
        let r = entrypoint(
            &["--migrations", d, "--", "echo", "started"],
            &[("DIRECT_URL", &url)],
        );
        assert_eq!(r.code, Some(expect), "{}", r.output());
        r
    };
    start(0);
    // nothing pending, an applied file edited (a comment): refinery aborts, so do we
    std::fs::write(
        dir.path().join("V1__users.sql"),
        "CREATE TABLE users (id int); -- reviewed",
    )
    .unwrap();
    let r = start(4);
    assert!(
        r.stderr.contains("V1__users") && r.stderr.contains("different"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
    let r = entrypoint(
        &["--migrate-status", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    assert_ne!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("V1__users"), "{}", r.output());
    // restored: starts again; then an applied file deleted
    std::fs::write(
        dir.path().join("V1__users.sql"),
        "CREATE TABLE users (id int);",
    )
    .unwrap();
    start(0);
    std::fs::remove_file(dir.path().join("V2__posts.sql")).unwrap();
    let r = start(4);
    assert!(
        r.stderr.contains("V2__posts") && r.stderr.contains("missing from the filesystem"),
        "{}",
        r.output()
    );
    // a versioned file below the newest applied one that never ran
    std::fs::write(
        dir.path().join("V2__posts.sql"),
        "CREATE TABLE posts (id int);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("V0__early.sql"),
        "CREATE TABLE early (id int);",
    )
    .unwrap();
    let r = start(4);
    assert!(
        r.stderr.contains("V0__early") && r.stderr.contains("below the newest applied version 2"),
        "{}",
        r.output()
    );
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('early') IS NULL"),
        "t"
    );
}

#[test]
fn an_edited_prisma_migration_is_warned_about_at_every_start() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let d = dir.to_str().unwrap();
    let url = pg.url();
    let r = entrypoint(&["--migrations", d, "--", "true"], &[("DIRECT_URL", &url)]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let f = dir.join("20260102090000_posts/migration.sql");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("-- edited after deploy\n");
    std::fs::write(&f, text).unwrap();
    // nothing pending: the warning still comes, once
    let r = entrypoint(
        &["--migrations", d, "--", "echo", "started"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
    assert_eq!(
        r.stderr
            .matches("20260102090000_posts was changed after it was applied")
            .count(),
        1,
        "{}",
        r.output()
    );
    assert!(r.stderr.contains("nothing to apply"), "{}", r.output());
}

#[test]
fn drizzle_edits_and_deletions_of_applied_migrations_are_warned_about_at_every_start() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/drizzle-v1/drizzle");
    let d = dir.to_str().unwrap();
    let r = entrypoint(
        &["--migrations", d, "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    let f = dir.join("20261123185447_notifications/migration.sql");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, format!("{text}\n-- edited\n")).unwrap();
    std::fs::remove_dir_all(dir.join("20261123185448_backfill")).unwrap();
    let r = entrypoint(
        &["--migrations", d, "--", "echo", "started"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
    assert!(
        r.stderr
            .contains("20261123185447_notifications was changed after it was applied")
            && r.stderr.contains("no migration file here stands for")
            && r.stderr.contains("20261123185448_backfill")
            && r.stderr.contains("nothing to apply"),
        "{}",
        r.output()
    );
}

#[test]
fn a_drizzle_1_0_folder_of_symlinked_migration_folders_is_detected() {
    let pg = Postgres::start();
    let src = root().join("tests/fixtures/drizzle-v1/drizzle");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let r = entrypoint(
        &["--migrations", dir.path().to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("is a drizzle 1.0 folder"),
        "{}",
        r.output()
    );
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) FROM drizzle.__drizzle_migrations"),
        "3"
    );
}

// ---- detection ------------------------------------------------------------------------------

#[test]
fn the_format_is_detected_and_bad_folders_are_named() {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    // refinery
    let r1 = dir.path().join("refinery");
    std::fs::create_dir_all(&r1).unwrap();
    std::fs::write(r1.join("V1__init.sql"), "CREATE TABLE r (id int);").unwrap();
    let r = entrypoint(
        &["--migrations", r1.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("is a refinery folder"), "{}", r.output());
    // a mix of refinery and Prisma
    let (_t, mixed) = copy_fixture("tests/fixtures/prisma-app/migrations");
    std::fs::write(mixed.join("V1__init.sql"), "SELECT 1;").unwrap();
    let r = entrypoint(
        &["--migrations", mixed.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("mixes formats")
            && r.stderr.contains("Prisma")
            && r.stderr.contains("refinery"),
        "{}",
        r.output()
    );
    // nothing recognisable
    let none = dir.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    std::fs::write(none.join("schema.sql"), "SELECT 1;").unwrap();
    let r = entrypoint(
        &["--migrations", none.to_str().unwrap(), "--", "true"],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("no migrations format recognised") && r.stderr.contains("1 other .sql"),
        "{}",
        r.output()
    );
}

// ---- live traffic -----------------------------------------------------------------------------

#[test]
fn a_migration_blocked_by_a_long_transaction_gives_way_retries_and_names_the_blocker() {
    let pg = Postgres::start();
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE orders (id int); INSERT INTO orders VALUES (1);",
    );
    // what other roles' sessions run is visible with pg_read_all_stats (README says so)
    pg.psql("GRANT pg_read_all_stats TO app");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__add_column.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    // a dump-like session: ACCESS SHARE on the table for 4 s
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM orders; SELECT pg_sleep(4); COMMIT;",
    );
    let r = entrypoint(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--ddl-lock-timeout",
            "500ms",
            "--",
            "true",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("gave up waiting 500ms for a lock"),
        "{}",
        r.output()
    );
    assert!(
        r.stderr.contains("\"nightly-dump\"") && r.stderr.contains("pg_sleep"),
        "{}",
        r.output()
    );
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'"), "1");
    // with no time left, the failure names the blocker and the app does not start
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM orders; SELECT pg_sleep(20); COMMIT;",
    );
    std::fs::write(
        dir.path().join("V2__more.sql"),
        "ALTER TABLE orders ADD COLUMN more text;",
    )
    .unwrap();
    let r = entrypoint(
        &[
            "--migrations",
            dir.path().to_str().unwrap(),
            "--ddl-lock-timeout",
            "300ms",
            "--lock-timeout",
            "2s",
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    drop(holder);
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("still blocked by") && r.stderr.contains("nightly-dump"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
}

#[test]
fn a_replica_waiting_for_the_lock_names_the_holder_and_a_command_gets_pgoptions() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pgoptions");
    let cmd = format!("sh -c 'echo \"$PGOPTIONS\" > {}; sleep 6'", out.display());
    let first = spawn(
        &["--migrate-cmd", &cmd, "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    assert!(dockhand_tests::wait_until(LONG, || out.exists()));
    let second = spawn(
        &["--migrate-cmd", "true", "--", "true"],
        &[("DIRECT_URL", &pg.url())],
    );
    let r1 = finish(first, LONG);
    let r2 = finish(second, LONG);
    assert_eq!(
        (r1.code, r2.code),
        (Some(0), Some(0)),
        "{}{}",
        r1.output(),
        r2.output()
    );
    assert!(
        r2.stderr.contains("waiting for another replica")
            && r2.stderr.contains("\"dockhand-entrypoint\""),
        "{}",
        r2.output()
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "-c lock_timeout=5000ms"
    );
}

// ---- one-shot and status ------------------------------------------------------------------------

#[test]
fn migrate_only_and_migrate_status_for_jobs_and_ci() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let d = dir.to_str().unwrap();
    let url = pg.url();
    let r = entrypoint(
        &["--migrate-status", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("pending  20260101090000_init")
            && r.stdout.contains("0 applied, 3 pending"),
        "{}",
        r.output()
    );
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('_prisma_migrations') IS NULL"),
        "t",
        "status changed something"
    );
    let r = entrypoint(
        &["--migrate-only", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    let r = run(
        command(
            &bin("entrypoint"),
            &[],
            &[
                ("DIRECT_URL", &url),
                ("ENTRYPOINT_MIGRATE_ONLY", "true"),
                ("ENTRYPOINT_MIGRATIONS", d),
            ],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    // status takes no lock: it answers while another replica holds ours
    let holder = Holder::new(
        &pg,
        "other-replica",
        "SELECT pg_advisory_lock(x'646f636b68616e64'::bigint);",
    );
    let r = entrypoint(
        &["--migrate-status", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stdout.contains("3 applied, 0 pending"), "{}", r.output());
    // a failing migration: --migrate-only exits 4
    std::fs::create_dir_all(dir.join("20260105090000_bad")).unwrap();
    std::fs::write(
        dir.join("20260105090000_bad/migration.sql"),
        "SELECT * FROM nowhere;",
    )
    .unwrap();
    let r = entrypoint(
        &["--migrate-only", "--migrations", d],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(4), "{}", r.output());
    // bad combinations
    let r = entrypoint(
        &[
            "--migrate-only",
            "--migrations",
            d,
            "--",
            "node",
            "server.js",
        ],
        &[("DIRECT_URL", &url)],
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    let r = entrypoint(&["--migrate-status"], &[("DIRECT_URL", &url)]);
    assert_eq!(r.code, Some(2), "{}", r.output());
}

// ---- through PgBouncer ----------------------------------------------------------------------------

/// Five replicas at once with `--allow-pooler`, through PgBouncer 1.18 in transaction
/// mode (no protocol-level prepared statements before 1.21), in every format, each in a
/// database of its own; hostile migration names go in as values. Each replica starts its
/// app; every migration is recorded once.
#[test]
fn five_replicas_through_pgbouncer_migrate_once_in_every_format() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    let hostile = "o'brien\\\"; DROP TABLE users; --";
    let mut cases: Vec<(&str, tempfile::TempDir, PathBuf, &str, &str)> = Vec::new();
    // refinery
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("m");
    std::fs::create_dir_all(&r).unwrap();
    for (f, sql) in [
        ("V1__users.sql", "CREATE TABLE users (id int);"),
        ("V2__posts.sql", "CREATE TABLE posts (id int);"),
        ("V3__seed.sql", "INSERT INTO users VALUES (1);"),
    ] {
        std::fs::write(r.join(f), sql).unwrap();
    }
    cases.push((
        "refinery",
        t,
        r,
        "SELECT count(*) || ' ' || (SELECT count(*) FROM users) FROM refinery_schema_history",
        "3 1",
    ));
    // drizzle 0.x (the fixture drizzle-kit wrote)
    let (t, d0) = copy_fixture("../shared/fixtures/drizzle-app/drizzle");
    cases.push((
        "drizzle0",
        t,
        d0,
        "SELECT count(*) FROM drizzle.__drizzle_migrations",
        "3",
    ));
    // drizzle 1.0, with a hostile folder name
    let (t, d1) = copy_fixture("tests/fixtures/drizzle-v1/drizzle");
    let name = format!("20261201000000_{hostile}");
    std::fs::create_dir_all(d1.join(&name)).unwrap();
    std::fs::write(
        d1.join(&name).join("migration.sql"),
        "CREATE TABLE hostile (id int);",
    )
    .unwrap();
    cases.push((
        "drizzle1",
        t,
        d1,
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE name = '20261201000000_o''brien\\\"; DROP TABLE users; --') FROM drizzle.__drizzle_migrations",
        "4 1",
    ));
    // Prisma, with a hostile folder name
    let (t, p) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let name = format!("20260104090000_{hostile}");
    std::fs::create_dir_all(p.join(&name)).unwrap();
    std::fs::write(
        p.join(&name).join("migration.sql"),
        "CREATE TABLE hostile (id int);\n",
    )
    .unwrap();
    cases.push((
        "prisma",
        t,
        p,
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE migration_name = '20260104090000_o''brien\\\"; DROP TABLE users; --' AND finished_at IS NOT NULL) FROM _prisma_migrations",
        "4 1",
    ));
    for (db, _t, dir, check, expected) in &cases {
        pg.psql(&format!("CREATE DATABASE {db} OWNER app"));
        let url = format!("{}/{db}", bouncer.url().strip_suffix("/app").unwrap());
        let d = dir.to_str().unwrap();
        let replicas: Vec<Child> = (0..5)
            .map(|_| {
                spawn(
                    &["--allow-pooler", "--migrations", d, "--", "echo", "started"],
                    &[("DIRECT_URL", &url)],
                )
            })
            .collect();
        for c in replicas {
            let r = finish(c, LONG);
            assert_eq!(r.code, Some(0), "{db}: {}", r.output());
            assert_eq!(r.stdout, "started\n", "{db}");
            r.assert_no_secret(&pg.password);
        }
        assert_eq!(&pg.psql_db(db, check), expected, "{db}");
        // no setting of ours stayed on a pooled server connection the app gets next:
        // five clients at once hold all five, each says its lock_timeout
        let probes: Vec<Child> = (0..5)
            .map(|_| {
                Command::new(bin_dir().join("psql"))
                    .args(["-X", "-q", "-A", "-t", "-d", &url, "-c"])
                    .arg("BEGIN; SHOW lock_timeout; SELECT pg_sleep(1); COMMIT;")
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for p in probes {
            let out = p.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{db}: {text}");
            assert_eq!(text.lines().next(), Some("0"), "{db}: {text}");
        }
        // a re-run through the pooler finds nothing to do
        let r = entrypoint(
            &["--allow-pooler", "--migrations", d, "--", "true"],
            &[("DIRECT_URL", &url)],
        );
        assert_eq!(r.code, Some(0), "{db}: {}", r.output());
        assert!(
            r.stderr.contains("nothing to apply"),
            "{db}: {}",
            r.output()
        );
    }
}

// ---- Prisma's schema ------------------------------------------------------------------------

fn prisma_run(dir: &Path, url: &str) -> Run {
    entrypoint(
        &[
            "--migrations",
            dir.to_str().unwrap(),
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", url)],
    )
}

/// Since PostgreSQL 15 a role often gets a schema of its own (`CREATE SCHEMA app
/// AUTHORIZATION app`), first on its search_path. Prisma migrates in the URL's `schema`
/// (default public) and Prisma Client reads the tables there; so does dockhand.
#[test]
fn prisma_migrates_in_the_urls_schema_not_the_roles_own() {
    let pg = Postgres::start();
    pg.psql_db("app", "CREATE SCHEMA app AUTHORIZATION app");
    let folder = root().join("tests/fixtures/prisma-app/migrations");
    let r = prisma_run(&folder, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    let where_ = |table: &str| {
        pg.psql_db(
            "app",
            &format!("SELECT coalesce(string_agg(n.nspname, ',' ORDER BY n.nspname), '-') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = '{table}'"),
        )
    };
    assert_eq!(where_("_prisma_migrations"), "public");
    assert_eq!(where_("User"), "public");
    // ?schema=tenant_1: created when missing (as Prisma does), migrated there
    let r = prisma_run(&folder, &format!("{}?schema=tenant_1", pg.url()));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(where_("_prisma_migrations"), "public,tenant_1");
    assert_eq!(where_("Post"), "public,tenant_1");
    let r = entrypoint(
        &["--migrate-status", "--migrations", folder.to_str().unwrap()],
        &[("DIRECT_URL", &format!("{}?schema=tenant_1", pg.url()))],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    // a schema name that needs quoting
    let r = prisma_run(&folder, &format!("{}?schema=Tenant%20%22two%22", pg.url()));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(where_("User"), "Tenant \"two\",public,tenant_1");
    // a history recorded in the role's own schema (an earlier dockhand, or Prisma with
    // no ?schema=) is not applied again elsewhere: refused, with what to do
    let other = Postgres::start();
    other.psql_db("app", "CREATE SCHEMA app AUTHORIZATION app");
    other.psql_db(
        "app",
        "SET ROLE app; SET search_path = app; CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz, migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0)",
    );
    let r = prisma_run(&folder, &other.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("_prisma_migrations is in schema \"app\"")
            && r.stderr.contains("?schema=app"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
    let r = prisma_run(&folder, &format!("{}?schema=app", other.url()));
    assert_eq!(r.code, Some(0), "{}", r.output());
    // without ?schema=, the rest of the role's search_path stays (Prisma leaves it
    // alone): a function from an `extensions` schema, as on Supabase, still resolves
    let third = Postgres::start();
    third.psql_db(
        "app",
        "CREATE SCHEMA app AUTHORIZATION app; CREATE SCHEMA extensions; GRANT USAGE ON SCHEMA extensions TO app; \
         CREATE FUNCTION extensions.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'; \
         ALTER ROLE app SET search_path = \"$user\", public, extensions",
    );
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    add_migration(
        &dir,
        "20260104090000_thing",
        "CREATE TABLE \"Thing\" (\"id\" INTEGER NOT NULL DEFAULT answer());\n",
    );
    let r = prisma_run(&dir, &third.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(
        third.psql_db("app", "SELECT to_regclass('public.\"Thing\"') IS NOT NULL AND to_regclass('app.\"Thing\"') IS NULL"),
        "t"
    );
}

// ---- statements that cannot run in a transaction -------------------------------------------

fn add_migration(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("migration.sql"), sql).unwrap();
}

fn index_state(pg: &Postgres, index: &str) -> String {
    pg.psql_db(
        "app",
        &format!("SELECT coalesce((SELECT indisvalid::text FROM pg_index WHERE indexrelid = to_regclass('\"{index}\"')), 'none')"),
    )
}

/// CREATE INDEX CONCURRENTLY waits, by design, for every older transaction: a 9 s one
/// (a pg_dump) outlasts the default 5 s lock_timeout. It must not be cut short (that
/// leaves an INVALID index, and the retry fails with "already exists": P3009 for good).
#[test]
fn create_index_concurrently_behind_a_long_transaction_completes_with_a_valid_index() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    add_migration(
        &dir,
        "20260104090000_title_index",
        "-- CreateIndex\nCREATE INDEX CONCURRENTLY \"Post_title_idx\" ON \"Post\"(\"title\");\n",
    );
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM \"Post\"; SELECT pg_sleep(9); COMMIT;",
    );
    let r = prisma_run(&dir, &pg.url());
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
    assert_eq!(index_state(&pg, "Post_title_idx"), "true");
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) || ' ' || count(finished_at) FROM _prisma_migrations WHERE migration_name = '20260104090000_title_index'"),
        "1 1"
    );
    // the session's lock_timeout is back for the next migration
    add_migration(
        &dir,
        "20260105090000_note",
        "ALTER TABLE \"Post\" ADD COLUMN \"note\" TEXT;\n",
    );
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM \"Post\"; SELECT pg_sleep(3); COMMIT;",
    );
    let r = entrypoint(
        &[
            "--migrations",
            dir.to_str().unwrap(),
            "--ddl-lock-timeout",
            "500ms",
            "--",
            "true",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("gave up waiting 500ms"), "{}", r.output());
}

/// An INVALID index left by an interrupted or failed CREATE INDEX CONCURRENTLY is
/// dropped before the statement runs again, so the corrected migration applies.
#[test]
fn an_invalid_index_left_by_a_failed_concurrent_build_is_dropped_before_the_retry() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    pg.psql_db("app", "INSERT INTO \"Post\" (\"title\", \"authorId\") SELECT 'same', id FROM \"User\"; INSERT INTO \"Post\" (\"title\", \"authorId\") SELECT 'same', id FROM \"User\";");
    add_migration(
        &dir,
        "20260104090000_unique_title",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Post_title_key\" ON \"Post\"(\"title\");\n",
    );
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert_eq!(index_state(&pg, "Post_title_key"), "false");
    // the data fixed, the migration marked rolled back: it applies, and the index is valid
    pg.psql_db(
        "app",
        "DELETE FROM \"Post\" WHERE id > (SELECT min(id) FROM \"Post\")",
    );
    pg.psql_db(
        "app",
        "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE finished_at IS NULL",
    );
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr
            .contains("dropping the INVALID index \"Post_title_key\""),
        "{}",
        r.output()
    );
    assert_eq!(index_state(&pg, "Post_title_key"), "true");
}

/// refinery runs each migration in a transaction and drizzle all pending ones in one, as
/// those tools do: a statement that cannot run in one fails there, and the message says
/// why and what to do.
#[test]
fn a_concurrent_index_in_refinery_or_drizzle_fails_with_what_to_do() {
    let pg = Postgres::start();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (x int);");
    let dir = tempfile::tempdir().unwrap();
    let refinery = dir.path().join("refinery");
    std::fs::create_dir_all(&refinery).unwrap();
    std::fs::write(
        refinery.join("V1__idx.sql"),
        "CREATE INDEX CONCURRENTLY t_x ON t (x);",
    )
    .unwrap();
    let drizzle = dir.path().join("drizzle");
    add_migration(
        &drizzle,
        "20260101000000_idx",
        "CREATE INDEX CONCURRENTLY t_x ON t (x);",
    );
    for folder in [&refinery, &drizzle] {
        let r = entrypoint(
            &[
                "--migrations",
                folder.to_str().unwrap(),
                "--",
                "echo",
                "started",
            ],
            &[("DIRECT_URL", &pg.url())],
        );
        assert_eq!(r.code, Some(4), "{}", r.output());
        assert!(
            r.stderr.contains("cannot run inside a transaction block")
                && r.stderr
                    .contains("refinery runs every migration in a transaction")
                && r.stderr.contains("plain form"),
            "{}",
            r.output()
        );
        assert!(!r.stdout.contains("started"));
    }
    // in Prisma, a file holding the statement alone runs outside a transaction; with
    // another statement it cannot (as with `prisma migrate deploy`)
    let (_t, prisma) = copy_fixture("tests/fixtures/prisma-app/migrations");
    add_migration(
        &prisma,
        "20260104090000_two",
        "CREATE TABLE \"Tag\" (id int);\nCREATE INDEX CONCURRENTLY \"Tag_id_idx\" ON \"Tag\"(id);\n",
    );
    let r = prisma_run(&prisma, &format!("{}?schema=prisma", pg.url()));
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("holds that statement alone"),
        "{}",
        r.output()
    );
}

// ---- a Prisma script's own transaction ------------------------------------------------------

/// A migration wrapped in its own BEGIN; ... COMMIT; that hits lock_timeout aborts its
/// transaction: it is rolled back, forgotten and retried, and applies.
#[test]
fn a_prisma_script_with_its_own_transaction_is_retried_after_a_lock_timeout() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(0), "{}", r.output());
    add_migration(
        &dir,
        "20260104090000_wrapped",
        "BEGIN;\nCREATE TABLE \"Tag\" (id int);\nALTER TABLE \"Post\" ADD COLUMN \"note\" TEXT;\nCOMMIT;\n",
    );
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM \"Post\"; SELECT pg_sleep(3); COMMIT;",
    );
    let r = entrypoint(
        &[
            "--migrations",
            dir.to_str().unwrap(),
            "--ddl-lock-timeout",
            "500ms",
            "--",
            "echo",
            "started",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
    assert!(r.stderr.contains("gave up waiting 500ms"), "{}", r.output());
    assert_eq!(
        pg.psql_db("app", "SELECT count(*) || ' ' || count(finished_at) || ' ' || count(logs) FROM _prisma_migrations WHERE migration_name = '20260104090000_wrapped'"),
        "1 1 0"
    );
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'Post' AND column_name = 'note'"), "1");
    // one that commits part way runs without lock_timeout (a retry could apply its
    // first part twice), and says so
    add_migration(
        &dir,
        "20260105090000_two_steps",
        "BEGIN;\nCREATE TABLE \"Label\" (id int);\nCOMMIT;\nBEGIN;\nALTER TABLE \"Post\" ADD COLUMN \"label\" int;\nCOMMIT;\n",
    );
    let holder = Holder::new(
        &pg,
        "nightly-dump",
        "BEGIN; SELECT count(*) FROM \"Post\"; SELECT pg_sleep(2); COMMIT;",
    );
    let r = entrypoint(
        &[
            "--migrations",
            dir.to_str().unwrap(),
            "--ddl-lock-timeout",
            "500ms",
            "--",
            "true",
        ],
        &[("DIRECT_URL", &pg.url())],
    );
    drop(holder);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("commits part way"), "{}", r.output());
}

/// A script that opens a transaction and never commits it did nothing (the server rolls
/// it back): it is a failure with the reason, not an applied migration.
#[test]
fn a_prisma_script_that_never_commits_its_transaction_fails_with_the_reason() {
    let pg = Postgres::start();
    let (_t, dir) = copy_fixture("tests/fixtures/prisma-app/migrations");
    add_migration(
        &dir,
        "20260104090000_no_commit",
        "BEGIN;\nCREATE TABLE \"Half\" (id int);\n",
    );
    let r = prisma_run(&dir, &pg.url());
    assert_eq!(r.code, Some(4), "{}", r.output());
    assert!(
        r.stderr.contains("20260104090000_no_commit") && r.stderr.contains("never commits"),
        "{}",
        r.output()
    );
    assert!(!r.stdout.contains("started"));
    assert_eq!(
        pg.psql_db("app", "SELECT to_regclass('\"Half\"') IS NULL"),
        "t"
    );
    assert_eq!(
        pg.psql_db("app", "SELECT (finished_at IS NULL) || ' ' || (logs LIKE '%never commits%') FROM _prisma_migrations WHERE migration_name = '20260104090000_no_commit'"),
        "true true"
    );
    // the earlier migrations of the run were applied and recorded
    assert_eq!(
        pg.psql_db(
            "app",
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"
        ),
        "3"
    );
}
