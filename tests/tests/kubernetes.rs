//! examples/kubernetes/ as users apply them: every manifest validates offline against
//! the Kubernetes API schemas (kubernetes-validate, strict: no unknown field), the
//! entrypoint flags they pass are accepted by the real binary, and the timing rules
//! the README gives hold (terminationGracePeriodSeconds above --stop-delay plus
//! --grace and above BACKUP_STOP_GRACE; the CronJob forbids overlaps and has a
//! deadline; secrets only as files).

use std::path::PathBuf;

use dockhand_tests::bins::{bin, root};
use dockhand_tests::run::{command, run};

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/kubernetes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn text(name: &str) -> String {
    std::fs::read_to_string(root().join("examples/kubernetes").join(name)).unwrap()
}

/// The number after `key: ` on the first line holding it.
fn number(doc: &str, key: &str) -> u64 {
    doc.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim_matches('"').trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let validator = root().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "kubernetes-validate is missing: run scripts/setup"
    );
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let out = std::process::Command::new(&validator)
            .args(["--strict", "--quiet"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_manifests_follow_the_readmes_rules() {
    // the app's entrypoint flags are real, and the pod's grace covers them
    let app = text("app.yaml");
    let args_line = app.lines().find(|l| l.trim().starts_with("args:")).unwrap();
    let args: Vec<String> = args_line
        .split(['[', ']'])
        .nth(1)
        .unwrap()
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_string())
        .collect();
    let sep = args.iter().position(|a| a == "--").unwrap();
    let mut flags: Vec<&str> = args[..=sep].iter().map(String::as_str).collect();
    flags.push("true");
    let r = run(
        command(&bin("entrypoint"), &flags, &[]),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{flags:?}: {}", r.output());
    let value_of = |flag: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        dockhand::duration::parse(&args[i + 1]).unwrap().as_secs()
    };
    assert!(
        number(&app, "terminationGracePeriodSeconds")
            > value_of("--stop-delay") + value_of("--grace")
    );
    // the daemon's pod grace is above its stop grace
    let daemon = text("backup-daemon.yaml");
    let stop_grace = daemon
        .split("name: BACKUP_STOP_GRACE")
        .nth(1)
        .and_then(|r| r.lines().find_map(|l| l.trim().strip_prefix("value: ")))
        .map(|v| dockhand::duration::parse(v).unwrap().as_secs())
        .unwrap();
    assert!(number(&daemon, "terminationGracePeriodSeconds") > stop_grace);
    // the CronJob never overlaps and cannot hang forever
    let cron = text("backup-cronjob.yaml");
    assert!(cron.contains("concurrencyPolicy: Forbid"));
    assert!(number(&cron, "activeDeadlineSeconds") > 0);
    // the migration Job leaves no "already exists" behind
    assert!(text("migrate-job.yaml").contains("before-hook-creation,hook-succeeded"));
    // secrets only as files: no password or key as a plain env value
    for f in manifests() {
        let doc = std::fs::read_to_string(&f).unwrap();
        for (i, line) in doc.lines().enumerate() {
            let l = line.trim();
            if let Some(name) = l.strip_prefix("- name: ") {
                let upper = name.to_ascii_uppercase();
                if upper.contains("PASSWORD")
                    || upper.contains("SECRET")
                    || upper.ends_with("_URL") && !upper.starts_with("DATABASE")
                {
                    assert!(
                        upper.ends_with("_FILE"),
                        "{}:{}: {name} must come from a file",
                        f.display(),
                        i + 1
                    );
                }
            }
        }
    }
}
