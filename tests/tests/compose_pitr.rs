//! examples/compose-pitr run as users run it (docker-compose, the file as written, only
//! the image names from variables): PostgreSQL 17 streaming its WAL to the sidecar with
//! `BACKUP_WAL=on`, rows committed at known times, the database volume destroyed, and
//! README's recovery runbook run line by line as README shows it: recovery to a time
//! between two commits into a new volume finds exactly the rows committed before it,
//! first from the sidecar's folder, then from S3 alone after the folder is deleted too.
//! After each recovery the sidecar streams again from the recovered server, on its new
//! timeline. README's `wal drop-slot` commands then drop the slot. The test checks that
//! README's runbook lines are the ones it ran.

use std::time::Duration;

use dockhand_tests::bins::root;
use dockhand_tests::docker::{
    docker, docker_text, dockhand_image, host_s3, test_images as images, unavailable, Project,
};

/// The `docker` lines of README's point-in-time recovery section, in order (indented
/// code blocks), without their comments.
fn readme_runbook() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("### Point-in-time recovery")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a point-in-time recovery section");
    section
        .lines()
        .filter(|l| l.starts_with("    ") && l.trim_start().starts_with("docker "))
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .collect()
}

/// The example's time in README's recover line, replaced by the test's.
const README_TIME: &str = "2026-12-07T16:05:00Z";

/// What README's runbook says, as this test runs it.
const RUNBOOK: &[&str] = &[
    "docker compose stop db-backup",
    "docker compose run --rm db-backup wal drop-slot",
    "docker compose stop db-backup",
    "docker compose rm -sf postgres",
    "docker volume rm app_pgdata",
    "docker compose run --rm db-recover recover --to-time 2026-12-07T16:05:00Z --data-dir /var/lib/postgresql/data",
    "docker compose up -d postgres db-backup",
    "docker compose exec db-backup /dockhand/backup base",
    "docker compose exec db-backup /dockhand/backup drill --pitr",
];

/// Takes the stack down with the one-shot's profile too (its image and volumes).
struct Stack(Project);

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.0.compose(&[
            "--profile",
            "recover",
            "down",
            "-v",
            "--rmi",
            "local",
            "-t",
            "1",
        ]);
    }
}

