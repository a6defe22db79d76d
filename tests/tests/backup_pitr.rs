//! Point-in-time recovery from the sidecar, end to end against a real PostgreSQL that
//! accepts replication connections: `backup base` streams `pg_basebackup`'s tar of the
//! whole cluster through the backup pipeline to the folder and S3, with a manifest
//! holding the WAL range it needs; a server that refuses replication is explained.

use dockhand_tests::env;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dockhand::backup::manifest::{Content, Manifest};
use dockhand_tests::bins::bin;
use dockhand_tests::pg::{bin_dir, Postgres};
use dockhand_tests::proc::{chown_to_service, service_command, Service};
use dockhand_tests::run::Run;
use dockhand_tests::s3::S3;

fn backup(args: &[&str], env: &[(String, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cmd = dockhand_tests::run::command(&bin("backup"), args, &env);
    dockhand_tests::run::run(cmd, Duration::from_secs(600))
}

/// The file names in `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Decompresses a `.tar.zst` into `into` with the system's zstd and tar.
fn unpack(file: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let mut zstd = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(zstd.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(tar.success(), "tar failed on {}", file.display());
    assert!(
        zstd.wait().unwrap().success(),
        "zstd failed on {}",
        file.display()
    );
}

/// The manifest at `path`, as dockhand reads it.
fn manifest(path: &Path) -> Manifest {
    let text = std::fs::read_to_string(path).unwrap();
    Manifest::from_json(&text).unwrap_or_else(|| panic!("not a manifest: {text}"))
}

#[test]
fn a_base_backup_holds_the_cluster_and_its_wal_range_in_the_folder_and_s3() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 1000) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = s3.backup_env(&bucket, "pitr");
    e.push(("DIRECT_URL".into(), pg.url()));
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let name = r.stdout.trim().to_string();
    assert!(name.starts_with("_base-"), "{}", r.stdout);
    assert!(!r.stderr.contains(&pg.password), "{}", r.stderr);

    // Folder: the data file and its manifest, nothing else left behind.
    let file = format!("{name}.tar.zst");
    assert_eq!(
        files(&d),
        vec![format!("{name}.manifest.json"), file.clone()],
        "{}",
        r.stderr
    );
    let m = manifest(&d.join(format!("{name}.manifest.json")));
    assert_eq!(m.kind, Content::Base, "{m:?}");
    assert_eq!(m.file, file);
    let wal = m.wal.clone().expect("a WAL range");
    assert_eq!(wal.timeline, 1, "{m:?}");
    let (start, end) = (wal.start, wal.end);
    let lsn = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(lsn(&start) <= lsn(&end), "{m:?}");
    let now: String = pg.psql("SELECT pg_current_wal_lsn()");
    assert!(lsn(&end) <= lsn(&now), "{m:?} now {now}");

    // The tar is the cluster: its backup label names the same start.
    let unpacked = dir.path().join("unpacked");
    unpack(&d.join(&file), &unpacked);
    let label = std::fs::read_to_string(unpacked.join("backup_label")).unwrap();
    // The range recorded holds the backup's own: from its start (the label's) on.
    let labelled = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a start in the label");
    assert!(
        lsn(&start) <= lsn(labelled) && lsn(labelled) <= lsn(&end),
        "{label}\n{m:?}"
    );
    assert!(
        label.contains(&format!("LABEL: dockhand {name}")),
        "{label}"
    );
    assert!(unpacked.join("PG_VERSION").exists());
    assert!(unpacked.join("global/pg_control").exists());

    // S3 holds the same object and manifest.
    let (status, body) = s3.request("GET", &format!("/{bucket}?list-type=2"), b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("pitr/{file}")), "{body}");
    assert!(
        body.contains(&format!("pitr/{name}.manifest.json")),
        "{body}"
    );

    // list shows it, verify reads it whole, restore refuses it.
    let list = backup(&["list", "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(list.stdout.contains(&name) && list.stdout.contains("(base backup)"));
    let v = backup(&["verify", &name, "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(v.code, Some(0), "{}", v.stderr);
    let v = backup(&["verify", &name, "--from", "s3"], &e);
    assert_eq!(v.code, Some(0), "{}", v.stderr);
    let r = backup(&["restore", &name, "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("base backup"), "{}", r.stderr);
    // `latest` means the newest database dump, never a base backup.
    let r = backup(&["verify", "latest", "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
}

#[test]
fn a_server_refusing_replication_is_explained_and_nothing_is_kept() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let e = env(&[("DIRECT_URL", &pg.url())]);

    // The role lacks REPLICATION.
    let r = backup(&["base", "--dir", d], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("REPLICATION"), "{}", r.stderr);
    assert!(!r.stderr.contains(&pg.password), "{}", r.stderr);
    assert_eq!(files(dir.path()), Vec::<String>::new());

    // REPLICATION, but no `replication` line in pg_hba.conf.
    pg.allow_replication();
    pg.deny_replication_in_hba();
    let r = backup(&["base", "--dir", d], &e);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("pg_hba.conf") && r.stderr.contains("`replication`"),
        "{}",
        r.stderr
    );
    assert_eq!(files(dir.path()), Vec::<String>::new());
}

#[test]
fn a_base_backup_with_the_wal_of_its_range_starts_a_cluster_with_the_rows() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db(
        "app",
        "SET ROLE app; CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 1234);",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[("DIRECT_URL", &pg.url())]);
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let name = r.stdout.trim().to_string();
    // The backup's end record on disk, in a complete segment.
    pg.psql("SELECT pg_switch_wal()");

    // Unpacked into an empty data directory, with the source's own WAL as the
    // archive (the WAL streaming is not built yet), PostgreSQL reaches consistency.
    let data = dir.path().join("restored");
    unpack(&d.join(format!("{name}.tar.zst")), &data);
    let wal = pg.dir.path().join("data/pg_wal");
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        format!(
            "restore_command = 'cp \"{}/%f\" \"%p\"'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n",
            wal.display()
        )
        .as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    chown_to_service(dir.path());
    let socket = dir.path().to_str().unwrap().to_string();
    let port = dockhand_tests::free_port();
    let mut cmd = service_command(bin_dir().join("postgres").to_str().unwrap());
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={socket}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("restored.log")).unwrap());
    let mut server = Service::spawn("postgres", cmd, nix::sys::signal::Signal::SIGQUIT);
    let count = || {
        Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-U", "postgres", "-h", &socket])
            .args(["-p", &port.to_string(), "-d", "app"])
            .args(["-c", "SELECT count(*) FROM t WHERE NOT pg_is_in_recovery()"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let up = dockhand_tests::wait_until(Duration::from_secs(60), || {
        server.running() && count().is_some_and(|c| c == "1234")
    });
    let log = std::fs::read_to_string(dir.path().join("restored.log")).unwrap_or_default();
    assert!(up, "recovered cluster: {:?}\n{log}", count());
}

/// The manifests in `dir` of the stored WAL file `file`.
fn stored_wal(dir: &Path, file: &str) -> Vec<Manifest> {
    files(dir)
        .iter()
        .filter(|f| f.starts_with(&format!("_wal-{file}-")) && f.ends_with(".manifest.json"))
        .map(|f| manifest(&dir.join(f)))
        .collect()
}

/// True when the sidecar's slot has a receiver.
fn streaming(pg: &Postgres) -> bool {
    pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dockhand' AND active")
        == "1"
}

/// Completes the current segment after a write; returns its name.
fn complete_a_segment(pg: &Postgres, n: u32) -> String {
    pg.psql_db(
        "app",
        &format!("INSERT INTO t SELECT generate_series({n} * 1000, {n} * 1000 + 999)"),
    );
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    seg
}

#[test]
fn the_daemon_streams_completed_wal_segments_to_the_folder_and_s3_across_a_restart() {
    let mut pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = s3.backup_env(&bucket, "wal");
    e.extend(env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("RUST_LOG", "info"),
    ]));
    let env_ref: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = dockhand_tests::run::command(&bin("backup"), &["daemon"], &env_ref)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stop = |child: std::process::Child| {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        dockhand_tests::run::finish(child, Duration::from_secs(60))
    };
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop(child).stderr);
    }

    let seg = complete_a_segment(&pg, 1);
    let arrived =
        dockhand_tests::wait_until(Duration::from_secs(60), || !stored_wal(&d, &seg).is_empty());
    if !arrived {
        panic!("{seg} not stored: {:?}\n{}", files(&d), stop(child).stderr);
    }
    let m = &stored_wal(&d, &seg)[0];
    assert_eq!(m.kind, Content::Wal);
    assert_eq!(m.dump_bytes, 16 << 20, "{m:?}");
    let (status, body) = s3.request("GET", &format!("/{bucket}?list-type=2"), b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("wal/{}", m.file)), "{body}");
    // Stored everywhere: gone from the spool (just after its manifests are written).
    let gone = dockhand_tests::wait_until(Duration::from_secs(30), || {
        !d.join(".wal-spool").join(&seg).exists()
    });
    assert!(gone, "{seg} still in the spool");

    // PostgreSQL restarts: the child is started again and the stream goes on.
    pg.stop_server();
    pg.start_server();
    if !dockhand_tests::wait_until(Duration::from_secs(120), || streaming(&pg)) {
        panic!("not streaming again: {}", stop(child).stderr);
    }
    let seg2 = complete_a_segment(&pg, 2);
    let arrived = dockhand_tests::wait_until(Duration::from_secs(60), || {
        !stored_wal(&d, &seg2).is_empty()
    });
    let r = stop(child);
    assert!(arrived, "{seg2} not stored: {:?}\n{}", files(&d), r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains(&pg.password), "{}", r.stderr);
    // `list` and retention leave WAL to the base backups that need it.
    let list = backup(&["list", "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let pruned = backup(
        &["prune", "--dir", d.to_str().unwrap(), "--keep-last", "1"],
        &[],
    );
    assert_eq!(pruned.code, Some(0), "{}", pruned.stderr);
    assert!(!stored_wal(&d, &seg).is_empty(), "{}", pruned.stdout);
}

/// Starts PostgreSQL on a recovered data directory; returns the server and its psql.
fn start_recovered(data: &Path, socket: &Path) -> (Service, u16) {
    chown_to_service(data);
    chown_to_service(socket);
    let port = dockhand_tests::free_port();
    let mut cmd = service_command(bin_dir().join("postgres").to_str().unwrap());
    cmd.arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", socket.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(socket.join("recovered.log")).unwrap());
    (
        Service::spawn("postgres", cmd, nix::sys::signal::Signal::SIGQUIT),
        port,
    )
}

fn psql_at(socket: &Path, port: u16, sql: &str) -> Option<String> {
    Command::new(bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-U", "postgres", "-d", "app", "-h"])
        .arg(socket)
        .args(["-p", &port.to_string(), "-c", sql])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn recover_to_a_time_finds_exactly_the_rows_committed_before_it() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]);
    let env_ref: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = dockhand_tests::run::command(&bin("backup"), &["daemon"], &env_ref)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stop = |child: std::process::Child| {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        dockhand_tests::run::finish(child, Duration::from_secs(60))
    };
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop(child).stderr);
    }
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Committed after the base backup, before T: replayed from the WAL.
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1, 100)");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    // After T: not there.
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(101, 200)");
    let last = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let arrived = dockhand_tests::wait_until(Duration::from_secs(60), || {
        !stored_wal(&d, &last).is_empty()
    });
    let r = stop(child);
    assert!(arrived, "{last} not stored: {:?}\n{}", files(&d), r.stderr);
    drop(pg); // the volume is lost

    // A data directory that is not empty is refused.
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("PG_VERSION"), "17").unwrap();
    let r = backup(
        &[
            "recover",
            "--to-time",
            &t,
            "--data-dir",
            full.to_str().unwrap(),
            "--dir",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    let r = backup(
        &[
            "recover",
            "--to-time",
            "yesterday",
            "--data-dir",
            full.to_str().unwrap(),
            "--dir",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);

    let data = dir.path().join("recovered");
    let r = backup(
        &[
            "recover",
            "--to-time",
            &t,
            "--data-dir",
            data.to_str().unwrap(),
            "--dir",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let socket = dir.path().join("socket");
    std::fs::create_dir_all(&socket).unwrap();
    let (mut server, port) = start_recovered(&data, &socket);
    let open = dockhand_tests::wait_until(Duration::from_secs(60), || {
        server.running()
            && psql_at(&socket, port, "SELECT pg_is_in_recovery()").is_some_and(|r| r == "f")
    });
    let log = std::fs::read_to_string(socket.join("recovered.log")).unwrap_or_default();
    assert!(open, "not recovered: {log}");
    assert_eq!(
        psql_at(&socket, port, "SELECT count(*), max(id) FROM t").as_deref(),
        Some("100|100"),
        "{log}"
    );
}

#[test]
fn a_slot_holding_more_wal_than_the_limit_is_warned_about_and_bad_wal_settings_refused() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    // The slot was left behind while the sidecar was away: WAL piled up on it.
    pg.psql("SELECT pg_create_physical_replication_slot('dockhand', true)");
    for n in 1..=3 {
        complete_a_segment(&pg, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_WAL_MAX_LAG", "16MiB"),
    ]);
    let env_ref: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = dockhand_tests::run::command(&bin("backup"), &["daemon"], &env_ref)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let up = dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let r = dockhand_tests::run::finish(child, Duration::from_secs(60));
    assert!(up, "{}", r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("more than BACKUP_WAL_MAX_LAG 16.0 MiB")
            && r.stderr.contains("max_slot_wal_keep_size"),
        "{}",
        r.stderr
    );

    for (name, value) in [
        ("BACKUP_WAL_MAX_LAG", "lots"),
        ("BACKUP_WAL_MAX_LAG", "0"),
        ("BACKUP_WAL_SLOT", "Bad-Slot'; DROP"),
        ("BACKUP_WAL_SLOT", &"s".repeat(64)),
    ] {
        let mut bad = e.clone();
        bad.push((name.to_string(), value.to_string()));
        // Settings are read by every command: `list` ends at once either way.
        let r = backup(&["list"], &bad);
        assert_eq!(r.code, Some(2), "{name}={value:?}: {}", r.stderr);
        assert!(r.stderr.contains(name), "{}", r.stderr);
    }
}

/// Starts `backup daemon` with `e`, its output collected.
fn start_daemon(e: &[(String, String)]) -> std::process::Child {
    let env_ref: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    dockhand_tests::run::command(&bin("backup"), &["daemon"], &env_ref)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a daemon with SIGTERM; its output.
fn stop_daemon(child: std::process::Child) -> Run {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    dockhand_tests::run::finish(child, Duration::from_secs(60))
}

/// The stored partials of segments in `dir`: (segment, data file), oldest first.
fn stored_partials(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<(i64, String, String, std::path::PathBuf)> = files(dir)
        .iter()
        .filter(|f| f.starts_with("_wal-") && f.ends_with(".manifest.json"))
        .filter_map(|f| {
            let m = Manifest::from_json(&std::fs::read_to_string(dir.join(f)).ok()?)?;
            let seg = m.name.strip_prefix("_wal-")?.split_once(".partial-")?.0;
            Some((
                m.started,
                m.name.clone(),
                seg.to_string(),
                dir.join(&m.file),
            ))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, s, p)| (s, p)).collect()
}

/// True when the stored (zstd) file at `path` holds `needle`.
fn holds(path: &Path, needle: &str) -> bool {
    let Ok(out) = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(path)
        .output()
    else {
        return false;
    };
    out.stdout
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Recovers `d` to the end of its WAL into a new data directory and starts PostgreSQL
/// there; the rows of `t` it has, once it opened.
fn recover_latest(dir: &Path, d: &Path, sql: &str) -> String {
    recover_to(dir, d, "latest", sql).1
}

/// Recovers `d` to `to` into a new data directory (`recovered`) and starts PostgreSQL
/// there; what `recover` said, and `sql`'s answer once the server opened.
fn recover_to(dir: &Path, d: &Path, to: &str, sql: &str) -> (Run, String) {
    let data = dir.join("recovered");
    let r = backup(
        &[
            "recover",
            "--to-time",
            to,
            "--data-dir",
            data.to_str().unwrap(),
            "--dir",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let socket = dir.join("socket");
    std::fs::create_dir_all(&socket).unwrap();
    let (mut server, port) = start_recovered(&data, &socket);
    let open = dockhand_tests::wait_until(Duration::from_secs(60), || {
        server.running()
            && psql_at(&socket, port, "SELECT pg_is_in_recovery()").is_some_and(|r| r == "f")
    });
    let log = std::fs::read_to_string(socket.join("recovered.log")).unwrap_or_default();
    assert!(open, "not recovered: {log}\n{}", r.stderr);
    let answer = psql_at(&socket, port, sql).unwrap_or_else(|| panic!("{sql}: {log}"));
    (r, answer)
}

/// Now, as `recover --to-time` takes it (UTC, microseconds).
fn utc_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PostgreSQL recovering to a time stops only on a transaction that ended after it;
/// at the end of the WAL short of it, it refuses to start ("recovery ended before
/// configured recovery target was reached"). A time past the last stored transaction
/// therefore recovers to the end of the stored WAL, saying so and when that last
/// transaction ended: the server opens with every row.
#[test]
fn a_time_past_the_end_of_the_stored_wal_recovers_to_its_end_and_says_so() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]);
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1, 100)");
    let last = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let arrived = dockhand_tests::wait_until(Duration::from_secs(60), || {
        !stored_wal(&d, &last).is_empty()
    });
    let r = stop_daemon(child);
    assert!(arrived, "{last} not stored: {:?}\n{}", files(&d), r.stderr);
    drop(pg);
    std::thread::sleep(Duration::from_millis(1100));
    let t = utc_now();

    let (r, rows) = recover_to(dir.path(), &d, &t, "SELECT count(*), max(id) FROM t");
    assert_eq!(rows, "100|100", "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the stored WAL ends before that time: its last transaction ended at 20"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("to the end of the stored WAL"),
        "{}",
        r.stderr
    );
    let conf = std::fs::read_to_string(dir.path().join("recovered/postgresql.auto.conf")).unwrap();
    // no time: the setting is there only to reset an older one to nothing
    let times: Vec<&str> = conf
        .lines()
        .filter(|l| l.starts_with("recovery_target_time "))
        .collect();
    assert_eq!(times, ["recovery_target_time = ''"], "{conf}");
}

/// A scheduled base backup that fails shows in the status file (`last_base_backup`,
/// `last_failure`) and the metrics as a failure, as a failed run does; one that then
/// succeeds shows as a success.
#[test]
fn a_failed_scheduled_base_backup_reaches_the_status_and_metrics() {
    let pg = Postgres::start();
    // The role may replicate but pg_hba.conf has no replication line: pg_basebackup
    // is refused.
    pg.psql("ALTER ROLE app REPLICATION");
    pg.deny_replication_in_hba();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let metrics = dir.path().join("metrics.prom");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_BASE_SCHEDULE", "*/2 * * * * *"),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ]);
    let child = start_daemon(&e);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let json = || serde_json::from_str::<serde_json::Value>(&read(&status)).ok();
    let failed = dockhand_tests::wait_until(Duration::from_secs(60), || {
        json().is_some_and(|v| v["last_base_backup"]["ok"] == false)
            && read(&metrics).contains("dockhand_backup_base_runs_total{result=\"failure\"} ")
    });
    if !failed {
        panic!(
            "no failed base backup recorded: {}\n{}\n{}",
            read(&status),
            read(&metrics),
            stop_daemon(child).stderr
        );
    }
    let v = json().unwrap();
    let reason = v["last_base_backup"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("replication"), "{v}");
    assert!(!reason.contains(&pg.password), "{v}");
    let failure = v["last_failure"]["reason"].as_str().unwrap_or_default();
    assert!(failure.starts_with("base backup: "), "{v}");
    let m = read(&metrics);
    assert!(
        m.lines().any(
            |l| l.starts_with("dockhand_backup_base_last_failure_timestamp_seconds ")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
    assert!(
        m.contains("dockhand_backup_base_runs_total{result=\"success\"} 0"),
        "{m}"
    );

    // Replication allowed: the next one succeeds, and says so.
    pg.allow_replication();
    let ok = dockhand_tests::wait_until(Duration::from_secs(60), || {
        json().is_some_and(|v| v["last_base_backup"]["ok"] == true)
    });
    let r = stop_daemon(child);
    assert!(ok, "{}\n{}", read(&status), r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = json().unwrap();
    let name = v["last_base_backup"]["name"].as_str().unwrap_or_default();
    assert!(name.starts_with("_base-"), "{v}");
    assert!(base_backups(&d).iter().any(|f| f.starts_with(name)), "{v}");
    let m = read(&metrics);
    assert!(
        !m.contains("dockhand_backup_base_runs_total{result=\"success\"} 0\n"),
        "{m}"
    );
    assert!(r.stderr.contains("base backup failed"), "{}", r.stderr);
}

/// pg_receivewal fills a new `.partial` with zeros up to the segment size before it
/// writes the first page: a copy taken meanwhile is short and all zeros, and recovery
/// stops on it ("has wrong size"), as CI once saw when the daemon was stopped just
/// after a segment switch. Such a file is never stored. Planted far ahead of the
/// stream (pg_receivewal skips a partial of the wrong size), while the real partial
/// is stored every second beside it.
#[test]
fn a_partial_still_being_created_is_never_stored() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let spool = d.join(".wal-spool");
    std::fs::create_dir_all(&spool).unwrap();
    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let lo = u32::from_str_radix(&current[16..], 16).unwrap();
    let planted = format!("{}{:08X}", &current[..16], lo + 0x40);
    let zeros = std::fs::File::create(spool.join(format!("{planted}.partial"))).unwrap();
    zeros.set_len(16_703_488).unwrap();
    drop(zeros);
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_WAL_RPO", "1s"),
        ("RUST_LOG", "info"),
    ]);
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1, 100)");
    let stored = dockhand_tests::wait_until(Duration::from_secs(60), || {
        stored_partials(&d).iter().any(|(s, _)| *s == current)
    });
    // Passes of a second each, all meeting the planted file.
    std::thread::sleep(Duration::from_secs(3));
    let out = stop_daemon(child);
    assert!(
        stored,
        "{current} not stored: {:?}\n{}",
        files(&d),
        out.stderr
    );
    let names = files(&d);
    assert!(
        !names.iter().any(|f| f.contains(&planted)),
        "{planted} stored: {names:?}\n{}",
        out.stderr
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn the_segment_being_written_is_stored_every_rpo_and_recovery_replays_it() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int, note text);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_WAL_RPO", "1s"),
        ("RUST_LOG", "info"),
    ]);
    let mut child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    // A commit reaches the folder in a stored partial segment, without a switch.
    let first = format!("rpo-first-{}", dockhand_tests::token(8));
    pg.psql_db("app", &format!("INSERT INTO t VALUES (1, '{first}')"));
    let in_a_partial = |marker: &str| {
        stored_partials(&d)
            .iter()
            .rev()
            .find(|(_, p)| holds(p, marker))
            .map(|(s, _)| s.clone())
    };
    let mut seg = None;
    dockhand_tests::wait_until(Duration::from_secs(60), || {
        seg = in_a_partial(&first);
        seg.is_some()
    });
    let Some(seg) = seg else {
        panic!(
            "no partial holds the row: {:?}\n{}",
            files(&d),
            stop_daemon(child).stderr
        );
    };
    // The complete segment replaces its partials.
    pg.psql("SELECT pg_switch_wal()");
    let replaced = dockhand_tests::wait_until(Duration::from_secs(60), || {
        !stored_wal(&d, &seg).is_empty() && stored_partials(&d).iter().all(|(s, _)| *s != seg)
    });
    if !replaced {
        panic!(
            "{seg}: partials not replaced: {:?}\n{}",
            files(&d),
            stop_daemon(child).stderr
        );
    }

    let second = format!("rpo-second-{}", dockhand_tests::token(8));
    pg.psql_db("app", &format!("INSERT INTO t VALUES (2, '{second}')"));
    if !dockhand_tests::wait_until(Duration::from_secs(60), || in_a_partial(&second).is_some()) {
        panic!(
            "no partial holds the second row: {:?}\n{}",
            files(&d),
            stop_daemon(child).stderr
        );
    }
    // The host is lost: nothing is stored on the way down.
    child.kill().unwrap();
    let r = dockhand_tests::run::finish(child, Duration::from_secs(60));
    assert!(!r.stderr.contains(&pg.password), "{}", r.stderr);
    drop(pg);

    assert_eq!(
        recover_latest(
            dir.path(),
            &d,
            "SELECT string_agg(note, ',' ORDER BY id) FROM t"
        ),
        format!("{first},{second}")
    );
}

