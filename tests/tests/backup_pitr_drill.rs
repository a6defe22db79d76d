//! `backup drill --pitr`, end to end: a real PostgreSQL streams its WAL to the sidecar,
//! `backup base` takes a base backup, rows are written after it, and the drill
//! recovers the chain to the latest point with a throwaway PostgreSQL of its own (run
//! as the user `postgres`, since the tests run as root), checks it and records the
//! result; a gap in the stored WAL fails it, a stop signal cleans up, and flags that
//! mean nothing to it are refused.

use dockhand_tests::{env, files};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dockhand::backup::manifest::Manifest;
use dockhand_tests::bins::bin;
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::run::Run;
use dockhand_tests::s3::S3;

fn backup(args: &[&str], env: &[(String, String)]) -> Run {
    dockhand_tests::run::run(command(args, env), Duration::from_secs(600))
}

fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    dockhand_tests::run::command(&bin("backup"), args, &env)
}

/// True when the sidecar's slot has a receiver.
fn streaming(pg: &Postgres) -> bool {
    pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dockhand' AND active")
        == "1"
}

/// True once the stored WAL in `dir` holds segment `seg`.
fn stored(dir: &Path, seg: &str) -> bool {
    files(dir)
        .iter()
        .any(|f| f.starts_with(&format!("_wal-{seg}-")) && f.ends_with(".manifest.json"))
}

/// Writes rows `from..=to` into `t` and completes the segment they are in; its name.
fn write_and_switch(pg: &Postgres, from: u32, to: u32) -> String {
    pg.psql_db(
        "app",
        &format!("INSERT INTO t SELECT generate_series({from}, {to})"),
    );
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    seg
}

