//! Every setting of the backup sidecar: its table (flag, variable, default and
//! meaning of each, which also drives `backup --help` and the README), and
//! [`Settings`], read once from the command line or the environment (any variable may
//! be given as `NAME_FILE`) and checked before anything runs: a malformed value is an
//! error that names the variable and says what to write.

use crate::config::{invalid, ConfigError};
use crate::flags::{table, Key, Matches, Setting};
use std::path::PathBuf;
use std::time::Duration;

use super::codec::Compression;
use super::retention::Policy;
use super::s3::S3Settings;
use crate::url::Url;

/// How a run dumps and reports: `daemon` and `now`.
const RUN: &[&str] = &["daemon", "now"];
/// When the daemon runs: `daemon` only.
const SCHEDULE: &[&str] = &["daemon"];
/// What to keep: `daemon`, `now` and `prune`.
const RETENTION: &[&str] = &["daemon", "now", "prune"];

/// A setting that is also a flag: `BACKUP_S3_BUCKET` is `--s3-bucket`. Where backups
/// are (no `commands`) is for every command.
const fn setting(
    long: &'static str,
    value: &'static str,
    env: &'static str,
    doc: &'static str,
) -> Setting {
    Setting::value(long, value, doc).env(env)
}

table! {
    /// Every flag and variable of `backup`. Secrets (database URLs, the age identity, AWS
    /// keys) are variables only: the command line is visible in `ps`.
    pub enum Flag in TABLE {
        Command = Setting::words(
            "`daemon` (default), `now`, `base`, `list`, `verify`, `restore`, `prune`, `drill`, `recover`, `wal drop-slot`",
            "the command",
        ),
        Dir = setting("dir", "DIR", "BACKUP_DIR", "the local backup folder"),
        S3Bucket = setting("s3-bucket", "NAME", "BACKUP_S3_BUCKET", "the bucket (a name, no slashes)"),
        S3Prefix = setting("s3-prefix", "PREFIX", "BACKUP_S3_PREFIX", "key prefix, e.g. `prod/app`"),
        S3Endpoint = setting(
            "s3-endpoint",
            "URL",
            "BACKUP_S3_ENDPOINT",
            "a compatible server: `https://...` for MinIO, R2, Hetzner, B2",
        )
        .default_shown("AWS"),
        S3PathStyle = setting("s3-path-style", "BOOL", "BACKUP_S3_PATH_STYLE", "path-style addressing")
            .default_shown("on with an endpoint"),
        S3Region = setting("s3-region", "REGION", "BACKUP_S3_REGION", "the region (else `AWS_REGION`)")
            .default_shown("`us-east-1` with an endpoint"),
        S3StorageClass = setting(
            "s3-storage-class",
            "CLASS",
            "BACKUP_S3_STORAGE_CLASS",
            "e.g. `STANDARD_IA`, `GLACIER_IR`",
        )
        .commands(RUN),
        S3Sse = setting(
            "s3-sse",
            "MODE",
            "BACKUP_S3_SSE",
            "server-side encryption: `AES256` or `aws:kms`",
        )
        .commands(RUN),
        S3SseKmsKeyId = setting(
            "s3-sse-kms-key-id",
            "ID",
            "BACKUP_S3_SSE_KMS_KEY_ID",
            "the KMS key for `aws:kms`",
        )
        .commands(RUN),
        S3PartSize = setting(
            "s3-part-size",
            "SIZE",
            "BACKUP_S3_PART_SIZE",
            "multipart part size, 5MiB–5GiB (10,000 parts at most)",
        )
        .default("8MiB")
        .commands(RUN),
        AwsRegion = Setting::var(
            "AWS_REGION",
            "the region when `BACKUP_S3_REGION` is not set (as the AWS tools read it)",
        ),
        AwsCredentials = Setting::var(
            "AWS_ACCESS_KEY_ID",
            "the standard AWS credential chain",
        )
        .env_shown("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ..."),
        DirectUrl = Setting::var("DIRECT_URL", "the database (PostgreSQL itself, not PgBouncer)")
            .also("DATABASE_URL")
            .env_shown("`DIRECT_URL`, `DATABASE_URL`"),
        Databases = setting("databases", "LIST", "BACKUP_DATABASES", "a list, or `all`")
            .default_shown("the URL's")
            .commands(RUN),
        Globals = setting(
            "globals",
            "BOOL",
            "BACKUP_GLOBALS",
            "also roles and tablespaces (superuser)",
        )
        .default("false")
        .commands(RUN),
        Compression = setting("compression", "C", "BACKUP_COMPRESSION", "`zstd` or `gzip`")
            .default("zstd")
            .commands(RUN),
        ZstdLevel = setting(
            "zstd-level",
            "N",
            "BACKUP_ZSTD_LEVEL",
            "zstd level, 1–19 (on dump data level 1 was faster than 3 and no larger: bench/RESULTS.md)",
        )
        .default("1")
        .commands(RUN),
        ZstdThreads = setting("zstd-threads", "N", "BACKUP_ZSTD_THREADS", "zstd workers (0: none)")
            .default_shown("cores")
            .commands(RUN),
        GzipLevel = setting("gzip-level", "N", "BACKUP_GZIP_LEVEL", "gzip level, 1–9")
            .default("6")
            .commands(RUN),
        AgeRecipient = setting(
            "age-recipient",
            "KEY",
            "BACKUP_AGE_RECIPIENT",
            "age public key(s) `age1...`, comma-separated",
        )
        .commands(RUN),
        AgeIdentity = Setting::var(
            "BACKUP_AGE_IDENTITY",
            "the age secret key, for `verify`/`restore`/`drill` (and the daemon's drills) of encrypted backups only (usually `_FILE`)",
        ),
        Schedule = setting(
            "schedule",
            "CRON",
            "BACKUP_SCHEDULE",
            "5 crontab fields (weekday 0/7 = Sunday), 6 with seconds first, or `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`; a line restricting both day of month and weekday matches days that satisfy both (classic cron: either)",
        )
        .default("@daily")
        .commands(SCHEDULE),
        Tz = setting("tz", "ZONE", "TZ", "the schedule's time zone (IANA name)")
            .default("UTC")
            .commands(SCHEDULE),
        OnStart = setting("on-start", "BOOL", "BACKUP_ON_START", "one run when the daemon starts")
            .default("false")
            .commands(SCHEDULE),
        StopGrace = setting(
            "stop-grace",
            "DURATION",
            "BACKUP_STOP_GRACE",
            "how long a running backup may finish after SIGTERM",
        )
        .default("8s")
        .commands(SCHEDULE),
        WaitTimeout = setting(
            "wait-timeout",
            "DURATION",
            "BACKUP_WAIT_TIMEOUT",
            "`daemon`: how long to wait for PostgreSQL before a run",
        )
        .default("60s")
        .commands(SCHEDULE),
        RetryDelay = setting(
            "retry-delay",
            "DURATION",
            "BACKUP_RETRY_DELAY",
            "`daemon`: the first retry after a failed run (doubles up to 15m; `0`: no retries)",
        )
        .default("30s")
        .commands(SCHEDULE),
        RetentionDays = setting(
            "retention-days",
            "N",
            "BACKUP_RETENTION_DAYS",
            "keep backups younger than N days",
        )
        .commands(RETENTION),
        KeepLast = setting("keep-last", "N", "BACKUP_KEEP_LAST", "keep the newest N").commands(RETENTION),
        KeepDaily = setting(
            "keep-daily",
            "N",
            "BACKUP_KEEP_DAILY",
            "keep the newest of each of the last N days",
        )
        .commands(RETENTION),
        KeepWeekly = setting(
            "keep-weekly",
            "N",
            "BACKUP_KEEP_WEEKLY",
            "keep the newest of each of the last N ISO weeks",
        )
        .commands(RETENTION),
        KeepMonthly = setting(
            "keep-monthly",
            "N",
            "BACKUP_KEEP_MONTHLY",
            "keep the newest of each of the last N months",
        )
        .commands(RETENTION),
        LockWaitTimeout = setting(
            "lock-wait-timeout",
            "DURATION",
            "BACKUP_LOCK_WAIT_TIMEOUT",
            "how long pg_dump waits for a table lock (behind a migration's `ALTER TABLE`, an open transaction) before the run fails, naming the blocker; long enough for an ordinary migration, short enough that a stuck transaction is reported (and the run retried) the same night; `0`: no limit",
        )
        .default("5m")
        .commands(RUN),
        Verify = setting(
            "verify",
            "BOOL",
            "BACKUP_VERIFY",
            "verify each new backup (full read) right after the run",
        )
        .default("false")
        .commands(RUN),
        CountRows = setting(
            "count-rows",
            "BOOL",
            "BACKUP_COUNT_ROWS",
            "count every table's rows in the dump's own snapshot while it runs, for the manifest and the drill's comparison (costs one more scan of each table: bench/RESULTS.md); `false`: a drill checks pg_restore's errors only",
        )
        .default("true")
        .commands(RUN),
        StatusFile = setting("status-file", "FILE", "BACKUP_STATUS_FILE", "the status JSON").commands(RUN),
        PingUrl = setting(
            "ping-url",
            "URL",
            "BACKUP_PING_URL",
            "pinged at `/start`, on success, at `/fail`",
        )
        .commands(RUN),
        MetricsFile = setting(
            "metrics-file",
            "FILE",
            "BACKUP_METRICS_FILE",
            "Prometheus metrics, text format",
        )
        .commands(RUN),
        Wal = setting(
            "wal",
            "BOOL",
            "BACKUP_WAL",
            "point-in-time recovery: stream WAL with `pg_receivewal` on a replication slot, each completed segment stored like a backup (needs a role with REPLICATION and a `replication` line in `pg_hba.conf`)",
        )
        .default("false")
        .commands(SCHEDULE),
        WalSlot = setting(
            "wal-slot",
            "NAME",
            "BACKUP_WAL_SLOT",
            "the physical replication slot the WAL is streamed on (created if missing; it keeps WAL on the server until received)",
        )
        .default("dockhand")
        .commands(&["daemon", "wal"]),
        WalSpool = setting(
            "wal-spool",
            "DIR",
            "BACKUP_WAL_SPOOL",
            "where received WAL waits until stored everywhere (a volume)",
        )
        .default_shown("`BACKUP_DIR/.wal-spool`")
        .commands(SCHEDULE),
        WalMaxLag = setting(
            "wal-max-lag",
            "SIZE",
            "BACKUP_WAL_MAX_LAG",
            "warn when the slot holds more WAL than this on the server (the sidecar is behind, and the server's disk fills)",
        )
        .default("1GiB")
        .commands(SCHEDULE),
        WalRpo = setting(
            "wal-rpo",
            "DURATION",
            "BACKUP_WAL_RPO",
            "the segment being written is stored too, at most this often and only when it has grown: the committed work a lost host can lose offsite; a complete segment replaces it",
        )
        .default("60s")
        .commands(SCHEDULE),
        BaseSchedule = setting(
            "base-schedule",
            "CRON",
            "BACKUP_BASE_SCHEDULE",
            "base backups (`backup base`) on this schedule too, in the form of `BACKUP_SCHEDULE`; `off`: none",
        )
        .default("off")
        .commands(SCHEDULE),
        PgBin = Setting::var(
            "BACKUP_PG_BIN",
            "directory holding `pg_dump`, `pg_restore`, `pg_dumpall`, `psql`",
        ),
        Remote = Setting::switch("remote", "`list`: also the backups in S3").commands(&["list"]),
        From = Setting::value(
            "from",
            "local\\|s3",
            "`verify`, `restore`, `drill`, `recover`: which copy to read",
        )
        .default_shown("the local copy if any")
        .commands(&["verify", "restore", "drill", "recover"]),
        ToTime = Setting::value(
            "to-time",
            "TIME\\|latest",
            "`recover`: the moment to recover to (RFC 3339 with its offset, `2026-12-07T16:05:00Z`), or the end of the stored WAL",
        )
        .commands(&["recover"]),
        DataDir = Setting::value(
            "data-dir",
            "DIR",
            "`recover`: the empty data directory (a new volume) PostgreSQL then starts on",
        )
        .commands(&["recover"]),
        To = Setting::value("to", "URL", "`restore`: the target database")
            .default_shown("a new database")
            .commands(&["restore"]),
        Clean = Setting::switch(
            "clean",
            "`restore`: drop the backup's objects in a non-empty target first",
        )
        .commands(&["restore"]),
        Yes = Setting::switch("yes", "`restore`: confirm `--clean` without asking")
            .short('y')
            .commands(&["restore"]),
        NoOwner = Setting::switch("no-owner", "`restore`: skip ownership and privileges")
            .commands(&["restore"]),
        Jobs = setting(
            "jobs",
            "N",
            "BACKUP_RESTORE_JOBS",
            "`restore`: parallel `pg_restore` jobs into a database it creates (the backup is decoded into a file in `BACKUP_TMP_DIR` first); 1 streams it",
        )
        .default_shown("the CPUs, at most 8")
        .commands(&["restore", "drill"]),
        TmpDir = Setting::var(
            "BACKUP_TMP_DIR",
            "`restore --jobs`: where the decoded backup is written (mode 0600, removed after); `drill --pitr`: where its scratch data directory goes (mode 0700, removed after)",
        )
        .default_shown("`TMPDIR`, else `/tmp`"),
        Into = setting(
            "into",
            "URL",
            "BACKUP_DRILL_URL",
            "`drill` and the daemon's drills: the server of the scratch database (a throwaway PostgreSQL, so production is not loaded)",
        )
        .default_shown("the backup URL's server")
        .commands(&["drill"]),
        Keep = Setting::switch(
            "keep",
            "`drill`: keep the scratch database and print its name (with `--pitr`: the scratch data directory, its server stopped)",
        )
        .commands(&["drill"]),
        Pitr = Setting::switch(
            "pitr",
            "`drill`: drill point-in-time recovery instead: the newest base backup and the WAL after it recovered to the latest point by a throwaway PostgreSQL of its major in `BACKUP_TMP_DIR` (the sidecar needs the server binaries); no backup name",
        )
        .commands(&["drill"]),
        DrillSql = Setting::var(
            "BACKUP_DRILL_SQL",
            "`drill` and the daemon's drills: a file of queries that must each return true on the restored copy (`;` ends one; else one a line)",
        ),
        Drill = Setting::var(
            "BACKUP_DRILL",
            "the daemon's drills: `off`, `after-backup` (every new backup), or a cron expression (the latest then)",
        )
        .default("off"),
        DryRun = Setting::switch("dry-run", "`prune`: print, delete nothing")
            .short('n')
            .commands(&["prune"]),
        RustLog = Setting::var(
            "RUST_LOG",
            "logging (stderr), `json` for one object per line",
        )
        .env_shown("`RUST_LOG`, `LOG_FORMAT`")
        .default_shown("`info`, `text`"),
        Help = Setting::help(),
    }
}

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
    /// Count every table's rows in the dump's snapshot (`BACKUP_COUNT_ROWS`), for the
    /// manifest and the drill's comparison.
    pub count_rows: bool,
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
    /// How often the segment being written is stored, when it has grown
    /// (`BACKUP_WAL_RPO`).
    pub wal_rpo: Duration,
    /// The daemon's base backups (`BACKUP_BASE_SCHEDULE`), a cron expression; `None`:
    /// none.
    pub base_schedule: Option<String>,
}

