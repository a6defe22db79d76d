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

use tracing::{info, warn};

use super::catalog::{self, Backup, Reading, Side};
use super::manifest::Content;
use super::walname::{check_segment, segment, segment_of_lsn, stored_file};
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
    /// Set when the time given is past the last transaction stored: why recovery goes
    /// to the end of the stored WAL instead.
    pub to_end: Option<String>,
    /// The newest segment fetched (by position), and whether from a partial: a
    /// recovery to the end must replay into it (the PITR drill checks).
    pub newest: Option<(String, bool)>,
    /// WAL files stored only as copies that failed the check, none fetched.
    pub left_out: Vec<String>,
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
    ensure_empty(dir)?;
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
    unpack(r, base, side(base), dir, cancel)?;
    let wal_dir = dir.join("dockhand_wal");
    // A base backup of a cluster recovered before may hold that recovery's folder
    // (removed at the end of recovery since 2026-12-08): stale WAL, not this one's.
    if wal_dir.exists() {
        info!(
            "{}: a folder left by an earlier recovery, removed",
            wal_dir.display()
        );
        std::fs::remove_dir_all(&wal_dir).map_err(super::io_err(&wal_dir))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&wal_dir)
        .map_err(super::io_err(&wal_dir))?;
    let mut fetched = std::collections::BTreeSet::new();
    let (mut newest, mut left_out) = (None::<(u64, String, bool)>, Vec::new());
    for (file, candidates) in wal_candidates(backups, wal.timeline, start) {
        cancel.check()?;
        match fetch_one(r, file, &candidates, &side, &wal_dir)? {
            Some(partial) => {
                if let Some((_, seg)) = segment(file) {
                    if newest.as_ref().is_none_or(|(n, _, _)| seg >= *n) {
                        newest = Some((seg, file.to_string(), partial));
                    }
                }
                fetched.insert(file.to_string());
            }
            None => left_out.push(file.to_string()),
        }
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
    let to_end = match target {
        Target::Time(secs, micros) => past_the_end(*secs, *micros, &wal_dir, &fetched, m),
        Target::Latest => None,
    };
    write_recovery_conf(dir, &m.name, target, to_end.is_some())?;
    Ok(Recovered {
        base: m.name.clone(),
        wal_files: fetched.len(),
        to_end,
        newest: newest.map(|(_, f, p)| (f, p)),
        left_out,
    })
}

