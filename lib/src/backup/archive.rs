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
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::catalog::Backup;
use super::codec::{self, Stage};
use super::dump::{self, Tools};
use super::manifest::{file_safe, unique_stamp, Content, Counts, Manifest, WalRange};
use super::s3::{Upload, S3};
use super::settings::Settings;
use super::{err, hex, io_err, unix_now, BackupError, Cancel, Failures, Tool};
use crate::files::{partial_name, sync_dir, write_atomic};
use crate::pg::PgTarget;

/// What a backup is: one database, or the cluster's globals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dump {
    Database(String),
    Globals,
    /// The whole cluster, by `pg_basebackup` (see [`super::base`]).
    Base,
    /// A WAL segment or timeline history file pg_receivewal wrote (see [`super::wal`]).
    Wal(PathBuf),
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
    pub stored: Vec<Stored>,
    /// Failures of single destinations (the backup exists elsewhere).
    pub errors: Failures<BackupError>,
}

/// Where a complete copy of a backup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The file in the backup folder.
    Local(PathBuf),
    /// The object's location, `s3://bucket/prefix/NAME...`.
    S3(String),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Local(p) => write!(f, "{}", p.display()),
            Stored::S3(location) => f.write_str(location),
        }
    }
}

impl Outcome {
    /// Where the copies are, for a log line: `/backups/x and s3://b/x`.
    pub fn places(&self) -> String {
        let places: Vec<String> = self.stored.iter().map(Stored::to_string).collect();
        places.join(" and ")
    }

    /// The backup made, as the catalog describes it.
    pub fn backup(&self) -> Backup {
        Backup {
            manifest: self.manifest.clone(),
            local: self.stored.iter().any(|s| matches!(s, Stored::Local(_))),
            remote: self.stored.iter().any(|s| matches!(s, Stored::S3(_))),
        }
    }
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
    errors: Failures<BackupError>,
}

impl Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        if let Some(l) = &mut self.local {
            if let Err(e) = l.out.write_all(buf) {
                let _ = std::fs::remove_file(&l.partial);
                self.errors.push(io_err(&l.path)(e));
                self.local = None;
            }
        }
        if let Some(u) = &mut self.s3 {
            if let Err(e) = u.write(buf) {
                self.errors.push(e);
                if let Some(u) = self.s3.take() {
                    u.abort();
                }
            }
        }
        if self.local.is_none() && self.s3.is_none() {
            // The same text as the errors joined, and each still reachable as a cause.
            return Err(io::Error::other(self.errors.clone().into_error()));
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

impl LocalCopy {
    /// Opens `DIR/.FILE.partial` (mode 0600, never over an existing file), creating
    /// the folder when needed.
    fn create(dir: &Path, file: &str) -> io::Result<LocalCopy> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(file);
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
    }

    /// Makes the copy visible: flushed, fsynced, given its name, its folder fsynced.
    /// On failure the partial file is removed.
    fn finish(self) -> Result<PathBuf, BackupError> {
        let LocalCopy { path, partial, out } = self;
        let done = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|_| publish(&partial, &path))
            .and_then(|_| sync_dir(&path));
        match done {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(io_err(&path)(e))
            }
        }
    }
}

/// The copies of a dump once its stream has ended, before their manifests.
struct Copies {
    stored: Vec<Stored>,
    errors: Failures<BackupError>,
    sha256: String,
    size: u64,
}

impl Tee {
    /// Starts a copy of `file` in every destination; fails only when none starts.
    fn open(d: &Destinations, file: &str) -> Result<Tee, BackupError> {
        let mut tee = Tee {
            hash: Sha256::new(),
            bytes: 0,
            local: None,
            s3: None,
            errors: Failures::default(),
        };
        if let Some(dir) = &d.settings.dir {
            match LocalCopy::create(dir, file) {
                Ok(l) => tee.local = Some(l),
                Err(e) => tee.errors.push(io_err(dir)(e)),
            }
        }
        if let Some(s3) = d.s3 {
            tee.s3 = Some(s3.upload(d.rt, file, d.cancel.clone()));
        }
        if tee.local.is_none() && tee.s3.is_none() {
            return Err(tee.errors.into_error());
        }
        Ok(tee)
    }

