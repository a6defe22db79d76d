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
