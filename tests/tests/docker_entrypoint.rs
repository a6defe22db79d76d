//! `entrypoint` in a real container: a `FROM scratch` image with the static entrypoint
//! and busybox. `docker stop` must end the container through the app's own TERM
//! handling (its exit status, not Docker's SIGKILL after the timeout), and a
//! grandchild's TERM handler must have run. The same image with Debian's static tini
//! as ENTRYPOINT shows the difference. Skips only when no Docker engine answers.

use std::time::Instant;

use dockhand_tests::bins::static_bin;
use dockhand_tests::docker::{docker, docker_text, unavailable, Guard};

const APP: &str = r#"
# The grandchild needs half a second to clean up after SIGTERM.
/bin/busybox sh -c 'trap "/bin/busybox sleep 0.5; echo grandchild handled TERM > /marker; exit 0" TERM; while :; do /bin/busybox sleep 1 & wait $!; done' &
trap 'exit 7' TERM
echo ready > /ready
while :; do /bin/busybox sleep 1 & wait $!; done
"#;

/// Runs the image with `init` as ENTRYPOINT, stops it; returns (exit code, marker, seconds).
fn run_and_stop(tag: &str, init: &str, guard: &mut Guard) -> (i32, String, f64) {
    let name = guard.container();
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        "--entrypoint",
        init,
        tag,
        "/bin/busybox",
        "sh",
        "/app.sh",
    ]);
    let ready = dockhand_tests::wait_until(std::time::Duration::from_secs(30), || {
        std::process::Command::new("docker")
            .args(["exec", &name, "/bin/busybox", "cat", "/ready"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ready {
        let logs = std::process::Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        panic!(
            "the app in {name} never became ready: {}",
            String::from_utf8_lossy(&logs.stderr)
        );
    }
    let started = Instant::now();
    docker(&["stop", "-t", "10", &name]);
    let secs = started.elapsed().as_secs_f64();
    let code: i32 = docker_text(&["inspect", "-f", "{{.State.ExitCode}}", &name])
        .parse()
        .unwrap();
    let marker = std::process::Command::new("docker")
        .args(["cp", &format!("{name}:/marker"), "-"])
        .output()
        .unwrap();
    (
        code,
        String::from_utf8_lossy(&marker.stdout).into_owned(),
        secs,
    )
}

#[test]
fn docker_stop_ends_the_app_and_its_children_in_order() {
    if unavailable() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(static_bin("entrypoint"), ctx.path().join("entrypoint")).unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("busybox-static: run scripts/setup");
    std::fs::copy("/usr/bin/tini-static", ctx.path().join("tini"))
        .expect("tini: run scripts/setup");
    std::fs::write(ctx.path().join("app.sh"), APP).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY entrypoint /entrypoint\nCOPY tini /tini\nCOPY app.sh /app.sh\nENTRYPOINT [\"/entrypoint\"]\nCMD [\"/bin/busybox\", \"sh\", \"/app.sh\"]\n",
    )
    .unwrap();
    let mut guard = Guard::new("entrypoint");
    let tag = guard.image.clone();
    docker(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);

    let (code, marker, secs) = run_and_stop(&tag, "/entrypoint", &mut guard);
    println!("dockhand: docker stop took {secs:.2}s, exit {code}");
    // 7 is the app's own TERM handler: Docker's SIGKILL after the timeout would be 137.
    assert_eq!(code, 7, "exit status");
    assert!(
        marker.contains("grandchild handled TERM"),
        "the grandchild's handler did not run"
    );

    let (code, marker, secs) = run_and_stop(&tag, "/tini", &mut guard);
    println!("tini: docker stop took {secs:.2}s, exit {code}");
    assert_eq!(code, 7);
    assert!(
        !marker.contains("grandchild handled TERM"),
        "with tini the grandchild is killed by the kernel"
    );
}