    /// After the whole stream: completes every copy still working (the local file
    /// renamed into place, the upload completed).
    fn complete(mut self, d: &Destinations, file: &str) -> Copies {
        let mut stored = Vec::new();
        let mut errors = std::mem::take(&mut self.errors);
        if let Some(l) = self.local.take() {
            match l.finish() {
                Ok(path) => stored.push(Stored::Local(path)),
                Err(e) => errors.push(e),
            }
        }
        if let Some(u) = self.s3.take() {
            match u.commit() {
                Ok(()) => stored.push(Stored::S3(
                    d.s3.map(|s| s.location(file)).unwrap_or_default(),
                )),
                Err(e) => errors.push(e),
            }
        }
        Copies {
            stored,
            errors,
            sha256: hex(&self.hash.finalize()),
            size: self.bytes,
        }
    }
}

/// A dump's name (`app-STAMP`, `_globals-STAMP`...), the extension of its format, and
/// the database it holds (empty for the others).
fn naming(kind: &Dump, unique: &str) -> (String, &'static str, String) {
    match kind {
        Dump::Database(db) => (format!("{}-{unique}", file_safe(db)), "dump", db.clone()),
        Dump::Globals => (format!("_globals-{unique}"), "sql", String::new()),
        Dump::Base => (format!("_base-{unique}"), "tar", String::new()),
        Dump::Wal(path) => (
            super::walname::stored_name(path, unique),
            "wal",
            String::new(),
        ),
    }
}

/// The data file of the dump `name`: `NAME.EXT.zst` (or `.gz`), `.age` when encrypted.
fn data_file(name: &str, ext: &str, compressed: &str, encrypted: bool) -> String {
    let mut file = format!("{name}.{ext}.{compressed}");
    if encrypted {
        file.push_str(".age");
    }
    file
}

/// What a manifest says a dump of `kind` holds.
fn content(kind: &Dump) -> Content {
    match kind {
        Dump::Database(_) => Content::Database,
        Dump::Globals => Content::Globals,
        Dump::Base => Content::Base,
        Dump::Wal(_) => Content::Wal,
    }
}

