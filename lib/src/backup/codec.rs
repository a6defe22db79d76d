//! The stages a dump passes through on its way out (compression, then encryption to
//! age recipients), each a [`Stage`] writing into the next, and the reverse for
//! reading a backup back ([`decoder`]). The server only ever holds the public key:
//! decryption needs the identity, given at restore or verify time.

use std::io::{self, Read, Write};
use std::str::FromStr;

use super::manifest::Algorithm;
use super::{err, BackupError};
use crate::config::{invalid, ConfigError};

/// How the dump is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at `level` (1-19, default 1) with `threads` workers (0 = in the calling thread).
    Zstd { level: i32, threads: u32 },
    /// gzip at `level` (1-9), for tools that only read gzip.
    Gzip { level: u32 },
}

impl Compression {
    /// The algorithm, as the manifest records it.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Compression::Zstd { .. } => Algorithm::Zstd,
            Compression::Gzip { .. } => Algorithm::Gzip,
        }
    }

    /// The level, as the manifest records it.
    pub fn level(&self) -> i32 {
        match self {
            Compression::Zstd { level, .. } => *level,
            Compression::Gzip { level } => *level as i32,
        }
    }
}

/// A writer that must be finished (trailers, tags, fsync) before its output is
/// complete. Finishing a stage finishes the stages after it.
pub trait Stage: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct Zstd(zstd::stream::Encoder<'static, Box<dyn Stage>>);
struct Gzip(flate2::write::GzEncoder<Box<dyn Stage>>);
struct Age(age::stream::StreamWriter<Box<dyn Stage>>);

macro_rules! delegate_write {
    ($t:ty) => {
        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
                self.0.write_all(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.flush()
            }
        }
    };
}
delegate_write!(Zstd);
delegate_write!(Gzip);
delegate_write!(Age);

impl Stage for Zstd {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}
impl Stage for Gzip {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}
impl Stage for Age {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}

/// Parses an age recipient (`age1...`).
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, ConfigError> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|e| {
        invalid(format!(
            "{:?} is not an age public key ({e}): use the `age1...` line age-keygen prints",
            s.trim()
        ))
    })
}

/// Parses identities (`AGE-SECRET-KEY-1...`) from text such as an age-keygen key file;
/// comment lines are skipped.
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, ConfigError> {
    let ids = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            age::x25519::Identity::from_str(l).map_err(|_| {
                invalid("BACKUP_AGE_IDENTITY does not hold an age secret key (AGE-SECRET-KEY-1...)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(invalid("BACKUP_AGE_IDENTITY is empty"));
    }
    Ok(ids)
}

/// Builds the output chain: compression, then (with recipients) encryption, into `out`.
pub fn encoder(
    compression: &Compression,
    recipients: &[String],
    out: Box<dyn Stage>,
) -> Result<Box<dyn Stage>, BackupError> {
    let out: Box<dyn Stage> = if recipients.is_empty() {
        out
    } else {
        let parsed = recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(super::usage)?;
        let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| err(format!("age: {e}")).with_source(e))?;
        Box::new(Age(enc
            .wrap_output(out)
            .map_err(|e| err(format!("age: {e}")).with_source(e))?))
    };
    let io = |e: io::Error| err(format!("compression: {e}")).with_source(e);
    Ok(match *compression {
        Compression::Zstd { level, threads } => {
            let mut enc = zstd::stream::Encoder::new(out, level).map_err(io)?;
            if threads > 0 {
                enc.multithread(threads).map_err(io)?;
                // 1 MiB jobs: the same ratio and speed here, and a third of the memory
                // of zstd's default (4x the window per worker).
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(1 << 20))
                    .map_err(io)?;
            }
            Box::new(Zstd(enc))
        }
        Compression::Gzip { level } => Box::new(Gzip(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::new(level),
        ))),
    })
}

/// Builds the input chain for a stored backup: decryption (when `encrypted`), then
/// decompression (`zstd` or `gzip`).
pub fn decoder(
    compression: Algorithm,
    encrypted: bool,
    identities: &[age::x25519::Identity],
    input: Box<dyn Read + Send>,
) -> Result<Box<dyn Read + Send>, BackupError> {
    let plain: Box<dyn Read + Send> = if encrypted {
        if identities.is_empty() {
            return Err(err(
                "the backup is encrypted: give the age identity in BACKUP_AGE_IDENTITY or BACKUP_AGE_IDENTITY_FILE (the server only has the public key)",
            ));
        }
        let dec =
            age::Decryptor::new(input).map_err(|e| err(format!("age: {e}")).with_source(e))?;
        Box::new(
            dec.decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(|e| {
                    err(format!(
                        "cannot decrypt: {e} (is it the identity for BACKUP_AGE_RECIPIENT?)"
                    ))
                    .with_source(e)
                })?,
        )
    } else {
        input
    };
    match compression {
        Algorithm::Zstd => Ok(Box::new(
            zstd::stream::Decoder::new(plain)
                .map_err(|e| err(format!("zstd: {e}")).with_source(e))?,
        )),
        Algorithm::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(plain))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Collect(Arc<Mutex<Vec<u8>>>);
    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Stage for Collect {
        fn finish(self: Box<Self>) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn round_trips_every_combination() {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            Compression::Zstd {
                level: 3,
                threads: 2,
            },
            Compression::Gzip { level: 6 },
        ] {
            for encrypted in [false, true] {
                let buf = Arc::new(Mutex::new(Vec::new()));
                let recips = if encrypted {
                    vec![recipient.clone()]
                } else {
                    vec![]
                };
                let mut w = encoder(&c, &recips, Box::new(Collect(buf.clone()))).unwrap();
                w.write_all(&data).unwrap();
                w.finish().unwrap();
                let stored = buf.lock().unwrap().clone();
                assert!(stored.len() < data.len() / 4);
                let mut out = Vec::new();
                decoder(
                    c.algorithm(),
                    encrypted,
                    std::slice::from_ref(&id),
                    Box::new(io::Cursor::new(stored.clone())),
                )
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
                assert_eq!(out, data);
                if encrypted {
                    let other = age::x25519::Identity::generate();
                    let e = decoder(
                        c.algorithm(),
                        true,
                        &[other],
                        Box::new(io::Cursor::new(stored)),
                    )
                    .err()
                    .unwrap();
                    assert!(e.message().contains("cannot decrypt"), "{e}");
                }
            }
        }
        assert!(parse_recipient("age1nope").is_err());
        assert!(parse_identities("# just a comment\n").is_err());
    }
}