impl Stack {
    /// Runs one README line as written: `docker compose ...` through docker-compose
    /// (`exec` without a terminal), `docker volume rm app_X` on this project's volume
    /// (`app` being the folder name users run it in); `extra` arguments appended.
    fn run_line(&self, line: &str, time: &str, extra: &[&str]) -> String {
        let line = line.replace(README_TIME, time);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["docker", "compose", "exec", rest @ ..] => {
                let mut args = vec!["exec", "-T"];
                args.extend(rest);
                args.extend(extra);
                self.0.ok(&args)
            }
            ["docker", "compose", rest @ ..] => {
                let mut args = rest.to_vec();
                args.extend(extra);
                self.0.ok(&args)
            }
            ["docker", "volume", "rm", volume] => {
                let volume = volume.replacen("app_", &format!("{}_", self.0.name), 1);
                // "if it is still there"
                if docker_text(&["volume", "ls", "-q"])
                    .lines()
                    .any(|v| v == volume)
                {
                    docker(&["volume", "rm", &volume]);
                }
                String::new()
            }
            _ => panic!("not a runbook line this test knows: {line}"),
        }
    }

    fn psql(&self, sql: &str) -> String {
        self.0
            .ok(&[
                "exec",
                "-T",
                "postgres",
                "psql",
                "-U",
                "app",
                "-d",
                "app",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .trim()
            .to_string()
    }

    /// Whether PostgreSQL answers and is out of recovery.
    fn open(&self) -> bool {
        let out = self.0.compose(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "app",
            "-d",
            "app",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT pg_is_in_recovery()",
        ]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f"
    }

    fn backup_files(&self, dir: &str) -> String {
        self.0
            .compose(&["exec", "-T", "db-backup", "ls", "-a", dir])
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect()
    }
}

#[test]
fn the_pitr_stack_recovers_to_a_time_from_its_folder_and_from_s3_alone() {
    if unavailable() {
        return;
    }
    let runbook = readme_runbook();
    assert_eq!(
        runbook, RUNBOOK,
        "README's runbook is not what this test runs"
    );
    let dockhand = dockhand_image();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("stack");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(root().join("examples/compose-pitr"))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let password = format!("Db/{}?#@:%", dockhand_tests::token(16));
    std::fs::write(secrets.join("db_password.txt"), &password).unwrap();
    std::fs::write(secrets.join("s3_key_id.txt"), "testing").unwrap();
    std::fs::write(secrets.join("s3_secret.txt"), "testing").unwrap();
    let s3 = host_s3();
    let bucket = s3.bucket();
    let mut env = images();
    env.push(("DOCKHAND_IMAGE".into(), dockhand.image.clone()));
    env.push(("S3_ENDPOINT".into(), s3.endpoint_for_containers.clone()));
    env.push(("S3_BUCKET".into(), bucket.clone()));
    let name = format!("dockhandpitr{}", dockhand_tests::token(8));
    let p = Stack(Project {
        dir,
        name: name.clone(),
        env,
    });
    p.0.ok(&["up", "-d", "--build"]);
    let streaming = || {
        p.0.compose(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "app",
            "-d",
            "app",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dockhand' AND active",
        ])
        .stdout
            == b"1\n"
    };
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(180), streaming),
        "the sidecar never streamed: {}",
        p.0.ok(&["logs"])
    );
    p.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL)");
    // the example's first base backup (its header), README's command
    p.run_line(RUNBOOK[7], "", &[]);
    // six rows, each committed on its own about a second apart; T between the third
    // and the fourth
    let mut at = Vec::new();
    for id in 1..=6 {
        at.push(p.psql(&format!(
            "INSERT INTO t VALUES ({id}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )));
        std::thread::sleep(Duration::from_millis(1000));
    }
    let t = p.psql(
        "SELECT to_char((at + interval '500 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM t WHERE id = 3",
    );
    assert_eq!(
        p.psql(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t WHERE at < '{t}'"
        )),
        "1,2,3",
        "{at:?}"
    );
    // the segment holding them completed, stored in the folder and S3
    let seg = p.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    p.psql("SELECT pg_switch_wal()");
    let stored = || {
        p.backup_files("/backups")
            .lines()
            .any(|f| f.starts_with(&format!("_wal-{seg}-")) && f.ends_with(".manifest.json"))
            && !p
                .backup_files("/backups/.wal-spool")
                .lines()
                .any(|f| f.starts_with(&seg))
    };
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(120), stored),
        "{seg} not stored: {}\n{}",
        p.backup_files("/backups"),
        p.0.ok(&["logs", "db-backup"])
    );
    // README's drill: the chain recovers, in the sidecar's own image (as root: the
    // throwaway server runs as the image's user postgres).
    let drill = p.run_line(RUNBOOK[8], "", &[]); // exits 0 only when it passed
    assert!(!drill.contains(&password), "{drill}");
    let status =
        p.0.ok(&["exec", "-T", "db-backup", "cat", "/backups/status.json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_drill"]["ok"], true, "{status}");
    assert!(
        status["last_drill"]["backup"]
            .as_str()
            .is_some_and(|b| b.starts_with("_base-")),
        "{status}"
    );
    assert!(
        p.backup_files("/tmp").lines().all(|f| !f.contains("drill")),
        "a scratch directory left: {}",
        p.backup_files("/tmp")
    );

    // Round 1: the volume is lost; README's runbook from the folder.
    let recover = |from: &[&str], round: &str| {
        for line in &RUNBOOK[2..8] {
            let out = p.run_line(
                line,
                &t,
                if line.contains(" recover ") {
                    from
                } else {
                    &[]
                },
            );
            if line.contains(" up -d ") {
                assert!(
                    dockhand_tests::wait_until(Duration::from_secs(120), || p.open()),
                    "{round}: PostgreSQL did not recover: {}",
                    p.0.ok(&["logs", "postgres"])
                );
                assert_eq!(
                    p.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
                    "1,2,3",
                    "{round}: not exactly the rows committed before {t} ({at:?})"
                );
            }
            if line.contains(" recover ") {
                assert!(!out.contains(&password), "{out}");
            }
        }
    };
    // The sidecar streams again from the recovered server, on its new timeline.
    let streams_again = |round: &str| {
        assert!(
            dockhand_tests::wait_until(Duration::from_secs(120), streaming),
            "{round}: the sidecar does not stream from the recovered server: {}",
            p.0.ok(&["logs", "db-backup"])
        );
        assert_ne!(
            p.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
            "00000001",
            "{round}: not a new timeline"
        );
    };
    recover(&[], "from the folder");
    streams_again("from the folder");

    // Round 2: the sidecar's folder is gone too; from S3 alone.
    p.0.ok(&["stop", "db-backup"]);
    p.0.ok(&["rm", "-f", "db-backup"]);
    docker(&["volume", "rm", &format!("{name}_backups")]);
    recover(&["--from", "s3"], "from S3 alone");
    streams_again("from S3 alone");

    // README's drop-slot commands: the slot is gone.
    for line in &RUNBOOK[..2] {
        p.run_line(line, &t, &[]);
    }
    assert_eq!(p.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    let logs = p.0.ok(&["logs"]);
    assert!(!logs.contains(&password), "a password leaked into the logs");
}
