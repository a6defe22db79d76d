//! The backups in the folder and under the S3 prefix, as their manifests describe them
//! (files dockhand did not write, and data without a manifest, are never listed), and
//! reading a backup back: [`open`] streams it (local file or S3 download) through a
//! SHA-256 check and the codec, [`feed`] pipes it into `pg_restore`/`psql`, and
//! [`verify`] does both into `pg_restore -f /dev/null`, a full read
//! (`pg_restore --list` passes on a truncated dump; a full read does not).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::codec;
use super::manifest::{manifest_file, Content, Manifest};
use super::s3::S3;
use super::{err, hex, io_err, unix_now, BackupError, Cancel, Tool};
use crate::files::write_atomic;

/// A backup and where its complete copies are.
#[derive(Debug, Clone)]
pub struct Backup {
    pub manifest: Manifest,
    pub local: bool,
    pub remote: bool,
}

/// Where to read a backup from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    S3,
}

/// Manifests in `dir` whose data file is there, oldest first.
pub fn list_local(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out: Vec<Manifest> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .filter_map(|e| {
            let bytes = crate::files::read_regular(&e.path(), 1024 * 1024).ok()?;
            let text = String::from_utf8_lossy(&bytes);
            let Some(m) = Manifest::from_json(&text) else {
                tracing::warn!(
                    "{}: skipped: {}",
                    e.path().display(),
                    super::manifest::unreadable(&text)
                );
                return None;
            };
            // the same checks as the S3 listing: its own name, and its own data file
            (e.file_name().to_str() == Some(m.manifest_file().as_str())).then_some(m)
        })
        .filter(|m| dir.join(&m.file).is_file())
        .collect();
    out.sort_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)));
    Ok(out)
}

/// Manifests under the S3 prefix whose data object is there, oldest first.
pub async fn list_remote(s3: &S3) -> Result<Vec<Manifest>, BackupError> {
    let objects = s3.list().await?;
    let names: std::collections::HashSet<&str> = objects.iter().map(|o| o.file.as_str()).collect();
    let mut out = Vec::new();
    for o in objects
        .iter()
        .filter(|o| o.file.ends_with(".manifest.json"))
    {
        let Ok(bytes) = s3.get_bytes(&o.file).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        match Manifest::from_json(&text) {
            Some(m) => {
                if names.contains(m.file.as_str()) && o.file == m.manifest_file() {
                    out.push(m);
                }
            }
            None => tracing::warn!(
                "s3: {}: skipped: {}",
                o.file,
                super::manifest::unreadable(&text)
            ),
        }
    }
    out.sort_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)));
    Ok(out)
}

/// Merges the two lists by name, oldest first.
pub fn merge(local: Vec<Manifest>, remote: Vec<Manifest>) -> Vec<Backup> {
    let mut out: Vec<Backup> = local
        .into_iter()
        .map(|manifest| Backup {
            manifest,
            local: true,
            remote: false,
        })
        .collect();
    for m in remote {
        match out.iter_mut().find(|b| b.manifest.name == m.name) {
            Some(b) => {
                b.remote = true;
                if b.manifest.verified.is_none() {
                    b.manifest.verified = m.verified;
                }
                // the newer drill of the two copies' manifests
                if m.drill.as_ref().map(|d| d.at) > b.manifest.drill.as_ref().map(|d| d.at) {
                    b.manifest.drill = m.drill.clone();
                }
            }
            None => out.push(Backup {
                manifest: m,
                local: false,
                remote: true,
            }),
        }
    }
    out.sort_by(|a, b| {
        (a.manifest.started, &a.manifest.name).cmp(&(b.manifest.started, &b.manifest.name))
    });
    out
}

/// The backup named `name` (or its file name), or for `latest` the newest database
/// backup.
pub fn find<'a>(backups: &'a [Backup], name: &str) -> Result<&'a Backup, BackupError> {
    let found = if name == "latest" {
        backups
            .iter()
            .rev()
            .find(|b| b.manifest.kind == Content::Database)
    } else {
        backups
            .iter()
            .find(|b| b.manifest.name == name || b.manifest.file == name)
    };
    found.ok_or_else(|| err(format!("no backup {name:?} (see `backup list`)")))
}

/// Formats backups as the table `backup list` prints.
pub fn table(backups: &[Backup]) -> String {
    let mut s = format!(
        "{:<40} {:<20} {:<16} {:>10}  {:<6} {:<19}  {}\n",
        "NAME", "TIME (UTC)", "DATABASE", "SIZE", "WHERE", "VERIFIED", "DRILLED"
    );
    for b in backups {
        let m = &b.manifest;
        let t = crate::time::rfc3339(m.started, 0);
        let place = match (b.local, b.remote) {
            (true, true) => "both",
            (true, false) => "local",
            _ => "s3",
        };
        let db = match m.kind {
            Content::Globals => "(globals)",
            Content::Base => "(base backup)",
            Content::Wal => "(wal)",
            Content::Database => &m.database,
        };
        s.push_str(&format!(
            "{:<40} {:<20} {:<16} {:>10}  {:<6} {:<19}  {}\n",
            m.name,
            &t[..19].replace('T', " "),
            db,
            human_size(m.size),
            place,
            m.verified
                .map_or("no".to_string(), |v| crate::time::rfc3339(v, 0)[..19]
                    .replace('T', " ")),
            drilled(m)
        ));
    }
    s
}

