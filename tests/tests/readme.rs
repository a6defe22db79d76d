//! README.md shows only what the tests run: every `dockerfile` and `yaml` block names
//! the example file it is taken from on its first line (`# examples/...`), and each of
//! its lines is a line of that file. (The `sh` blocks are run by the tests that own
//! them: the two commands by CI itself, `docker build` by docker_image.rs, the
//! `docker compose exec` lines by compose.rs.)

use dockhand_tests::bins::root;

#[test]
fn every_config_snippet_in_the_readme_is_taken_from_a_tested_example() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in readme.lines() {
        if let Some(lang) = line.strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some((lang.to_string(), Vec::new())),
            }
        } else if let Some((_, lines)) = &mut current {
            lines.push(line.to_string());
        }
    }
    let config: Vec<&(String, Vec<String>)> = blocks
        .iter()
        .filter(|(lang, _)| lang == "dockerfile" || lang == "yaml")
        .collect();
    assert!(config.len() >= 4, "{} blocks", config.len());
    for (lang, lines) in config {
        let source = lines
            .first()
            .and_then(|l| l.strip_prefix("# "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("a {lang} block does not name its file: {lines:?}"));
        assert!(source.starts_with("examples/"), "{source}");
        let file = std::fs::read_to_string(root().join(source))
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        let file_lines: Vec<&str> = file.lines().map(str::trim).collect();
        for l in lines
            .iter()
            .skip(1)
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
        {
            assert!(file_lines.contains(&l), "README line not in {source}: {l}");
        }
    }
}

/// The reference tables, in README order: each is rendered from the table that also
/// drives that binary's parser and `--help`.
fn reference_tables() -> Vec<(&'static str, String)> {
    use dockhand::cli::{backup, entrypoint, healthcheck, markdown};
    vec![
        ("healthcheck", markdown(healthcheck::TABLE, "")),
        (
            "entrypoint start-up",
            markdown(entrypoint::TABLE, "start-up"),
        ),
        (
            "entrypoint supervision",
            markdown(entrypoint::TABLE, "supervision"),
        ),
        ("backup", markdown(backup::TABLE, "")),
    ]
}

/// Run with `DOCKHAND_BLESS=1` to write the tables into README.md after changing a
/// flag table.
#[test]
fn the_readme_reference_tables_are_the_flag_tables() {
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let tables = reference_tables();
    if std::env::var_os("DOCKHAND_BLESS").is_some() {
        let mut out = String::new();
        let mut rest = readme.as_str();
        for (_, table) in &tables {
            let start = rest
                .find("| flag | env var | default | meaning |")
                .expect("fewer reference tables in README.md than binaries' sections");
            let end = rest[start..]
                .find("\n\n")
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&rest[..start]);
            out.push_str(table);
            rest = &rest[end..];
        }
        out.push_str(rest);
        std::fs::write(&path, out).unwrap();
        return;
    }
    for (name, table) in &tables {
        assert!(
            readme.contains(table.as_str()),
            "README.md's {name} table is not the one the parser uses; run this test with DOCKHAND_BLESS=1, or paste:\n{table}"
        );
    }
    assert_eq!(
        readme
            .matches("| flag | env var | default | meaning |")
            .count(),
        tables.len(),
        "a reference table in README.md that no flag table drives"
    );
}

#[test]
fn help_comes_from_the_same_tables() {
    use dockhand::cli::{backup, entrypoint, healthcheck};
    for (bin, help, table) in [
        ("healthcheck", healthcheck::help(), healthcheck::TABLE),
        ("entrypoint", entrypoint::help(), entrypoint::TABLE),
        ("backup", backup::help(), backup::TABLE),
    ] {
        let cmd = dockhand_tests::run::command(&dockhand_tests::bins::bin(bin), &["--help"], &[]);
        let out = dockhand_tests::run::run(cmd, std::time::Duration::from_secs(10));
        assert_eq!(out.code, Some(0), "{bin} --help: {}", out.output());
        assert_eq!(out.stdout, help, "{bin} --help");
        for s in table {
            if !s.long.is_empty() {
                assert!(
                    help.contains(&format!("--{}", s.long)),
                    "{bin}: --{}",
                    s.long
                );
            }
            if !s.env.is_empty() {
                assert!(help.contains(s.env), "{bin}: {}", s.env);
            }
        }
    }
    // healthcheck's target forms and exit statuses are worded in README as in --help
    let help = healthcheck::help();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for form in help
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains("://"))
    {
        assert!(
            readme.contains(&format!("`{form}`")),
            "README lacks the target form {form}"
        );
    }
    for said in [
        "0 every target healthy",
        "1 a target is unhealthy, or the arguments or\nenvironment are invalid",
        "Never 2 (Docker reserves it)",
    ] {
        assert!(help.contains(said), "healthcheck --help: {said}");
        let row = said.replace("\n", " ").replacen(
            ' ',
            " | ",
            usize::from(said.starts_with(char::is_numeric)),
        );
        assert!(readme.contains(&row), "README: {row}");
    }
    // a command's own flag names its command once ("daemon: the daemon: ..." was
    // printed for two rows)
    let help = backup::help();
    for c in [
        "daemon", "now", "restore", "drill", "prune", "list", "recover",
    ] {
        assert!(
            !help.contains(&format!("{c}: the {c}")) && !help.contains(&format!("{c}: {c}:")),
            "backup --help names {c} twice:\n{help}"
        );
    }
}
