//! Tests never pass by not running. A test that needs something the machine lacks (a
//! Docker engine, root) fails, saying what is missing, unless the run names that need in
//! `DOCKHAND_SKIP` (comma-separated: `docker`, `root`): then it prints `SKIPPED` and
//! returns. CI never sets `DOCKHAND_SKIP`, so there every such test runs or fails.

/// What a test may need from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A Docker engine that answers `docker info`.
    Docker,
    /// Root (mounts, PID namespaces, chown).
    Root,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Docker => "docker",
            Need::Root => "root",
        }
    }
}

/// Whether `DOCKHAND_SKIP` (a comma-separated list) names `need`. `CI` overrides it:
/// a CI run skips nothing.
pub fn skipping(need: Need) -> bool {
    if std::env::var_os("CI").is_some() {
        return false;
    }
    std::env::var("DOCKHAND_SKIP").is_ok_and(|list| {
        list.split(',')
            .any(|n| n.trim().eq_ignore_ascii_case(need.name()))
    })
}

/// Call with `Some(reason)` when `need` is missing. Returns true when the test must
/// stop here because the run asked to skip it; panics (the test fails) otherwise.
/// Returns false when nothing is missing.
#[must_use = "return from the test when this says skip"]
pub fn missing(need: Need, reason: Option<String>) -> bool {
    let Some(reason) = reason else {
        return false;
    };
    if skipping(need) {
        println!("SKIPPED ({} named in DOCKHAND_SKIP): {reason}", need.name());
        return true;
    }
    panic!(
        "this test needs {}, but {reason}; fix the machine (scripts/setup), or name it in \
         DOCKHAND_SKIP={} to skip such tests on purpose (CI never does)",
        need.name(),
        need.name()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_runs() {
        assert!(!missing(Need::Docker, None));
    }

    #[test]
    #[should_panic(expected = "DOCKHAND_SKIP=root")]
    fn a_missing_need_fails_unless_named() {
        // This test process never sets DOCKHAND_SKIP=root (CONTRIBUTING says so).
        if skipping(Need::Root) {
            panic!("DOCKHAND_SKIP=root is set; this check cannot run");
        }
        let _ = missing(Need::Root, Some("not root".into()));
    }
}
