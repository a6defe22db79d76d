//! Every setting of the backup sidecar, read once from the command line or the
//! environment (any variable may be given as `NAME_FILE`) and checked before anything
//! runs: a malformed value is an error that names the variable and says what to write.

use crate::config::{invalid, ConfigError};
use std::path::PathBuf;
use std::time::Duration;

use super::codec::Compression;
use super::retention::Policy;
use super::s3::S3Settings;
use crate::url::Url;

/// Which databases a run dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// The database the URL names.
    FromUrl,
    /// These databases on the URL's server.
    List(Vec<String>),
    /// Every database that is not a template and allows connections.
    All,
}

/// All settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// DIRECT_URL, else DATABASE_URL; `None` when neither is set.
    pub url: Option<Url>,
    pub databases: Databases,
    /// Also dump roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: bool,
    pub dir: Option<PathBuf>,
    pub s3: Option<S3Settings>,
    pub compression: Compression,
    /// age recipients (`age1...`), validated.
    pub recipients: Vec<String>,
    pub retention: Policy,
    pub status_file: Option<PathBuf>,
    /// healthchecks.io style: `/start`, success (the URL itself) and `/fail` are pinged.
    pub ping_url: Option<String>,
    pub metrics_file: Option<PathBuf>,
    /// Verify each new backup (checksum and full read) right after writing it.
    pub verify: bool,
    /// The cron expression as given.
    pub schedule: String,
    /// The time zone of the schedule (`TZ`, default UTC).
    pub timezone: String,
    pub on_start: bool,
    /// How long a running backup may go on after SIGTERM.
    pub stop_grace: Duration,
    /// How long the daemon waits for PostgreSQL before a run (`BACKUP_WAIT_TIMEOUT`).
    pub wait_timeout: Duration,
    /// How long pg_dump waits for a table lock before the run fails
    /// (`BACKUP_LOCK_WAIT_TIMEOUT`, pg_dump's `--lock-wait-timeout`; zero: no limit).
    pub lock_wait_timeout: Duration,
    /// The first retry after a failed run (`BACKUP_RETRY_DELAY`; doubles up to 15 min,
    /// never past the next scheduled time; zero turns retries off).
    pub retry_delay: Duration,
    /// Point-in-time recovery: the daemon streams WAL (`BACKUP_WAL`, see
    /// [`super::wal`]) on the physical slot `wal_slot`, through the spool folder.
    pub wal: bool,
    pub wal_slot: String,
    pub wal_spool: Option<PathBuf>,
    /// WAL the slot may hold on the server before a warning (`BACKUP_WAL_MAX_LAG`).
    pub wal_max_lag: u64,
}

/// The S3 settings other than the bucket: without a bucket they do nothing.
const S3_SETTINGS: [(&str, &str); 8] = [
    ("BACKUP_S3_PREFIX", "--s3-prefix"),
    ("BACKUP_S3_ENDPOINT", "--s3-endpoint"),
    ("BACKUP_S3_PATH_STYLE", "--s3-path-style"),
    ("BACKUP_S3_REGION", "--s3-region"),
    ("BACKUP_S3_STORAGE_CLASS", "--s3-storage-class"),
    ("BACKUP_S3_SSE", "--s3-sse"),
    ("BACKUP_S3_SSE_KMS_KEY_ID", "--s3-sse-kms-key-id"),
    ("BACKUP_S3_PART_SIZE", "--s3-part-size"),
];

/// The error for a setting given explicitly that does nothing in the configuration
/// given (a default is never refused): silently ignoring it would let a user believe
/// it applies.
fn does_nothing(flag: &str, name: &str, because: &str, or: &str) -> ConfigError {
    invalid(format!(
        "{flag} / {name} is set but does nothing: {because}; unset it, {or}"
    ))
}

/// Reads a setting: the command-line override, else the environment variable.
pub type Source<'a> = &'a dyn Fn(&str) -> Result<Option<String>, ConfigError>;

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    get: Source,
    name: &str,
    min: T,
    max: T,
) -> Result<Option<T>, ConfigError> {
    match get(name)? {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .map(Some)
            .ok_or_else(|| {
                invalid(format!(
                    "{name}={v:?}: use a whole number from {min} to {max}"
                ))
            }),
    }
}