/// Refuses a data directory that holds anything: recovery writes only into a new one.
fn ensure_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(err(format!(
            "{}: the data directory is not empty: recovery only writes into an empty one (a new volume)",
            dir.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(super::io_err(dir)(e)),
    }
}

/// Creates `dir` (mode 0700) and unpacks the base backup into it, through the checked
/// reader: a damaged backup stops before its end is written.
fn unpack(
    r: &Reading,
    base: &Backup,
    side: Side,
    dir: &Path,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let m = &base.manifest;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(super::io_err(dir))?;
    // PostgreSQL starts only on a data directory of mode 0700 or 0750; a new volume's
    // root is often more open (the official image's PGDATA is 1777).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(super::io_err(dir))?;
    info!(
        "recovering from base backup {} into {}",
        m.name,
        dir.display()
    );
    let opened = catalog::open(r, m, side)?;
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
    Ok(())
}

/// Every stored WAL file from the base backup's start on (any later timeline), and
/// every history file, each with its stored copies best first: a complete copy, then
/// the partials (stored while the segment was being written), newest first. A segment
/// stored only as partials is recovered from one under the segment's own name:
/// PostgreSQL replays it to its last complete record.
fn wal_candidates(
    backups: &[Backup],
    timeline: u32,
    start: u64,
) -> std::collections::BTreeMap<&str, Vec<&Backup>> {
    let mut all: std::collections::BTreeMap<&str, Vec<&Backup>> = Default::default();
    for b in backups.iter().filter(|b| b.manifest.kind == Content::Wal) {
        let Some((file, _)) = stored_file(&b.manifest.name) else {
            continue;
        };
        let wanted = match segment(file) {
            Some((tli, seg)) => tli >= timeline && seg >= start,
            None => true, // a history file
        };
        if wanted {
            all.entry(file).or_default().push(b);
        }
    }
    for copies in all.values_mut() {
        copies.sort_by_key(|b| {
            let partial = stored_file(&b.manifest.name).is_some_and(|(_, p)| p);
            (
                partial,
                std::cmp::Reverse((b.manifest.started, b.manifest.name.clone())),
            )
        });
    }
    all
}

/// Fetches the first good copy of `file` into `wal_dir`: whether it came from a
/// partial, when one was fetched. A partial
/// whose first page does not describe its segment (a copy taken while pg_receivewal
/// was creating the file, by dockhand before 2026-12-08) is passed over for the next;
/// a complete segment that fails the check is damaged, and recovery stops on it.
fn fetch_one(
    r: &Reading,
    file: &str,
    candidates: &[&Backup],
    side: &dyn Fn(&Backup) -> Side,
    wal_dir: &Path,
) -> Result<Option<bool>, BackupError> {
    for b in candidates {
        let partial = stored_file(&b.manifest.name).is_some_and(|(_, p)| p);
        let check = |bytes: &[u8]| match segment(file) {
            Some(_) => check_segment(file, bytes, bytes.len() as u64),
            None => Ok(()),
        };
        match decode_into(r, b, side(b), &wal_dir.join(file), &check)? {
            Ok(()) => return Ok(Some(partial)),
            Err(why) if partial => warn!("{}: left out: {why}", b.manifest.name),
            Err(why) => {
                return Err(err(format!(
                    "{}: the stored segment is damaged: {why}",
                    b.manifest.name
                )))
            }
        }
    }
    Ok(None)
}

/// PostgreSQL stops at a time only on a transaction that ended after it: a time past
/// the last one stored would end recovery with "recovery ended before configured
/// recovery target was reached" and a server that will not start. Everything stored
/// was committed before such a time, so that is recovering to the end: returns why,
/// when so.
fn past_the_end(
    secs: i64,
    micros: u32,
    wal_dir: &Path,
    fetched: &std::collections::BTreeSet<String>,
    m: &super::manifest::Manifest,
) -> Option<String> {
    let wanted = i128::from(secs) * 1_000_000 + i128::from(micros);
    match last_transaction(wal_dir, fetched, &m.server_version) {
        LastTransaction::At(last) if last < wanted => {
            let said = format!(
                "the stored WAL ends before that time: its last transaction ended at {}",
                format_micros(last)
            );
            warn!("{said}; recovering to the end of the stored WAL (everything stored was committed before the time given)");
            Some(said)
        }
        LastTransaction::At(_) => None,
        LastTransaction::None => {
            let said = "no transaction ended in the stored WAL after the base backup".to_string();
            warn!("{said}; recovering to the end of the stored WAL");
            Some(said)
        }
        LastTransaction::Unknown(why) => {
            warn!(
                "cannot tell where the stored WAL ends ({why}): should PostgreSQL stop with \"recovery ended before configured recovery target was reached\", the time is past the end of the stored WAL: recover again with --to-time latest"
            );
            None
        }
    }
}

/// PostgreSQL's `restore_command`: a plain `cp` from `dockhand_wal/`. A file that is
/// not there exits 1, which PostgreSQL reads as the end of the WAL; a copy that fails
/// (a full disk) exits 126, which PostgreSQL reads as an error and stops recovery on,
/// so that it is never taken for the end of the WAL and the server never promotes
/// with the rest left out (start it again once there is room).
pub const RESTORE_COMMAND: &str =
    r#"test -f "dockhand_wal/%f" || exit 1; cp "dockhand_wal/%f" "%p" || exit 126"#;

/// `recovery.signal`, and the recovery settings appended to `postgresql.auto.conf`:
/// `restore_command` a plain `cp` from `dockhand_wal/`, promote at the end, and the
/// time unless recovery goes to the end. Every other recovery setting is reset: a
/// cluster recovered before keeps its recovery lines in `postgresql.auto.conf` (the
/// server never removes them), so its later base backups carry that old target, which
/// would stop this recovery at the first transaction after it; and a delay a standby
/// had would hold it back. At the end of recovery the fetched WAL is removed
/// (`recovery_end_command`): the promoted server no longer reads it, and its base
/// backups would carry it.
fn write_recovery_conf(
    dir: &Path,
    base: &str,
    target: &Target,
    to_end: bool,
) -> Result<(), BackupError> {
    std::fs::write(dir.join("recovery.signal"), b"").map_err(super::io_err(dir))?;
    let time = match (target, to_end) {
        (Target::Time(secs, micros), false) => {
            let t = chrono::DateTime::from_timestamp(*secs, micros * 1000).unwrap_or_default();
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
        }
        _ => String::new(),
    };
    let conf = format!(
        "\n# dockhand recover, from base backup {base} (replacing any recovery settings above)\n\
         restore_command = '{RESTORE_COMMAND}'\n\
         recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_xid = ''\n\
         recovery_target_name = ''\nrecovery_target_time = '{time}'\n\
         recovery_target_inclusive = on\nrecovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\nrecovery_min_apply_delay = 0\n\
         recovery_end_command = 'rm -rf dockhand_wal'\n"
    );
    let auto = dir.join("postgresql.auto.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&auto)
        .and_then(|mut f| f.write_all(conf.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(super::io_err(&auto))
}

/// Where the stored WAL's transactions end.
#[derive(Debug, PartialEq, Eq)]
enum LastTransaction {
    /// The last commit or abort, unix microseconds.
    At(i128),
    /// pg_waldump read every segment and found none.
    None,
    /// pg_waldump could not tell (missing, another major, a segment it cannot read).
    Unknown(String),
}

/// The time of the last transaction (commit or abort: what `recovery_target_time`
/// stops on) in the fetched segments, newest first, read with `pg_waldump` of the
/// server's major (beside its `pg_dump`).
fn last_transaction(
    wal_dir: &Path,
    fetched: &std::collections::BTreeSet<String>,
    server_version: &str,
) -> LastTransaction {
    let Some(major) = server_version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse::<u32>().ok())
    else {
        return LastTransaction::Unknown(format!(
            "the base backup's server version {server_version:?}"
        ));
    };
    let tools = match super::dump::find_tools(major) {
        Ok(t) if t.major == major => t,
        Ok(t) => {
            return LastTransaction::Unknown(format!(
                "pg_waldump {major} is not installed, only {}",
                t.major
            ))
        }
        Err(e) => return LastTransaction::Unknown(e.to_string()),
    };
    let waldump = tools.pg_dump.with_file_name("pg_waldump");
    let mut segments: Vec<(u64, u32, &String)> = fetched
        .iter()
        .filter_map(|f| segment(f).map(|(tli, seg)| (seg, tli, f)))
        .collect();
    segments.sort();
    for (_, _, file) in segments.iter().rev() {
        let out = std::process::Command::new(&waldump)
            .arg(wal_dir.join(file))
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return LastTransaction::Unknown(format!(
                    "{}: {}",
                    waldump.display(),
                    crate::error::io_reason(&e)
                ))
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // A segment stored as a partial ends in an error after its last record; a
        // segment pg_waldump cannot read at all prints no record.
        if !out.status.success() && !text.contains("rmgr: ") {
            return LastTransaction::Unknown(format!(
                "pg_waldump {file}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if let Some(t) = text.lines().rev().find_map(transaction_end) {
            return LastTransaction::At(t);
        }
    }
    LastTransaction::None
}

/// The end time of a transaction in one line of pg_waldump's output (run with
/// `TZ=UTC`): `desc: COMMIT 2026-12-07 16:05:00.123456 UTC`, or ABORT, or either of
/// a prepared transaction; unix microseconds.
fn transaction_end(line: &str) -> Option<i128> {
    let desc = line.split_once("desc: ")?.1;
    let rest = ["COMMIT ", "ABORT ", "COMMIT_PREPARED ", "ABORT_PREPARED "]
        .iter()
        .find_map(|k| desc.strip_prefix(k))?;
    // COMMIT_PREPARED's description names the transaction first: "5: 2026-..."
    let rest = rest.split_once(": ").map_or(rest, |(a, b)| {
        if a.chars().all(|c| c.is_ascii_digit()) {
            b
        } else {
            rest
        }
    });
    let stamp = rest.get(..26)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.6f").ok()?;
    let t = t.and_utc();
    Some(i128::from(t.timestamp()) * 1_000_000 + i128::from(t.timestamp_subsec_micros()))
}

/// Unix microseconds as RFC 3339 UTC.
fn format_micros(t: i128) -> String {
    let secs = i64::try_from(t.div_euclid(1_000_000)).unwrap_or_default();
    let micros = u32::try_from(t.rem_euclid(1_000_000)).unwrap_or_default();
    chrono::DateTime::from_timestamp(secs, micros * 1000)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Decodes one stored file into `path`, checked against its manifest before it gets
/// its name.
fn decode_into(
    r: &Reading,
    b: &Backup,
    from: Side,
    path: &Path,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Result<Result<(), String>, BackupError> {
    let m = &b.manifest;
    let mut opened = catalog::open(r, m, from)?;
    let mut buf = Vec::new();
    let read = opened.reader.read_to_end(&mut buf);
    read.map_err(|e| err(format!("{}: cannot read it: {e}", m.file)))?;
    opened.check(m)?;
    if let Err(why) = check(&buf) {
        return Ok(Err(why));
    }
    let partial = crate::files::partial_name(path);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(super::io_err(&partial))?;
    let done = out
        .write_all(&buf)
        .map_err(super::io_err(&partial))
        .and_then(|()| std::fs::rename(&partial, path).map_err(super::io_err(path)));
    if done.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    done.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restore command as PostgreSQL runs it (`/bin/sh -c`, in the data directory):
    /// 0 with the file copied, 1 when absent (the end of the WAL), 126 when the copy
    /// fails (a full disk: PostgreSQL stops instead of promoting early).
    #[test]
    fn the_restore_command_tells_a_missing_file_from_a_failed_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dockhand_wal")).unwrap();
        std::fs::write(
            dir.path().join("dockhand_wal/000000010000000000000003"),
            b"wal",
        )
        .unwrap();
        let run = |f: &str, p: &str| {
            let cmd = RESTORE_COMMAND.replace("%f", f).replace("%p", p);
            std::process::Command::new("/bin/sh")
                .args(["-c", &cmd])
                .current_dir(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .code()
        };
        assert_eq!(run("000000010000000000000003", "RECOVERYXLOG"), Some(0));
        assert_eq!(
            std::fs::read(dir.path().join("RECOVERYXLOG")).unwrap(),
            b"wal"
        );
        assert_eq!(run("000000010000000000000004", "RECOVERYXLOG"), Some(1));
        assert_eq!(run("00000002.history", "RECOVERYHISTORY"), Some(1));
        assert_eq!(run("000000010000000000000003", "/dev/full"), Some(126));
        assert_eq!(run("000000010000000000000003", "no/such/dir/x"), Some(126));
    }

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

    #[test]
    fn transaction_ends_in_pg_waldump_lines() {
        let commit = "rmgr: Transaction len (rec/tot):     34/    34, tx:        745, lsn: 0/03000108, prev 0/030000D0, desc: COMMIT 2026-12-07 16:05:00.123456 UTC";
        let t = transaction_end(commit).unwrap();
        assert_eq!(format_micros(t), "2026-12-07T16:05:00.123456Z");
        let abort = "rmgr: Transaction len (rec/tot): 34/34, tx: 746, lsn: 0/03000140, prev 0/03000108, desc: ABORT 2026-12-07 16:05:01.000001 UTC";
        assert_eq!(transaction_end(abort), Some(t + 1_000_000 - 123_455));
        let prepared = "rmgr: Transaction len (rec/tot): 50/50, tx: 0, lsn: 0/03000180, prev 0/03000140, desc: COMMIT_PREPARED 747: 2026-12-07 16:05:02.000000 UTC";
        assert!(transaction_end(prepared).is_some());
        for other in [
            "rmgr: Standby len (rec/tot): 50/50, tx: 0, lsn: 0/030001B0, prev 0/03000180, desc: RUNNING_XACTS nextXid 748",
            "rmgr: Heap len (rec/tot): 54/54, tx: 745, desc: INSERT off: 3, flags: 0x08",
            "pg_waldump: error: error in WAL record at 0/3000108: invalid record length",
        ] {
            assert_eq!(transaction_end(other), None, "{other}");
        }
    }
}
