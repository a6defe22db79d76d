//! `backup recover --to-time T|latest --data-dir DIR`: point-in-time recovery into an
//! empty data directory from a base backup and the WAL stored after it.
//!
//! The newest base backup that ended before T is unpacked (`tar`, fed through the same
//! checked reader as a restore: a damaged backup stops before its end is written), and
//! every stored WAL file it may need is fetched, checked and decoded into
//! `DIR/dockhand_wal/` (a segment stored only as a partial, from its newest partial). `restore_command` is then a plain `cp` from there: PostgreSQL
//! runs it itself, and this way the recovering server's image needs neither dockhand
//! nor the backup credentials (S3 keys, the age identity) in its configuration. The
//! price is room for the WAL up to now in the volume; the folder can be removed once
//! the server has promoted. `recovery.signal`, `recovery_target_time` and
//! `recovery_target_action = promote` complete it: PostgreSQL started on DIR recovers
//! to T and opens.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use tracing::info;

use super::catalog::{self, Backup, Reading, Side};
use super::manifest::Content;
use super::walname::{segment, segment_of_lsn, stored_file};
use super::{err, BackupError, Cancel};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the WAL stored.
    Latest,
    /// A moment, unix seconds and microseconds.
    Time(i64, u32),
}

/// Parses `--to-time`: `latest`, or an RFC 3339 time with its offset
/// (`2026-12-07T16:05:00Z`, `2026-12-07T17:05:00.25+01:00`).
pub fn parse_target(s: &str) -> Result<Target, crate::config::ConfigError> {
    if s.trim() == "latest" {
        return Ok(Target::Latest);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|e| {
        crate::config::invalid(format!(
            "--to-time {s:?}: {e}; use latest or a time with its offset, e.g. 2026-12-07T16:05:00Z"
        ))
    })?;
    Ok(Target::Time(t.timestamp(), t.timestamp_subsec_micros()))
}

/// What `recover` did.
#[derive(Debug)]
pub struct Recovered {
    pub base: String,
    pub wal_files: usize,
}