/// A chain to drill: a base backup of a cluster whose `t` holds 1000 rows, then
/// `segments` completed segments of 100 rows each written after it, all stored by
/// the daemon (`e` says where; `is_stored` tells a segment stored there). The source
/// server is stopped at the end, as a lost volume would be: the drill needs nothing
/// of it. The base backup's name, and the segments written after it.
fn chain(
    e: &[(String, String)],
    is_stored: &dyn Fn(&str) -> bool,
    segments: u32,
) -> (String, Vec<String>) {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000);",
    );
    let mut e = e.to_vec();
    e.extend(env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]));
    let child = command(&["daemon"], &e)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stop = |child: std::process::Child| {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        dockhand_tests::run::finish(child, Duration::from_secs(60))
    };
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop(child).stderr);
    }
    let r = backup(&["base"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let base = r.stdout.trim().to_string();
    let segs: Vec<String> = (0..segments)
        .map(|n| write_and_switch(&pg, 1001 + n * 100, 1100 + n * 100))
        .collect();
    let arrived = dockhand_tests::wait_until(Duration::from_secs(120), || {
        segs.iter().all(|s| is_stored(s))
    });
    let r = stop(child);
    assert!(arrived, "{segs:?} not stored\n{}", r.stderr);
    (base, segs)
}

/// A folder the drill's server (the user `postgres`) can reach, for its scratch
/// directory: `BACKUP_TMP_DIR`.
fn reachable(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// The processes whose command line names `path` (the drill's server and its
/// children name their data directory).
fn processes_naming(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(&needle)
                .then(|| format!("{}: {text}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// The status file's `last_drill`.
fn last_drill(status: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(status).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["last_drill"].clone()
}

#[test]
fn a_pitr_drill_recovers_the_rows_written_after_the_base_backup_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = reachable(dir.path());
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let metrics = dir.path().join("metrics.prom");
    let sql = dir.path().join("checks.sql");
    // 1000 rows were in the base backup; 200 came after it, from the WAL alone.
    std::fs::write(
        &sql,
        "SELECT count(*) = 1200 FROM t;\nSELECT max(id) = 1200 FROM t;\n",
    )
    .unwrap();
    let e = env(&[("BACKUP_DIR", d.to_str().unwrap())]);
    let (base, _) = chain(&e, &|s| stored(&d, s), 2);

    let mut e = e;
    e.extend(env(&[
        // the source's URL, for the checks' user and database (its server is gone)
        ("DIRECT_URL", "postgres://app:secret-pw@127.0.0.1:1/app"),
        ("BACKUP_TMP_DIR", tmp.to_str().unwrap()),
        ("BACKUP_DRILL_SQL", sql.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
    ]));
    // Left by two earlier drills: one killed (its process gone: removed), one still
    // running (this test's process stands for it: left alone).
    let dead = (1..4_000_000)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let killed = format!("dockhand-pitr-drill-1765000000-{dead}-000000001");
    let running = format!(
        "dockhand-pitr-drill-1765000000-{}-000000002",
        std::process::id()
    );
    for name in [&killed, &running] {
        std::fs::create_dir_all(tmp.join(name).join("data")).unwrap();
        std::fs::write(tmp.join(name).join("data/PG_VERSION"), "15\n").unwrap();
    }
    let started = std::time::Instant::now();
    let r = backup(&["drill", "--pitr"], &e);
    let took = started.elapsed();
    assert_eq!(files(&tmp), std::slice::from_ref(&running), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("removed {}", tmp.join(&killed).display())),
        "{}",
        r.stderr
    );
    std::fs::remove_dir_all(tmp.join(&running)).unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.assert_no_secret("secret-pw");
    eprintln!("drill --pitr took {took:?}");
    assert!(
        r.stderr
            .contains(&format!("drill of {base} passed: recovered to 20")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("WAL files) in "), "{}", r.stderr);
    assert!(r.stderr.contains("s behind now"), "{}", r.stderr);
    assert!(r.stderr.contains("2 databases connect"), "{}", r.stderr);

    // Recorded: the base backup's manifest, the status file, the metrics.
    let m = Manifest::from_json(
        &std::fs::read_to_string(d.join(format!("{base}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let drill = m.drill.expect("the drill recorded in the manifest");
    assert!(drill.ok && drill.problems.is_empty(), "{drill:?}");
    let last = last_drill(&status);
    assert_eq!(last["backup"], base.as_str(), "{last}");
    assert_eq!(last["ok"], true, "{last}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("dockhand_backup_drill_success 1"), "{prom}");
    let list = backup(&["list"], &e);
    assert!(list.stdout.contains("ok 20"), "{}", list.stdout);

    // Nothing left behind: no scratch directory, no server.
    assert_eq!(files(&tmp), Vec::<String>::new());
    assert_eq!(processes_naming(&tmp), Vec::<String>::new());

    // --keep keeps the data directory, its server stopped, and prints its path.
    let r = backup(&["drill", "--pitr", "--keep"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let kept = PathBuf::from(r.stdout.trim());
    assert!(kept.starts_with(&tmp), "{}", r.stdout);
    assert!(kept.join("PG_VERSION").exists(), "{}", r.stdout);
    assert!(!kept.join("postmaster.pid").exists(), "{}", r.stdout);
    assert_eq!(processes_naming(&tmp), Vec::<String>::new());

    // A check that does not hold fails the drill, and the status says so.
    std::fs::write(&sql, "SELECT count(*) = 1000 FROM t\n").unwrap();
    std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
    let r = backup(&["drill", "--pitr"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("BACKUP_DRILL_SQL check 1"),
        "{}",
        r.stderr
    );
    assert_eq!(last_drill(&status)["ok"], false);
    assert_eq!(files(&tmp), Vec::<String>::new());
}

#[test]
fn a_gap_in_the_stored_wal_fails_the_drill_and_the_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = reachable(dir.path());
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let e = env(&[("BACKUP_DIR", d.to_str().unwrap())]);
    let (base, segs) = chain(&e, &|s| stored(&d, s), 3);
    // The middle segment goes missing: recovery would stop quietly before it.
    let lost = &segs[1];
    for f in files(&d) {
        if f.starts_with(&format!("_wal-{lost}-")) {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
    let mut e = e;
    e.extend(env(&[
        ("BACKUP_TMP_DIR", tmp.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ]));
    let r = backup(&["drill", "--pitr"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("drill of {base} failed"))
            && r.stderr.contains("WAL missing after the base backup")
            && r.stderr.contains(lost.as_str())
            && r.stderr.contains("the drill's recovery ended at"),
        "{}",
        r.stderr
    );
    let last = last_drill(&status);
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["problems"].to_string().contains(lost.as_str()),
        "{last}"
    );
    assert_eq!(files(&tmp), Vec::<String>::new());
    assert_eq!(processes_naming(&tmp), Vec::<String>::new());

    // A server that stops before it opens (its user cannot reach the directory):
    // the end of its log says why.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut e3 = e.clone();
    e3.push(("BACKUP_TMP_DIR".into(), private.to_str().unwrap().into()));
    let r = backup(&["drill", "--pitr"], &e3);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("PostgreSQL stopped before it finished recovery")
            && r.stderr.contains("Permission denied")
            && r.stderr.contains("who must be able to reach"),
        "{}",
        r.stderr
    );
    assert_eq!(files(&private), Vec::<String>::new());
    assert_eq!(last_drill(&status)["ok"], false);

    // A sidecar with the client tools of the major but not the server: told what to
    // install, before anything is unpacked.
    let client_only = dir.path().join("client-only");
    std::fs::create_dir(&client_only).unwrap();
    for tool in ["pg_dump", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(bin_dir().join(tool), client_only.join(tool)).unwrap();
    }
    let mut e2 = e.clone();
    e2.push(("BACKUP_PG_BIN".into(), client_only.to_str().unwrap().into()));
    let r = backup(&["drill", "--pitr"], &e2);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("no `postgres` (the server binaries)")
            && r.stderr.contains("install the PostgreSQL"),
        "{}",
        r.stderr
    );
    assert_eq!(files(&tmp), Vec::<String>::new());
}

#[test]
fn a_stop_signal_during_the_drill_stops_its_server_and_removes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = reachable(dir.path());
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let sql = dir.path().join("slow.sql");
    // a check that takes a while: the signal arrives while the server runs
    std::fs::write(&sql, "SELECT (SELECT true FROM pg_sleep(60))\n").unwrap();
    let e = env(&[("BACKUP_DIR", d.to_str().unwrap())]);
    chain(&e, &|s| stored(&d, s), 1);
    let mut e = e;
    e.extend(env(&[
        ("BACKUP_TMP_DIR", tmp.to_str().unwrap()),
        ("BACKUP_DRILL_SQL", sql.to_str().unwrap()),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ]));
    let child = command(&["drill", "--pitr"], &e).spawn().unwrap();
    let socket = || {
        files(&tmp)
            .first()
            .is_some_and(|s| tmp.join(s).join(".s.PGSQL.5432").exists())
    };
    let up = dockhand_tests::wait_until(Duration::from_secs(60), socket);
    let running = processes_naming(&tmp);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = dockhand_tests::run::finish(child, Duration::from_secs(60));
    assert!(up, "the drill's server never listened: {}", r.stderr);
    assert!(!running.is_empty(), "no server seen: {}", r.stderr);
    assert_eq!(r.code, Some(143), "{}", r.stderr);
    assert!(r.stderr.contains("drill stopped"), "{}", r.stderr);
    assert_eq!(files(&tmp), Vec::<String>::new(), "{}", r.stderr);
    assert_eq!(processes_naming(&tmp), Vec::<String>::new());
    // a stop is no result: nothing recorded
    assert_eq!(last_drill(&status), serde_json::Value::Null);
}

#[test]
fn flags_that_mean_nothing_to_a_pitr_drill_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(&[("BACKUP_DIR", dir.path().to_str().unwrap())]);
    for (args, says) in [
        (
            &["drill", "--pitr", "--into", "postgres://a@b/c"][..],
            "does not take --into",
        ),
        (
            &["drill", "--pitr", "--jobs", "2"][..],
            "does not take --jobs",
        ),
        (
            &["drill", "app-20261207", "--pitr"][..],
            "takes no backup name",
        ),
        (&["restore", "latest", "--pitr"][..], "does not take --pitr"),
    ] {
        let r = backup(args, &e);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    // no base backup: said, exit 1
    let r = backup(&["drill", "--pitr"], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("no base backup to drill"), "{}", r.stderr);
}

#[test]
fn a_pitr_drill_reads_the_chain_from_s3_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = reachable(dir.path());
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = s3.backup_env(&bucket, "pitr");
    let mut streamed = e.clone();
    streamed.push((
        "BACKUP_WAL_SPOOL".into(),
        dir.path().join("spool").to_str().unwrap().into(),
    ));
    let in_bucket = |seg: &str| {
        let (code, body) = s3.request("GET", &format!("/{bucket}?list-type=2&prefix=pitr/"), b"");
        code == 200 && body.contains(&format!("pitr/_wal-{seg}-"))
    };
    chain(&streamed, &in_bucket, 1);
    let sql = dir.path().join("checks.sql");
    std::fs::write(&sql, "SELECT count(*) = 1100 FROM t\n").unwrap();
    e.push(("BACKUP_TMP_DIR".into(), tmp.to_str().unwrap().into()));
    e.push(("BACKUP_DRILL_SQL".into(), sql.to_str().unwrap().into()));
    // the checks run on the backup URL's database (its server is gone)
    e.push(("DIRECT_URL".into(), "postgres://app@127.0.0.1:1/app".into()));
    let r = backup(&["drill", "--pitr", "--from", "s3"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("passed: recovered to 20"), "{}", r.stderr);
    assert_eq!(files(&tmp), Vec::<String>::new());
}
