//! Start-up configuration for the app: `NAME_FILE` variables read into `NAME`
//! (Docker/Kubernetes secrets), and required variables checked up front.
//!
//! Which `_FILE` variables are loaded is set by `ENTRYPOINT_FILE_VARS`:
//! - unset or `auto` (the default): a `NAME_FILE` whose file lies under `/run/secrets/`
//!   (where Docker and compose mount secrets), and the variables dockhand itself reads
//!   ([`is_dockhand_var`]) wherever their file is. Everything else is left exactly as
//!   it is, because real images carry `_FILE` variables that are plain paths:
//!   `SSL_CERT_FILE` (a 220 KB bundle that would make every exec fail with "argument
//!   list too long"), `CONFIG_FILE`, `LOG_FILE` (not yet created), `TF_CLI_CONFIG_FILE`;
//! - `all`: every `NAME_FILE`; `none`: none; `A,B`: exactly those names.

use crate::config::{invalid, read_secret_file, split_list, ConfigError, ConfigKind};

/// Which `NAME_FILE` variables to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileVars {
    /// Secrets under `/run/secrets/` and dockhand's own variables (the default).
    Auto,
    All,
    None,
    Only(Vec<String>),
}

/// Where Docker and compose mount secrets.
pub const SECRETS_DIR: &str = "/run/secrets/";

/// True for the variables dockhand itself reads (their `_FILE` is always loaded):
/// the connection URLs, libpq's `PG*`, `AWS_*`, `REDIS_URL`, and every
/// `ENTRYPOINT_*`, `HEALTHCHECK_*` and `BACKUP_*` setting.
pub fn is_dockhand_var(name: &str) -> bool {
    matches!(name, "DATABASE_URL" | "DIRECT_URL" | "REDIS_URL")
        || ["PG", "AWS_", "ENTRYPOINT_", "HEALTHCHECK_", "BACKUP_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// dockhand's own settings whose names end in `_FILE` because their value is a path
/// (`BACKUP_STATUS_FILE=/backups/status.json`): never a secret to read.
pub const PATH_SETTINGS: &[&str] = &["BACKUP_STATUS_FILE", "BACKUP_METRICS_FILE"];

impl FileVars {
    pub fn parse(s: &str) -> FileVars {
        match s.trim() {
            "" | "auto" => FileVars::Auto,
            "all" => FileVars::All,
            "none" => FileVars::None,
            list => FileVars::Only(
                split_list(list)
                    .map(|n| n.trim_end_matches("_FILE").to_string())
                    .collect(),
            ),
        }
    }

    fn wants(&self, name: &str, path: &std::ffi::OsStr) -> bool {
        if PATH_SETTINGS
            .iter()
            .any(|p| p.strip_suffix("_FILE") == Some(name))
        {
            return false;
        }
        match self {
            FileVars::Auto => {
                is_dockhand_var(name)
                    || std::path::Path::new(path).starts_with(SECRETS_DIR)
                        && path.as_encoded_bytes().starts_with(SECRETS_DIR.as_bytes())
            }
            FileVars::All => true,
            FileVars::None => false,
            FileVars::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Reads each selected `NAME_FILE` into `NAME` and removes `NAME_FILE`, so the app and
/// dockhand see the value in `NAME` only. Returns the names loaded (never the values).
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (it is
/// the first thing `main` does after blocking signals).
pub unsafe fn load_file_vars(which: &FileVars) -> Result<Vec<String>, ConfigError> {
    let mut found: Vec<(String, std::ffi::OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let name = k.strip_suffix("_FILE")?;
            (!name.is_empty() && !v.is_empty() && which.wants(name, &v))
                .then(|| (name.to_string(), v))
        })
        .collect();
    found.sort();
    let mut values = Vec::new();
    for (name, path) in found {
        if std::env::var_os(&name).is_some_and(|v| !v.is_empty()) {
            return Err(invalid(format!(
                "both {name} and {name}_FILE are set: unset one of them (or leave {name} out of ENTRYPOINT_FILE_VARS)"
            )));
        }
        let value = read_secret_file(&format!("{name}_FILE"), std::path::Path::new(&path))
            .map_err(|e| match which {
                FileVars::All | FileVars::Auto => invalid(format!(
                    "{e} (ENTRYPOINT_FILE_VARS selects which _FILE variables are secrets)"
                )),
                _ => e,
            })?;
        values.push((name, value));
    }
    // Every file is read before the environment changes: an error leaves it as it was.
    let mut loaded = Vec::new();
    for (name, value) in values {
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
        Err(ConfigError::new(
            ConfigKind::Missing,
            format!(
                "required environment variable{} not set: {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn file_vars_selection() {
        assert_eq!(FileVars::parse(""), FileVars::Auto);
        assert_eq!(FileVars::parse("all"), FileVars::All);
        assert_eq!(FileVars::parse("none"), FileVars::None);
        let only = FileVars::parse("DATABASE_URL, DIRECT_URL_FILE");
        let p = OsStr::new("/x");
        assert!(
            only.wants("DIRECT_URL", p) && only.wants("DATABASE_URL", p) && !only.wants("LOG", p)
        );
    }

    #[test]
    fn auto_loads_secrets_and_our_own_variables_only() {
        let auto = FileVars::Auto;
        for (name, path) in [
            ("DB_PASSWORD", "/run/secrets/db_password"),
            ("DIRECT_URL", "/etc/app/direct_url"),
            ("PGPASSWORD", "/somewhere/pw"),
            ("AWS_SECRET_ACCESS_KEY", "/k"),
            ("BACKUP_AGE_RECIPIENTS", "/k"),
        ] {
            assert!(auto.wants(name, OsStr::new(path)), "{name}");
        }
        for (name, path) in [
            ("SSL_CERT", "/etc/ssl/certs/ca-certificates.crt"),
            ("NIX_SSL_CERT", "/etc/ssl/certs/ca-certificates.crt"),
            ("CONFIG", "/etc/hostname"),
            ("LOG", "/var/log/app.log"),
            ("TF_CLI_CONFIG", "/nowhere"),
            ("X", "/run/secretsX/y"),
            ("Y", "/run/secrets"),
            ("BACKUP_STATUS", "/backups/status.json"),
            ("BACKUP_METRICS", "/run/secrets/metrics.prom"),
        ] {
            assert!(!auto.wants(name, OsStr::new(path)), "{name}");
        }
    }
}
