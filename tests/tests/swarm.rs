//! examples/swarm deployed as users deploy it, on a single-node Docker Swarm made for
//! the test (`docker swarm init` on the docker0 address, left again on every exit
//! path): `docker stack deploy` of the file as written, with the image names from
//! variables (local builds: no registry here). While a load generator inside the
//! stack's overlay network sends requests to every app task (resolving `tasks.app` for
//! each connection, counting every failure), the test
//! - rolls out v2, whose image adds an expand migration (a nullable column, then an
//!   index built CONCURRENTLY on a table with rows): applied once, under the lock,
//!   while the v1 tasks serve; no v1 task stops before its replacement is healthy;
//! - rolls out v3, whose migration fails: its task exits 4 with the entrypoint's
//!   report, Swarm rolls back by itself, v2 serves throughout;
//! - scales the app to 6 and back to 3;
//!
//! and asserts zero failed requests of at least 5,000 in each phase. The figures
//! (requests, failures, p50/p99/max latency, rollout time) are printed and, with
//! `DOCKHAND_SWARM_RESULTS=FILE`, written as the Markdown section bench/swarm.sh puts in
//! bench/RESULTS.md. `DOCKHAND_SWARM_CAUSES=1` (bench/swarm.sh) then measures what
//! each shutdown setting prevents: rolling restarts without --stop-delay, without the
//! app's connection draining, with an app that exits at once, and with a client that
//! caches DNS answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dockhand_tests::docker::{
    docker, docker0_address, docker_text, dockhand_image, stack, test_images, unavailable, Guard,
};
use dockhand_tests::load::{read_phases, Phase};

/// Requests each phase must see, at least.
const PER_PHASE: u64 = 5_000;
/// The load generator's total request rate.
const RATE: u32 = 500;
const LONG: Duration = Duration::from_secs(240);

/// A single-node swarm for this test; leaves it (and removes what it made) when dropped,
/// also when the test fails.
struct Swarm {
    stacks: Vec<String>,
}

