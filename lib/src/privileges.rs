//! Dropping privileges for the app, like gosu and su-exec: `--user NAME|UID[:GID]` is
//! resolved from `/etc/passwd` and `/etc/group` directly (no NSS, so it works in static
//! binaries and `FROM scratch` images), and the child calls setgroups, setgid and setuid
//! between fork and exec, with `HOME` set to the user's home. `--chown PATH` hands
//! volumes to that user first (recursively, never following symbolic links).
//!
//! The entrypoint itself stays root: as PID 1 it must be able to signal and reap every
//! process in the container at shutdown, `docker exec` sessions included, and it runs
//! no code of the app's.

use crate::config::{invalid, ConfigError};
use crate::error::{Error, Kind};
use std::path::Path;

/// Who the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && !l.starts_with('#')).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// (name, gid, members) of each group.
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && !l.starts_with('#')).then_some(())?;
            Some((
                f[0].to_string(),
                f[2].parse().ok()?,
                f[3].split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            ))
        })
        .collect()
}

/// Why `--chown` stopped (exit status 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChownKind {
    /// A file could not be changed or read.
    Failed,
    /// A stop signal arrived.
    Interrupted,
}

impl Kind for ChownKind {
    fn exit_code(self) -> u8 {
        5
    }
}

/// A failed `--chown`.
pub type ChownError = Error<ChownKind>;

fn failed(p: &Path, e: std::io::Error) -> ChownError {
    let reason = crate::error::io_reason(&e);
    ChownError::new(
        ChownKind::Failed,
        format!("--chown {}: {reason}", p.display()),
    )
    .with_source(e)
}

/// Resolves `NAME`, `UID`, `NAME:GROUP` or `UID:GID` against the given file contents.
pub fn resolve_in(
    spec: &str,
    passwd_text: &str,
    group_text: &str,
) -> Result<Credentials, ConfigError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") {
        return Err(invalid(format!(
            "invalid user {spec:?}: use NAME, UID, NAME:GROUP or UID:GID"
        )));
    }
    let users = passwd(passwd_text);
    let all_groups = groups(group_text);
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(users.iter().find(|e| e.name == user).ok_or_else(|| {
            invalid(format!(
                "user {user:?} is not in /etc/passwd: add it to the image, or give a numeric UID"
            ))
        })?),
    };
    let uid = entry.map_or_else(|| user.parse::<u32>().unwrap_or(0), |e| e.uid);
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| {
                    invalid(format!(
                        "group {g:?} is not in /etc/group: add it, or give a numeric GID"
                    ))
                })?,
        },
        // A numeric UID without an entry keeps its number as the group, never root's.
        None => entry.map_or(uid, |e| e.gid),
    };
    let mut supplementary = vec![gid];
    if let (Some(e), None) = (entry, group) {
        for (_, g, members) in &all_groups {
            if members.iter().any(|m| m == &e.name) && !supplementary.contains(g) {
                supplementary.push(*g);
            }
        }
    }
    // (uid_t)-1 means "leave unchanged" to setresuid and is refused by setuid: no
    // process can run as it, whatever /etc/passwd says.
    if let Some((what, _)) = [("uid", uid)]
        .into_iter()
        .chain(supplementary.iter().map(|g| ("gid", *g)))
        .find(|(_, id)| *id == u32::MAX)
    {
        return Err(invalid(format!(
            "invalid user {spec:?}: {what} 4294967295 is -1, which the kernel reads as \"no change\" and no process can run as; use a real {what}"
        )));
    }
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or_else(|| "/".to_string(), |e| e.home.clone()),
    })
}

/// Resolves a user against this system's /etc/passwd and /etc/group.
pub fn resolve(spec: &str) -> Result<Credentials, ConfigError> {
    let p = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let g = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_in(spec, &p, &g)
}

/// Gives `path` and everything below it to `creds` (symbolic links themselves are
/// changed, never followed). `interrupted` is asked every 256 entries: a tree of a
/// hundred thousand files takes seconds, and a stop signal must not wait for it.
pub fn chown_recursive(
    path: &Path,
    creds: &Credentials,
    mut interrupted: impl FnMut() -> bool,
) -> Result<usize, ChownError> {
    let mut count = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if count % 256 == 255 && interrupted() {
            return Err(ChownError::new(
                ChownKind::Interrupted,
                format!("--chown {}: interrupted", path.display()),
            ));
        }
        std::os::unix::fs::lchown(&p, Some(creds.uid), Some(creds.gid))
            .map_err(|e| failed(&p, e))?;
        count += 1;
        let meta = std::fs::symlink_metadata(&p).map_err(|e| failed(&p, e))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|e| failed(&p, e))?;
            for e in entries.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n# comment\nbad line\n";
    const GROUP: &str = "root:x:0:\nnode:x:1000:\ndocker:x:999:node,other\nstaff:x:50:\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let c = resolve_in("node", PASSWD, GROUP).unwrap();
        assert_eq!(
            (c.uid, c.gid, c.groups.clone(), c.home.as_str()),
            (1000, 1000, vec![1000, 999], "/home/node")
        );
        let c = resolve_in("1000:staff", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (1000, 50, vec![50]));
        let c = resolve_in("4242", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (4242, 4242, "/"));
        let c = resolve_in("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (4242, 7));
    }

    #[test]
    fn explains_unknown_users() {
        assert!(resolve_in("nobody-here", PASSWD, GROUP)
            .unwrap_err()
            .message()
            .contains("not in /etc/passwd"));
        assert!(resolve_in("node:nogroup", PASSWD, GROUP)
            .unwrap_err()
            .message()
            .contains("not in /etc/group"));
        assert!(resolve_in(":1", PASSWD, GROUP)
            .unwrap_err()
            .message()
            .contains("invalid user"));
        for minus_one in ["4294967295", "1000:4294967295", "huge"] {
            let passwd = format!("{PASSWD}huge:x:4294967295:4294967295::/:/bin/sh\n");
            let e = resolve_in(minus_one, &passwd, GROUP).unwrap_err();
            assert!(e.message().contains("4294967295 is -1"), "{minus_one}: {e}");
        }
    }
}