/// Dumps `kind` from the server `target` points at, to every destination: the stream,
/// then each copy completed, then the manifest beside each complete copy.
pub fn backup(
    d: &Destinations,
    target: &PgTarget,
    kind: &Dump,
    tools: &Tools,
    server_version: &str,
) -> Result<Outcome, BackupError> {
    let clock = Instant::now();
    let started = unix_now();
    let s = d.settings;
    let (name, ext, database) = naming(kind, &unique_stamp());
    let encrypted = !s.recipients.is_empty();
    let file = data_file(&name, ext, s.compression.algorithm().ext(), encrypted);
    let tee = Arc::new(Mutex::new(Tee::open(d, &file)?));
    let streamed = stream(d, target, kind, tools, tee.clone(), &name);
    let (dump_bytes, counts, wal) = match streamed {
        Ok(n) => n,
        Err(e) => {
            // An abandoned compressor may still hold the tee: discard it in place.
            if let Ok(mut t) = tee.lock() {
                t.discard();
            }
            return Err(e);
        }
    };
    // The compressor has finished: its chain, and the tee's other handle with it, is
    // gone (Compressor::finish returns only after the chain's own finish).
    let tee = Arc::try_unwrap(tee)
        .map_err(|_| err("internal error: the compressor still holds the backup's output"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let Copies {
        stored,
        mut errors,
        sha256,
        size,
    } = tee.complete(d, &file);
    let manifest = Manifest {
        name,
        file,
        kind: content(kind),
        database,
        server_version: server_version.to_string(),
        pg_dump_version: tools.version.clone(),
        started,
        finished: started + clock.elapsed().as_secs() as i64,
        dump_bytes,
        size,
        sha256,
        compression: s.compression.algorithm(),
        level: s.compression.level(),
        encryption: encrypted.then(|| "age".to_string()),
        recipients: s.recipients.clone(),
        verified: None,
        counts,
        drill: None,
        wal,
    };
    let complete = write_manifests(d, &manifest, stored, &mut errors);
    if complete.is_empty() {
        return Err(errors.into_error());
    }
    Ok(Outcome {
        manifest,
        stored: complete,
        errors,
    })
}

/// Writes the manifest beside each complete copy; returns the copies it is beside. A
/// copy whose manifest could not be written is removed (data without a manifest is
/// nobody's backup; the next run's clean-up catches what this cannot), and the reason
/// added to `errors`.
fn write_manifests(
    d: &Destinations,
    manifest: &Manifest,
    stored: Vec<Stored>,
    errors: &mut Failures<BackupError>,
) -> Vec<Stored> {
    let json = manifest.to_json();
    let mut complete = Vec::new();
    for place in stored {
        match write_manifest(d, manifest, &json, &place) {
            Ok(()) => complete.push(place),
            Err(e) => {
                match &place {
                    Stored::S3(_) => {
                        if let Some(s3) = d.s3 {
                            let _ = d.rt.block_on(s3.delete(&manifest.file));
                        }
                    }
                    Stored::Local(path) => {
                        let _ = std::fs::remove_file(path);
                    }
                }
                errors.push(e);
            }
        }
    }
    complete
}

/// Writes `json`, the manifest, beside the copy in `place`.
fn write_manifest(
    d: &Destinations,
    manifest: &Manifest,
    json: &str,
    place: &Stored,
) -> Result<(), BackupError> {
    match place {
        Stored::S3(_) => match d.s3 {
            Some(s3) => {
                d.rt.block_on(s3.put_bytes(&manifest.manifest_file(), json.as_bytes().to_vec()))
            }
            None => Ok(()),
        },
        Stored::Local(_) => {
            let dir = d.settings.dir.as_deref().unwrap_or(Path::new("."));
            write_atomic(&dir.join(manifest.manifest_file()), json.as_bytes()).map_err(|e| {
                err(format!(
                    "writing the manifest in {}: {}",
                    dir.display(),
                    crate::error::io_reason(&e)
                ))
                .with_source(e)
            })
        }
    }
}

/// What a dump reads: a tool's output, or a file (a WAL segment pg_receivewal wrote).
enum Input<'a> {
    Tool(Command),
    File(&'a Path),
}

/// Runs the dump tool into the codec and the tee; returns the bytes it produced and,
/// for a database, the exact row counts of the dump (see [`dump::Snapshot`]), for a base
/// backup, its WAL range.
fn stream(
    d: &Destinations,
    target: &PgTarget,
    kind: &Dump,
    tools: &Tools,
    tee: Arc<Mutex<Tee>>,
    name: &str,
) -> Result<(u64, Option<Counts>, Option<WalRange>), BackupError> {
    d.cancel.check()?;
    // Before the backup's checkpoint: at or before the WAL position it starts from.
    let before = match kind {
        Dump::Base => Some(d.rt.block_on(super::base::position(target))?.0),
        _ => None,
    };
    let chain = codec::encoder(
        &d.settings.compression,
        &d.settings.recipients,
        Box::new(TeeStage(tee)),
    )?;
    let mut compressor = Compressor::start(chain, d.rt);
    let snapshot = export_snapshot(d, target, kind);
    let dump_bytes = match input(d, target, kind, tools, snapshot.as_ref(), name) {
        Input::File(path) => {
            let read = read_file(path, &mut compressor, d.cancel)?;
            compressor.finish(d.cancel)?;
            return Ok((read, None, None));
        }
        Input::Tool(cmd) => run_tool(d, target, kind, cmd, &mut compressor, name)?,
    };
    let wal = match before {
        // After pg_basebackup ended: at or after the position it ends at.
        Some(start) => {
            let (end, timeline) = d.rt.block_on(super::base::position(target))?;
            Some(WalRange {
                timeline,
                start,
                end,
            })
        }
        None => None,
    };
    compressor.finish(d.cancel)?;
    Ok((dump_bytes, counted_rows(d, snapshot), wal))
}

/// The snapshot a database's dump is taken in, its rows counted in it while pg_dump
/// runs. Without one (a server that cannot export one, or counting off) the dump is
/// taken as before, without counts: a drill then checks pg_restore's errors only.
fn export_snapshot(d: &Destinations, target: &PgTarget, kind: &Dump) -> Option<dump::Snapshot> {
    let Dump::Database(db) = kind else {
        return None;
    };
    if !d.settings.count_rows {
        return None;
    }
    match d.rt.block_on(dump::Snapshot::export(
        &target.with_dbname(db),
        d.settings.lock_wait_timeout,
    )) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{db}: cannot export a snapshot to count the dump's rows in ({e}): the backup has no row counts");
            None
        }
    }
}

