//! Where the binaries under test are: `target/debug/NAME` (built by `cargo build
//! --workspace`, which scripts/test runs first) or, for container tests, the static
//! ones in `target/static/` (built by scripts/build-static).

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The debug build of a binary; panics with what to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        p.display()
    );
    p
}

/// The static release build of a binary; panics with what to run when it is missing.
pub fn static_bin(name: &str) -> PathBuf {
    let p = target_dir().join("static").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-static first (scripts/test does)",
        p.display()
    );
    p
}