impl Swarm {
    fn init() -> Swarm {
        let state = docker_text(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert!(
            state == "inactive",
            "this Docker engine is already in a swarm ({state}); the test makes its own. If \
             it is a leftover of a killed run: docker swarm leave --force; docker network rm docker_gwbridge"
        );
        docker(&["swarm", "init", "--advertise-addr", &docker0_address()]);
        Swarm { stacks: Vec::new() }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        for s in &self.stacks {
            quiet(&["stack", "rm", s]);
        }
        // the stack's containers go before the swarm; their volumes are not the
        // stack's to remove
        for s in &self.stacks {
            let label = format!("label=com.docker.stack.namespace={s}");
            dockhand_tests::wait_until(Duration::from_secs(90), || {
                docker_out(&["ps", "-aq", "--filter", &label]).is_empty()
            });
        }
        quiet(&["swarm", "leave", "--force"]);
        quiet(&["network", "rm", "docker_gwbridge"]);
        for s in &self.stacks {
            quiet(&[
                "volume",
                "rm",
                &format!("{s}_pgdata"),
                &format!("{s}_backups"),
            ]);
        }
    }
}

/// `docker ARGS`' stdout, empty when it fails.
fn docker_out(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A container's output, stdout and stderr.
fn container_logs(id: &str) -> String {
    let o = Command::new("docker").args(["logs", id]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `docker build` of `dir` with build args into `image`'s tag.
fn build(image: &Guard, dir: &Path, args: &[(&str, &str)]) {
    let mut cmd = vec![
        "build".to_string(),
        "-q".into(),
        "-t".into(),
        image.image.clone(),
    ];
    for (k, v) in args {
        cmd.push("--build-arg".into());
        cmd.push(format!("{k}={v}"));
    }
    cmd.push(dir.to_str().unwrap().into());
    docker(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The deployed stack: `docker stack deploy` in its folder with the environment.
struct Stack {
    dir: PathBuf,
    name: String,
    env: Vec<(String, String)>,
}

impl Stack {
    fn deploy(&self, app_image: &str) {
        let out = Command::new("docker")
            .args([
                "stack",
                "deploy",
                "--resolve-image",
                "never",
                "-c",
                "stack.yaml",
            ])
            .arg(&self.name)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("APP_IMAGE", app_image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker stack deploy: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn service(&self, s: &str) -> String {
        format!("{}_{s}", self.name)
    }

    /// The service's containers: (id, image, status), running ones only unless `all`.
    fn containers(&self, s: &str, all: bool) -> Vec<(String, String, String)> {
        let label = format!("label=com.docker.swarm.service.name={}", self.service(s));
        let mut args = vec![
            "ps",
            "--filter",
            &label,
            "--format",
            "{{.ID}}\t{{.Image}}\t{{.Status}}",
        ];
        if all {
            args.insert(1, "-a");
        }
        docker_out(&args)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
            })
            .collect()
    }

    /// Running containers of `s`, and how many of them are healthy with `image`.
    fn healthy(&self, s: &str, image: &str) -> (usize, usize) {
        let running = self.containers(s, false);
        let healthy = running
            .iter()
            .filter(|(_, i, st)| i == image && st.contains("(healthy)"))
            .count();
        (running.len(), healthy)
    }

    fn update_state(&self) -> String {
        docker_out(&[
            "service",
            "inspect",
            "-f",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            &self.service("app"),
        ])
    }

    fn logs(&self, s: &str) -> String {
        let out = Command::new("docker")
            .args(["service", "logs", "--raw", &self.service(s)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn psql(&self, sql: &str) -> String {
        let pg = self.containers("postgres", false).remove(0).0;
        docker_text(&["exec", &pg, "psql", "-U", "app", "-d", "app", "-Atc", sql])
    }

    /// Waits until the app runs exactly `n` containers, all healthy on `image`; the
    /// fewest healthy containers seen meanwhile.
    fn settle(&self, n: usize, image: &str, what: &str) -> usize {
        let mut fewest = usize::MAX;
        let done = dockhand_tests::wait_until(LONG, || {
            let (running, healthy) = self.healthy("app", image);
            let all_healthy = self
                .containers("app", false)
                .iter()
                .filter(|(_, _, st)| st.contains("(healthy)"))
                .count();
            fewest = fewest.min(all_healthy);
            std::thread::sleep(Duration::from_millis(250));
            running == n && healthy == n
        });
        assert!(
            done,
            "{what}: the app never settled at {n} healthy tasks of {image}: {:?}\n{}",
            self.containers("app", true),
            self.logs("app")
        );
        fewest
    }
}

/// The load generator's container, on the stack's network; phases set by file.
struct Load {
    ctl: tempfile::TempDir,
    _container: Guard,
}

impl Load {
    fn start(network: &str, image: &str, extra: &[&str]) -> Load {
        let ctl = tempfile::tempdir().unwrap();
        // the guard removes the container (its image tag is never built)
        let mut guard = Guard::new("load-unused");
        let name = guard.container();
        let bin = env!("CARGO_BIN_EXE_swarm_load");
        let rate = RATE.to_string();
        let mut args = vec!["run", "-d", "--name", &name, "--network", network, "-v"];
        let ctl_mount = format!("{}:/ctl", ctl.path().display());
        let bin_mount = format!("{bin}:/usr/local/bin/swarm_load:ro");
        args.extend([ctl_mount.as_str(), "-v", &bin_mount, image, "swarm_load"]);
        args.extend(["--rate", &rate, "--host", "tasks.app"]);
        args.extend(extra);
        docker(&args);
        Load {
            ctl,
            _container: guard,
        }
    }

    /// Until requests reach every app task (a container just attached to the overlay
    /// network may first resolve nothing, or only some tasks, for a moment) and every
    /// connection made meanwhile has been replaced.
    fn warm_up(&self) {
        let every = dockhand_tests::wait_until(LONG, || {
            self.progress("warmup")
                .is_some_and(|p| p.ok >= 200 && p.tasks.len() >= 3)
        });
        assert!(
            every,
            "the load never reached 3 tasks: {:?}",
            self.progress("warmup")
        );
        self.phase("warmup-2");
        std::thread::sleep(Duration::from_secs(15));
    }

    fn phase(&self, name: &str) {
        let tmp = self.ctl.path().join("phase.tmp");
        std::fs::write(&tmp, name).unwrap();
        std::fs::rename(tmp, self.ctl.path().join("phase")).unwrap();
    }

    fn progress(&self, name: &str) -> Option<Phase> {
        read_phases(&self.ctl.path().join("progress"))
            .into_iter()
            .find(|p| p.name == name)
    }

    /// Waits until phase `name` has sent `n` requests.
    fn at_least(&self, name: &str, n: u64) {
        assert!(
            dockhand_tests::wait_until(LONG, || self.progress(name).is_some_and(|p| p.sent >= n)),
            "phase {name}: fewer than {n} requests: {:?}",
            self.progress(name)
        );
    }

    fn stop(&self) -> Vec<Phase> {
        self.phase("stop");
        let report = self.ctl.path().join("report");
        assert!(
            dockhand_tests::wait_until(Duration::from_secs(30), || report.exists()),
            "the load generator wrote no report"
        );
        read_phases(&report)
    }
}

#[test]
fn rolling_updates_lose_no_request() {
    if unavailable() {
        return;
    }
    let started = Instant::now();
    let env_images = test_images();
    let image_of = |k: &str| {
        env_images
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let dockhand = dockhand_image();
    let work = tempfile::tempdir().unwrap();
    let dir = stack("examples/swarm", work.path());
    let compose = dockhand_tests::bins::root().join("examples/compose");
    let pgbouncer = Guard::new("swarm-pgbouncer");
    build(
        &pgbouncer,
        &compose.join("pgbouncer"),
        &[
            ("PGBOUNCER_IMAGE", &image_of("PGBOUNCER_IMAGE")),
            ("DOCKHAND_IMAGE", &dockhand.image),
        ],
    );
    let backup = Guard::new("swarm-backup");
    build(
        &backup,
        &compose.join("backup"),
        &[
            ("POSTGRES_IMAGE", &image_of("POSTGRES_IMAGE")),
            ("DOCKHAND_IMAGE", &dockhand.image),
        ],
    );
    // v2 is the example as it is; v1 lacks its last two migrations; v3 adds one that
    // fails on a table with rows (a NOT NULL column without a default).
    let app = dir.join("app");
    let migrations = app.join("prisma/migrations");
    let node = image_of("NODE_IMAGE");
    let app_build = |guard: &Guard, version: &str| {
        build(
            guard,
            &app,
            &[
                ("NODE_IMAGE", &node),
                ("DOCKHAND_IMAGE", &dockhand.image),
                ("APP_VERSION", version),
            ],
        )
    };
    let (v1, v2, v3) = (
        Guard::new("swarm-app-v1"),
        Guard::new("swarm-app-v2"),
        Guard::new("swarm-app-v3"),
    );
    app_build(&v2, "v2");
    let expand = [
        "20260201000000_items_note",
        "20260201000001_items_note_index",
    ];
    let aside = work.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for m in expand {
        std::fs::rename(migrations.join(m), aside.join(m)).unwrap();
    }
    app_build(&v1, "v1");
    for m in expand {
        std::fs::rename(aside.join(m), migrations.join(m)).unwrap();
    }
    let broken = migrations.join("20260301000000_items_qty");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("migration.sql"),
        "ALTER TABLE \"items\" ADD COLUMN \"qty\" INTEGER NOT NULL;\n",
    )
    .unwrap();
    app_build(&v3, "v3");
    std::fs::remove_dir_all(&broken).unwrap();
    println!("images built in {:?}", started.elapsed());

    // secrets, as the file's header says
    let password = format!("Sw/{}?#@:%", dockhand_tests::token(16));
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("db_password.txt"), &password).unwrap();
    std::fs::write(
        secrets.join("pgbouncer_userlist.txt"),
        format!("\"app\" \"{password}\"\n"),
    )
    .unwrap();

    let mut swarm = Swarm::init();
    let name = format!("dh{}", dockhand_tests::token(6));
    swarm.stacks.push(name.clone());
    let st = Stack {
        dir,
        name: name.clone(),
        env: vec![
            ("POSTGRES_IMAGE".into(), image_of("POSTGRES_IMAGE")),
            ("PGBOUNCER_IMAGE".into(), pgbouncer.image.clone()),
            ("BACKUP_IMAGE".into(), backup.image.clone()),
        ],
    };
    let deployed = Instant::now();
    st.deploy(&v1.image);
    st.settle(3, &v1.image, "v1");
    assert!(
        dockhand_tests::wait_until(LONG, || st.healthy("db-backup", &backup.image).1 == 1),
        "the backup sidecar never turned healthy: {}",
        st.logs("db-backup")
    );
    println!("v1 deployed and healthy in {:?}", deployed.elapsed());
    let logs = st.logs("app");
    assert_eq!(
        logs.matches("applied migration").count(),
        1,
        "v1's one migration, once: {logs}"
    );

    let load = Load::start(&format!("{name}_default"), &node, &[]);
    load.warm_up();

    // steady state
    load.phase("steady");
    load.at_least("steady", PER_PHASE);

    // v2: the expand migration while v1 serves; no v1 task stops before its
    // replacement is healthy (never fewer than 3 healthy tasks)
    load.phase("rollout");
    let t = Instant::now();
    st.deploy(&v2.image);
    let fewest = st.settle(3, &v2.image, "v2 rollout");
    let rollout = t.elapsed();
    assert!(
        fewest >= 3,
        "only {fewest} healthy app tasks during the rollout"
    );
    assert!(
        dockhand_tests::wait_until(LONG, || st.update_state() == "completed"),
        "the v2 update never completed: {}",
        st.update_state()
    );
    load.at_least("rollout", PER_PHASE);
    let logs = st.logs("app");
    for m in expand {
        assert_eq!(
            logs.matches(&format!("applied migration {m}")).count(),
            1,
            "{m} applied once: {logs}"
        );
    }
    assert_eq!(
        st.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_note_idx'::regclass"),
        "t",
        "the concurrent index is valid"
    );
    assert_eq!(
        st.psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"),
        "3"
    );

    // v3: its migration fails, its task exits 4, Swarm rolls back to v2 by itself
    load.phase("rollback");
    st.deploy(&v3.image);
    assert!(
        dockhand_tests::wait_until(LONG, || st.update_state() == "rollback_completed"),
        "no rollback: {} {:?}",
        st.update_state(),
        st.containers("app", true)
    );
    st.settle(3, &v2.image, "after the rollback");
    load.at_least("rollback", PER_PHASE);
    let failed: Vec<_> = st
        .containers("app", true)
        .into_iter()
        .filter(|(_, i, _)| *i == v3.image)
        .collect();
    // (a v3 task restarted meanwhile may have been stopped by the rollback instead)
    let exit4 = failed.iter().find(|(_, _, s)| s.starts_with("Exited (4)"));
    assert!(
        exit4.is_some() && failed.iter().all(|(_, _, s)| s.starts_with("Exited")),
        "v3's tasks: {failed:?}"
    );
    let v3_logs = container_logs(&exit4.unwrap().0);
    assert!(
        v3_logs.contains("entrypoint: ")
            && v3_logs.contains("20260301000000_items_qty")
            && (v3_logs.contains("contains null values") || v3_logs.contains("P3009")),
        "the failed migration as the entrypoint reports it: {v3_logs}"
    );
    println!(
        "v3's report: {}",
        v3_logs
            .lines()
            .filter(|l| l.contains("entrypoint: "))
            .collect::<Vec<_>>()
            .join(" | ")
    );

    // scale to 6 and back to 3
    load.phase("scale-up");
    docker(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=6", st.service("app")),
    ]);
    st.settle(6, &v2.image, "scale to 6");
    load.at_least("scale-up", PER_PHASE);
    load.phase("scale-down");
    docker(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=3", st.service("app")),
    ]);
    st.settle(3, &v2.image, "scale to 3");
    load.at_least("scale-down", PER_PHASE);

    let causes = if std::env::var_os("DOCKHAND_SWARM_CAUSES").is_some() {
        causes(
            &st,
            &app,
            &node,
            &dockhand.image,
            &load,
            &format!("{name}_default"),
        )
    } else {
        String::new()
    };
    let phases = load.stop();
    let table = report(
        &phases
            .iter()
            .filter(|p| !p.name.starts_with("cause-"))
            .cloned()
            .collect::<Vec<_>>(),
        rollout,
    ) + &causes;
    println!("{table}");
    for p in phases
        .iter()
        .filter(|p| !p.name.starts_with("warmup") && !p.name.starts_with("cause-"))
    {
        assert!(p.sent >= PER_PHASE, "{}", p.line());
        assert_eq!(p.failed, 0, "failed requests: {}", p.line());
        assert!(
            p.tasks.len() >= 3,
            "requests reached every task: {}",
            p.line()
        );
    }
    let phase = |n: &str| phases.iter().find(|p| p.name == n).unwrap();
    assert!(
        phase("rollout").versions.contains_key("v1")
            && phase("rollout").versions.contains_key("v2"),
        "v1 served during the rollout, then v2: {}",
        phase("rollout").line()
    );
    assert!(
        !phase("rollback").versions.contains_key("v3"),
        "v3 never served: {}",
        phase("rollback").line()
    );
    assert!(!st.logs("app").contains(&password), "a password leaked");
    if let Some(path) = std::env::var_os("DOCKHAND_SWARM_RESULTS") {
        std::fs::write(path, table).unwrap();
    }
    println!("swarm test took {:?}", started.elapsed());
}

/// The Markdown table of the phases.
fn report(phases: &[Phase], rollout: Duration) -> String {
    let mut s = String::from(
        "| phase | requests | failed | req/s | p50 | p99 | max | served by |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in phases.iter().filter(|p| !p.name.starts_with("warmup")) {
        let versions = p
            .versions
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.0} ms | {} |\n",
            p.name,
            p.sent,
            p.failed,
            p.rate(),
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            versions
        ));
    }
    s.push_str(&format!(
        "\nRollout of 3 replicas (v1 to v2, start-first, one at a time, with the migration): {:.1} s.\n",
        rollout.as_secs_f64()
    ));
    s
}

/// What each shutdown setting prevents: rolling restarts (`docker service update`)
/// under load whose stopping tasks lack one setting, measured by this test's load (a
/// client that resolves for each connection and keeps connections 5 to 15 s) and by a
/// second one that caches DNS answers for 5 s. Each update both measures the tasks it
/// stops and installs the next variant; the last one restores the file's settings.
fn causes(
    st: &Stack,
    app: &Path,
    node: &str,
    dockhand: &str,
    load: &Load,
    network: &str,
) -> String {
    load.phase("cause-build");
    // the app without draining (the compose example's shutdown: http's close drops idle
    // kept-alive connections at once), and one that exits at once on SIGTERM
    let variant = |tag: &str, handler: &str| {
        let guard = Guard::new(&format!("swarm-app-{tag}"));
        let server = app.join("server.js");
        let original = std::fs::read_to_string(&server).unwrap();
        std::fs::write(
            &server,
            format!("{original}\nprocess.removeAllListeners('SIGTERM');\nprocess.on('SIGTERM', () => {handler});\n"),
        )
        .unwrap();
        build(
            &guard,
            app,
            &[
                ("NODE_IMAGE", node),
                ("DOCKHAND_IMAGE", dockhand),
                ("APP_VERSION", tag),
            ],
        );
        std::fs::write(&server, original).unwrap();
        guard
    };
    let v2 = st.containers("app", false)[0].1.clone();
    let nodrain = variant(
        "v2-nodrain",
        "server.close(() => pool.end().then(() => process.exit(0)))",
    );
    let exits = variant("v2-exits", "process.exit(0)");
    let caching = Load::start(network, node, &["--rate", "200", "--dns-cache-ms", "5000"]);
    caching.warm_up();
    let labels = [
        "as configured: --stop-delay 5s, the app drains",
        "without --stop-delay",
        "without draining (the app closes with http's close)",
        "without --stop-delay, without draining",
        "the app exits at once on SIGTERM",
    ];
    // update i stops what update i-1 installed (at first, the file's settings)
    let installs: [(&str, &str); 5] = [
        (&v2, "0"),
        (&nodrain.image, "5s"),
        (&nodrain.image, "0"),
        (&exits.image, "5s"),
        (&v2, "5s"),
    ];
    let mut rows = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let (image, delay) = installs[i];
        let phase = format!("cause-{i}");
        load.phase(&phase);
        caching.phase(&phase);
        docker(&[
            "service",
            "update",
            "--detach",
            "--image",
            image,
            "--env-add",
            &format!("ENTRYPOINT_STOP_DELAY={delay}"),
            &st.service("app"),
        ]);
        st.settle(3, image, label);
        assert!(
            dockhand_tests::wait_until(LONG, || st.update_state() == "completed"),
            "{label}: the update never completed"
        );
        rows.push((label.to_string(), phase));
    }
    load.phase("cause-end");
    let theirs = caching.stop();
    let ours = read_phases(&load.ctl.path().join("progress"));
    let find = |set: &[Phase], n: &str| {
        set.iter()
            .find(|p| p.name == n)
            .cloned()
            .unwrap_or_default()
    };
    let kinds = |p: &Phase| {
        p.failures
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::from(
        "\nWhat each setting prevents: a rolling restart of the 3 tasks under load, the stopping tasks lacking one setting. Failed requests of a client resolving `tasks.app` for each connection (keeping connections 5 to 15 s), and of one caching DNS answers for 5 s:\n\n| stopping tasks | failed / sent | kinds | DNS-caching client: failed / sent | kinds |\n|---|---:|---|---:|---|\n",
    );
    for (label, phase) in rows {
        let (a, b) = (find(&ours, &phase), find(&theirs, &phase));
        s.push_str(&format!(
            "| {label} | {} / {} | {} | {} / {} | {} |\n",
            a.failed,
            a.sent,
            kinds(&a),
            b.failed,
            b.sent,
            kinds(&b)
        ));
    }
    s
}
