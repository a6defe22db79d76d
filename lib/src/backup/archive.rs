//! One dump streamed to every destination at once: `pg_dump -Fc -Z0` (custom format,
//! uncompressed; or `pg_dumpall --globals-only` for roles and tablespaces) -> zstd or
//! gzip -> age encryption when a recipient is set -> SHA-256 -> the local folder
//! (`.NAME.partial`, mode 0600) and an S3 multipart upload, side by side. Nothing holds
//! the whole dump in memory or writes a temporary copy of it.
//!
//! A copy becomes visible only when pg_dump exited 0 and produced data: the file is
//! fsynced, renamed and its folder fsynced; the upload is completed. Otherwise the
//! partial file is removed and the upload aborted. The manifest `NAME.manifest.json`
//! is written last, beside each complete copy: a backup without a manifest does not
//! exist for list, prune or restore. When one destination fails (S3 unreachable, disk
//! full) the other copy is still kept, and the run reports the failure.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::codec::{self, Stage};
use super::dump::{self, Tools};
use super::s3::{Upload, S3};
use super::settings::Settings;
use super::{err, hex, unix_now, BackupError, Cancel, Tool};
use crate::pg::PgTarget;

/// What a backup is: one database, or the cluster's globals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Database(String),
    Globals,
}

/// A backup's description, stored beside it as `NAME.manifest.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub file: String,
    /// `database` or `globals`.
    pub kind: String,
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// Unix seconds.
    pub started: i64,
    pub finished: i64,
    /// Bytes pg_dump produced, and bytes stored.
    pub dump_bytes: u64,
    pub size: u64,
    pub sha256: String,
    /// `zstd` or `gzip`.
    pub compression: String,
    pub level: i32,
    /// `age` (to the listed recipients) or none.
    pub encryption: Option<String>,
    pub recipients: Vec<String>,
    /// Unix seconds of the last successful `verify`.
    pub verified: Option<i64>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "format": 1,
            "name": self.name,
            "file": self.file,
            "kind": self.kind,
            "database": self.database,
            "server_version": self.server_version,
            "pg_dump_version": self.pg_dump_version,
            "started": self.started,
            "finished": self.finished,
            "dump_bytes": self.dump_bytes,
            "size": self.size,
            "sha256": self.sha256,
            "compression": self.compression,
            "level": self.level,
            "encryption": self.encryption,
            "recipients": self.recipients,
            "verified": self.verified,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Parses a manifest; `None` for anything that is not a well-formed dockhand
    /// manifest. The data file must be a plain name in the same place (a manifest
    /// naming `../x` is refused, so prune can never be led outside its folder).
    pub fn from_json(text: &str) -> Option<Manifest> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let m = Manifest {
            name: v["name"].as_str()?.into(),
            file: v["file"].as_str()?.into(),
            kind: v["kind"].as_str().unwrap_or("database").into(),
            database: v["database"].as_str()?.into(),
            server_version: v["server_version"].as_str().unwrap_or("").into(),
            pg_dump_version: v["pg_dump_version"].as_str().unwrap_or("").into(),
            started: v["started"].as_i64()?,
            finished: v["finished"].as_i64()?,
            dump_bytes: v["dump_bytes"].as_u64()?,
            size: v["size"].as_u64()?,
            sha256: v["sha256"].as_str()?.into(),
            compression: v["compression"].as_str().unwrap_or("zstd").into(),
            level: v["level"].as_i64().unwrap_or(0) as i32,
            encryption: v["encryption"].as_str().map(String::from),
            recipients: v["recipients"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            verified: v["verified"].as_i64(),
        };
        let plain =
            |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.contains('\\');
        (plain(&m.name) && plain(&m.file) && m.file == m.expected_file()).then_some(m)
    }

    /// The only data file name this manifest may describe: `NAME.dump.zst`,
    /// `NAME.sql.gz.age` ... from its kind, compression and encryption. A manifest
    /// naming anything else (`status.json`, another backup's file) describes nothing
    /// dockhand wrote, so neither listing nor prune ever touches that file.
    pub fn expected_file(&self) -> String {
        let kind = if self.kind == "globals" {
            "sql"
        } else {
            "dump"
        };
        let comp = if self.compression == "gzip" {
            "gz"
        } else {
            "zst"
        };
        let age = if self.encryption.is_some() {
            ".age"
        } else {
            ""
        };
        format!("{}.{kind}.{comp}{age}", self.name)
    }

    /// The manifest's own file name.
    pub fn manifest_file(&self) -> String {
        manifest_file(&self.name)
    }

    /// The retention series: the database, or `globals`.
    pub fn series(&self) -> String {
        if self.kind == "globals" {
            "globals".into()
        } else {
            format!("database {}", self.database)
        }
    }

    /// The major version of the pg_dump that wrote it.
    pub fn pg_dump_major(&self) -> u32 {
        self.pg_dump_version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or(0)
    }
}

