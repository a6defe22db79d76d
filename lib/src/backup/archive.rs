//! One backup run to a local folder, streamed end to end: `pg_dump -Fc -Z0` (custom
//! format, uncompressed) -> zstd (multi-threaded) -> SHA-256 -> `.NAME.partial` created
//! with mode 0600. Nothing holds the whole dump in memory or writes a second copy. The
//! file becomes visible only when pg_dump exited 0 and produced data: it is fsynced,
//! renamed to `NAME.dump.zst`, the folder fsynced, and the manifest
//! `NAME.manifest.json` written last, the same way. Any failure removes the partial
//! file, so a failed or 0-byte dump is never taken for a backup.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::dump::{self, Tools};
use super::{err, hex, io_err, BackupError};
use crate::pg::PgTarget;
use crate::url::Url;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// zstd level (1-19; 3 is zstd's default).
    pub level: i32,
    /// zstd worker threads (0 = single-threaded).
    pub threads: u32,
}

/// What a finished run wrote (also the manifest's content).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub file: String,
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
    pub level: i32,
    /// Unix seconds of the last successful `verify`.
    pub verified: Option<i64>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "format": 1,
            "name": self.name,
            "file": self.file,
            "database": self.database,
            "server_version": self.server_version,
            "pg_dump_version": self.pg_dump_version,
            "started": self.started,
            "finished": self.finished,
            "dump_bytes": self.dump_bytes,
            "size": self.size,
            "sha256": self.sha256,
            "compression": "zstd",
            "level": self.level,
            "encryption": null,
            "verified": self.verified,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<Manifest> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Manifest {
            name: v["name"].as_str()?.into(),
            file: v["file"].as_str()?.into(),
            database: v["database"].as_str()?.into(),
            server_version: v["server_version"].as_str().unwrap_or("").into(),
            pg_dump_version: v["pg_dump_version"].as_str().unwrap_or("").into(),
            started: v["started"].as_i64()?,
            finished: v["finished"].as_i64()?,
            dump_bytes: v["dump_bytes"].as_u64()?,
            size: v["size"].as_u64()?,
            sha256: v["sha256"].as_str()?.into(),
            level: v["level"].as_i64().unwrap_or(0) as i32,
            verified: v["verified"].as_i64(),
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `YYYYmmddTHHMMSSZ` for file names.
pub fn stamp(secs: i64) -> String {
    let t = crate::log::rfc3339(secs, 0);
    t[..19].replace(['-', ':'], "") + "Z"
}

/// A writer that hashes and counts what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `data` to `path` atomically with mode 0600 (temporary name, fsync, rename,
/// fsync of the folder).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = partial_name(path);
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
}

fn partial_name(path: &Path) -> PathBuf {
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

/// Runs one backup of the database `url` names into `opts.dir`.
pub fn run(url: &Url, opts: &Options) -> Result<Manifest, BackupError> {
    let started_at = Instant::now();
    let started = unix_now();
    let target = PgTarget::from_url(url).map_err(|e| err(format!("{url}: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let server = rt.block_on(dump::server(&target))?;
    drop(rt);
    let tools = dump::find_tools(server.major)?;
    std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    let database = target.dbname().to_string();
    let name = format!("{database}-{}", stamp(started));
    let file = format!("{name}.dump.zst");
    let path = opts.dir.join(&file);
    let partial = partial_name(&path);
    let result = stream_dump(url, &tools, &partial, opts);
    let (dump_bytes, size, sha256) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &path)
        .and_then(|_| sync_dir(&path))
        .map_err(io_err(&path))?;
    let manifest = Manifest {
        name: name.clone(),
        file,
        database,
        server_version: server.version,
        pg_dump_version: tools.version.clone(),
        started,
        finished: started + started_at.elapsed().as_secs() as i64,
        dump_bytes,
        size,
        sha256,
        level: opts.level,
        verified: None,
    };
    write_atomic(
        &opts.dir.join(format!("{name}.manifest.json")),
        manifest.to_json().as_bytes(),
    )
    .map_err(|e| {
        err(format!(
            "writing the manifest: {}",
            crate::error::io_reason(&e)
        ))
    })?;
    Ok(manifest)
}

/// pg_dump -> zstd -> SHA-256 -> `partial`; returns (dump bytes, stored bytes, sha256).
fn stream_dump(
    url: &Url,
    tools: &Tools,
    partial: &Path,
    opts: &Options,
) -> Result<(u64, u64, String), BackupError> {
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io_err(partial))?;
    let mut cmd = Command::new(&tools.pg_dump);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .env_remove("PGPASSWORD")
        .envs(dump::libpq_env(url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::supervise::prepare_child(&mut cmd, None, false);
    let mut child = cmd.spawn().map_err(|e| {
        err(format!(
            "cannot run {}: {}",
            tools.pg_dump.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut s);
        let _ = io::copy(&mut stderr, &mut io::sink());
        String::from_utf8_lossy(&s).into_owned()
    });
    let io_err = |e: io::Error| {
        err(format!(
            "writing {}: {}",
            partial.display(),
            crate::error::io_reason(&e)
        ))
    };
    let hashing = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut enc = zstd::stream::Encoder::new(hashing, opts.level).map_err(io_err)?;
    if opts.threads > 0 {
        enc.multithread(opts.threads).map_err(io_err)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut dump_bytes = 0u64;
    let copy: Result<(), BackupError> = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                dump_bytes += n as u64;
                if let Err(e) = enc.write_all(&buf[..n]) {
                    break Err(io_err(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(err(format!(
                    "reading pg_dump's output: {}",
                    crate::error::io_reason(&e)
                )))
            }
        }
    };
    if copy.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| err(format!("pg_dump: {e}")))?;
    let messages = errors.join().unwrap_or_default();
    copy?;
    if !status.success() {
        let reason = messages
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(err(format!(
            "pg_dump failed ({status}): {}",
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
    let hashing = enc.finish().map_err(io_err)?;
    let Hashing { inner, hash, bytes } = hashing;
    let file = inner.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok((dump_bytes, bytes, hex(&hash.finalize())))
}
