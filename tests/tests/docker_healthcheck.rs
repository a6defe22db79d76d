//! `healthcheck` in a real container: a `FROM scratch` image with nothing but the static
//! binary and busybox's static httpd. Docker must report healthy, then unhealthy once
//! the server stops. Skips (printing why) only when no Docker engine answers.

use std::time::Duration;

use dockhand_tests::bins::static_bin;
use dockhand_tests::docker::{docker, docker_text, unavailable, Guard};

fn health(container: &str) -> String {
    docker_text(&["inspect", "-f", "{{.State.Health.Status}}", container])
}

#[test]
fn scratch_image_reports_healthy_then_unhealthy() {
    if unavailable() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(static_bin("healthcheck"), ctx.path().join("healthcheck")).unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("/bin/busybox (busybox-static) is missing: run scripts/setup");
    std::fs::create_dir(ctx.path().join("www")).unwrap();
    std::fs::write(ctx.path().join("www/index.html"), "ok\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        r#"FROM scratch
COPY busybox /bin/busybox
COPY healthcheck /usr/local/bin/healthcheck
COPY www /www
HEALTHCHECK --interval=1s --timeout=5s --retries=2 CMD ["/usr/local/bin/healthcheck", "--expect-body", "ok", "http://localhost:8080/"]
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox httpd -f -p 8080 -h /www & echo $! > /httpd.pid; exec /bin/busybox sleep 600"]
"#,
    )
    .unwrap();
    let mut guard = Guard::new("healthcheck");
    let container = guard.container();
    let tag = guard.image.clone();
    docker(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);
    docker(&["run", "-d", "--network", "none", "--name", &container, &tag]);

    let became = |want: &str| {
        dockhand_tests::wait_until(Duration::from_secs(60), || health(&container) == want)
    };
    assert!(became("healthy"), "never healthy: {}", health(&container));

    docker(&[
        "exec",
        &container,
        "/bin/busybox",
        "sh",
        "-c",
        "kill $(cat /httpd.pid)",
    ]);
    assert!(
        became("unhealthy"),
        "never unhealthy: {}",
        health(&container)
    );
    let log = docker_text(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}|{{end}}",
        &container,
    ]);
    assert!(
        log.contains("1 http://localhost:8080/: connection refused"),
        "health log: {log}"
    );
}