pub fn manifest_file(name: &str) -> String {
    format!("{name}.manifest.json")
}

/// `YYYYmmddTHHMMSSZ` for file names.
pub fn stamp(secs: i64) -> String {
    let t = crate::log::rfc3339(secs, 0);
    t[..19].replace(['-', ':'], "") + "Z"
}

/// The time part of a backup's name: `YYYYmmddTHHMMSS.mmmZ-xxxx`, milliseconds and
/// four random hex digits, so two runs started in the same second (or the same
/// millisecond, on two sidecars sharing a bucket) never get the same name, and names
/// still sort by time.
pub fn unique_stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let t = stamp(secs);
    let mut x = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40) | 1;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    format!(
        "{}.{:03}Z-{:04x}",
        t.trim_end_matches('Z'),
        now.subsec_millis(),
        x & 0xffff
    )
}

/// True when `file` is a data file name dockhand writes for names starting with
/// `prefix` (`app-`, `_globals-`): `PREFIX<stamp>.(dump|sql).(zst|gz)[.age]`.
pub fn is_own_data_file(file: &str, prefix: &str) -> bool {
    let Some(rest) = file.strip_prefix(prefix) else {
        return false;
    };
    let rest = rest.strip_suffix(".age").unwrap_or(rest);
    let Some(stem) = [".dump.zst", ".dump.gz", ".sql.zst", ".sql.gz"]
        .iter()
        .find_map(|ext| rest.strip_suffix(ext))
    else {
        return false;
    };
    // the stamp: digits, T, '.', Z, '-' and hex digits only
    stem.len() >= 16
        && stem.as_bytes()[0].is_ascii_digit()
        && stem
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b"TZ.-".contains(&b))
}

/// Moves a finished `partial` to `path`, never over an existing file: a hard link
/// fails when `path` exists (where the file system has no hard links, an existence
/// check and a rename).
fn publish(partial: &Path, path: &Path) -> io::Result<()> {
    match std::fs::hard_link(partial, path) {
        Ok(()) => std::fs::remove_file(partial),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a backup of that name already exists: not overwritten",
        )),
        Err(_) if !path.exists() => std::fs::rename(partial, path),
        Err(e) => Err(e),
    }
}

/// A database name made safe for a file name: anything but `A-Za-z0-9._-` becomes `_`.
pub fn file_safe(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.trim_start_matches('.').to_string()
}

/// Writes `data` to `path` atomically with mode 0600 (temporary name, fsync, rename,
/// fsync of the folder).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = partial_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.partial` beside `path`: hidden, and never taken for a backup.
pub fn partial_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Where one dump goes, and what the shared parts of a run are.
pub struct Destinations<'a> {
    pub settings: &'a Settings,
    pub rt: &'a tokio::runtime::Handle,
    pub s3: Option<&'a S3>,
    pub cancel: &'a Arc<Cancel>,
}

/// The result of one dump: its manifest, where complete copies are, and what failed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub manifest: Manifest,
    /// `/backups/NAME.dump.zst`, `s3://bucket/prefix/NAME.dump.zst`.
    pub stored: Vec<String>,
    /// Failures of single destinations (the backup exists elsewhere).
    pub errors: Vec<String>,
}

/// The local copy being written.
struct LocalCopy {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
}

/// Hashes and counts the stored bytes and hands them to every destination still
/// working; the stream fails only when none is left.
struct Tee {
    hash: Sha256,
    bytes: u64,
    local: Option<LocalCopy>,
    s3: Option<Upload>,
    errors: Vec<String>,
}

impl Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        if let Some(l) = &mut self.local {
            if let Err(e) = l.out.write_all(buf) {
                let msg = format!("{}: {}", l.path.display(), crate::error::io_reason(&e));
                let _ = std::fs::remove_file(&l.partial);
                self.errors.push(msg);
                self.local = None;
            }
        }
        if let Some(u) = &mut self.s3 {
            if let Err(e) = u.write(buf) {
                self.errors.push(e.0);
                if let Some(u) = self.s3.take() {
                    u.abort();
                }
            }
        }
        if self.local.is_none() && self.s3.is_none() {
            return Err(io::Error::other(self.errors.join("; ")));
        }
        Ok(())
    }

    /// Drops every copy: removes the partial file, aborts the upload.
    fn discard(&mut self) {
        if let Some(l) = self.local.take() {
            drop(l.out);
            let _ = std::fs::remove_file(&l.partial);
        }
        if let Some(u) = self.s3.take() {
            u.abort();
        }
    }
}

