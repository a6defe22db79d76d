//! The `dockhand` image as users get it: `docker build -t dockhand .` from the
//! repository root (the Dockerfile there, FROM scratch with the three static binaries),
//! then an app image that copies from it as the README says, run with the entrypoint as
//! PID 1 and the healthcheck as its HEALTHCHECK.

use std::time::Duration;

use dockhand_tests::bins::root;
use dockhand_tests::docker::{docker, docker_text, dockhand_image, unavailable, Guard};

#[test]
fn the_root_dockerfile_builds_the_image_users_copy_from() {
    if unavailable() {
        return;
    }
    let base = dockhand_image();
    // exactly the three binaries, at the root
    let mut app = Guard::new("dockhand-app");
    for b in ["entrypoint", "backup", "healthcheck"] {
        let c = app.container();
        docker(&[
            "create",
            "--name",
            &c,
            "--entrypoint",
            &format!("/{b}"),
            &base.image,
            "--version",
        ]);
        docker(&["start", "-a", &c]);
        let logs = docker_text(&["logs", &c]);
        assert!(logs.starts_with(&format!("{b} ")), "{b}: {logs}");
    }
    // an app image built the way the README shows it
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("busybox-static: run scripts/setup");
    std::fs::create_dir(ctx.path().join("www")).unwrap();
    std::fs::write(ctx.path().join("www/index.html"), "ok\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            r#"FROM {base} AS dockhand
FROM scratch
COPY --from=dockhand /entrypoint /healthcheck /usr/local/bin/
COPY busybox /bin/busybox
COPY www /www
ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
HEALTHCHECK --interval=1s --timeout=5s --retries=2 CMD ["/usr/local/bin/healthcheck", "--expect-body", "ok", "http://localhost:8080/"]
"#,
            base = base.image
        ),
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "-t",
        &app.image,
        ctx.path().to_str().unwrap(),
    ]);
    let c = app.container();
    docker(&["run", "-d", "--network", "none", "--name", &c, &app.image]);
    assert!(
        dockhand_tests::wait_until(Duration::from_secs(60), || docker_text(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &c
        ]) == "healthy"),
        "never healthy"
    );
    let started = std::time::Instant::now();
    docker(&["stop", "-t", "10", &c]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "docker stop waited for the SIGKILL"
    );
    // busybox httpd dies of the SIGTERM the entrypoint passed on: 143, mirrored
    assert_eq!(
        docker_text(&["inspect", "-f", "{{.State.ExitCode}}", &c]),
        "143"
    );
    drop(base);
    // the README's ARM64 build: an arm64 image holding the aarch64 binaries
    let arm = Guard::new("dockhand-arm64");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("docker build") && l.contains("ARCH=arm64"))
        .expect("the README's ARM64 line");
    let args: Vec<String> = line
        .split_whitespace()
        .skip(2)
        .map(|a| {
            if a == "dockhand:arm64" {
                arm.image.clone()
            } else {
                a.to_string()
            }
        })
        .map(|a| {
            if a == "." {
                root().display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut build = vec!["build"];
    build.extend(args.iter().map(String::as_str));
    docker(&build);
    assert_eq!(
        docker_text(&[
            "image",
            "inspect",
            "-f",
            "{{.Architecture}} {{.Config.Entrypoint}}",
            &arm.image
        ]),
        "arm64 [/entrypoint]"
    );
    let c = format!("dockhand-test-{}", dockhand_tests::token(10));
    docker(&["create", "--name", &c, &arm.image]);
    let out = tempfile::tempdir().unwrap();
    let copied = out.path().join("healthcheck");
    docker(&["cp", &format!("{c}:/healthcheck"), copied.to_str().unwrap()]);
    docker(&["rm", &c]);
    let desc = std::process::Command::new("file")
        .arg(&copied)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&desc.stdout).contains("aarch64"));
    drop(arm);
    // the classic builder keeps the arm64 build's untagged stage images as its cache,
    // whatever their platform: drop them, so later host builds never reuse them
    docker(&["image", "prune", "-f"]);
}