/// The settings that only mean something while the daemon streams WAL.
const WAL_SETTINGS: [Flag; 5] = [
    Flag::WalSlot,
    Flag::WalSpool,
    Flag::WalMaxLag,
    Flag::WalRpo,
    Flag::BaseSchedule,
];

/// The S3 settings other than the bucket: without a bucket they do nothing.
const S3_SETTINGS: [Flag; 8] = [
    Flag::S3Prefix,
    Flag::S3Endpoint,
    Flag::S3PathStyle,
    Flag::S3Region,
    Flag::S3StorageClass,
    Flag::S3Sse,
    Flag::S3SseKmsKeyId,
    Flag::S3PartSize,
];

/// The error for a setting given explicitly that does nothing in the configuration
/// given (a default is never refused): silently ignoring it would let a user believe
/// it applies.
fn does_nothing(k: Flag, because: &str, or: &str) -> ConfigError {
    let row = k.row();
    invalid(format!(
        "{} / {} is set but does nothing: {because}; unset it, {or}",
        row.name(),
        row.env
    ))
}

/// Settings are read from the command line's matches (flag, else variable, else the
/// row's default).
pub type Source = Matches<Flag>;

fn boolean(m: &Source, k: Flag) -> Result<bool, ConfigError> {
    m.switch(k)
}

