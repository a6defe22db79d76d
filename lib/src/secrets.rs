//! Start-up configuration for the app: `NAME_FILE` variables read into `NAME`
//! (Docker/Kubernetes secrets), and required variables checked up front.
//!
//! Which `_FILE` variables are loaded is set by `ENTRYPOINT_FILE_VARS`: `all` (the
//! default), `none`, or a comma-separated list of names (`DATABASE_URL,DIRECT_URL`) for
//! apps that also use `_FILE` variables as plain paths (`LOG_FILE`).

use crate::config::{read_secret_file, split_list, ConfigError};

/// Which `NAME_FILE` variables to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileVars {
    All,
    None,
    Only(Vec<String>),
}

impl FileVars {
    pub fn parse(s: &str) -> FileVars {
        match s.trim() {
            "" | "all" => FileVars::All,
            "none" => FileVars::None,
            list => FileVars::Only(
                split_list(list)
                    .map(|n| n.trim_end_matches("_FILE").to_string())
                    .collect(),
            ),
        }
    }

    fn wants(&self, name: &str) -> bool {
        match self {
            FileVars::All => true,
            FileVars::None => false,
            FileVars::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Reads each selected `NAME_FILE` into `NAME` and removes `NAME_FILE`, so the app and
/// dockhand see the value in `NAME` only. Returns the names loaded (never the values).
/// Must run before any thread is started (it changes the environment).
pub fn load_file_vars(which: &FileVars) -> Result<Vec<String>, ConfigError> {
    let mut found: Vec<(String, std::ffi::OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let name = k.strip_suffix("_FILE")?;
            (!name.is_empty() && !v.is_empty() && which.wants(name)).then(|| (name.to_string(), v))
        })
        .collect();
    found.sort();
    let mut loaded = Vec::new();
    for (name, path) in found {
        if std::env::var_os(&name).is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError(format!(
                "both {name} and {name}_FILE are set: unset one of them (or leave {name} out of ENTRYPOINT_FILE_VARS)"
            )));
        }
        let value = read_secret_file(&format!("{name}_FILE"), std::path::Path::new(&path))
            .map_err(|e| match which {
                FileVars::All => ConfigError(format!(
                    "{e} (ENTRYPOINT_FILE_VARS selects which _FILE variables are secrets)"
                )),
                _ => e,
            })?;
        // SAFETY (edition 2021: safe fn): called at start-up, before any other thread.
        std::env::set_var(&name, value);
        std::env::remove_var(format!("{name}_FILE"));
        loaded.push(name);
    }
    Ok(loaded)
}

/// Fails, naming every one of them, when any of `names` is unset or empty.
pub fn require(names: &[String]) -> Result<(), ConfigError> {
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| std::env::var_os(n.as_str()).is_none_or(|v| v.is_empty()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "required environment variable{} not set: {}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_vars_selection() {
        assert_eq!(FileVars::parse("all"), FileVars::All);
        assert_eq!(FileVars::parse("none"), FileVars::None);
        let only = FileVars::parse("DATABASE_URL, DIRECT_URL_FILE");
        assert!(only.wants("DIRECT_URL") && only.wants("DATABASE_URL") && !only.wants("LOG"));
    }
}