/// A backup's last drill as `list` shows it: `no`, `ok 2026-12-07 02:10:00`, or
/// `FAILED 2026-12-07 02:10:00 (3 problems)`.
pub fn drilled(m: &Manifest) -> String {
    match &m.drill {
        None => "no".into(),
        Some(d) => {
            let at = crate::time::rfc3339(d.at, 0)[..19].replace('T', " ");
            if d.ok {
                format!("ok {at}")
            } else {
                let n = d.problems.len();
                format!("FAILED {at} ({n} problem{})", if n == 1 { "" } else { "s" })
            }
        }
    }
}

/// For `restore latest`: when the latest database backup's drill failed, a warning
/// naming the newest one whose drill passed (of the same database), if any.
pub fn drill_warning(backups: &[Backup], name: &str) -> Option<String> {
    if name != "latest" {
        return None;
    }
    let latest = find(backups, name).ok()?;
    let d = latest.manifest.drill.as_ref().filter(|d| !d.ok)?;
    let good = backups.iter().rev().find(|b| {
        b.manifest.kind == Content::Database
            && b.manifest.database == latest.manifest.database
            && b.manifest.drill.as_ref().is_some_and(|d| d.ok)
    });
    Some(format!(
        "the latest backup, {}, failed its drill ({}); {}",
        latest.manifest.name,
        d.problems.join("; "),
        match good {
            Some(g) => format!(
                "the newest backup whose drill passed is {}: restore it by name",
                g.manifest.name
            ),
            None => "no backup of this database has passed a drill".into(),
        }
    ))
}

pub use crate::config::human_size;

/// The SHA-256 and size of what was read so far.
#[derive(Default)]
pub struct Digest256 {
    hash: Sha256,
    bytes: u64,
    /// Why reading the stored bytes failed (the network, the disk): what was read is
    /// then no evidence about the backup, and never reported as damage.
    failed: Option<String>,
}

/// The stored bytes as read, hashed; shared between the decoder and the final check,
/// which reads whatever the decoder left (bytes after the compressed stream's end
/// count too: the whole stored file must match).
#[derive(Clone)]
struct HashingReader {
    inner: Arc<Mutex<Box<dyn Read + Send>>>,
    digest: Arc<Mutex<Digest256>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("reader poisoned"))?
            .read(buf);
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                if let Ok(mut d) = self.digest.lock() {
                    d.failed.get_or_insert_with(|| e.to_string());
                }
                return Err(e);
            }
        };
        if let Ok(mut d) = self.digest.lock() {
            d.hash.update(&buf[..n]);
            d.bytes += n as u64;
        }
        Ok(n)
    }
}

/// What reading a backup needs.
pub struct Reading<'a> {
    pub dir: Option<&'a Path>,
    pub s3: Option<&'a S3>,
    pub rt: &'a Handle,
    pub identities: &'a [age::x25519::Identity],
}

/// An opened backup: the plain dump, and the stored bytes' running digest.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    raw: HashingReader,
    digest: Arc<Mutex<Digest256>>,
}

/// Opens a backup for reading: decrypted and decompressed on the fly, hashed as read.
pub fn open(r: &Reading, m: &Manifest, from: Side) -> Result<Opened, BackupError> {
    let raw: Box<dyn Read + Send> = match from {
        Side::Local => {
            let dir = r
                .dir
                .ok_or_else(|| err("no backup folder: set BACKUP_DIR"))?;
            let path: PathBuf = dir.join(&m.file);
            Box::new(std::fs::File::open(&path).map_err(io_err(&path))?)
        }
        Side::S3 => {
            let s3 = r.s3.ok_or_else(|| err("no bucket: set BACKUP_S3_BUCKET"))?;
            s3.open(r.rt, &m.file, m.size)?
        }
    };
    let digest = Arc::new(Mutex::new(Digest256::default()));
    let hashing = HashingReader {
        inner: Arc::new(Mutex::new(raw)),
        digest: digest.clone(),
    };
    let reader = codec::decoder(
        m.compression,
        m.encryption.is_some(),
        r.identities,
        Box::new(hashing.clone()),
    )?;
    // every reader of a backup (verify, restore, drill, a download) says how far it is
    let reader = Box::new(super::progress::Progress::new(
        reader,
        &m.file,
        "read",
        Some(m.dump_bytes),
    ));
    Ok(Opened {
        reader,
        raw: hashing,
        digest,
    })
}