/// The row counts of the dump's snapshot, once pg_dump is done.
fn counted_rows(d: &Destinations, snapshot: Option<dump::Snapshot>) -> Option<Counts> {
    match d.rt.block_on(snapshot?.finish()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("counting the dump's rows failed ({e}): the backup has no row counts");
            None
        }
    }
}

/// What a dump of `kind` reads: the command of its tool, or the WAL file itself.
fn input<'a>(
    d: &Destinations,
    target: &PgTarget,
    kind: &'a Dump,
    tools: &Tools,
    snapshot: Option<&dump::Snapshot>,
    name: &str,
) -> Input<'a> {
    match kind {
        Dump::Database(db) => {
            let mut c = dump::libpq_command(&tools.pg_dump, Some(&target.with_dbname(db)));
            c.args(["--format=custom", "--compress=0", "--no-password"]);
            if let Some(s) = snapshot {
                c.arg(format!("--snapshot={}", s.id));
            }
            c.args(dump::lock_wait_args(d.settings.lock_wait_timeout));
            Input::Tool(c)
        }
        Dump::Globals => {
            let mut c = dump::libpq_command(&tools.pg_dumpall(), Some(target));
            c.args(["--globals-only", "--no-password"]);
            Input::Tool(c)
        }
        Dump::Base => Input::Tool(super::base::command(
            tools,
            target,
            &format!("dockhand {name}"),
        )),
        Dump::Wal(path) => Input::File(path),
    }
}

/// Reads a WAL file into the compressor as a tool's output would be; its size.
fn read_file(
    path: &Path,
    compressor: &mut Compressor,
    cancel: &Cancel,
) -> Result<u64, BackupError> {
    let mut f = File::open(path).map_err(super::io_err(path))?;
    let mut read = 0u64;
    copy_into(
        &mut f,
        compressor,
        &mut read,
        cancel,
        &path.display().to_string(),
    )?;
    Ok(read)
}

/// Runs the dump tool, its output into the compressor; the bytes it wrote, or why it
/// failed (its own messages, with what explains them) or wrote nothing.
fn run_tool(
    d: &Destinations,
    target: &PgTarget,
    kind: &Dump,
    mut cmd: Command,
    compressor: &mut Compressor,
    name: &str,
) -> Result<u64, BackupError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut tool = Tool::spawn(cmd, d.cancel)?;
    let program = tool.program.clone();
    let mut stdout = super::progress::Progress::new(
        tool.child.stdout.take().expect("piped"),
        name,
        "dumped",
        None,
    );
    let mut dump_bytes = 0u64;
    let copy = copy_into(
        &mut stdout,
        compressor,
        &mut dump_bytes,
        d.cancel,
        &format!("{program}'s output"),
    );
    if copy.is_err() {
        let _ = tool.child.kill();
    }
    drop(stdout);
    let (status, messages) = tool.finish(d.cancel)?;
    copy?;
    if !status.success() {
        let reason = explain(d, target, kind, &stderr_reason(&messages));
        return Err(tool_failed(&program, status, &reason));
    }
    if dump_bytes == 0 {
        return Err(err(
            "pg_dump exited 0 but wrote nothing: not recorded as a backup",
        ));
    }
    Ok(dump_bytes)
}