/// The segment numbers of the WAL segments stored in `dir` (complete or partial).
fn stored_segments(dir: &Path) -> Vec<(String, u64)> {
    files(dir)
        .iter()
        .filter(|f| f.starts_with("_wal-") && f.ends_with(".manifest.json"))
        .filter_map(|f| {
            let seg = f.strip_prefix("_wal-")?.get(..24)?.to_string();
            let n = u64::from_str_radix(&seg[8..16], 16).ok()? * 0x100
                + u64::from_str_radix(&seg[16..], 16).ok()?;
            Some((seg, n))
        })
        .collect()
}

fn segment_of_lsn(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap();
    ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) >> 24
}

#[test]
fn retention_keeps_the_wal_of_the_oldest_base_backup_kept_and_deletes_older_wal() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = s3.backup_env(&bucket, "walret");
    e.extend(env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]));
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let stored = |n: u32| {
        let seg = complete_a_segment(&pg, n);
        if !dockhand_tests::wait_until(Duration::from_secs(60), || !stored_wal(&d, &seg).is_empty())
        {
            panic!("{seg} not stored: {:?}", files(&d));
        }
        seg
    };
    let old = stored(1);
    let base = |e: &[(String, String)]| {
        let r = backup(&["base"], e);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let name = r.stdout.trim().to_string();
        manifest(&d.join(format!("{name}.manifest.json")))
    };
    let first = base(&e);
    stored(2);
    let second = base(&e);
    let after = stored(3);
    let r = stop_daemon(child);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let start = segment_of_lsn(&second.wal.as_ref().unwrap().start);
    assert!(segment_of_lsn(&first.wal.as_ref().unwrap().start) < start);
    let before = stored_segments(&d);
    assert!(before.iter().any(|(_, n)| *n < start), "{before:?}");

    let mut keep_one = e.clone();
    keep_one.push(("BACKUP_KEEP_LAST".into(), "1".into()));
    // A dry run names the WAL that goes, and deletes nothing.
    let r = backup(&["prune", "--dry-run"], &keep_one);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("would delete  _wal-{old}-")) && r.stdout.contains(&second.name),
        "{}",
        r.stdout
    );
    assert_eq!(stored_segments(&d), before);

    let r = backup(&["prune"], &keep_one);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!d.join(format!("{}.manifest.json", first.name)).exists());
    let left = stored_segments(&d);
    assert!(
        left.iter().all(|(_, n)| *n >= start),
        "{left:?}\n{}",
        r.stdout
    );
    assert!(left.iter().any(|(_, n)| *n == start), "{left:?}");
    assert!(!stored_wal(&d, &after).is_empty());
    // S3 alike: the old segment's data and manifest are gone, the kept ones are there.
    let (status, body) = s3.request("GET", &format!("/{bucket}?list-type=2&prefix=walret/"), b"");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&format!("_wal-{old}-")), "{body}");
    assert!(body.contains(&format!("_wal-{after}-")), "{body}");

    // Recovery from the base backup kept still works from what is left.
    drop(pg);
    assert_eq!(
        recover_latest(dir.path(), &d, "SELECT count(*) FROM t"),
        "3000"
    );
}