/// Recovers into `dir` (which must be missing or empty).
pub fn recover(
    r: &Reading,
    backups: &[Backup],
    from: Option<Side>,
    target: &Target,
    dir: &Path,
    cancel: &Cancel,
) -> Result<Recovered, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(err(format!(
                    "{}: the data directory is not empty: recovery only writes into an empty one (a new volume)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(super::io_err(dir)(e)),
    }
    let before = match target {
        Target::Latest => i64::MAX,
        Target::Time(secs, _) => *secs,
    };
    let base = backups
        .iter()
        .rev()
        .find(|b| b.manifest.kind == Content::Base && b.manifest.wal.is_some() && b.manifest.finished < before)
        .ok_or_else(|| {
            err("no base backup ended before that time (see `backup list`; `backup base` makes one)")
        })?;
    let m = &base.manifest;
    let wal = m.wal.as_ref().expect("checked");
    let start =
        segment_of_lsn(&wal.start).ok_or_else(|| err(format!("{}: bad wal_start", m.name)))?;
    let side = |b: &Backup| from.unwrap_or(if b.local { Side::Local } else { Side::S3 });

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(super::io_err(dir))?;
    info!(
        "recovering from base backup {} into {}",
        m.name,
        dir.display()
    );
    let opened = catalog::open(r, m, side(base))?;
    let mut tar = std::process::Command::new("tar");
    tar.arg("-x").arg("-C").arg(dir);
    let (status, messages) = catalog::feed(tar, opened, m, cancel)?;
    if !status.success() {
        return Err(err(format!(
            "unpacking {}: tar failed ({status}): {}",
            m.file,
            messages.trim()
        )));
    }

    // Every stored WAL file from the base backup's start on (any later timeline), and
    // every history file: one copy of each. A segment stored only as a partial (the
    // one being written when the sidecar last stored it) is taken from the newest
    // partial, under the segment's own name: PostgreSQL replays it to its last
    // complete record.
    let wal_dir = dir.join("dockhand_wal");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&wal_dir)
        .map_err(super::io_err(&wal_dir))?;
    let mut chosen: std::collections::BTreeMap<&str, &Backup> = std::collections::BTreeMap::new();
    for b in backups.iter().filter(|b| b.manifest.kind == Content::Wal) {
        let Some((file, partial)) = stored_file(&b.manifest.name) else {
            continue;
        };
        let wanted = match segment(file) {
            Some((tli, seg)) => tli >= wal.timeline && seg >= start,
            None => true, // a history file
        };
        if !wanted {
            continue;
        }
        let better = match chosen.get(file) {
            None => true,
            Some(c) => match (
                stored_file(&c.manifest.name).is_some_and(|(_, p)| p),
                partial,
            ) {
                // a complete copy over any partial; the newest of the partials
                (true, false) => true,
                (true, true) => {
                    (b.manifest.started, &b.manifest.name) > (c.manifest.started, &c.manifest.name)
                }
                (false, _) => false,
            },
        };
        if better {
            chosen.insert(file, b);
        }
    }
    let mut fetched = std::collections::BTreeSet::new();
    for (file, b) in chosen {
        cancel.check()?;
        decode_into(r, b, side(b), &wal_dir.join(file))?;
        fetched.insert(file.to_string());
    }
    if !fetched
        .iter()
        .any(|f| segment(f).is_some_and(|(_, s)| s == start))
    {
        return Err(err(format!(
            "the WAL segment the base backup {} starts in is not stored: it cannot be recovered (is BACKUP_WAL on?)",
            m.name
        )));
    }

    std::fs::write(dir.join("recovery.signal"), b"").map_err(super::io_err(dir))?;
    let mut conf = format!(
        "\n# dockhand recover, from base backup {}\nrestore_command = 'cp \"dockhand_wal/%f\" \"%p\"'\nrecovery_target_action = 'promote'\n",
        m.name
    );
    if let Target::Time(secs, micros) = target {
        let t = chrono::DateTime::from_timestamp(*secs, micros * 1000).unwrap_or_default();
        conf.push_str(&format!(
            "recovery_target_time = '{}'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        ));
    }
    let auto = dir.join("postgresql.auto.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&auto)
        .and_then(|mut f| f.write_all(conf.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(super::io_err(&auto))?;
    Ok(Recovered {
        base: m.name.clone(),
        wal_files: fetched.len(),
    })
}

/// Decodes one stored file into `path`, checked against its manifest before it gets
/// its name.
fn decode_into(r: &Reading, b: &Backup, from: Side, path: &Path) -> Result<(), BackupError> {
    let m = &b.manifest;
    let partial = crate::files::partial_name(path);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(super::io_err(&partial))?;
    let mut opened = catalog::open(r, m, from)?;
    let mut buf = Vec::new();
    let read = opened.reader.read_to_end(&mut buf);
    let checked = opened.check(m);
    let done = read
        .map_err(|e| err(format!("{}: cannot read it: {e}", m.file)))
        .and(checked)
        .and_then(|()| out.write_all(&buf).map_err(super::io_err(&partial)))
        .and_then(|()| std::fs::rename(&partial, path).map_err(super::io_err(path)));
    if done.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_segments() {
        assert_eq!(parse_target("latest").unwrap(), Target::Latest);
        assert_eq!(
            parse_target("2026-01-01T00:00:01.5Z").unwrap(),
            Target::Time(1_767_225_601, 500_000)
        );
        assert_eq!(
            parse_target("2026-01-01T01:00:01+01:00").unwrap(),
            Target::Time(1_767_225_601, 0)
        );
        for bad in ["", "yesterday", "2026-01-01 00:00", "2026-01-01T00:00:00"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(segment("000000010000000100000003"), Some((1, 0x103)));
        assert_eq!(segment("00000002.history"), None);
        assert_eq!(segment_of_lsn("1/3000028"), Some(0x103));
        assert_eq!(segment_of_lsn("0/2FFFFFF"), Some(2));
    }
}
