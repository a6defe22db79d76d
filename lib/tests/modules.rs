//! The lib's modules depend on each other one way only: no import cycle among the
//! top-level modules, nor among the modules of one folder (`backup/`, `migrate/`,
//! `cli/`), the folder's own `mod.rs` counting as a module of the folder.
//!
//! The sources are read with a real parser (`syn`): every path counts, in `use` trees
//! (nested groups, renames, globs), in code and types, and inside macro calls
//! (`format!("{}", crate::x::f())`), resolved from `crate::`, `super::`, `self::` and
//! from a child module's name. A module's unit tests (`#[cfg(test)]` items) are left
//! out: a test may use anything. The unit tests at the end plant a cycle of each kind
//! and check that it is found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module's path from the crate root: `[]` is lib.rs, `["backup", "run"]` is
/// backup/run.rs, `["backup"]` is backup/mod.rs.
type ModPath = Vec<String>;

/// The lib's sources: each module and its text.
type Sources = BTreeMap<ModPath, String>;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, keyed by its module path.
fn read_sources(dir: &Path, prefix: &[String], out: &mut Sources) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut sub = prefix.to_vec();
            sub.push(stem);
            read_sources(&p, &sub, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let mut module = prefix.to_vec();
            if stem != "mod" && stem != "lib" {
                module.push(stem);
            }
            out.insert(module, std::fs::read_to_string(&p).unwrap());
        }
    }
}

fn lib_sources() -> Sources {
    let mut s = Sources::new();
    read_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut s,
    );
    s
}

/// `#[cfg(test)]` (or any cfg that needs `test` and has no `not`).
fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::List(l) if l.path.is_ident("cfg") => {
            let t = l.tokens.to_string();
            t.contains("test") && !t.contains("not")
        }
        _ => false,
    })
}

/// Every path a file names, as written (`["crate", "pg", "classify"]`), each after the
/// inline modules (`mod check { ... }`) it sits in, so `super::` inside one is resolved
/// from there.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
    inline: Vec<String>,
}

impl Paths {
    /// Records `path` as written inside the current inline modules.
    fn push(&mut self, path: Vec<String>) {
        let mut p: Vec<String> = self.inline.iter().map(|m| format!("#{m}")).collect();
        p.extend(path);
        self.found.push(p);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.push(full);
            }
            syn::UseTree::Glob(_) => self.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths inside a macro call's tokens: runs of `ident :: ident :: ...`.
    fn tokens(&mut self, ts: TokenStream) {
        let mut run: Vec<String> = Vec::new();
        let mut colons = 0;
        let flush = |run: &mut Vec<String>, out: &mut Paths| {
            if run.len() > 1 {
                out.push(std::mem::take(run));
            }
            run.clear();
        };
        for tt in ts {
            match tt {
                TokenTree::Ident(i) => {
                    if colons != 2 {
                        flush(&mut run, self);
                    }
                    run.push(i.to_string());
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
                TokenTree::Group(g) => {
                    flush(&mut run, self);
                    colons = 0;
                    self.tokens(g.stream());
                }
                _ => {
                    flush(&mut run, self);
                    colons = 0;
                }
            }
        }
        flush(&mut run, self);
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item(&mut self, i: &'a syn::Item) {
        let attrs: &[syn::Attribute] = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(m) => &m.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            return;
        }
        syn::visit::visit_item(self, i);
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            return;
        }
        self.inline.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.inline.pop();
    }