impl Opened {
    /// Checks the stored bytes against the manifest, after reading to the end.
    pub(crate) fn check(mut self, m: &Manifest) -> Result<(), BackupError> {
        // Whatever the consumer left unread still counts, and so does whatever the
        // decoder left after the end of its stream.
        let drained = io::copy(&mut self.reader, &mut io::sink())
            .and_then(|_| io::copy(&mut self.raw, &mut io::sink()));
        let d = self
            .digest
            .lock()
            .map_err(|_| err("internal error: digest poisoned"))?;
        if let Some(e) = &d.failed {
            return Err(err(format!("{}: cannot read the backup: {e}", m.file)));
        }
        let sum = hex(&d.hash.clone().finalize());
        if d.bytes != m.size || sum != m.sha256 {
            return Err(err(format!(
                "{}: checksum mismatch ({} bytes with sha256 {sum}, the manifest says {} bytes with {}): the backup is damaged",
                m.file, d.bytes, m.size, m.sha256
            )));
        }
        drained
            .map_err(|e| err(format!("{}: cannot read the backup: {e}", m.file)).with_source(e))?;
        Ok(())
    }
}

/// Runs `cmd` with the opened backup on its stdin; returns its status and the first
/// 64 KiB of its stderr.
///
/// Nothing the tool does can become visible before the whole stored stream has been
/// checked: the last chunk read is held back until the source is at its end and its
/// size and SHA-256 match the manifest. A restore (`pg_restore --single-transaction`,
/// `psql --single-transaction`) cannot commit without those final bytes (the archive's
/// last block, the script's end), so on a mismatch the tool is killed while its
/// transaction is still open, and the target is left exactly as it was.
pub fn feed(
    mut cmd: Command,
    opened: Opened,
    m: &Manifest,
    cancel: &Cancel,
) -> Result<(ExitStatus, String), BackupError> {
    cmd.stdin(Stdio::piped());
    let mut tool = Tool::spawn(cmd, cancel)?;
    let mut stdin = tool.child.stdin.take().expect("piped");
    let mut opened = opened;
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut tool_gone = false;
    let mut read_error: Option<io::Error> = None;
    loop {
        let n = match opened.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        if !tool_gone && !held.is_empty() {
            // A broken pipe means the tool stopped reading: its own message says why.
            if stdin.write_all(&held).is_err() {
                tool_gone = true;
            }
        }
        held.clear();
        held.extend_from_slice(&buf[..n]);
    }
    let checked = opened.check(m);
    let mismatch = checked.is_err() || read_error.is_some();
    if mismatch {
        // The transaction is still open (the tail was never sent): end it unfinished.
        let _ = tool.child.kill();
    } else if !tool_gone {
        let _ = stdin.write_all(&held).and_then(|()| stdin.flush());
    }
    drop(stdin);
    let (status, messages) = tool.finish(cancel)?;
    checked?;
    if let Some(e) = read_error {
        return Err(err(format!("{}: cannot read the backup: {e}", m.file)).with_source(e));
    }
    Ok((status, messages))
}

/// Verifies a backup: decrypts and decompresses it into `pg_restore -f /dev/null` (a
/// full read) while checking its SHA-256, and records the time in its manifest(s).
pub fn verify(
    r: &Reading,
    b: &Backup,
    from: Side,
    pg_restore: &Path,
    cancel: &Cancel,
) -> Result<(), BackupError> {
    let m = &b.manifest;
    let opened = open(r, m, from)?;
    if m.kind != Content::Database {
        // Plain SQL, a tar: decryption, decompression and the checksum are the check.
        opened.check(m)?;
    } else {
        let mut cmd = super::dump::libpq_command(pg_restore, None);
        cmd.arg("--file=/dev/null").stdout(Stdio::null());
        let (status, messages) = feed(cmd, opened, m, cancel)?;
        if !status.success() {
            return Err(err(format!(
                "{}: pg_restore could not read it: {}",
                m.file,
                messages.trim().replace('\n', "; ")
            )));
        }
    }
    let mut updated = m.clone();
    updated.verified = Some(unix_now());
    update_manifest(r, b, &updated)
}

/// Writes `updated` over the manifest of `b` on every side it has a copy (verify
/// records its time, a drill its result).
pub(crate) fn update_manifest(
    r: &Reading,
    b: &Backup,
    updated: &Manifest,
) -> Result<(), BackupError> {
    let m = &b.manifest;
    let json = updated.to_json();
    if b.local {
        if let Some(dir) = r.dir {
            write_atomic(&dir.join(manifest_file(&m.name)), json.as_bytes()).map_err(|e| {
                err(format!(
                    "updating the manifest: {}",
                    crate::error::io_reason(&e)
                ))
                .with_source(e)
            })?;
        }
    }
    if b.remote {
        if let Some(s3) = r.s3 {
            r.rt.block_on(s3.put_bytes(&manifest_file(&m.name), json.into_bytes()))?;
        }
    }
    Ok(())
}
