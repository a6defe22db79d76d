//! examples/compose-minimal run as users run it, with docker-compose: the file as
//! written, with only the image names swapped for local stand-ins
//! (scripts/test-images/build; no registry here) and the dockhand image built from the
//! repository root. The app waits for PostgreSQL, applies its drizzle migrations once,
//! serves as the unprivileged `node` user, turns healthy, and `docker-compose stop`
//! ends it with exit 0, well within the stop timeout. No password in any log.

use std::process::Command;
use std::time::{Duration, Instant};

use dockhand_tests::bins::root;
use dockhand_tests::docker::{
    docker_text, dockhand_image, host_s3, stack, test_images as images, unavailable, Project,
};

#[test]
fn the_minimal_stack_runs_as_written() {
    if unavailable() {
        return;
    }
    let dockhand = dockhand_image();
    let work = tempfile::tempdir().unwrap();
    let dir = stack("examples/compose-minimal", work.path());
    // and the password file
    let password = format!("Pw/{}?#@:%", dockhand_tests::token(16));
    std::fs::write(dir.join("db_password.txt"), &password).unwrap();
    let mut env = images();
    env.push(("DOCKHAND_IMAGE".into(), dockhand.image.clone()));
    let p = Project {
        dir,
        name: format!("dockhandtest{}", dockhand_tests::token(8)),
        env,
    };
    p.ok(&["up", "-d", "--build"]);
    let app = p.ok(&["ps", "-q", "app"]).trim().to_string();
    let health = || docker_text(&["inspect", "-f", "{{.State.Health.Status}}", &app]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(120), || health() == "healthy"),
        "never healthy: {}\n{}",
        health(),
        p.ok(&["logs", "app"])
    );
    // the app answers as uid 1000 (node), and the migrations ran once
    let port = p.ok(&["port", "app", "3000"]);
    let port = port.trim().rsplit(':').next().unwrap().to_string();
    let body = Command::new(dockhand_tests::bins::bin("healthcheck"))
        .args([
            "-v",
            "--expect-body",
            "\"uid\":1000",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert!(
        body.status.success(),
        "{}",
        String::from_utf8_lossy(&body.stdout)
    );
    let logs = p.ok(&["logs", "app"]);
    assert_eq!(logs.matches("applied migration").count(), 3, "{logs}");
    // docker-compose stop: exit 0, well before the 10 s stop timeout
    let started = Instant::now();
    p.ok(&["stop", "-t", "10", "app"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(
        docker_text(&["inspect", "-f", "{{.State.ExitCode}}", &app]),
        "0"
    );
    let all = p.ok(&["logs"]);
    assert!(!all.contains(&password), "a password leaked into the logs");
}

#[test]
fn the_full_stack_runs_as_written() {
    if unavailable() {
        return;
    }
    let dockhand = dockhand_image();
    let work = tempfile::tempdir().unwrap();
    let dir = stack("examples/compose", work.path());
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let password = format!("Db/{}?#@:%", dockhand_tests::token(16));
    let redis_password = format!("Rd{}", dockhand_tests::token(16));
    std::fs::write(secrets.join("db_password.txt"), &password).unwrap();
    std::fs::write(
        secrets.join("pgbouncer_userlist.txt"),
        format!("\"app\" \"{password}\"\n"),
    )
    .unwrap();
    std::fs::write(secrets.join("redis_password.txt"), &redis_password).unwrap();
    std::fs::write(secrets.join("s3_key_id.txt"), "testing").unwrap();
    std::fs::write(secrets.join("s3_secret.txt"), "testing").unwrap();
    let keygen = Command::new("age-keygen")
        .arg("-o")
        .arg(secrets.join("age_identity.txt"))
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let recipient = std::fs::read_to_string(secrets.join("age_identity.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(String::from))
        .unwrap();
    let s3 = host_s3();
    let bucket = s3.bucket();
    let mut env = images();
    env.push(("DOCKHAND_IMAGE".into(), dockhand.image.clone()));
    env.push(("BACKUP_AGE_RECIPIENT".into(), recipient));
    env.push(("S3_ENDPOINT".into(), s3.endpoint_for_containers.clone()));
    env.push(("S3_BUCKET".into(), bucket));
    let p = Project {
        dir,
        name: format!("dockhandfull{}", dockhand_tests::token(8)),
        env,
    };
    // a cold start, no health-gated depends_on: everything comes up on its own
    p.ok(&["up", "-d", "--build"]);
    let ids =
        |svc: &str| -> Vec<String> { p.ok(&["ps", "-q", svc]).lines().map(String::from).collect() };
    let apps = ids("app");
    assert_eq!(apps.len(), 3, "three replicas");
    let backup = ids("db-backup").remove(0);
    let services: Vec<String> = ["postgres", "redis", "pgbouncer"]
        .iter()
        .map(|s| ids(s).remove(0))
        .collect();
    let healthy =
        |c: &str| docker_text(&["inspect", "-f", "{{.State.Health.Status}}", c]) == "healthy";
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(180), || apps
            .iter()
            .chain(services.iter())
            .all(|a| healthy(a))
            && healthy(&backup)),
        "not healthy: {}",
        p.ok(&["logs"])
    );
    // the migrations ran once across the replicas
    let app_logs = p.ok(&["logs", "app"]);
    assert_eq!(
        app_logs.matches("applied migration").count(),
        3,
        "{app_logs}"
    );
    // each replica serves through PgBouncer as uid 1000
    let port = p.ok(&["port", "--index", "2", "app", "3000"]);
    let port = port.trim().rsplit(':').next().unwrap().to_string();
    let served = Command::new(dockhand_tests::bins::bin("healthcheck"))
        .args([
            "--expect-body",
            "\"uid\":1000",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stdout)
    );
    // the sidecar, with the README's commands as written (docker compose v2's
    // `docker compose exec` run by docker-compose, without a terminal): a backup now,
    // both copies listed, verified and restored with the age identity as a secret
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut outputs = Vec::new();
    for line in readme
        .lines()
        .filter(|l| l.starts_with("docker compose exec "))
    {
        let cmd = line.split("  #").next().unwrap().trim();
        let args: Vec<&str> = cmd
            .strip_prefix("docker compose exec ")
            .unwrap()
            .split_whitespace()
            .collect();
        let mut full = vec!["exec", "-T"];
        full.extend(args);
        outputs.push((cmd.to_string(), p.ok(&full)));
    }
    assert_eq!(outputs.len(), 5, "the README's backup commands");
    let out_of = |what: &str| {
        outputs
            .iter()
            .find(|(c, _)| c.contains(what))
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    assert!(
        out_of("list --remote").contains("both"),
        "{}",
        out_of("list --remote")
    );
    let restored = out_of("restore latest").trim().to_string();
    let count = |db: &str| {
        p.ok(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "app",
            "-d",
            db,
            "-Atc",
            "SELECT count(*) FROM drizzle.__drizzle_migrations",
        ])
    };
    assert_eq!(count(&restored).trim(), "3");
    assert_eq!(count("app").trim(), "3");
    // the sidecar used the server's pg_dump (17) ...
    let manifests = p.ok(&[
        "exec",
        "-T",
        "db-backup",
        "sh",
        "-c",
        "cat /backups/*.manifest.json",
    ]);
    assert!(manifests.contains("pg_dump (PostgreSQL) 17"), "{manifests}");
    // ... and the host's pg_dump 15 is refused, clearly
    let pg = ids("postgres").remove(0);
    let ip = docker_text(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &pg,
    ]);
    let out = tempfile::tempdir().unwrap();
    let url = format!("postgres://app@{ip}:5432/app");
    let host = dockhand_tests::run::run(
        dockhand_tests::run::command(
            &dockhand_tests::bins::bin("backup"),
            &["now", "--dir", out.path().to_str().unwrap()],
            &[
                ("DIRECT_URL", url.as_str()),
                ("PGPASSWORD", password.as_str()),
            ],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(host.code, Some(1), "{}", host.output());
    assert!(
        host.stderr.contains("server is 17, pg_dump is 15")
            && host.stderr.contains("postgresql-client-17"),
        "{}",
        host.output()
    );
    // PostgreSQL killed: the app turns unhealthy; restarted: it recovers, and the next
    // backup succeeds
    p.ok(&["kill", "postgres"]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(60), || apps.iter().all(
            |a| docker_text(&["inspect", "-f", "{{.State.Health.Status}}", a]) == "unhealthy"
        )),
        "the app stayed healthy without its database"
    );
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(60), || docker_text(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &backup
        ]) == "unhealthy"),
        "the sidecar stayed healthy without its database"
    );
    p.ok(&["start", "postgres"]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(120), || apps.iter().all(|a| healthy(a))),
        "the app did not recover"
    );
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(120), || healthy(&backup)),
        "the sidecar did not recover"
    );
    // drills: the daemon drilled its first backup into drill-db, and it passed ...
    let status = || p.ok(&["exec", "-T", "db-backup", "cat", "/backups/status.json"]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(120), || status()
            .contains("\"last_drill\"")),
        "no drill recorded: {}",
        status()
    );
    assert!(status().contains("\"ok\": true"), "{}", status());
    // ... then a CHECK whose function names a table without its schema (fine in the
    // app, fails under pg_restore's empty search_path): the drill fails, naming the
    // table, and the sidecar turns unhealthy, saying why in its status file
    let psql = |sql: &str| {
        p.ok(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "app",
            "-d",
            "app",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
    };
    psql(
        "CREATE TABLE z_ref (id int PRIMARY KEY);
         INSERT INTO z_ref SELECT generate_series(1, 30);
         CREATE FUNCTION ref_ok(i int) RETURNS boolean LANGUAGE sql STABLE
             AS 'SELECT EXISTS (SELECT 1 FROM z_ref WHERE id = i)';
         CREATE TABLE a_child (id int PRIMARY KEY, ref int CHECK (ref_ok(ref)));
         INSERT INTO a_child SELECT i, i FROM generate_series(1, 25) i;",
    );
    p.ok(&["exec", "-T", "db-backup", "/dockhand/backup", "now"]);
    let drilled = p.compose(&[
        "exec",
        "-T",
        "db-backup",
        "/dockhand/backup",
        "drill",
        "latest",
    ]);
    let said = String::from_utf8_lossy(&drilled.stderr).to_string();
    assert_eq!(drilled.status.code(), Some(1), "{said}");
    assert!(
        said.contains("public.a_child: 25 rows in the backup, 0 restored"),
        "{said}"
    );
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(60), || docker_text(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &backup
        ]) == "unhealthy"),
        "the sidecar stayed healthy after a failed drill"
    );
    assert!(status().contains("public.a_child"), "{}", status());
    // fixed, backed up and drilled again: healthy again
    psql("DROP TABLE a_child; DROP FUNCTION ref_ok(int); DROP TABLE z_ref;");
    p.ok(&["exec", "-T", "db-backup", "/dockhand/backup", "now"]);
    p.ok(&[
        "exec",
        "-T",
        "db-backup",
        "/dockhand/backup",
        "drill",
        "latest",
    ]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(60), || healthy(&backup)),
        "the sidecar did not recover after a passing drill"
    );
    p.ok(&["exec", "-T", "db-backup", "/dockhand/backup", "now"]);
    // stop: every dockhand container exits 0, well under the stop timeout
    let started = Instant::now();
    p.ok(&["stop", "-t", "20", "app", "db-backup"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        started.elapsed()
    );
    for c in apps.iter().chain(std::iter::once(&backup)) {
        assert_eq!(
            docker_text(&["inspect", "-f", "{{.State.ExitCode}}", c]),
            "0",
            "{c}"
        );
    }
    let all = p.ok(&["logs"]);
    for secret in [&password, &redis_password] {
        assert!(
            !all.contains(secret.as_str()),
            "a password leaked into the logs"
        );
    }
}
