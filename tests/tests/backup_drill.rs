//! `backup drill` and the exact row counts it checks, against real PostgreSQL: the
//! counts a backup records are the rows its restore holds even while the application
//! writes; a good backup drills clean and leaves no database behind; a backup that
//! does not restore (a CHECK constraint whose function names a table without its
//! schema, an extension the drill server lacks) fails, naming the table; a drill
//! stopped by SIGTERM leaves nothing behind; the daemon's drills (after each backup,
//! or on a schedule) land in the manifest, the status file and the metrics, and a
//! failed one turns the documented healthcheck unhealthy.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dockhand::backup::manifest::Manifest;
use dockhand_tests::bins::bin;
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::run::{command, run, Run};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn backup(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(command(&bin("backup"), args, env), Duration::from_secs(300))
}

/// The manifests in `dir`, oldest first.
fn manifests(dir: &Path) -> Vec<Manifest> {
    let mut v: Vec<Manifest> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .filter_map(|e| Manifest::from_json(&std::fs::read_to_string(e.path()).ok()?))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The databases of the cluster.
fn databases(pg: &Postgres) -> Vec<String> {
    pg.psql("SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(String::from)
        .collect()
}

/// A session inserting one row every couple of milliseconds, each committed, until
/// dropped.
struct Writer(Child);

impl Writer {
    fn start(pg: &Postgres, db: &str, sql: &str) -> Writer {
        let script = format!(
            "DO $$ BEGIN FOR i IN 1..1000000 LOOP {sql}; COMMIT; PERFORM pg_sleep(0.002); END LOOP; END $$"
        );
        let child = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-U", "postgres", "-h"])
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-d", db, "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn seed(pg: &Postgres) {
    pg.psql("ALTER ROLE app CREATEDB");
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), note text);
         INSERT INTO events (note) SELECT 'seed ' || i FROM generate_series(1, 20000) i;
         CREATE TABLE measures (at int, v int) PARTITION BY RANGE (at);
         CREATE TABLE measures_a PARTITION OF measures FOR VALUES FROM (0) TO (1000);
         CREATE TABLE measures_b PARTITION OF measures FOR VALUES FROM (1000) TO (MAXVALUE);
         INSERT INTO measures SELECT i, i FROM generate_series(1, 3000) i;
         CREATE SCHEMA \"Odd \"\"schema\"\"\";
         CREATE TABLE \"Odd \"\"schema\"\"\".\"a.b c\" (x int);
         INSERT INTO \"Odd \"\"schema\"\"\".\"a.b c\" SELECT generate_series(1, 7);
         SELECT lo_from_bytea(0, 'one'), lo_from_bytea(0, 'two');",
    );
}

#[test]
fn the_counts_of_a_backup_taken_under_writes_are_the_rows_its_restore_holds() {
    let pg = Postgres::start();
    seed(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let writer = Writer::start(
        &pg,
        "app",
        "INSERT INTO events (note) VALUES ('live'); INSERT INTO measures VALUES (500, 1), (5000, 2)",
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = backup(&["now"], &env);
    std::thread::sleep(Duration::from_millis(300));
    drop(writer);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let m = manifests(dir.path()).pop().expect("a manifest");
    let counts = m.counts.clone().expect("the manifest has row counts");
    let names: Vec<String> = counts
        .tables
        .iter()
        .map(|(s, t, _)| format!("{s}.{t}"))
        .collect();
    assert_eq!(
        names,
        [
            "Odd \"schema\".a.b c",
            "public.events",
            "public.measures_a",
            "public.measures_b"
        ],
        "{counts:?}"
    );
    assert_eq!(counts.large_objects, 2);
    // the writer went on after the dump's snapshot: the source has more rows now
    let source: i64 = pg
        .psql_db("app", "SELECT count(*) FROM events")
        .parse()
        .unwrap();
    assert!(source > counts.tables[1].2, "{source} {counts:?}");

    let r = backup(&["restore", "latest", "--jobs", "2"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let restored = r.stdout.trim().to_string();
    for (schema, table, rows) in &counts.tables {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let n = pg.psql_db(
            &restored,
            &format!("SELECT count(*) FROM ONLY {}.{}", q(schema), q(table)),
        );
        assert_eq!(n, rows.to_string(), "{schema}.{table}");
    }
    assert_eq!(
        pg.psql_db(&restored, "SELECT count(*) FROM pg_largeobject_metadata"),
        "2"
    );
}

/// A database `app` whose backup drills clean, with a large object.
fn good(pg: &Postgres) {
    pg.psql("ALTER ROLE app CREATEDB");
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 5000) i;
         SELECT lo_from_bytea(0, 'lo');",
    );
}

fn drill_databases(pg: &Postgres) -> Vec<String> {
    databases(pg)
        .into_iter()
        .filter(|d| d.contains("_drill_"))
        .collect()
}

#[test]
fn a_good_backup_drills_clean_and_leaves_no_database() {
    let pg = Postgres::start();
    good(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let checks = dir.path().join("checks.sql");
    std::fs::write(
        &checks,
        "-- the team's own checks\nSELECT count(*) = 5000 FROM t;\nSELECT\n  EXISTS (SELECT 1 FROM t WHERE v = 'v7');\n",
    )
    .unwrap();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    assert_eq!(backup(&["now"], &env).code, Some(0));
    let before = databases(&pg);
    let sql = checks.to_str().unwrap();
    let with_sql = [env[0], env[1], ("BACKUP_DRILL_SQL", sql)];
    let r = backup(&["drill", "latest"], &with_sql);
    assert_eq!(r.code, Some(0), "{}", r.output());
    r.assert_no_secret(&pg.password);
    assert_eq!(databases(&pg), before, "the scratch database was left");
    let m = manifests(dir.path()).pop().unwrap();
    let drill = m.drill.expect("the drill is recorded in the manifest");
    assert!(drill.ok && drill.problems.is_empty(), "{drill:?}");
    assert_eq!(drill.rows_missing, 0);

    // a check that returns false fails the drill, naming it
    std::fs::write(&checks, "SELECT count(*) = 4999 FROM t").unwrap();
    let r = backup(&["drill", "latest", "--jobs", "1"], &with_sql);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("BACKUP_DRILL_SQL check 1") && r.stderr.contains("not true"),
        "{}",
        r.output()
    );
    assert_eq!(databases(&pg), before);

    // --keep keeps it and prints its name
    let r = backup(&["drill", "latest", "--keep"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let kept = r.stdout.trim().to_string();
    assert!(kept.starts_with("app_drill_"), "{kept}");
    assert_eq!(pg.psql_db(&kept, "SELECT count(*) FROM t"), "5000");
}

#[test]
fn a_check_constraint_that_names_a_table_without_its_schema_fails_the_drill() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    // works in the app (search_path has public); since 10.3 pg_restore runs with an
    // empty search_path, so the COPY into a_child fails and a_child arrives empty
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE TABLE z_ref (id int PRIMARY KEY);
         INSERT INTO z_ref SELECT generate_series(1, 30);
         CREATE FUNCTION ref_ok(i int) RETURNS boolean LANGUAGE sql STABLE
             AS 'SELECT EXISTS (SELECT 1 FROM z_ref WHERE id = i)';
         CREATE TABLE a_child (id int PRIMARY KEY, ref int CHECK (ref_ok(ref)));
         INSERT INTO a_child SELECT i, i FROM generate_series(1, 25) i;
         CREATE TABLE fine (x int);
         INSERT INTO fine SELECT generate_series(1, 10);",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    // verify cannot see it
    assert_eq!(backup(&["verify", "latest"], &env).code, Some(0));
    let r = backup(&["drill", "latest"], &env);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr
            .contains("public.a_child: 25 rows in the backup, 0 restored: pg_restore"),
        "{}",
        r.output()
    );
    assert!(
        r.stderr.contains("relation \"z_ref\" does not exist"),
        "{}",
        r.output()
    );
    assert!(!r.stderr.contains("public.fine"), "{}", r.output());
    r.assert_no_secret(&pg.password);
    assert_eq!(drill_databases(&pg), Vec::<String>::new());
    let drill = manifests(dir.path()).pop().unwrap().drill.unwrap();
    assert!(!drill.ok);
    assert_eq!(drill.rows_missing, 25);

    // a drill of the latest backup by hand is the sidecar's health too
    let status = dir.path().join("status.json");
    let env = [
        env[0],
        env[1],
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ];
    assert_eq!(backup(&["now"], &env).code, Some(0));
    assert!(healthy(&status));
    assert_eq!(backup(&["drill", "latest"], &env).code, Some(1));
    assert!(!healthy(&status));
}

/// An extension installed in the server's share directory for one test, removed
/// when dropped (so a cluster started from the same installation lacks it).
struct Extension {
    files: Vec<std::path::PathBuf>,
}

impl Extension {
    fn install(name: &str) -> Extension {
        let out = Command::new(bin_dir().join("pg_config"))
            .arg("--sharedir")
            .output()
            .unwrap();
        let share = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dir = share.join("extension");
        let control = dir.join(format!("{name}.control"));
        let sql = dir.join(format!("{name}--1.0.sql"));
        std::fs::write(
            &control,
            "default_version = '1.0'\nrelocatable = true\ntrusted = false\n",
        )
        .unwrap();
        std::fs::write(
            &sql,
            "CREATE FUNCTION ext_double(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';\n",
        )
        .unwrap();
        Extension {
            files: vec![control, sql],
        }
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn an_extension_the_drill_server_lacks_fails_the_drill() {
    let pg = Postgres::start();
    let scratch = Postgres::start();
    scratch.psql("ALTER ROLE app CREATEDB");
    let name = format!("dockhand_drill_{}", std::process::id());
    let ext = Extension::install(&name);
    pg.psql_db(
        "app",
        &format!(
            "CREATE EXTENSION {name} SCHEMA public;
             SET ROLE app;
             CREATE TABLE uses_ext (x int DEFAULT public.ext_double(1));
             INSERT INTO uses_ext SELECT generate_series(1, 12);"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    let r = backup(&["now"], &env);
    assert_eq!(r.code, Some(0), "{}", r.output());
    drop(ext);
    let into = scratch.url();
    let before = databases(&pg);
    let r = backup(
        &["drill", "latest"],
        &[env[0], env[1], ("BACKUP_DRILL_URL", &into)],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr
            .contains("public.uses_ext: 12 rows in the backup, the table was not restored"),
        "{}",
        r.output()
    );
    assert!(r.stderr.contains(&name), "{}", r.output());
    assert_eq!(drill_databases(&scratch), Vec::<String>::new());
    // the drill ran on the other server only
    assert_eq!(databases(&pg), before);
}

#[test]
fn sigterm_mid_drill_leaves_nothing_behind() {
    let pg = Postgres::start();
    pg.psql("ALTER ROLE app CREATEDB");
    // a CHECK that is slow only in a drill's database: the restore takes long enough
    // to be stopped in the middle
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE FUNCTION public.slow(i int) RETURNS boolean LANGUAGE sql VOLATILE AS
           $$SELECT CASE WHEN current_database() LIKE '%\\_drill\\_%' THEN pg_sleep(0.01) IS NOT NULL ELSE true END$$;
         CREATE TABLE big (id int CHECK (public.slow(id)));
         INSERT INTO big SELECT generate_series(1, 3000);",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    assert_eq!(backup(&["now"], &env).code, Some(0));
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_str().unwrap();
    let child = command(
        &bin("backup"),
        &["drill", "latest", "--jobs", "2"],
        &[env[0], env[1], ("BACKUP_TMP_DIR", t)],
    )
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while drill_databases(&pg).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no drill database");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(child, Duration::from_secs(60));
    assert_eq!(r.code, Some(143), "{}", r.output());
    assert_eq!(drill_databases(&pg), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the decoded backup was left"
    );
}

fn healthy(status: &Path) -> bool {
    Command::new(bin("healthcheck"))
        .arg(format!("file://{}?max-age=1h", status.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits until the metrics file holds `line`.
fn wait_for_metric(metrics: &Path, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(metrics).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the metrics: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_drills_record_their_result_and_a_failed_one_turns_the_healthcheck_unhealthy() {
    let pg = Postgres::start();
    let scratch = Postgres::start();
    scratch.psql("ALTER ROLE app CREATEDB");
    good(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let status = dir.path().join("status.json");
    let metrics = dir.path().join("metrics.prom");
    let url = pg.url();
    let into = scratch.url();
    let (s, mf) = (status.to_str().unwrap(), metrics.to_str().unwrap());
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", d),
        ("BACKUP_STATUS_FILE", s),
        ("BACKUP_METRICS_FILE", mf),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_SCHEDULE", "0 3 * * *"),
        ("BACKUP_DRILL", "after-backup"),
        ("BACKUP_DRILL_URL", into.as_str()),
    ];
    let daemon = command(&bin("backup"), &[], &env).spawn().unwrap();
    wait_for_metric(&metrics, "dockhand_backup_drill_success 1");
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(daemon, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(r.stderr.contains("drill of app-"), "{}", r.output());
    assert!(healthy(&status));
    let m = manifests(dir.path()).pop().unwrap();
    assert!(m.drill.as_ref().is_some_and(|d| d.ok), "{m:?}");
    assert_eq!(drill_databases(&scratch), Vec::<String>::new());

    // a table that does not restore: the next backup's drill fails
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE TABLE z_ref (id int PRIMARY KEY);
         INSERT INTO z_ref SELECT generate_series(1, 30);
         CREATE FUNCTION ref_ok(i int) RETURNS boolean LANGUAGE sql STABLE
             AS 'SELECT EXISTS (SELECT 1 FROM z_ref WHERE id = i)';
         CREATE TABLE a_child (id int PRIMARY KEY, ref int CHECK (ref_ok(ref)));
         INSERT INTO a_child SELECT i, i FROM generate_series(1, 25) i;",
    );
    let mut env = env.to_vec();
    let daemon = command(&bin("backup"), &[], &env).spawn().unwrap();
    wait_for_metric(&metrics, "dockhand_backup_drill_success 0");
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(daemon, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr
            .contains("public.a_child: 25 rows in the backup, 0 restored"),
        "{}",
        r.output()
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("dockhand_backup_restore_rows_missing 25\n"),
        "{text}"
    );
    assert!(!healthy(&status), "a failed drill must be unhealthy");
    let hc = Command::new(bin("healthcheck"))
        .arg(format!("file://{}?max-age=1h", status.display()))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&hc.stdout).to_string() + &String::from_utf8_lossy(&hc.stderr);
    assert!(said.contains("the last backup drill failed"), "{said}");
    let v = std::fs::read_to_string(&status).unwrap();
    assert!(v.contains("public.a_child: 25 rows in the backup"), "{v}");
    r.assert_no_secret(&pg.password);
    assert!(!v.contains(&pg.password) && !text.contains(&pg.password));

    // fixed, and the latest backup drilled again on a cron schedule of its own,
    // between runs: healthy again
    pg.psql_db("app", "DROP TABLE a_child; DROP FUNCTION ref_ok(int)");
    env.retain(|(k, _)| *k != "BACKUP_DRILL");
    env.push(("BACKUP_DRILL", "*/2 * * * * *"));
    let daemon = command(&bin("backup"), &[], &env).spawn().unwrap();
    wait_for_metric(&metrics, "dockhand_backup_drill_success 1");
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(daemon, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(healthy(&status), "{}", r.output());
    assert_eq!(drill_databases(&scratch), Vec::<String>::new());

    // a BACKUP_DRILL that is neither off, after-backup nor a schedule: exit 2
    env.retain(|(k, _)| *k != "BACKUP_DRILL");
    env.push(("BACKUP_DRILL", "nightly"));
    let r = backup(&[], &env);
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("BACKUP_DRILL"), "{}", r.output());
}

#[test]
fn list_shows_each_drill_and_restore_latest_warns_when_the_latest_failed_its_drill() {
    let pg = Postgres::start();
    good(&pg);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let env = [("DIRECT_URL", url.as_str()), ("BACKUP_DIR", d)];
    assert_eq!(backup(&["now"], &env).code, Some(0));
    assert_eq!(backup(&["drill", "latest"], &env).code, Some(0));
    let good_name = manifests(dir.path()).pop().unwrap().name;
    pg.psql_db(
        "app",
        "SET ROLE app;
         CREATE TABLE z_ref (id int PRIMARY KEY);
         INSERT INTO z_ref VALUES (1);
         CREATE FUNCTION ref_ok(i int) RETURNS boolean LANGUAGE sql STABLE
             AS 'SELECT EXISTS (SELECT 1 FROM z_ref WHERE id = i)';
         CREATE TABLE a_child (ref int CHECK (ref_ok(ref)));
         INSERT INTO a_child VALUES (1);",
    );
    assert_eq!(backup(&["now"], &env).code, Some(0));
    let list = backup(&["list"], &env);
    let row = |name: &str| {
        list.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    let bad_name = manifests(dir.path()).pop().unwrap().name;
    assert!(list.stdout.lines().next().unwrap().ends_with("DRILLED"));
    assert!(row(&bad_name).ends_with(" no"), "{}", list.stdout);
    assert_eq!(backup(&["drill", "latest"], &env).code, Some(1));
    let list = backup(&["list"], &env);
    let row = |name: &str| {
        list.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row(&good_name).contains(" ok 20"), "{}", list.stdout);
    assert!(
        row(&bad_name).contains(" FAILED 20") && row(&bad_name).ends_with("(1 problem)"),
        "{}",
        list.stdout
    );
    let r = backup(&["restore", "latest"], &env);
    assert!(
        r.stderr
            .contains(&format!("the latest backup, {bad_name}, failed its drill"))
            && r.stderr.contains(&format!(
                "the newest backup whose drill passed is {good_name}"
            )),
        "{}",
        r.output()
    );
}

#[test]
fn bad_drill_input_exits_2_saying_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = "postgres://app:pw@127.0.0.1:1/app";
    let env = [("DIRECT_URL", url), ("BACKUP_DIR", d)];
    for (args, extra, says) in [
        (&["drill"][..], None, "needs a backup name"),
        (
            &["drill", "latest", "--into", "nonsense"][..],
            None,
            "--into/BACKUP_DRILL_URL",
        ),
        (
            &["drill", "latest", "--to", "postgres://x/y"][..],
            None,
            "does not take --to",
        ),
        (
            &["restore", "latest", "--keep"][..],
            None,
            "does not take --keep",
        ),
        (
            &["drill", "latest"][..],
            Some(("BACKUP_DRILL_SQL", "/nonexistent/checks.sql")),
            "BACKUP_DRILL_SQL /nonexistent/checks.sql",
        ),
    ] {
        let mut e = env.to_vec();
        e.extend(extra);
        let r = backup(args, &e);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.output());
        assert!(r.stderr.contains(says), "{args:?}: {}", r.output());
        r.assert_no_secret("pw@");
    }
}

#[test]
fn a_daemon_drill_waits_for_a_drill_server_that_is_still_starting() {
    let pg = Postgres::start();
    let mut scratch = Postgres::start();
    scratch.psql("ALTER ROLE app CREATEDB");
    good(&pg);
    // a cold start: the drill server comes up after the first backup is made
    scratch.stop_server();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let metrics = dir.path().join("metrics.prom");
    let url = pg.url();
    let into = scratch.url();
    let env = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_DIR", d),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
        ("BACKUP_ON_START", "true"),
        ("BACKUP_SCHEDULE", "0 3 * * *"),
        ("BACKUP_DRILL", "after-backup"),
        ("BACKUP_DRILL_URL", into.as_str()),
    ];
    let daemon = command(&bin("backup"), &[], &env).spawn().unwrap();
    wait_for_metric(&metrics, "dockhand_backup_runs_total{result=\"success\"} 1");
    std::thread::sleep(Duration::from_secs(2));
    scratch.start_server();
    wait_for_metric(&metrics, "dockhand_backup_drill_success 1");
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(daemon, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.output());
}

/// A drill reads the copy in S3 as a restore does: S3 only (no folder), and `--from
/// s3` when the folder has a copy too; the counts compared are the manifest's.
#[test]
fn a_drill_from_s3_restores_the_copy_in_the_bucket() {
    use dockhand_tests::s3::S3;
    let pg = Postgres::start();
    good(&pg);
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = pg.url();
    let endpoint = s3.endpoint();
    let s3_only = [
        ("DIRECT_URL", url.as_str()),
        ("BACKUP_S3_BUCKET", bucket.as_str()),
        ("BACKUP_S3_PREFIX", "drills"),
        ("BACKUP_S3_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("AWS_REGION", s3.region),
    ];
    assert_eq!(backup(&["now"], &s3_only).code, Some(0));
    let before = databases(&pg);
    let r = backup(&["drill", "latest"], &s3_only);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        r.stderr.contains("every table's rows as in the backup"),
        "the drill compared the counts of the manifest in S3: {}",
        r.output()
    );
    r.assert_no_secret(&pg.password);
    r.assert_no_secret(s3.secret_key);
    assert_eq!(databases(&pg), before, "the scratch database was left");

    // with a folder too: --from s3 reads the bucket's copy, and a copy that is gone
    // from the bucket is never taken from the folder instead
    let mut both = s3_only.to_vec();
    both.push(("BACKUP_DIR", d));
    assert_eq!(backup(&["now"], &both).code, Some(0));
    let r = backup(&["drill", "latest", "--from", "s3", "--jobs", "1"], &both);
    assert_eq!(r.code, Some(0), "{}", r.output());
    let m = manifests(dir.path()).pop().unwrap();
    let (status, _) = s3.request("DELETE", &format!("/{bucket}/drills/{}", m.file), b"");
    assert!((200..300).contains(&status), "{status}");
    // a backup whose object is gone is not a backup in S3: by name it fails, and
    // `latest` is the newest one complete there
    let r = backup(&["drill", &m.name, "--from", "s3"], &both);
    assert_eq!(r.code, Some(1), "{}", r.output());
    let r = backup(&["drill", "latest", "--from", "s3"], &both);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(!r.stderr.contains(&m.name), "{}", r.output());
    assert_eq!(databases(&pg), before, "a failed drill leaves nothing");
}
