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

/// moto on the docker0 address, where containers reach the host (host-gateway, as
/// `host.docker.internal`), stopped when dropped.
pub struct HostS3 {
    pub endpoint_for_containers: String,
    pub host_url: String,
    _moto: crate::proc::Service,
}

/// Starts [`HostS3`].
pub fn host_s3() -> HostS3 {
    let ip = docker0_address();
    let port = crate::free_port();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(crate::bins::root().join(".venv/bin/moto_server"))
        .args(["-H", &ip, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let moto = crate::proc::Service::spawn("moto_server", cmd, nix::sys::signal::Signal::SIGTERM);
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    assert!(crate::wait_until(
        std::time::Duration::from_secs(60),
        || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                .is_ok()
        }
    ));
    HostS3 {
        endpoint_for_containers: format!("http://host.docker.internal:{port}"),
        host_url: format!("http://{ip}:{port}"),
        _moto: moto,
    }
}

impl HostS3 {
    /// A new bucket (moto reads the key id, not the signature); returns its name.
    pub fn bucket(&self) -> String {
        let bucket = format!("backups-{}", crate::token(8));
        let created = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.host_url)])
            .args(["-H", "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"])
            .status()
            .unwrap();
        assert!(created.success(), "creating the bucket {bucket}");
        bucket
    }
}

/// A compose project run with docker-compose (its `docker compose` commands as users
/// type them), taken down with its volumes and local images when dropped.
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl Project {
    /// Runs `docker-compose -p NAME ARGS` in the project's folder with its environment.
    pub fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .args(args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DOCKER_BUILDKIT", "0")
            .env("COMPOSE_DOCKER_CLI_BUILD", "0")
            .stdin(Stdio::null())
            .output()
            .expect("docker-compose (scripts/setup installs it)")
    }

    /// [`Project::compose`], panicking with its output when it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
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