/// Parses a size such as `16MiB`, `8M`, `5242880`.
pub fn parse_size(s: &str) -> Option<usize> {
    crate::config::parse_size(s).and_then(|n| usize::try_from(n).ok())
}

/// The retention rules (`BACKUP_RETENTION_DAYS`, `BACKUP_KEEP_*`).
fn policy(m: &Source) -> Result<Policy, ConfigError> {
    let n = |k: Flag| -> Result<Option<u32>, ConfigError> {
        match m.string(k)? {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| {
                    invalid(format!(
                        "{}={v:?}: use a whole number of 1 or more (unset it to keep everything)",
                        k.row().env
                    ))
                }),
        }
    };
    Ok(Policy {
        days: n(Flag::RetentionDays)?,
        last: n(Flag::KeepLast)?,
        daily: n(Flag::KeepDaily)?,
        weekly: n(Flag::KeepWeekly)?,
        monthly: n(Flag::KeepMonthly)?,
    })
}

/// The S3 settings when a bucket is set.
fn s3_settings(m: &Source, bucket: String) -> Result<S3Settings, ConfigError> {
    let bucket = bucket.trim().to_string();
    if bucket.contains('/') || bucket.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "BACKUP_S3_BUCKET={bucket:?}: a bucket name only (put folders in BACKUP_S3_PREFIX)"
        )));
    }
    let mut prefix = m
        .explicit(Flag::S3Prefix)?
        .unwrap_or_default()
        .trim()
        .trim_matches('/')
        .to_string();
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let endpoint = m.explicit(Flag::S3Endpoint)?;
    if let Some(e) = &endpoint {
        let u = Url::parse(e).map_err(|e| invalid(format!("BACKUP_S3_ENDPOINT: {e}")))?;
        if u.scheme != "http" && u.scheme != "https" {
            return Err(invalid(format!(
                "BACKUP_S3_ENDPOINT={u}: expected https://host[:port] (or http:// for a local server)"
            )));
        }
    }
    // on with an endpoint (a compatible server), else off
    let path_style = match m.explicit(Flag::S3PathStyle)? {
        Some(v) => crate::config::parse_bool("BACKUP_S3_PATH_STYLE", &v)?,
        None => endpoint.is_some(),
    };
    let sse = match m.explicit(Flag::S3Sse)?.as_deref().map(str::trim) {
        None => None,
        Some("AES256") => Some("AES256".to_string()),
        Some("aws:kms") => Some("aws:kms".to_string()),
        Some(o) => {
            return Err(invalid(format!(
                "BACKUP_S3_SSE={o:?}: use AES256 or aws:kms"
            )))
        }
    };
    if sse.as_deref() != Some("aws:kms") && m.is_set(Flag::S3SseKmsKeyId)? {
        return Err(does_nothing(
            Flag::S3SseKmsKeyId,
            "BACKUP_S3_SSE is not aws:kms",
            "or set BACKUP_S3_SSE=aws:kms",
        ));
    }
    let v = m.string(Flag::S3PartSize)?.unwrap_or_default();
    let part_size = parse_size(&v)
        .filter(|n| (5 << 20..=5 << 30).contains(n))
        .ok_or_else(|| {
            invalid(format!(
                "BACKUP_S3_PART_SIZE={v:?}: use a size from 5MiB to 5GiB, e.g. 16MiB"
            ))
        })?;
    Ok(S3Settings {
        bucket,
        prefix,
        endpoint,
        region: match m.explicit(Flag::S3Region)? {
            Some(r) => Some(r),
            None => m.explicit(Flag::AwsRegion)?,
        },
        path_style,
        storage_class: m.explicit(Flag::S3StorageClass)?,
        sse,
        sse_kms_key_id: m.explicit(Flag::S3SseKmsKeyId)?,
        part_size,
    })
}

