//! Configuration from the environment, the way containers are configured: every option
//! has an env var, and any env var `NAME` may instead be given as `NAME_FILE`, the path
//! of a file holding the value (Docker and Kubernetes secrets).

use crate::error::{Error, Kind};

/// What is wrong with a setting (every kind ends a binary with exit status 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// A value that cannot be used: malformed, out of range, unreadable.
    Invalid,
    /// A required setting is not set.
    Missing,
}

impl Kind for ConfigKind {
    fn exit_code(self) -> u8 {
        2
    }
}

/// A setting that could not be read; the message names the variable and what to do.
pub type ConfigError = Error<ConfigKind>;

/// An invalid setting: `message` names it and says what to write instead.
pub fn invalid(message: impl Into<String>) -> ConfigError {
    Error::new(ConfigKind::Invalid, message)
}

/// The value of `name`, or of the file named by `name_FILE`, or `None` when neither is
/// set. Empty values count as unset. One trailing newline (`\n` or `\r\n`) of a file is
/// removed, as editors and `echo` add one. Both set at once is an error: which one wins
/// would be a guess.
pub fn var(name: &str) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let direct = std::env::var_os(name).filter(|v| !v.is_empty());
    let file = std::env::var_os(&file_var).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "both {name} and {file_var} are set: unset one of them"
        ))),
        (Some(v), None) => v
            .into_string()
            .map(Some)
            .map_err(|_| invalid(format!("{name} is not valid UTF-8"))),
        (None, Some(path)) => read_secret_file(&file_var, std::path::Path::new(&path)).map(Some),
        (None, None) => Ok(None),
    }
}

/// The largest secret file read (a password, a URL, a key: far smaller).
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Reads a secret file named by `var_name`, removing one trailing newline. Errors name
/// the variable and the problem, never the content: a regular file only (no FIFO,
/// directory or device), at most [`MAX_SECRET_FILE`], UTF-8 text without NUL bytes
/// (an environment variable cannot carry a NUL).
pub fn read_secret_file(var_name: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    let bytes = crate::files::read_regular(path, MAX_SECRET_FILE).map_err(|e| {
        invalid(format!("{var_name}: cannot read {}: {e}", path.display())).with_source(e)
    })?;
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err(invalid(format!(
            "{var_name}: {} is UTF-16 text: save it as UTF-8",
            path.display()
        )));
    }
    if bytes.contains(&0) {
        return Err(invalid(format!(
            "{var_name}: {} holds a NUL byte, which an environment variable cannot carry: save the value alone, as UTF-8 text",
            path.display()
        )));
    }
    let mut s = String::from_utf8(bytes).map_err(|_| {
        invalid(format!(
            "{var_name}: {} is not UTF-8 text: save it as UTF-8",
            path.display()
        ))
    })?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Splits a list given in one env var or flag: comma- or whitespace-separated.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
}

/// Parses a boolean env value: `1/0`, `true/false`, `yes/no`, `on/off`.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(invalid(format!(
            "{name}={value:?} is not a boolean: use true or false"
        ))),
    }
}

/// Parses a `FROM:TO` pair (`TERM:QUIT`, `143:0`), each side with `parse`.
pub fn parse_pair<T>(
    s: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<(T, T), ConfigError> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| invalid(format!("invalid {what} {s:?}: use FROM:TO")))?;
    Ok((parse(a)?, parse(b)?))
}

/// A byte count for people: `512 B`, `1.5 MiB` (in 1024s, as [`parse_size`] reads them).
pub fn human_size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Parses a size such as `16MiB`, `8M`, `10MB`, `64kB`, `5242880` (bytes; `k`, `M`, `G`
/// count in 1024s, as PostgreSQL's own settings do).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lists() {
        let v: Vec<_> = split_list("a, b,,c d\n").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
    }

    #[test]
    fn bools() {
        assert!(parse_bool("X", "TRUE").unwrap());
        assert!(!parse_bool("X", "0").unwrap());
        assert!(parse_bool("X", "maybe")
            .unwrap_err()
            .to_string()
            .contains("X=\"maybe\""));
    }

    #[test]
    fn secret_file_trims_one_newline() {
        let dir = std::env::temp_dir().join(format!("dockhand-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        std::fs::write(&p, "pw\n\n").unwrap();
        assert_eq!(read_secret_file("X_FILE", &p).unwrap(), "pw\n");
        std::fs::write(&p, "pw\r\n").unwrap();
        assert_eq!(read_secret_file("X_FILE", &p).unwrap(), "pw");
        let e = read_secret_file("X_FILE", &dir.join("missing")).unwrap_err();
        assert!(e.to_string().contains("X_FILE: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pairs() {
        let number = |s: &str| s.parse::<i32>().map_err(|_| invalid("not a number"));
        assert_eq!(parse_pair("143:0", "remap", number), Ok((143, 0)));
        assert!(parse_pair("143", "remap", number)
            .unwrap_err()
            .to_string()
            .contains("FROM:TO"));
        assert!(parse_pair("1:x", "remap", number).is_err());
    }
}
