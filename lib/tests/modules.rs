//! The lib's modules depend on each other one way only: no import cycle among the
//! top-level modules, nor among the modules of one folder (`backup/`, `migrate/`,
//! `cli/`). A module's unit tests are left out: a test may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The source of `path` without its `#[cfg(test)] mod tests` and comments.
fn code(path: &Path) -> String {
    let src = std::fs::read_to_string(path).unwrap();
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => &src,
    };
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` in `code` (`crate::` -> `config`, `url`, ...).
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        // `use super::{a, b}` and `use crate::{a, b}`
        if rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in group.split(',') {
                let n: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !n.is_empty() && n != "self" {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// A cycle in `g`, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, m, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its module name relative to `dir`'s level:
/// `config.rs` -> `config`, `backup/run.rs` -> `backup` (top level) or `run`.
fn files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            for (_, f) in files(&p) {
                out.push((name.clone(), f));
            }
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" {
            out.push((name, p));
        }
    }
    out
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let mut g = Graph::new();
    for (module, file) in files(&src()) {
        let deps = names_after(&code(&file), "crate::");
        let entry = g.entry(module.clone()).or_default();
        entry.extend(deps.into_iter().filter(|d| *d != module));
    }
    assert!(g.len() > 20, "{g:?}");
    assert_eq!(cycle(&g), None, "an import cycle among the lib's modules");
}

#[test]
fn the_modules_of_a_folder_have_no_import_cycle() {
    for folder in ["backup", "migrate", "cli"] {
        let dir = src().join(folder);
        let mut g = Graph::new();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let module = p.file_stem().unwrap().to_string_lossy().into_owned();
            if module == "mod" {
                continue;
            }
            let text = code(&p);
            let mut deps = names_after(&text, "super::");
            deps.extend(names_after(&text, &format!("crate::{folder}::")));
            // the folder's own mod.rs (shared helpers) is below every module
            let siblings: BTreeSet<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path().file_stem().unwrap().to_string_lossy().into_owned())
                .collect();
            g.entry(module.clone()).or_default().extend(
                deps.into_iter()
                    .filter(|d| *d != module && siblings.contains(d) && d != "mod"),
            );
        }
        assert_eq!(cycle(&g), None, "an import cycle in {folder}/: {g:?}");
    }
}

#[test]
fn a_cycle_is_found() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert!(cycle(&g).is_some());
    g.get_mut("b").unwrap().clear();
    assert_eq!(cycle(&g), None);
}