struct TeeStage(Arc<Mutex<Tee>>);

impl Write for TeeStage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stage for TeeStage {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

/// Dumps `kind` from the server `target` points at, to every destination.
pub fn backup(
    d: &Destinations,
    target: &PgTarget,
    kind: &Kind,
    tools: &Tools,
    server_version: &str,
) -> Result<Outcome, BackupError> {
    let clock = Instant::now();
    let started = unix_now();
    let s = d.settings;
    let unique = unique_stamp();
    let (name, ext, database) = match kind {
        Kind::Database(db) => (format!("{}-{unique}", file_safe(db)), "dump", db.clone()),
        Kind::Globals => (format!("_globals-{unique}"), "sql", String::new()),
    };
    let mut file = format!("{name}.{ext}.{}", s.compression.ext());
    if !s.recipients.is_empty() {
        file.push_str(".age");
    }
    let mut tee = Tee {
        hash: Sha256::new(),
        bytes: 0,
        local: None,
        s3: None,
        errors: Vec::new(),
    };
    if let Some(dir) = &s.dir {
        let opened = std::fs::create_dir_all(dir).and_then(|_| {
            let path = dir.join(&file);
            let partial = partial_name(&path);
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)?;
            Ok(LocalCopy {
                path,
                partial,
                out: BufWriter::with_capacity(1 << 20, f),
            })
        });
        match opened {
            Ok(l) => tee.local = Some(l),
            Err(e) => tee.errors.push(format!(
                "{}: {}",
                dir.display(),
                crate::error::io_reason(&e)
            )),
        }
    }
    if let Some(s3) = d.s3 {
        tee.s3 = Some(s3.upload(d.rt, &file, d.cancel.clone()));
    }
    if tee.local.is_none() && tee.s3.is_none() {
        return Err(err(tee.errors.join("; ")));
    }
    let tee = Arc::new(Mutex::new(tee));
    let streamed = stream(d, target, kind, tools, tee.clone());
    let dump_bytes = match streamed {
        Ok(n) => n,
        Err(e) => {
            // An abandoned compressor may still hold the tee: discard it in place.
            if let Ok(mut t) = tee.lock() {
                t.discard();
            }
            return Err(e);
        }
    };
    // The compressor has finished; wait for its thread to let go of the tee.
    let mut tee = tee;
    let mut tee = loop {
        match Arc::try_unwrap(tee) {
            Ok(m) => break m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(still) => {
                tee = still;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    let mut stored = Vec::new();
    let mut errors = std::mem::take(&mut tee.errors);
    if let Some(l) = tee.local.take() {
        let LocalCopy { path, partial, out } = l;
        let done = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|_| publish(&partial, &path))
            .and_then(|_| sync_dir(&path));
        match done {
            Ok(()) => stored.push(path.display().to_string()),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                errors.push(format!(
                    "{}: {}",
                    path.display(),
                    crate::error::io_reason(&e)
                ));
            }
        }
    }
    if let Some(u) = tee.s3.take() {
        match u.commit() {
            Ok(()) => stored.push(d.s3.map(|s| s.location(&file)).unwrap_or_default()),
            Err(e) => errors.push(e.0),
        }
    }
    let sha256 = hex(&tee.hash.clone().finalize());
    let manifest = Manifest {
        name: name.clone(),
        file: file.clone(),
        kind: match kind {
            Kind::Database(_) => "database".into(),
            Kind::Globals => "globals".into(),
        },
        database,
        server_version: server_version.to_string(),
        pg_dump_version: tools.version.clone(),
        started,
        finished: started + clock.elapsed().as_secs() as i64,
        dump_bytes,
        size: tee.bytes,
        sha256,
        compression: s.compression.name().into(),
        level: s.compression.level(),
        encryption: (!s.recipients.is_empty()).then(|| "age".to_string()),
        recipients: s.recipients.clone(),
        verified: None,
    };
    let json = manifest.to_json();
    let mut complete = Vec::new();
    for place in stored {
        let written = if place.starts_with("s3://") {
            match d.s3 {
                Some(s3) => d
                    .rt
                    .block_on(s3.put_bytes(&manifest.manifest_file(), json.clone().into_bytes())),
                None => Ok(()),
            }
        } else {
            let dir = s.dir.as_deref().unwrap_or(Path::new("."));
            write_atomic(&dir.join(manifest.manifest_file()), json.as_bytes()).map_err(|e| {
                err(format!(
                    "writing the manifest in {}: {}",
                    dir.display(),
                    crate::error::io_reason(&e)
                ))
            })
        };
        match written {
            Ok(()) => complete.push(place),
            Err(e) => {
                // Data without a manifest is nobody's backup: remove it now (and the
                // next run's clean-up catches what this cannot).
                if place.starts_with("s3://") {
                    if let Some(s3) = d.s3 {
                        let _ = d.rt.block_on(s3.delete(&file));
                    }
                } else if let Some(dir) = &s.dir {
                    let _ = std::fs::remove_file(dir.join(&file));
                }
                errors.push(e.0);
            }
        }
    }
    if complete.is_empty() {
        return Err(err(errors.join("; ")));
    }
    Ok(Outcome {
        manifest,
        stored: complete,
        errors,
    })
}

/// Runs the dump tool into the codec and the tee; returns the bytes it produced.
fn stream(
    d: &Destinations,
    target: &PgTarget,
    kind: &Kind,
    tools: &Tools,
    tee: Arc<Mutex<Tee>>,
) -> Result<u64, BackupError> {
    d.cancel.check()?;
    let chain = codec::encoder(
        &d.settings.compression,
        &d.settings.recipients,
        Box::new(TeeStage(tee)),
    )?;
    let mut compressor = Compressor::start(chain);
    let mut cmd = match kind {
        Kind::Database(db) => {
            let mut c = dump::libpq_command(&tools.pg_dump, Some(&target.with_dbname(db)));
            c.args(["--format=custom", "--compress=0", "--no-password"]);
            c
        }
        Kind::Globals => {
            let mut c = dump::libpq_command(&tools.pg_dumpall(), Some(target));
            c.args(["--globals-only", "--no-password"]);
            c
        }
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut tool = Tool::spawn(cmd, d.cancel)?;
    let program = tool.program.clone();
    let mut stdout = tool.child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 256 * 1024];
    let mut dump_bytes = 0u64;
    let copy: Result<(), BackupError> = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                dump_bytes += n as u64;
                if let Err(e) = compressor.write(&buf[..n], d.cancel) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(err(format!(
                    "reading {program}'s output: {}",
                    crate::error::io_reason(&e)
                )))
            }
        }
    };
    if copy.is_err() {
        let _ = tool.child.kill();
    }
    drop(stdout);
    let (status, messages) = tool.finish(d.cancel)?;
    copy?;
    if !status.success() {
        let reason = messages
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(err(format!(
            "{} failed ({status}): {}",
            Path::new(&program)
                .file_name()
                .map_or(program.clone(), |f| f.to_string_lossy().into_owned()),
            if reason.is_empty() {
                "no message"
            } else {
                &reason
            }
        )));
    }
    if dump_bytes == 0 {
        return Err(err(
            "pg_dump exited 0 but wrote nothing: not recorded as a backup",
        ));
    }
    compressor.finish(d.cancel)?;
    Ok(dump_bytes)
}