/// The base backups in `dir`.
fn base_backups(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    files(dir)
        .into_iter()
        .filter(|f| f.starts_with("_base-") && f.ends_with(".manifest.json"))
        .collect()
}

#[test]
fn the_daemon_takes_base_backups_on_their_own_schedule_with_retention_after_each() {
    let pg = Postgres::start();
    pg.allow_replication();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_BASE_SCHEDULE", "*/2 * * * * *"),
        ("BACKUP_KEEP_LAST", "1"),
        ("RUST_LOG", "info"),
    ]);
    let child = start_daemon(&e);
    // A base backup made, then a later one, after which retention deleted the first.
    let mut first: Option<String> = None;
    let made = dockhand_tests::wait_until(Duration::from_secs(120), || {
        let bases = base_backups(&d);
        if first.is_none() {
            first = bases.first().cloned();
        }
        first
            .as_ref()
            .is_some_and(|f| !bases.is_empty() && !bases.contains(f))
    });
    let r = stop_daemon(child);
    assert!(made, "{:?}\n{}", files(&d), r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("next base backup at"), "{}", r.stderr);
    assert_eq!(base_backups(&d).len(), 1, "{:?}\n{}", files(&d), r.stderr);

    // Without WAL streaming, base backups would not recover: refused.
    let mut off = e.clone();
    off.retain(|(k, _)| k != "BACKUP_WAL");
    let r = backup(&["list"], &off);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("BACKUP_BASE_SCHEDULE") && r.stderr.contains("BACKUP_WAL is off"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_slot_lag_and_gaps_in_the_stored_wal_reach_the_status_metrics_and_verify() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let metrics = dir.path().join("metrics.prom");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("BACKUP_METRICS_FILE", metrics.to_str().unwrap()),
    ]);
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let r = backup(&["base"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let base = r.stdout.trim().to_string();
    // The status file's `wal` object, as written (pretty-printed JSON).
    let wal = || std::fs::read_to_string(&status).unwrap_or_default();
    let metric = |name: &str| -> Option<String> {
        std::fs::read_to_string(&metrics)
            .ok()?
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let segs: Vec<String> = (1..=3).map(|n| complete_a_segment(&pg, n)).collect();
    let continuous = dockhand_tests::wait_until(Duration::from_secs(120), || {
        segs.iter().all(|s| !stored_wal(&d, s).is_empty())
            && wal().contains("\"continuous\": true")
            && metric("dockhand_backup_wal_continuous").as_deref() == Some("1")
    });
    if !continuous {
        panic!(
            "{:?} {:?}\n{}",
            std::fs::read_to_string(&status),
            std::fs::read_to_string(&metrics),
            stop_daemon(child).stderr
        );
    }
    assert!(
        !wal().contains("\"lag_bytes\": null") && wal().contains("\"lag_bytes\": "),
        "{}",
        wal()
    );
    assert!(metric("dockhand_backup_wal_lag_bytes").is_some());

    // A stored segment goes missing: a gap, named.
    let lost = &segs[1];
    for f in files(&d) {
        if f.starts_with(&format!("_wal-{lost}-")) {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
    complete_a_segment(&pg, 4);
    let gap = dockhand_tests::wait_until(Duration::from_secs(120), || {
        wal().contains("\"continuous\": false")
            && wal().contains(lost.as_str())
            && metric("dockhand_backup_wal_continuous").as_deref() == Some("0")
    });
    let r = stop_daemon(child);
    assert!(gap, "{:?}\n{}", std::fs::read_to_string(&status), r.stderr);
    assert!(
        r.stderr
            .contains(&format!("WAL missing after the base backup {base}")),
        "{}",
        r.stderr
    );
    // The run's metrics and the WAL's live side by side.
    assert!(metric("dockhand_backup_wal_lag_bytes").is_some());

    // verify of the base backup fails on the gap; of the WAL alone it is fine.
    let r = backup(&["verify", &base, "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(lost.as_str()), "{}", r.stderr);
}

/// Starts the daemon with `e`, its log in `log`; waits until the log holds every one
/// of `said`, stops it, and returns the log.
fn daemon_says(e: &[(String, String)], log: &Path, said: &[&str]) -> String {
    let env_ref: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let child = dockhand_tests::run::command(&bin("backup"), &["daemon"], &env_ref)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let found = dockhand_tests::wait_until(Duration::from_secs(60), || {
        said.iter().all(|s| text().contains(s))
    });
    let r = stop_daemon(child);
    assert_eq!(r.code, Some(0), "{}", text());
    assert!(found, "{said:?} not in:\n{}", text());
    text()
}

#[test]
fn a_server_not_ready_for_wal_streaming_is_told_each_missing_piece() {
    let mut pg = Postgres::start();
    pg.psql("ALTER SYSTEM SET wal_level = minimal");
    pg.psql("ALTER SYSTEM SET max_wal_senders = 0");
    pg.stop_server();
    pg.start_server();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]);
    let log = dir.path().join("daemon.log");
    let text = daemon_says(
        &e,
        &log,
        &[
            "wal_level is minimal: set wal_level = replica",
            "max_wal_senders is 0",
            "the role \"app\" lacks REPLICATION: ALTER ROLE \"app\" REPLICATION",
        ],
    );
    assert!(!text.contains(&pg.password), "{text}");

    // Settings right, but no `replication` line in pg_hba.conf.
    pg.psql("ALTER SYSTEM RESET wal_level");
    pg.psql("ALTER SYSTEM RESET max_wal_senders");
    pg.psql("ALTER ROLE app REPLICATION");
    pg.stop_server();
    pg.start_server();
    pg.deny_replication_in_hba();
    let text = daemon_says(
        &e,
        &log,
        &[
            "pg_hba.conf",
            "`all` does not match replication connections",
        ],
    );
    assert!(
        !text.contains("wal_level is") && !text.contains("lacks REPLICATION"),
        "{text}"
    );

    // All there: it streams.
    pg.allow_replication();
    let child = start_daemon(&e);
    let up = dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg));
    let r = stop_daemon(child);
    assert!(up, "{}", r.stderr);
}

/// The replication slots on the server.
fn slots(pg: &Postgres) -> String {
    pg.psql("SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots")
}

#[test]
fn wal_drop_slot_drops_the_sidecars_slot_and_never_one_in_use() {
    let pg = Postgres::start();
    pg.allow_replication();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
    ]);
    let child = start_daemon(&e);
    let up = dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg));
    // In use: refused, the slot kept.
    let r = backup(&["wal", "drop-slot"], &e);
    let stopped = stop_daemon(child);
    assert!(up, "{}", stopped.stderr);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("in use") && r.stderr.contains("stop the sidecar"),
        "{}",
        r.stderr
    );
    assert_eq!(slots(&pg), "dockhand");

    // The daemon stopped: dropped, and the sidecar's settings without BACKUP_WAL work too.
    let only_url = env(&[("DIRECT_URL", &pg.url())]);
    let r = backup(&["wal", "drop-slot"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("dropped the replication slot \"dockhand\""),
        "{}",
        r.stderr
    );
    assert_eq!(slots(&pg), "");
    let r = backup(&["wal", "drop-slot"], &only_url);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("nothing to drop"), "{}", r.stderr);
    assert!(!r.stderr.contains(&pg.password), "{}", r.stderr);

    // Another slot by name; other slots are never touched.
    pg.psql("SELECT pg_create_physical_replication_slot('other')");
    pg.psql("SELECT pg_create_physical_replication_slot('keep_me')");
    let mut named = only_url.clone();
    named.push(("BACKUP_WAL_SLOT".into(), "other".into()));
    let r = backup(&["wal", "drop-slot"], &named);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(slots(&pg), "keep_me");

    for args in [&["wal"][..], &["wal", "drop"], &["wal", "drop-slot", "x"]] {
        let r = backup(args, &only_url);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn with_s3_alone_the_continuity_is_read_from_the_listing() {
    let pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let s3 = S3::shared();
    let bucket = s3.bucket();
    let mut e = s3.backup_env(&bucket, "only");
    e.extend(env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        (
            "BACKUP_WAL_SPOOL",
            dir.path().join("spool").to_str().unwrap(),
        ),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
    ]));
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let r = backup(&["base"], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let text = || std::fs::read_to_string(&status).unwrap_or_default();
    let keys = || {
        let (code, body) = s3.request("GET", &format!("/{bucket}?list-type=2&prefix=only/"), b"");
        assert_eq!(code, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next().map(String::from))
            .collect::<Vec<_>>()
    };
    let segs: Vec<String> = (1..=3).map(|n| complete_a_segment(&pg, n)).collect();
    let continuous = dockhand_tests::wait_until(Duration::from_secs(120), || {
        let k = keys();
        segs.iter()
            .all(|s| k.iter().any(|k| k.contains(&format!("_wal-{s}-"))))
            && text().contains("\"continuous\": true")
    });
    if !continuous {
        panic!("{}\n{}", text(), stop_daemon(child).stderr);
    }
    // The middle segment's manifest is lost: without it, the segment is not stored.
    let lost = &segs[1];
    for k in keys() {
        if k.contains(&format!("_wal-{lost}-")) && k.ends_with(".manifest.json") {
            let (code, body) = s3.request("DELETE", &format!("/{bucket}/{k}"), b"");
            assert!(code == 204 || code == 200, "{code} {body}");
        }
    }
    complete_a_segment(&pg, 4);
    let gap = dockhand_tests::wait_until(Duration::from_secs(120), || {
        text().contains("\"continuous\": false") && text().contains(lost.as_str())
    });
    let r = stop_daemon(child);
    assert!(gap, "{}\n{}", text(), r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// A timeline switch: the volume lost, recovered to a time and promoted (timeline 2),
/// with the sidecar stopped meanwhile as README's runbook says and started again with
/// its folder and spool as they were (the spool still holding the old timeline's
/// segment being written). It streams the new timeline: the history file and its
/// segments are stored, the stored WAL is reported continuous, and a second
/// recovery, to the end, finds the rows written after the promotion and none of the
/// rows the first recovery left out.
#[test]
fn after_a_recovery_the_sidecar_streams_the_new_timeline_and_recovers_it() {
    let mut pg = Postgres::start();
    pg.allow_replication();
    pg.psql_db("app", "SET ROLE app; CREATE TABLE t (id int);");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("backups");
    let status = dir.path().join("status.json");
    let e = env(&[
        ("DIRECT_URL", &pg.url()),
        ("BACKUP_DIR", d.to_str().unwrap()),
        ("BACKUP_SCHEDULE", "@yearly"),
        ("BACKUP_WAL", "on"),
        ("BACKUP_STATUS_FILE", status.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ]);
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(60), || streaming(&pg)) {
        panic!("no active slot: {}", stop_daemon(child).stderr);
    }
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let base = r.stdout.trim().to_string();
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1, 100)");
    std::thread::sleep(Duration::from_millis(1100));
    let t = utc_now();
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(101, 200)");
    let last = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let arrived = dockhand_tests::wait_until(Duration::from_secs(60), || {
        !stored_wal(&d, &last).is_empty()
    });
    // More rows, in the next segment: the spool holds it as a partial when stopped.
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(201, 210)");
    let next = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let spooled = dockhand_tests::wait_until(Duration::from_secs(60), || {
        d.join(".wal-spool")
            .join(format!("{next}.partial"))
            .exists()
    });
    let first = stop_daemon(child);
    assert!(
        arrived,
        "{last} not stored: {:?}\n{}",
        files(&d),
        first.stderr
    );
    assert!(
        spooled,
        "{next}.partial not in the spool: {:?}\n{}",
        files(&d.join(".wal-spool")),
        first.stderr
    );

    // The volume is lost: recovered to T in its place, and promoted.
    pg.stop_server();
    let data = pg.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let r = backup(
        &[
            "recover",
            "--to-time",
            &t,
            "--data-dir",
            data.to_str().unwrap(),
            "--dir",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    chown_to_service(&data);
    pg.start_server();
    let mut last_error = String::new();
    let promoted = dockhand_tests::wait_until(Duration::from_secs(60), || {
        match pg.try_psql_db("postgres", "SELECT pg_is_in_recovery()") {
            Ok(r) => r == "f",
            Err(e) => {
                last_error = e;
                false
            }
        }
    });
    assert!(
        promoted,
        "not promoted: {last_error}\nserver log:\n{}\n{}",
        pg.log(),
        r.stderr
    );
    assert_eq!(pg.psql_db("app", "SELECT count(*) FROM t"), "100");
    let tl2 = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(tl2.starts_with("00000002"), "{tl2}");
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1001, 1010)");

    // The sidecar again, with its folder and spool: it follows timeline 2.
    let child = start_daemon(&e);
    if !dockhand_tests::wait_until(Duration::from_secs(120), || streaming(&pg)) {
        panic!(
            "not streaming timeline 2: {:?}\n{}",
            files(&d.join(".wal-spool")),
            stop_daemon(child).stderr
        );
    }
    // A base backup of the recovered cluster: its postgresql.auto.conf still holds the
    // first recovery's target time (the server never removes it); the recovery from
    // it below must not stop there. Rows after it.
    let r = backup(&["base", "--dir", d.to_str().unwrap()], &e);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let base2 = r.stdout.trim().to_string();
    pg.psql_db("app", "INSERT INTO t SELECT generate_series(1011, 1020)");
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let json = || {
        std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    };
    let stored = dockhand_tests::wait_until(Duration::from_secs(90), || {
        !stored_wal(&d, &seg).is_empty()
            && !stored_wal(&d, "00000002.history").is_empty()
            && json().is_some_and(|v| {
                v["wal"]["continuous"] == true
                    && v["wal"]["continuity"]
                        .as_str()
                        .is_some_and(|c| c.contains(" to 00000002"))
            })
    });
    let second = stop_daemon(child);
    assert!(
        stored,
        "{seg} or the history file not stored, or not continuous: {:?}\n{:?}\n{}",
        files(&d),
        json(),
        second.stderr
    );
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "the server's history forked before the spool's {next}"
        )),
        "{}",
        second.stderr
    );
    assert!(
        !d.join(".wal-spool")
            .join(format!("{next}.partial"))
            .exists(),
        "{:?}",
        files(&d.join(".wal-spool"))
    );
    let v = backup(&["verify", &base, "--dir", d.to_str().unwrap()], &[]);
    assert_eq!(v.code, Some(0), "{}", v.output());
    drop(pg);

    // Recovered to the end, from the newest base backup (timeline 2's): timeline 2's
    // rows, none of the rows left behind on 1.
    let (r, rows) = recover_to(
        dir.path(),
        &d,
        "latest",
        "SELECT count(*), count(*) FILTER (WHERE id > 1000), max(id) FROM t",
    );
    assert!(r.stderr.contains(&base2), "{}", r.stderr);
    assert_eq!(rows, "120|20|1020", "{}", r.stderr);
}
