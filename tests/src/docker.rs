//! Docker engine access for container tests. A test that needs the engine calls
//! [`unavailable`] first: without one it fails, unless the run names `docker` in
//! `DOCKHAND_SKIP` (see [`crate::skip`]).

use std::process::{Command, Output, Stdio};

/// True when the test must return at once: no Docker engine answers and the run
/// asked to skip Docker tests (`DOCKHAND_SKIP=docker`). Without an engine and without
/// that, the test fails saying why.
pub fn unavailable() -> bool {
    crate::skip::missing(crate::skip::Need::Docker, probe())
}

fn probe() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "docker info failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("docker is not installed: {e}")),
    }
}

/// Runs `docker ARGS`, panicking with its output when it fails.
pub fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `docker ARGS` and returns trimmed stdout.
pub fn docker_text(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker(args).stdout)
        .trim()
        .to_string()
}

/// The `dockhand` image built as users build it: `docker build` from the repository's
/// root (its Dockerfile), under a unique tag that is removed with the guard.
pub fn dockhand_image() -> Guard {
    let image = Guard::new("dockhand");
    let root = crate::bins::root();
    docker(&["build", "-q", "-t", &image.image, root.to_str().unwrap()]);
    image
}

/// Names a test image and its containers, and removes them all when dropped.
pub struct Guard {
    pub image: String,
    containers: Vec<String>,
}

impl Guard {
    /// A unique image tag `dockhand-test-NAME:RANDOM`.
    pub fn new(name: &str) -> Guard {
        Guard {
            image: format!("dockhand-test-{name}:{}", crate::token(10)),
            containers: Vec::new(),
        }
    }

    /// A unique container name, removed with the guard.
    pub fn container(&mut self) -> String {
        let name = format!("dockhand-test-{}", crate::token(12));
        self.containers.push(name.clone());
        name
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}