/// A tool's stderr as one line: its non-empty lines, `; ` between them.
fn stderr_reason(messages: &str) -> String {
    messages
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `reason`, a failed dump's stderr, with what explains it: who blocked a database's
/// table lock, what a base backup's refusal means.
fn explain(d: &Destinations, target: &PgTarget, kind: &Dump, reason: &str) -> String {
    match kind {
        Dump::Database(db) => match d
            .rt
            .block_on(dump::lock_blockers(&target.with_dbname(db), reason))
        {
            Some(who) => format!(
                "{reason}: no table lock within --lock-wait-timeout {}; blocked by {who}",
                crate::duration::format(d.settings.lock_wait_timeout)
            ),
            None => reason.to_string(),
        },
        Dump::Base => super::base::explain(reason),
        Dump::Globals | Dump::Wal(_) => reason.to_string(),
    }
}

/// The error of a dump tool that exited with `status`: its file name, the status and
/// the `reason` (or "no message").
fn tool_failed(program: &str, status: std::process::ExitStatus, reason: &str) -> BackupError {
    err(format!(
        "{} failed ({status}): {}",
        Path::new(program)
            .file_name()
            .map_or(program.to_string(), |f| f.to_string_lossy().into_owned()),
        if reason.is_empty() {
            "no message"
        } else {
            reason
        }
    ))
}

/// Reads `input` to its end into the compressor, counting the bytes in `read`.
fn copy_into(
    input: &mut dyn Read,
    compressor: &mut Compressor,
    read: &mut u64,
    cancel: &Cancel,
    what: &str,
) -> Result<(), BackupError> {
    loop {
        let mut buf = compressor.buffer();
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                *read += n as u64;
                compressor.send(buf, n, cancel)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(
                    err(format!("reading {what}: {}", crate::error::io_reason(&e))).with_source(e),
                )
            }
        }
    }
}

/// What pg_dump's output is read in: a chunk of this size at a time.
const CHUNK: usize = 256 * 1024;

/// The compression (and encryption) chain on a thread of its own, fed through a short
/// queue of chunks it hands back once written, so the dump is read straight into a
/// few buffers used over and over (no copy, and no fresh pages for every chunk). The stream never waits on a compression job it does not need: when the run
/// is cancelled or fails, the thread is abandoned (it drops its unfinished chain and
/// ends by itself), so a stop is never held up by a multi-threaded zstd job at a high
/// level. Only a successful run waits for `finish`, and even that wait ends on cancel.
struct Compressor {
    tx: Option<tokio::sync::mpsc::Sender<(Vec<u8>, usize)>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    done: tokio::sync::oneshot::Receiver<Result<(), BackupError>>,
    rt: tokio::runtime::Handle,
}

