//! examples/compose-minimal run as users run it, with docker-compose: the file as
//! written, with only the image names swapped for local stand-ins
//! (scripts/test-images/build; no registry here) and the dockhand image built from the
//! repository root. The app waits for PostgreSQL, applies its drizzle migrations once,
//! serves as the unprivileged `node` user, turns healthy, and `docker-compose stop`
//! ends it with exit 0, well within the stop timeout. No password in any log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dockhand_tests::bins::root;
use dockhand_tests::docker::{docker, docker_text, unavailable, Guard};

fn images() -> Vec<(String, String)> {
    let out = Command::new(root().join("scripts/test-images/build"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/test-images/build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

struct Project {
    dir: std::path::PathBuf,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .args(args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DOCKER_BUILDKIT", "0")
            .env("COMPOSE_DOCKER_CLI_BUILD", "0")
            .output()
            .expect("docker-compose (scripts/setup installs it)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--rmi", "local", "-t", "1"]);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

#[test]
fn the_minimal_stack_runs_as_written() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: no Docker engine: {why}");
        return;
    }
    let dockhand = Guard::new("dockhand");
    docker(&[
        "build",
        "-q",
        "-t",
        &dockhand.image,
        root().to_str().unwrap(),
    ]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("stack");
    copy_dir(&root().join("examples/compose-minimal"), &dir);
    // what the user does before `up`: the password file, and `npm ci` (here: the
    // drizzle fixture's node_modules, pg and drizzle-orm)
    let password = format!("Pw/{}?#@:%", dockhand_tests::token(16));
    std::fs::write(dir.join("db_password.txt"), &password).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/drizzle-app/node_modules.tar.zst");
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -C '{}' -xf -",
            fixture.display(),
            dir.join("app").display()
        ))
        .status()
        .unwrap();
    assert!(unpacked.success());
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
