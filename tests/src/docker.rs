//! Docker engine access for container tests. A test that needs the engine calls
//! [`unavailable`] first: without one it fails, unless the run names `docker` in
//! `DOCKHAND_SKIP` (see [`crate::skip`]).

use std::path::{Path, PathBuf};
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

/// Builds the local stand-ins for the public images the examples name
/// (scripts/test-images/build; no registry here) and returns them as
/// (`POSTGRES_IMAGE`, tag) pairs and so on, ready to pass as environment.
pub fn test_images() -> Vec<(String, String)> {
    let out = Command::new(crate::bins::root().join("scripts/test-images/build"))
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

/// A copy of the example stack `example` in `work`, with what the user does before
/// `up` other than secrets: `npm ci` in its app (here: the drizzle fixture's
/// node_modules, pg and drizzle-orm).
pub fn stack(example: &str, work: &Path) -> PathBuf {
    let dir = work.join("stack");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(crate::bins::root().join(example))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/drizzle-app/node_modules.tar.zst");
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -C '{}' -xf -",
            fixture.display(),
            dir.join("app").display()
        ))
        .status()
        .unwrap()
        .success());
    dir
}

/// The host's address on docker0, where containers reach the host (host-gateway) and
/// where a single-node swarm advertises itself.
pub fn docker0_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("docker0 has no IPv4 address")
        .to_string()
}
