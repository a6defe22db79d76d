//! The backups in a folder, as their manifests describe them (files dockhand did not
//! write, and dumps without a manifest, are never listed), and verification: the
//! stored file's SHA-256 against the manifest, then a full read of the archive by
//! `pg_restore -f /dev/null` (`pg_restore --list` passes on a truncated dump; a full
//! read does not).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::archive::{write_atomic, Manifest};
use super::{err, hex, io_err, BackupError};

/// Manifests in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(err(format!(
                "{}: {}",
                dir.display(),
                crate::error::io_reason(&e)
            )))
        }
    };
    let mut out: Vec<Manifest> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
        .filter_map(|e| Manifest::from_json(&std::fs::read_to_string(e.path()).ok()?))
        .filter(|m| dir.join(&m.file).exists())
        .collect();
    out.sort_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)));
    Ok(out)
}

/// The backup named `name`, or the newest for `latest`.
pub fn find(dir: &Path, name: &str) -> Result<Manifest, BackupError> {
    let all = list(dir)?;
    let found = if name == "latest" {
        all.into_iter().last()
    } else {
        all.into_iter().find(|m| m.name == name || m.file == name)
    };
    found.ok_or_else(|| {
        err(format!(
            "no backup {name:?} in {} (see `backup list`)",
            dir.display()
        ))
    })
}

/// Formats `list` as the table `backup list` prints.
pub fn table(backups: &[Manifest]) -> String {
    let mut s = format!(
        "{:<40} {:<20} {:<16} {:>12}  {:<6} {}\n",
        "NAME", "TIME (UTC)", "DATABASE", "SIZE", "WHERE", "VERIFIED"
    );
    for m in backups {
        let t = crate::log::rfc3339(m.started, 0);
        s.push_str(&format!(
            "{:<40} {:<20} {:<16} {:>12}  {:<6} {}\n",
            m.name,
            &t[..19].replace('T', " "),
            m.database,
            human_size(m.size),
            "local",
            m.verified
                .map_or("no".to_string(), |v| crate::log::rfc3339(v, 0)[..19]
                    .replace('T', " "))
        ));
    }
    s
}

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

/// Verifies a backup: checksum, then a full read by `pg_restore`; records the time in
/// its manifest.
pub fn verify(dir: &Path, m: &Manifest, pg_restore: &Path) -> Result<(), BackupError> {
    let path: PathBuf = dir.join(&m.file);
    let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut HashSink(&mut h)).map_err(io_err(&path))?;
    let sum = hex(&h.finalize());
    if sum != m.sha256 {
        return Err(err(format!(
            "{}: checksum mismatch (manifest {}, file {sum}): the file is damaged",
            m.file, m.sha256
        )));
    }
    let mut child = Command::new(pg_restore)
        .args(["--file=/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {}",
                pg_restore.display(),
                crate::error::io_reason(&e)
            ))
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let file = std::fs::File::open(&path).map_err(io_err(&path))?;
    let feed = std::thread::spawn(move || -> io::Result<()> {
        let mut dec = zstd::stream::Decoder::new(file)?;
        io::copy(&mut dec, &mut stdin)?;
        stdin.flush()
    });
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(|e| err(format!("pg_restore: {e}")))?;
    let fed = feed
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("decompression thread failed")));
    if let Err(e) = fed {
        return Err(err(format!("{}: cannot decompress: {e}", m.file)));
    }
    if !status.success() {
        return Err(err(format!(
            "{}: pg_restore could not read it: {}",
            m.file,
            stderr.trim().replace('\n', "; ")
        )));
    }
    let mut updated = m.clone();
    updated.verified = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    write_atomic(
        &dir.join(format!("{}.manifest.json", m.name)),
        updated.to_json().as_bytes(),
    )
    .map_err(|e| {
        err(format!(
            "updating the manifest: {}",
            crate::error::io_reason(&e)
        ))
    })
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
