//! Command-line plumbing shared by the binaries: flag values through lexopt, and the
//! "flag, else environment variable (or `NAME_FILE`)" rule every option follows.

use crate::config;

/// The value of the current option, as UTF-8.
pub fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|_| format!("{flag} needs a value"))?
        .into_string()
        .map_err(|_| format!("{flag}: the value is not valid UTF-8"))
}

/// The flag's value if given, else the environment variable's (or its `_FILE`).
pub fn or_env(given: Option<String>, env: &str) -> Result<Option<String>, String> {
    match given {
        Some(v) => Ok(Some(v)),
        None => config::var(env).map_err(|e| e.to_string()),
    }
}

/// A switch: given on the command line, else a boolean environment variable.
pub fn switch_or_env(given: bool, env: &str) -> Result<bool, String> {
    if given {
        return Ok(true);
    }
    match config::var(env).map_err(|e| e.to_string())? {
        Some(v) => config::parse_bool(env, &v).map_err(|e| e.to_string()),
        None => Ok(false),
    }
}

/// A duration from the flag or the environment, with a default.
pub fn duration_or_env(
    given: Option<String>,
    flag: &str,
    env: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    match or_env(given, env)? {
        Some(v) => crate::duration::parse(&v).map_err(|e| format!("{flag} / {env}: {e}")),
        None => Ok(default),
    }
}

/// Repeatable list options: the flags if any were given, else the environment
/// variable split on commas and white space.
pub fn list_or_env(given: Vec<String>, env: &str) -> Result<Vec<String>, String> {
    if !given.is_empty() {
        return Ok(given);
    }
    Ok(or_env(None, env)?
        .map(|v| config::split_list(&v).map(String::from).collect())
        .unwrap_or_default())
}