    // `pub(super)`, `pub(in crate::x)`: who may see an item, not a module it uses
    fn visit_visibility(&mut self, _: &'a syn::Visibility) {}

    fn visit_path(&mut self, p: &'a syn::Path) {
        self.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'a syn::Macro) {
        self.visit_path(&m.path);
        self.tokens(m.tokens.clone());
    }
}

/// The module a path written in `from` lands in, if it names one of `modules`:
/// the longest known module prefix of the resolved path.
fn resolve(from: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    // the inline modules the path sits in extend `from` (they are no file of their own)
    let inline = path.iter().take_while(|s| s.starts_with('#')).count();
    let mut inner = from.clone();
    inner.extend(path[..inline].iter().map(|s| s[1..].to_string()));
    let (from, path) = (&inner, &path[inline..]);
    let mut at: ModPath;
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            at = Vec::new();
            rest = &path[1..];
        }
        Some("self") | Some("super") => {
            at = from.clone();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        at.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // a child module named without `self::` (`drizzle::apply` in migrate/mod.rs);
            // a one-segment path is a local name (`status` the variable), never a module
            if path.len() < 2 {
                return None;
            }
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            at = from.clone();
        }
        None => return None,
    }
    // an inline module is part of its file's module
    while !at.is_empty() && !modules.contains(&at) {
        at.pop();
    }
    for seg in rest {
        let mut next = at.clone();
        next.push(seg.clone());
        if modules.contains(&next) {
            at = next;
        } else {
            break;
        }
    }
    Some(at)
}

/// Module -> the modules it names (itself left out).
fn dependencies(sources: &Sources) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = sources.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (module, text) in sources {
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{}: {e}", module.join("/")));
        let mut paths = Paths::default();
        paths.visit_file(&file);
        let deps: BTreeSet<ModPath> = paths
            .found
            .iter()
            .filter_map(|p| resolve(module, p, &modules))
            .filter(|d| d != module)
            .collect();
        out.insert(module.clone(), deps);
    }
    out
}