/// The compression (and encryption) chain on a thread of its own, fed through a short
/// queue. The stream never waits on a compression job it does not need: when the run
/// is cancelled or fails, the thread is abandoned (it drops its unfinished chain and
/// ends by itself), so a stop is never held up by a multi-threaded zstd job at a high
/// level. Only a successful run waits for `finish`, and even that wait ends on cancel.
struct Compressor {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
}

impl Compressor {
    fn start(mut chain: Box<dyn codec::Stage>) -> Compressor {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // An empty chunk means "finish"; a closed queue means "abandon".
            while let Ok(chunk) = rx.recv() {
                if chunk.is_empty() {
                    let r = chain
                        .finish()
                        .map_err(|e| format!("writing the backup: {e}"));
                    let _ = done_tx.send(r);
                    return;
                }
                if let Err(e) = chain.write_all(&chunk) {
                    let _ = done_tx.send(Err(format!("writing the backup: {e}")));
                    return;
                }
            }
        });
        Compressor { tx: Some(tx), done }
    }

    fn failure(&self) -> BackupError {
        match self.done.try_recv() {
            Ok(Err(e)) => err(e),
            _ => err("writing the backup: the compressor stopped"),
        }
    }

    fn write(&mut self, data: &[u8], cancel: &Cancel) -> Result<(), BackupError> {
        cancel.check()?;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| err("internal error: finished"))?;
        let mut chunk = data.to_vec();
        loop {
            match tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::TrySendError::Full(c)) => {
                    cancel.check()?;
                    chunk = c;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(self.failure()),
            }
        }
    }

    fn finish(mut self, cancel: &Cancel) -> Result<(), BackupError> {
        self.write(&[], cancel)?;
        self.tx = None;
        loop {
            cancel.check()?;
            match self.done.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(r) => return r.map_err(err),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(err("writing the backup: the compressor stopped"))
                }
            }
        }
    }
}