fn boolean(get: Source, name: &str, default: bool) -> Result<bool, ConfigError> {
    match get(name)? {
        None => Ok(default),
        Some(v) => crate::config::parse_bool(name, &v),
    }
}

/// Parses a size such as `16MiB`, `8M`, `5242880`.
pub fn parse_size(s: &str) -> Option<usize> {
    crate::config::parse_size(s).and_then(|n| usize::try_from(n).ok())
}

/// The retention rules (`BACKUP_RETENTION_DAYS`, `BACKUP_KEEP_*`).
fn policy(get: Source) -> Result<Policy, ConfigError> {
    let n = |name: &str| -> Result<Option<u32>, ConfigError> {
        match get(name)? {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| invalid(format!("{name}={v:?}: use a whole number of 1 or more (unset it to keep everything)"))),
        }
    };
    Ok(Policy {
        days: n("BACKUP_RETENTION_DAYS")?,
        last: n("BACKUP_KEEP_LAST")?,
        daily: n("BACKUP_KEEP_DAILY")?,
        weekly: n("BACKUP_KEEP_WEEKLY")?,
        monthly: n("BACKUP_KEEP_MONTHLY")?,
    })
}

impl Settings {
    /// Reads every setting through `get` (see [`Source`]).
    pub fn load(get: Source) -> Result<Settings, ConfigError> {
        let url = match get("DIRECT_URL")? {
            Some(u) => Some(Url::parse(&u).map_err(|e| invalid(format!("DIRECT_URL: {e}")))?),
            None => match get("DATABASE_URL")? {
                Some(u) => Some(Url::parse(&u).map_err(|e| invalid(format!("DATABASE_URL: {e}")))?),
                None => None,
            },
        };
        if let Some(u) = &url {
            if u.scheme != "postgres" && u.scheme != "postgresql" {
                return Err(invalid(format!(
                    "DIRECT_URL {u}: expected postgres://user:password@host:5432/database"
                )));
            }
            // its parameters too, before anything runs (an unknown one is a typo)
            crate::pg::PgTarget::from_url(u).map_err(|e| e.context(format!("DIRECT_URL {u}")))?;
        }
        let databases = match get("BACKUP_DATABASES")? {
            None => Databases::FromUrl,
            Some(v) if v.trim() == "all" => Databases::All,
            Some(v) => {
                let list: Vec<String> = crate::config::split_list(&v).map(String::from).collect();
                if list.is_empty() {
                    Databases::FromUrl
                } else {
                    Databases::List(list)
                }
            }
        };
        let compression = match get("BACKUP_COMPRESSION")?.as_deref().map(str::trim) {
            None | Some("zstd") => {
                if get("BACKUP_GZIP_LEVEL")?.is_some() {
                    return Err(does_nothing(
                        "--gzip-level",
                        "BACKUP_GZIP_LEVEL",
                        "the compression is zstd",
                        "or set BACKUP_COMPRESSION=gzip",
                    ));
                }
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                Compression::Zstd {
                    // Level 1: measured on dump data (bench/backup.sh), multi-threaded
                    // level 1 is both faster and no larger than level 3, and smaller
                    // than gzip -6.
                    level: number(get, "BACKUP_ZSTD_LEVEL", 1, 19)?.unwrap_or(1),
                    threads: number(get, "BACKUP_ZSTD_THREADS", 0, 256)?.unwrap_or(cores),
                }
            }
            Some("gzip") => {
                for (name, flag) in [
                    ("BACKUP_ZSTD_LEVEL", "--zstd-level"),
                    ("BACKUP_ZSTD_THREADS", "--zstd-threads"),
                ] {
                    if get(name)?.is_some() {
                        return Err(does_nothing(
                            flag,
                            name,
                            "BACKUP_COMPRESSION is gzip",
                            "or set BACKUP_COMPRESSION=zstd",
                        ));
                    }
                }
                Compression::Gzip {
                    level: number(get, "BACKUP_GZIP_LEVEL", 1, 9)?.unwrap_or(6),
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "BACKUP_COMPRESSION={other:?}: use zstd (the default) or gzip"
                )))
            }
        };
        let recipients: Vec<String> = match get("BACKUP_AGE_RECIPIENT")? {
            None => Vec::new(),
            Some(v) => {
                let list: Vec<String> = crate::config::split_list(&v).map(String::from).collect();
                // Set but empty (`,`, a blank line) would write unencrypted backups
                // while the configuration says they are encrypted.
                if list.is_empty() {
                    return Err(invalid(format!(
                        "BACKUP_AGE_RECIPIENT={v:?} holds no recipient: give the age public key(s), age1..., comma-separated (or unset it for unencrypted backups)"
                    )));
                }
                list
            }
        };
        for r in &recipients {
            super::codec::parse_recipient(r)
                .map_err(|e| invalid(format!("BACKUP_AGE_RECIPIENT: {e}")))?;
        }
        let s3 = match get("BACKUP_S3_BUCKET")? {
            None => {
                for (name, flag) in S3_SETTINGS {
                    if get(name)?.is_some() {
                        return Err(does_nothing(
                            flag,
                            name,
                            "no bucket is set",
                            "or set BACKUP_S3_BUCKET (--s3-bucket)",
                        ));
                    }
                }
                None
            }
            Some(bucket) => {
                let bucket = bucket.trim().to_string();
                if bucket.contains('/') || bucket.contains(char::is_whitespace) {
                    return Err(invalid(format!(
                        "BACKUP_S3_BUCKET={bucket:?}: a bucket name only (put folders in BACKUP_S3_PREFIX)"
                    )));
                }
                let mut prefix = get("BACKUP_S3_PREFIX")?
                    .unwrap_or_default()
                    .trim()
                    .trim_matches('/')
                    .to_string();
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                let endpoint = get("BACKUP_S3_ENDPOINT")?;
                if let Some(e) = &endpoint {
                    let u =
                        Url::parse(e).map_err(|e| invalid(format!("BACKUP_S3_ENDPOINT: {e}")))?;
                    if u.scheme != "http" && u.scheme != "https" {
                        return Err(invalid(format!(
                            "BACKUP_S3_ENDPOINT={u}: expected https://host[:port] (or http:// for a local server)"
                        )));
                    }
                }
                let path_style = boolean(get, "BACKUP_S3_PATH_STYLE", endpoint.is_some())?;
                let sse = match get("BACKUP_S3_SSE")?.as_deref().map(str::trim) {
                    None => None,
                    Some("AES256") => Some("AES256".to_string()),
                    Some("aws:kms") => Some("aws:kms".to_string()),
                    Some(o) => {
                        return Err(invalid(format!(
                            "BACKUP_S3_SSE={o:?}: use AES256 or aws:kms"
                        )))
                    }
                };
                if sse.as_deref() != Some("aws:kms") && get("BACKUP_S3_SSE_KMS_KEY_ID")?.is_some() {
                    return Err(does_nothing(
                        "--s3-sse-kms-key-id",
                        "BACKUP_S3_SSE_KMS_KEY_ID",
                        "BACKUP_S3_SSE is not aws:kms",
                        "or set BACKUP_S3_SSE=aws:kms",
                    ));
                }
                let part_size = match get("BACKUP_S3_PART_SIZE")? {
                    None => 8 << 20,
                    Some(v) => parse_size(&v)
                        .filter(|n| (5 << 20..=5 << 30).contains(n))
                        .ok_or_else(|| {
                            invalid(format!("BACKUP_S3_PART_SIZE={v:?}: use a size from 5MiB to 5GiB, e.g. 16MiB"))
                        })?,
                };
                Some(S3Settings {
                    bucket,
                    prefix,
                    endpoint,
                    region: get("BACKUP_S3_REGION")?.or(get("AWS_REGION")?),
                    path_style,
                    storage_class: get("BACKUP_S3_STORAGE_CLASS")?,
                    sse,
                    sse_kms_key_id: get("BACKUP_S3_SSE_KMS_KEY_ID")?,
                    part_size,
                })
            }
        };
        let ping_url = match get("BACKUP_PING_URL")? {
            None => None,
            Some(v) => {
                let v = v.trim().trim_end_matches('/').to_string();
                let u = Url::parse(&v).map_err(|e| invalid(format!("BACKUP_PING_URL: {e}")))?;
                if u.scheme != "http" && u.scheme != "https" {
                    return Err(invalid(format!(
                        "BACKUP_PING_URL={u}: expected an http(s):// URL"
                    )));
                }
                Some(v)
            }
        };
        let stop_grace = match get("BACKUP_STOP_GRACE")? {
            None => Duration::from_secs(8),
            Some(v) => crate::duration::parse(&v)
                .map_err(|e| invalid(format!("BACKUP_STOP_GRACE: {e}")))?,
        };
        let duration = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match get(name)? {
                None => Ok(default),
                Some(v) => crate::duration::parse(&v).map_err(|e| invalid(format!("{name}: {e}"))),
            }
        };
        let wait_timeout = duration("BACKUP_WAIT_TIMEOUT", Duration::from_secs(60))?;
        let retry_delay = duration("BACKUP_RETRY_DELAY", Duration::from_secs(30))?;
        // 5 minutes: an ordinary migration's ALTER finishes well within it, while a
        // transaction left open holding ACCESS EXCLUSIVE fails the run (which is
        // retried and reported with the blocker's name) instead of stalling it silently
        // until the next night.
        let lock_wait_timeout = duration("BACKUP_LOCK_WAIT_TIMEOUT", Duration::from_secs(300))?;
        let wal = boolean(get, "BACKUP_WAL", false)?;
        let wal_slot = get("BACKUP_WAL_SLOT")?.unwrap_or_else(|| "dockhand".into());
        super::walname::check_slot_name(&wal_slot)?;
        let wal_spool = get("BACKUP_WAL_SPOOL")?.map(PathBuf::from);
        let wal_max_lag = match get("BACKUP_WAL_MAX_LAG")? {
            None => 1 << 30,
            Some(v) => parse_size(&v).filter(|n| *n > 0).ok_or_else(|| {
                invalid(format!(
                    "BACKUP_WAL_MAX_LAG={v:?}: use a size such as 1GiB or 512MiB"
                ))
            })? as u64,
        };
        let schedule = get("BACKUP_SCHEDULE")?.unwrap_or_else(|| "@daily".into());
        let timezone = get("TZ")?.unwrap_or_else(|| "UTC".into());
        // Checked here so `backup now` also reports a broken schedule.
        super::schedule::parse_schedule(&schedule)?;
        super::schedule::parse_timezone(&timezone)?;
        Ok(Settings {
            url,
            databases,
            globals: boolean(get, "BACKUP_GLOBALS", false)?,
            dir: match get("BACKUP_DIR")? {
                Some(d) if d.trim().is_empty() => {
                    return Err(invalid(format!(
                        "BACKUP_DIR={d:?} is only white space: give the backup folder, e.g. /backups (or unset it to keep backups in S3 only)"
                    )))
                }
                d => d.map(PathBuf::from),
            },
            s3,
            compression,
            recipients,
            retention: policy(get)?,
            status_file: get("BACKUP_STATUS_FILE")?.map(PathBuf::from),
            ping_url,
            metrics_file: get("BACKUP_METRICS_FILE")?.map(PathBuf::from),
            verify: boolean(get, "BACKUP_VERIFY", false)?,
            schedule,
            timezone,
            on_start: boolean(get, "BACKUP_ON_START", false)?,
            stop_grace,
            wait_timeout,
            lock_wait_timeout,
            retry_delay,
            wal,
            wal_slot,
            wal_spool,
            wal_max_lag,
        })
    }

    /// The database URL, or the error saying how to set it.
    pub fn database_url(&self) -> Result<&Url, ConfigError> {
        self.url
            .as_ref()
            .ok_or_else(|| invalid("no database: set DIRECT_URL (or DATABASE_URL)"))
    }

    /// Checks that the backups have somewhere to go.
    pub fn require_destination(&self) -> Result<(), ConfigError> {
        if self.dir.is_none() && self.s3.is_none() {
            return Err(invalid(
                "no destination: set BACKUP_DIR (a folder) and/or BACKUP_S3_BUCKET",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&|name| Ok(map.get(name).cloned()))
    }

    #[test]
    fn defaults_and_errors() {
        let s = load(&[("BACKUP_DIR", "/b")]).unwrap();
        assert!(matches!(s.compression, Compression::Zstd { level: 1, .. }));
        assert_eq!(s.schedule, "@daily");
        assert!(s.s3.is_none());
        let e = load(&[("BACKUP_ZSTD_LEVEL", "30")]).unwrap_err();
        assert!(
            e.message().contains("BACKUP_ZSTD_LEVEL") && e.message().contains("1 to 19"),
            "{e}"
        );
        let e = load(&[("BACKUP_COMPRESSION", "lz4")]).unwrap_err();
        assert!(
            e.message().contains("zstd") && e.message().contains("gzip"),
            "{e}"
        );
        let e = load(&[("BACKUP_S3_BUCKET", "b"), ("BACKUP_S3_PART_SIZE", "1MiB")]).unwrap_err();
        assert!(e.message().contains("5MiB"), "{e}");
        let e = load(&[("DIRECT_URL", "mysql://a:secret@h/db")]).unwrap_err();
        assert!(!e.message().contains("secret"), "{e}");
        let s = load(&[
            ("BACKUP_S3_BUCKET", "b"),
            ("BACKUP_S3_PREFIX", "/x/y/"),
            ("BACKUP_S3_ENDPOINT", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        let s3 = s.s3.unwrap();
        assert_eq!(s3.prefix, "x/y/");
        assert!(s3.path_style);
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
    }

    #[test]
    fn settings_that_do_nothing_here_are_refused() {
        for (pairs, names, says) in [
            (
                &[("BACKUP_GZIP_LEVEL", "9")][..],
                "BACKUP_GZIP_LEVEL",
                "BACKUP_COMPRESSION=gzip",
            ),
            (
                &[("BACKUP_COMPRESSION", "zstd"), ("BACKUP_GZIP_LEVEL", "6")][..],
                "--gzip-level",
                "compression is zstd",
            ),
            (
                &[("BACKUP_COMPRESSION", "gzip"), ("BACKUP_ZSTD_LEVEL", "3")][..],
                "BACKUP_ZSTD_LEVEL",
                "BACKUP_COMPRESSION=zstd",
            ),
            (
                &[("BACKUP_COMPRESSION", "gzip"), ("BACKUP_ZSTD_THREADS", "2")][..],
                "BACKUP_ZSTD_THREADS",
                "gzip",
            ),
            (
                &[("BACKUP_S3_PART_SIZE", "16MiB")][..],
                "--s3-part-size",
                "BACKUP_S3_BUCKET",
            ),
            (
                &[("BACKUP_S3_PREFIX", "prod")][..],
                "BACKUP_S3_PREFIX",
                "no bucket",
            ),
            (
                &[("BACKUP_S3_BUCKET", "b"), ("BACKUP_S3_SSE_KMS_KEY_ID", "k")][..],
                "BACKUP_S3_SSE_KMS_KEY_ID",
                "aws:kms",
            ),
            (
                &[("BACKUP_AGE_RECIPIENT", ",")][..],
                "BACKUP_AGE_RECIPIENT",
                "age1",
            ),
            (
                &[("BACKUP_AGE_RECIPIENT", " , \n")][..],
                "BACKUP_AGE_RECIPIENT",
                "holds no recipient",
            ),
            (&[("BACKUP_DIR", " ")][..], "BACKUP_DIR", "/backups"),
            (&[("BACKUP_DIR", "\t\n")][..], "BACKUP_DIR", "white space"),
            (
                &[("DIRECT_URL", "postgres://u:SECRET@h/db?sslmode=bogus")][..],
                "sslmode",
                "verify-full",
            ),
        ] {
            let e = load(pairs).unwrap_err();
            let m = e.message();
            assert!(m.contains(names) && m.contains(says), "{pairs:?}: {m}");
            assert!(!m.contains("SECRET"), "{m}");
        }
        // the defaults themselves are never refused, and a setting that applies is kept
        let s = load(&[("BACKUP_COMPRESSION", "gzip"), ("BACKUP_GZIP_LEVEL", "9")]).unwrap();
        assert!(matches!(s.compression, Compression::Gzip { level: 9 }));
        let s = load(&[("BACKUP_S3_BUCKET", "b"), ("BACKUP_S3_PART_SIZE", "16MiB")]).unwrap();
        assert_eq!(s.s3.unwrap().part_size, 16 << 20);
        assert_eq!(parse_size("16 parsecs"), None);
    }
}