/// The graph of the top-level modules (lib.rs left out: it only declares them).
fn top_level(deps: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Graph {
    let mut g = Graph::new();
    for (m, ds) in deps {
        let Some(top) = m.first() else { continue };
        let e = g.entry(top.clone()).or_default();
        for d in ds {
            if let Some(t) = d.first() {
                if t != top {
                    e.insert(t.clone());
                }
            }
        }
    }
    g
}

/// The graph inside `folder`: its files, `mod` standing for its mod.rs.
fn in_folder(deps: &BTreeMap<ModPath, BTreeSet<ModPath>>, folder: &str) -> Graph {
    let node = |m: &ModPath| -> Option<String> {
        match m.as_slice() {
            [f] if f == folder => Some("mod".into()),
            [f, child, ..] if f == folder => Some(child.clone()),
            _ => None,
        }
    };
    let mut g = Graph::new();
    for (m, ds) in deps {
        let Some(from) = node(m) else { continue };
        let e = g.entry(from.clone()).or_default();
        for d in ds {
            if let Some(to) = node(d) {
                if to != from {
                    e.insert(to);
                }
            }
        }
    }
    g
}

fn folders(sources: &Sources) -> BTreeSet<String> {
    sources
        .keys()
        .filter(|m| m.len() >= 2)
        .map(|m| m[0].clone())
        .collect()
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

/// Every cycle check over `sources`: `Err` names the first cycle found.
fn check(sources: &Sources) -> Result<(), String> {
    let deps = dependencies(sources);
    if let Some(c) = cycle(&top_level(&deps)) {
        return Err(format!(
            "an import cycle among the lib's modules: {}",
            c.join(" -> ")
        ));
    }
    for folder in folders(sources) {
        if let Some(c) = cycle(&in_folder(&deps, &folder)) {
            return Err(format!("an import cycle in {folder}/: {}", c.join(" -> ")));
        }
    }
    Ok(())
}

#[test]
fn the_lib_has_no_import_cycle() {
    let sources = lib_sources();
    assert!(sources.len() > 30, "{:?}", sources.keys());
    assert!(folders(&sources).len() >= 3);
    // the parser sees the edges that are there
    let deps = dependencies(&sources);
    let g = top_level(&deps);
    assert!(g["startup"].contains("migrate"), "{g:?}");
    assert!(g["cli"].contains("config"), "{g:?}");
    if let Err(e) = check(&sources) {
        for f in folders(&sources) {
            eprintln!("{f}/: {:?}", in_folder(&deps, &f));
        }
        eprintln!("top: {g:?}");
        panic!("{e}");
    }
}

/// A small crate: `a` and `f/` (mod.rs, `x`, `y`), plus planted lines.
fn planted(extra: &[(&[&str], &str)]) -> Sources {
    let mut s = Sources::new();
    s.insert(vec![], "pub mod a; pub mod b; pub mod f;".into());
    s.insert(vec!["a".into()], "pub fn a() {}".into());
    s.insert(vec!["b".into()], "pub fn b() { crate::a::a(); }".into());
    s.insert(
        vec!["f".into()],
        "pub mod x; pub mod y; pub fn h() {}".into(),
    );
    s.insert(
        vec!["f".into(), "x".into()],
        "use super::h; pub fn x() { h(); }".into(),
    );
    s.insert(
        vec!["f".into(), "y".into()],
        "pub fn y() { super::x::x(); }".into(),
    );
    for (m, text) in extra {
        let key: ModPath = m.iter().map(|s| s.to_string()).collect();
        let e = s.entry(key).or_default();
        e.push('\n');
        e.push_str(text);
    }
    s
}

#[test]
fn the_planted_crate_has_no_cycle() {
    assert_eq!(check(&planted(&[])), Ok(()));
}

#[test]
fn a_cycle_through_a_nested_use_group_is_found() {
    let s = planted(&[(&["a"], "use crate::{f::{x, y::{self}}, b::{b as bee}};")]);
    assert!(check(&s).unwrap_err().contains("among the lib's modules"));
}

#[test]
fn a_cycle_through_use_super_is_found() {
    let s = planted(&[(&["f", "x"], "use super::y::y;")]);
    assert!(check(&s).unwrap_err().contains("in f/"));
}

#[test]
fn a_cycle_through_self_super_is_found() {
    let s = planted(&[(&["f", "x"], "pub fn z() { self::super::y::y(); }")]);
    assert!(check(&s).unwrap_err().contains("in f/"));
}

#[test]
fn a_cycle_through_a_path_after_a_string_is_found() {
    let s = planted(&[(
        &["a"],
        r#"pub fn s() -> String { format!("{}", "s3://crate::"); format!("{:?}", crate::b::b()) }"#,
    )]);
    assert!(check(&s).unwrap_err().contains("among the lib's modules"));
}

#[test]
fn a_visibility_is_no_dependency() {
    // g/mod.rs calls its child z, whose items are `pub(super)`: no way back to mod.rs
    let mut s = Sources::new();
    s.insert(vec![], "pub mod g;".into());
    s.insert(vec!["g".into()], "mod z; pub fn h() { z::z(); }".into());
    s.insert(
        vec!["g".into(), "z".into()],
        "pub(super) fn z() {} pub(in crate::g) fn v() {}".into(),
    );
    assert_eq!(check(&s), Ok(()));
}

#[test]
fn a_cycle_through_a_mod_rs_is_found() {
    // mod.rs calls a child that uses mod.rs's helper `h`
    let s = planted(&[(&["f"], "pub fn run() { x::x(); }")]);
    assert!(check(&s).unwrap_err().contains("in f/: "));
}

#[test]
fn super_inside_an_inline_module_is_its_own_file() {
    // g/mod.rs calls z; z's inline module says `super::*`, which is z, not g/mod.rs
    let mut s = Sources::new();
    s.insert(vec![], "pub mod g;".into());
    s.insert(vec!["g".into()], "pub mod z; pub fn h() { z::z(); }".into());
    s.insert(
        vec!["g".into(), "z".into()],
        "pub fn z() {} mod inner { use super::*; pub fn i() { z(); } }".into(),
    );
    assert_eq!(check(&s), Ok(()));
    // and `super::super::` from there is g/mod.rs: a cycle
    s.get_mut(&vec!["g".to_string(), "z".to_string()])
        .unwrap()
        .push_str(" mod back { pub fn b() { super::super::h(); } }");
    assert!(check(&s).unwrap_err().contains("in g/"));
}

#[test]
fn unit_tests_may_use_anything() {
    let s = planted(&[(&["a"], "#[cfg(test)]\nmod tests { use crate::b::b; }")]);
    assert_eq!(check(&s), Ok(()));
}

#[test]
fn a_graph_cycle_is_found() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert!(cycle(&g).is_some());
    g.get_mut("b").unwrap().clear();
    assert_eq!(cycle(&g), None);
}