/// `DIRECT_URL` (else `DATABASE_URL`), checked with its parameters before anything
/// runs (an unknown one is a typo).
fn database_url(m: &Source) -> Result<Option<Url>, ConfigError> {
    let url = match m.explicit_from(Flag::DirectUrl)? {
        Some((u, from)) => Some(Url::parse(&u).map_err(|e| invalid(format!("{from}: {e}")))?),
        None => None,
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
    Ok(url)
}

/// `BACKUP_DATABASES`: a list, `all`, or (unset or empty) the URL's database.
fn databases(m: &Source) -> Result<Databases, ConfigError> {
    Ok(match m.explicit(Flag::Databases)? {
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
    })
}

/// `BACKUP_COMPRESSION` and its level (and threads), refusing the other
/// compressor's settings.
fn compression(m: &Source) -> Result<Compression, ConfigError> {
    Ok(
        match m.string(Flag::Compression)?.as_deref().map(str::trim) {
            Some("zstd") => {
                if m.is_set(Flag::GzipLevel)? {
                    return Err(does_nothing(
                        Flag::GzipLevel,
                        "the compression is zstd",
                        "or set BACKUP_COMPRESSION=gzip",
                    ));
                }
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                Compression::Zstd {
                    // Level 1 (the row's default): measured on dump data
                    // (bench/backup.sh), multi-threaded level 1 is both faster and no
                    // larger than level 3, and smaller than gzip -6.
                    level: m.number(Flag::ZstdLevel, 1, 19)?.unwrap_or(1),
                    threads: m.number(Flag::ZstdThreads, 0, 256)?.unwrap_or(cores),
                }
            }
            Some("gzip") => {
                for k in [Flag::ZstdLevel, Flag::ZstdThreads] {
                    if m.is_set(k)? {
                        return Err(does_nothing(
                            k,
                            "BACKUP_COMPRESSION is gzip",
                            "or set BACKUP_COMPRESSION=zstd",
                        ));
                    }
                }
                Compression::Gzip {
                    level: m.number(Flag::GzipLevel, 1, 9)?.unwrap_or(6),
                }
            }
            other => {
                return Err(invalid(format!(
                    "BACKUP_COMPRESSION={:?}: use zstd (the default) or gzip",
                    other.unwrap_or_default()
                )))
            }
        },
    )
}

/// `BACKUP_AGE_RECIPIENT`: the age public keys, each checked.
fn recipients(m: &Source) -> Result<Vec<String>, ConfigError> {
    let recipients: Vec<String> = match m.explicit(Flag::AgeRecipient)? {
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
    Ok(recipients)
}

/// `BACKUP_PING_URL`: an http(s) URL, without its trailing slash.
fn ping_url(m: &Source) -> Result<Option<String>, ConfigError> {
    Ok(match m.explicit(Flag::PingUrl)? {
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
    })
}

/// The WAL-only settings, refused while `BACKUP_WAL` is off (they would do nothing);
/// `backup wal drop-slot` still names the slot of a sidecar that streams no more.
fn refuse_wal_settings_unless(m: &Source, wal: bool) -> Result<(), ConfigError> {
    if !wal {
        // `backup wal drop-slot` names the slot of a sidecar that streams no more.
        let dropping = m
            .words_utf8("")
            .ok()
            .is_some_and(|w| w.first().map(String::as_str) == Some("wal"));
        for k in WAL_SETTINGS {
            // (`BACKUP_BASE_SCHEDULE=off` spells out the default: it asks for nothing)
            let off = k == Flag::BaseSchedule && m.string(k)?.is_some_and(|v| v.trim() == "off");
            if m.is_set(k)? && !(dropping && k == Flag::WalSlot) && !off {
                return Err(does_nothing(
                    k,
                    "BACKUP_WAL is off (base backups recover only with the WAL streamed beside them)",
                    "or set BACKUP_WAL=on",
                ));
            }
        }
    }
    Ok(())
}

/// `BACKUP_BASE_SCHEDULE`: a schedule in `BACKUP_SCHEDULE`'s form, or `off`.
fn base_schedule(m: &Source) -> Result<Option<String>, ConfigError> {
    Ok(match m.string(Flag::BaseSchedule)? {
        Some(v) if v.trim() != "off" => {
            super::schedule::parse_schedule(&v).map_err(|e| {
                e.map_message(|msg| msg.replacen("BACKUP_SCHEDULE=", "BACKUP_BASE_SCHEDULE=", 1))
            })?;
            Some(v)
        }
        _ => None,
    })
}

/// The S3 settings when a bucket is set; without one, any other S3 setting is refused
/// (it would do nothing).
fn s3_or_none(m: &Source) -> Result<Option<S3Settings>, ConfigError> {
    match m.explicit(Flag::S3Bucket)? {
        None => {
            for k in S3_SETTINGS {
                if m.is_set(k)? {
                    return Err(does_nothing(
                        k,
                        "no bucket is set",
                        "or set BACKUP_S3_BUCKET (--s3-bucket)",
                    ));
                }
            }
            Ok(None)
        }
        Some(bucket) => Ok(Some(s3_settings(m, bucket)?)),
    }
}

/// A duration setting (`30s`, `5m`...), named by its variable when it does not parse.
fn duration(m: &Source, k: Flag) -> Result<Duration, ConfigError> {
    let v = m.string(k)?.unwrap_or_default();
    crate::duration::parse(&v).map_err(|e| invalid(format!("{}: {e}", k.row().env)))
}

/// `BACKUP_WAL_RPO`: a duration of 1s or more.
fn wal_rpo(m: &Source) -> Result<Duration, ConfigError> {
    let rpo = duration(m, Flag::WalRpo)?;
    if rpo.is_zero() {
        return Err(invalid(
            "BACKUP_WAL_RPO=0: use a duration of 1s or more, e.g. 60s",
        ));
    }
    Ok(rpo)
}

/// `BACKUP_WAL_MAX_LAG`: a size above zero.
fn wal_max_lag(m: &Source) -> Result<u64, ConfigError> {
    let v = m.string(Flag::WalMaxLag)?.unwrap_or_default();
    let n = parse_size(&v).filter(|n| *n > 0).ok_or_else(|| {
        invalid(format!(
            "BACKUP_WAL_MAX_LAG={v:?}: use a size such as 1GiB or 512MiB"
        ))
    })?;
    Ok(n as u64)
}

/// `BACKUP_SCHEDULE` and `TZ`, checked here so `backup now` also reports a broken
/// schedule.
fn schedule_and_timezone(m: &Source) -> Result<(String, String), ConfigError> {
    let schedule = m.string(Flag::Schedule)?.unwrap_or_default();
    let timezone = m.string(Flag::Tz)?.unwrap_or_default();
    super::schedule::parse_schedule(&schedule)?;
    super::schedule::parse_timezone(&timezone)?;
    Ok((schedule, timezone))
}

/// `BACKUP_DIR`, when set: a folder name, not white space.
fn backup_dir(m: &Source) -> Result<Option<PathBuf>, ConfigError> {
    match m.explicit(Flag::Dir)? {
        Some(d) if d.trim().is_empty() => Err(invalid(format!(
            "BACKUP_DIR={d:?} is only white space: give the backup folder, e.g. /backups (or unset it to keep backups in S3 only)"
        ))),
        d => Ok(d.map(PathBuf::from)),
    }
}

impl Settings {
    /// Reads every setting from `m` (see [`Source`]), in the order their errors are
    /// reported.
    pub fn load(m: &Source) -> Result<Settings, ConfigError> {
        let url = database_url(m)?;
        let databases = databases(m)?;
        let compression = compression(m)?;
        let recipients = recipients(m)?;
        let s3 = s3_or_none(m)?;
        let ping_url = ping_url(m)?;
        let wal = boolean(m, Flag::Wal)?;
        refuse_wal_settings_unless(m, wal)?;
        let wal_rpo = wal_rpo(m)?;
        let base_schedule = base_schedule(m)?;
        let wal_slot = m.string(Flag::WalSlot)?.unwrap_or_default();
        super::walname::check_slot_name(&wal_slot)?;
        let wal_max_lag = wal_max_lag(m)?;
        let (schedule, timezone) = schedule_and_timezone(m)?;
        Ok(Settings {
            url,
            databases,
            globals: boolean(m, Flag::Globals)?,
            dir: backup_dir(m)?,
            s3,
            compression,
            recipients,
            retention: policy(m)?,
            status_file: m.explicit(Flag::StatusFile)?.map(PathBuf::from),
            ping_url,
            metrics_file: m.explicit(Flag::MetricsFile)?.map(PathBuf::from),
            verify: boolean(m, Flag::Verify)?,
            count_rows: boolean(m, Flag::CountRows)?,
            schedule,
            timezone,
            on_start: boolean(m, Flag::OnStart)?,
            stop_grace: duration(m, Flag::StopGrace)?,
            wait_timeout: duration(m, Flag::WaitTimeout)?,
            // 5 minutes by default: an ordinary migration's ALTER finishes well within
            // it, while a transaction left open holding ACCESS EXCLUSIVE fails the run
            // (which is retried and reported with the blocker's name) instead of
            // stalling it silently until the next night.
            lock_wait_timeout: duration(m, Flag::LockWaitTimeout)?,
            retry_delay: duration(m, Flag::RetryDelay)?,
            wal,
            wal_slot,
            wal_spool: m.explicit(Flag::WalSpool)?.map(PathBuf::from),
            wal_max_lag,
            wal_rpo,
            base_schedule,
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

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(&Matches::from_vars(pairs))
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
        // every default is its row's: nothing set reads each row's default
        let s = load(&[]).unwrap();
        assert_eq!(s.stop_grace, Duration::from_secs(8));
        assert_eq!(s.lock_wait_timeout, Duration::from_secs(300));
        assert_eq!(s.wal_slot, "dockhand");
        assert_eq!(s.wal_max_lag, 1 << 30);
        assert_eq!(s.timezone, "UTC");
        assert!(s.count_rows && !s.verify && !s.wal);
        assert_eq!(s.wal_rpo, Duration::from_secs(60));
        assert_eq!(s.base_schedule, None);
        let s = load(&[("DATABASE_URL", "postgres://u:p@h/db")]).unwrap();
        assert_eq!(s.url.unwrap().path, "/db");
        let e = load(&[("DATABASE_URL", "postgres://u:p@h:x/db")]).unwrap_err();
        assert!(e.message().starts_with("DATABASE_URL: "), "{e}");
    }

    #[test]
    fn count_rows_takes_a_boolean_and_names_itself_otherwise() {
        assert!(!load(&[("BACKUP_COUNT_ROWS", "false")]).unwrap().count_rows);
        let e = load(&[("BACKUP_COUNT_ROWS", "maybe")]).unwrap_err();
        assert!(e.message().contains("BACKUP_COUNT_ROWS"), "{e}");
    }

    #[test]
    fn the_base_schedule_spelled_off_is_no_wal_setting() {
        assert!(load(&[("BACKUP_BASE_SCHEDULE", "off")]).is_ok());
        let e = load(&[("BACKUP_BASE_SCHEDULE", "@daily")]).unwrap_err();
        assert!(e.message().contains("BACKUP_WAL is off"), "{e}");
    }

    #[test]
    fn a_region_from_the_aws_tools_is_not_an_s3_setting_without_a_bucket() {
        let s = load(&[("AWS_REGION", "eu-west-1")]).unwrap();
        assert!(s.s3.is_none());
        let s = load(&[("AWS_REGION", "eu-west-1"), ("BACKUP_S3_BUCKET", "b")]).unwrap();
        assert_eq!(s.s3.unwrap().region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn s3_settings_are_read_and_checked() {
        let s3 = |pairs: &[(&str, &str)]| {
            let mut all = vec![("BACKUP_S3_BUCKET", " my-backups ")];
            all.extend_from_slice(pairs);
            load(&all).map(|s| s.s3.expect("a bucket is set"))
        };
        // the defaults: AWS itself (virtual-host style), no prefix, 8 MiB parts
        let d = s3(&[]).unwrap();
        assert_eq!(d.bucket, "my-backups");
        assert_eq!(d.prefix, "");
        assert!(!d.path_style && d.endpoint.is_none() && d.region.is_none());
        assert_eq!(d.sse, None);
        assert_eq!(d.part_size, 8 << 20);
        // a prefix always ends in one slash; a bucket is a name, not a path
        assert_eq!(s3(&[("BACKUP_S3_PREFIX", "db")]).unwrap().prefix, "db/");
        assert_eq!(s3(&[("BACKUP_S3_PREFIX", "//")]).unwrap().prefix, "");
        for bad in ["b/prod", "my backups"] {
            let e = load(&[("BACKUP_S3_BUCKET", bad)]).unwrap_err();
            assert!(e.message().contains("BACKUP_S3_PREFIX"), "{bad}: {e}");
        }
        // a custom endpoint: path style unless told otherwise; http(s) only
        let e = s3(&[
            ("BACKUP_S3_ENDPOINT", "https://s3.example.com"),
            ("BACKUP_S3_PATH_STYLE", "false"),
        ])
        .unwrap();
        assert!(!e.path_style);
        let e = s3(&[("BACKUP_S3_ENDPOINT", "ftp://s3.example.com")]).unwrap_err();
        assert!(e.message().contains("https://host[:port]"), "{e}");
        // the bucket's own region wins over the AWS tools' one
        let r = s3(&[
            ("BACKUP_S3_REGION", "eu-west-3"),
            ("AWS_REGION", "us-west-2"),
        ]);
        assert_eq!(r.unwrap().region.as_deref(), Some("eu-west-3"));
        // server-side encryption: the two values S3 knows, and a key only for KMS
        let k = s3(&[
            ("BACKUP_S3_SSE", "aws:kms"),
            ("BACKUP_S3_SSE_KMS_KEY_ID", "key-1"),
        ])
        .unwrap();
        assert_eq!(
            (k.sse.as_deref(), k.sse_kms_key_id.as_deref()),
            (Some("aws:kms"), Some("key-1"))
        );
        assert_eq!(
            s3(&[("BACKUP_S3_SSE", " AES256 ")]).unwrap().sse.as_deref(),
            Some("AES256")
        );
        let e = s3(&[("BACKUP_S3_SSE", "aes256")]).unwrap_err();
        assert!(e.message().contains("AES256 or aws:kms"), "{e}");
        // parts from 5 MiB to 5 GiB, the limits S3 sets
        assert_eq!(
            s3(&[("BACKUP_S3_PART_SIZE", "5MiB")]).unwrap().part_size,
            5 << 20
        );
        assert_eq!(
            s3(&[("BACKUP_S3_PART_SIZE", "5GiB")]).unwrap().part_size,
            5 << 30
        );
        for bad in ["6GiB", "4MiB", "lots"] {
            let e = s3(&[("BACKUP_S3_PART_SIZE", bad)]).unwrap_err();
            assert!(e.message().contains("5MiB to 5GiB"), "{bad}: {e}");
        }
    }

    /// One table of refused settings, read top to bottom: over 80 lines, and better
    /// as one straight list than cut into pieces.
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
            (
                &[("BACKUP_WAL_SLOT", "mine")][..],
                "BACKUP_WAL_SLOT",
                "BACKUP_WAL is off",
            ),
            (
                &[("BACKUP_WAL", "off"), ("BACKUP_WAL_RPO", "5s")][..],
                "BACKUP_WAL_RPO",
                "BACKUP_WAL=on",
            ),
            (
                &[("BACKUP_BASE_SCHEDULE", "@daily")][..],
                "BACKUP_BASE_SCHEDULE",
                "BACKUP_WAL is off",
            ),
            (
                &[("BACKUP_WAL", "on"), ("BACKUP_WAL_RPO", "0")][..],
                "BACKUP_WAL_RPO",
                "1s or more",
            ),
            (
                &[("BACKUP_WAL", "on"), ("BACKUP_BASE_SCHEDULE", "61 * * * *")][..],
                "BACKUP_BASE_SCHEDULE=",
                "crontab",
            ),
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