impl Compressor {
    fn start(mut chain: Box<dyn codec::Stage>, rt: &tokio::runtime::Handle) -> Compressor {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, usize)>(4);
        let (give_back, spare) = std::sync::mpsc::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            // An empty chunk means "finish"; a closed queue means "abandon".
            while let Some((chunk, n)) = rx.blocking_recv() {
                if n == 0 {
                    // (finish consumes the chain: nothing holds the output after it)
                    let r = chain
                        .finish()
                        .map_err(|e| err(format!("writing the backup: {e}")).with_source(e));
                    let _ = done_tx.send(r);
                    return;
                }
                if let Err(e) = chain.write_all(&chunk[..n]) {
                    drop(chain);
                    let _ =
                        done_tx.send(Err(err(format!("writing the backup: {e}")).with_source(e)));
                    return;
                }
                let _ = give_back.send(chunk);
            }
        });
        Compressor {
            tx: Some(tx),
            spare,
            done,
            rt: rt.clone(),
        }
    }

    /// A buffer of [`CHUNK`] bytes to read the next chunk into.
    fn buffer(&self) -> Vec<u8> {
        self.spare.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK])
    }

    fn failure(&mut self) -> BackupError {
        match self.done.try_recv() {
            Ok(Err(e)) => e,
            _ => err("writing the backup: the compressor stopped"),
        }
    }

    /// Queues the first `n` bytes of `chunk` (`n` = 0: finish), waiting for room in
    /// the queue or for a cancel, whichever comes first (woken, not polled).
    fn send(&mut self, chunk: Vec<u8>, n: usize, cancel: &Cancel) -> Result<(), BackupError> {
        cancel.check()?;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| err("internal error: finished"))?;
        let sent = self.rt.block_on(async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                r = tx.send((chunk, n)) => Some(r.is_ok()),
            }
        });
        match sent {
            None => cancel.check(),
            Some(true) => Ok(()),
            Some(false) => Err(self.failure()),
        }
    }

    fn finish(mut self, cancel: &Cancel) -> Result<(), BackupError> {
        self.send(Vec::new(), 0, cancel)?;
        self.tx = None;
        let rt = self.rt.clone();
        let done = &mut self.done;
        rt.block_on(async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => cancel.check(),
                r = done => r.unwrap_or_else(|_| Err(err("writing the backup: the compressor stopped"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn a_dump_is_named_by_its_kind_and_stamp() {
        let (name, ext, db) = naming(&Dump::Database("my app".into()), "STAMP");
        assert_eq!(name, format!("{}-STAMP", file_safe("my app")));
        assert_eq!((ext, db.as_str()), ("dump", "my app"));
        assert_eq!(
            naming(&Dump::Globals, "STAMP"),
            ("_globals-STAMP".into(), "sql", String::new())
        );
        assert_eq!(
            naming(&Dump::Base, "STAMP"),
            ("_base-STAMP".into(), "tar", String::new())
        );
        let wal = Dump::Wal("/spool/000000010000000000000003".into());
        assert_eq!(
            naming(&wal, "STAMP"),
            (
                "_wal-000000010000000000000003-STAMP".into(),
                "wal",
                String::new()
            )
        );
        assert_eq!(content(&wal), Content::Wal);
        assert_eq!(content(&Dump::Globals), Content::Globals);
        assert_eq!(data_file("app-S", "dump", "zst", false), "app-S.dump.zst");
        assert_eq!(data_file("app-S", "sql", "gz", true), "app-S.sql.gz.age");
    }

    #[test]
    fn a_failed_tool_is_named_by_its_file_with_its_status_and_messages() {
        assert_eq!(
            stderr_reason("pg_dump: error: x\n\n  \npg_dump: detail: y\n"),
            "pg_dump: error: x; pg_dump: detail: y"
        );
        let e = tool_failed(
            "/usr/lib/postgresql/16/bin/pg_dump",
            ExitStatus::from_raw(1 << 8),
            "pg_dump: error: x",
        );
        assert_eq!(
            e.message(),
            "pg_dump failed (exit status: 1): pg_dump: error: x"
        );
        let e = tool_failed("pg_dumpall", ExitStatus::from_raw(9), "");
        assert_eq!(
            e.message(),
            "pg_dumpall failed (signal: 9 (SIGKILL)): no message"
        );
    }

    #[test]
    fn one_line_of_failures_keeps_the_first_as_its_cause() {
        let mut errors = Failures::default();
        errors.push(io_err(Path::new("/b"))(io::Error::from_raw_os_error(28)));
        errors.push(err("s3://bk/x: HTTP 503 SlowDown"));
        assert_eq!(errors.len(), 2);
        let e = errors.into_error();
        assert_eq!(
            e.message(),
            "/b: no space left on device; s3://bk/x: HTTP 503 SlowDown"
        );
        let first = std::error::Error::source(&e).unwrap();
        assert_eq!(first.to_string(), "/b: no space left on device");
        assert!(std::error::Error::source(first).is_some(), "its io error");
    }
}
