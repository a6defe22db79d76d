//! `backup` as the PID 1 of a real container: an image `FROM scratch` with the static
//! backup and healthcheck, and Debian's pg_dump with the shared libraries it needs.
//! The daemon makes its first backup at start; the container's HEALTHCHECK reads the
//! status file and turns healthy; `docker stop` ends it with exit status 0 (not
//! Docker's SIGKILL at the timeout). Skips only when no Docker engine answers.

use std::path::Path;
use std::time::{Duration, Instant};

use dockhand_tests::bins::static_bin;
use dockhand_tests::docker::{docker, docker_text, unavailable, Guard};
use dockhand_tests::pg::{bin_dir, Postgres};

/// Copies `file` into the build context at the same absolute path.
fn copy_in(ctx: &Path, file: &Path) {
    let dest = ctx.join("root").join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// pg_dump, pg_restore and every shared library they load (as `ldd` lists them).
fn pg_tools(ctx: &Path) {
    for tool in ["pg_dump", "pg_restore"] {
        let path = bin_dir().join(tool);
        copy_in(ctx, &path);
        let out = std::process::Command::new("ldd")
            .arg(&path)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                copy_in(ctx, &std::fs::canonicalize(lib).unwrap());
                copy_in(ctx, Path::new(lib));
            }
        }
    }
}

#[test]
fn the_backup_daemon_as_pid_1_of_a_container() {
    if unavailable() {
        return;
    }
    let pg = Postgres::start();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("root/dockhand")).unwrap();
    std::fs::create_dir_all(ctx.path().join("root/backups")).unwrap();
    for bin in ["backup", "healthcheck"] {
        std::fs::copy(static_bin(bin), ctx.path().join("root/dockhand").join(bin)).unwrap();
    }
    pg_tools(ctx.path());
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY root/ /\nENTRYPOINT [\"/dockhand/backup\"]\n\
         HEALTHCHECK --interval=1s --timeout=3s --retries=1 CMD [\"/dockhand/healthcheck\", \"file:///backups/status.json?max-age=1h\"]\n",
    )
    .unwrap();
    let mut guard = Guard::new("backup");
    let tag = guard.image.clone();
    docker(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);

    let backups = tempfile::tempdir().unwrap();
    let name = guard.container();
    docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        &name,
        "-v",
        &format!("{}:/backups", backups.path().display()),
        "-e",
        &format!("DIRECT_URL={}", pg.url()),
        "-e",
        "BACKUP_DIR=/backups",
        "-e",
        "BACKUP_STATUS_FILE=/backups/status.json",
        "-e",
        "BACKUP_ON_START=true",
        "-e",
        "BACKUP_SCHEDULE=@yearly",
        &tag,
    ]);
    let healthy = dockhand_tests::wait_until(Duration::from_secs(60), || {
        docker_text(&["inspect", "-f", "{{.State.Health.Status}}", &name]) == "healthy"
    });
    let logs = || {
        let out = std::process::Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(healthy, "the container never turned healthy: {}", logs());
    let dumps: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".dump.zst"))
        .collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");

    let started = Instant::now();
    docker(&["stop", "-t", "10", &name]);
    let secs = started.elapsed().as_secs_f64();
    let code = docker_text(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    println!("docker stop took {secs:.2}s, exit {code}");
    // Docker's SIGKILL at the timeout would give 137.
    assert_eq!(code, "0", "{}", logs());
    let l = logs();
    assert!(l.contains("backup daemon stopped"), "{l}");
    assert!(!l.contains(&pg.password), "a password reached the logs");
}
