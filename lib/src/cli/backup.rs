//! `backup`'s table, its commands, and what each command does (the binary's `exec`).

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::{parse_with, Matches, Parsed, Setting};
use crate::backup::catalog::{self, Side};
use crate::backup::daemon::{self, OnSignal, Stop};
use crate::backup::drill::{self, DaemonDrills, DrillRequest};
use crate::backup::restore::{self, Request};
use crate::backup::run::Runner;
use crate::backup::settings::Settings;
use crate::backup::{codec, err, usage, BackupError, BackupKind, Cancel};
use crate::config::{invalid, ConfigError};

/// The commands, in the order help and errors list them.
const COMMANDS: [&str; 9] = [
    "daemon", "now", "base", "list", "verify", "restore", "prune", "drill", "recover",
];
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

/// Every flag and variable of `backup`. Secrets (database URLs, the age identity, AWS
/// keys) are variables only: the command line is visible in `ps`.
pub static TABLE: &[Setting] = &[
    Setting::words(
        "`daemon` (default), `now`, `base`, `list`, `verify`, `restore`, `prune`, `drill`, `recover`",
        "the command",
    ),
    setting("dir", "DIR", "BACKUP_DIR", "the local backup folder"),
    setting("s3-bucket", "NAME", "BACKUP_S3_BUCKET", "the bucket (a name, no slashes)"),
    setting("s3-prefix", "PREFIX", "BACKUP_S3_PREFIX", "key prefix, e.g. `prod/app`"),
    setting(
        "s3-endpoint",
        "URL",
        "BACKUP_S3_ENDPOINT",
        "a compatible server: `https://...` for MinIO, R2, Hetzner, B2",
    )
    .default_shown("AWS"),
    setting("s3-path-style", "BOOL", "BACKUP_S3_PATH_STYLE", "path-style addressing")
        .default_shown("on with an endpoint"),
    setting("s3-region", "REGION", "BACKUP_S3_REGION", "the region (else `AWS_REGION`)")
        .default_shown("`us-east-1` with an endpoint"),
    setting(
        "s3-storage-class",
        "CLASS",
        "BACKUP_S3_STORAGE_CLASS",
        "e.g. `STANDARD_IA`, `GLACIER_IR`",
    )
    .commands(RUN),
    setting(
        "s3-sse",
        "MODE",
        "BACKUP_S3_SSE",
        "server-side encryption: `AES256` or `aws:kms`",
    )
    .commands(RUN),
    setting(
        "s3-sse-kms-key-id",
        "ID",
        "BACKUP_S3_SSE_KMS_KEY_ID",
        "the KMS key for `aws:kms`",
    )
    .commands(RUN),
    setting(
        "s3-part-size",
        "SIZE",
        "BACKUP_S3_PART_SIZE",
        "multipart part size, 5MiB–5GiB (10,000 parts at most)",
    )
    .default("8MiB")
    .commands(RUN),
    Setting::var(
        "AWS_ACCESS_KEY_ID",
        "the standard AWS credential chain",
    )
    .env_shown("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ..."),
    Setting::var("DIRECT_URL", "the database (PostgreSQL itself, not PgBouncer)")
        .env_shown("`DIRECT_URL`, `DATABASE_URL`"),
    setting("databases", "LIST", "BACKUP_DATABASES", "a list, or `all`")
        .default_shown("the URL's")
        .commands(RUN),
    setting(
        "globals",
        "BOOL",
        "BACKUP_GLOBALS",
        "also roles and tablespaces (superuser)",
    )
    .default("false")
    .commands(RUN),
    setting("compression", "C", "BACKUP_COMPRESSION", "`zstd` or `gzip`")
        .default("zstd")
        .commands(RUN),
    setting(
        "zstd-level",
        "N",
        "BACKUP_ZSTD_LEVEL",
        "zstd level, 1–19 (on dump data level 1 was faster than 3 and no larger: bench/RESULTS.md)",
    )
    .default("1")
    .commands(RUN),
    setting("zstd-threads", "N", "BACKUP_ZSTD_THREADS", "zstd workers (0: none)")
        .default_shown("cores")
        .commands(RUN),
    setting("gzip-level", "N", "BACKUP_GZIP_LEVEL", "gzip level, 1–9")
        .default("6")
        .commands(RUN),
    setting(
        "age-recipient",
        "KEY",
        "BACKUP_AGE_RECIPIENT",
        "age public key(s) `age1...`, comma-separated",
    )
    .commands(RUN),
    Setting::var(
        "BACKUP_AGE_IDENTITY",
        "the age secret key, for `verify`/`restore`/`drill` (and the daemon's drills) of encrypted backups only (usually `_FILE`)",
    ),
    setting(
        "schedule",
        "CRON",
        "BACKUP_SCHEDULE",
        "5 crontab fields (weekday 0/7 = Sunday), 6 with seconds first, or `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`; a line restricting both day of month and weekday matches days that satisfy both (classic cron: either)",
    )
    .default("@daily")
    .commands(SCHEDULE),
    setting("tz", "ZONE", "TZ", "the schedule's time zone (IANA name)")
        .default("UTC")
        .commands(SCHEDULE),
    setting("on-start", "BOOL", "BACKUP_ON_START", "one run when the daemon starts")
        .default("false")
        .commands(SCHEDULE),
    setting(
        "stop-grace",
        "DURATION",
        "BACKUP_STOP_GRACE",
        "how long a running backup may finish after SIGTERM",
    )
    .default("8s")
    .commands(SCHEDULE),
    setting(
        "wait-timeout",
        "DURATION",
        "BACKUP_WAIT_TIMEOUT",
        "the daemon: how long to wait for PostgreSQL before a run",
    )
    .default("60s")
    .commands(SCHEDULE),
    setting(
        "retry-delay",
        "DURATION",
        "BACKUP_RETRY_DELAY",
        "the daemon: first retry after a failed run (doubles up to 15m; `0`: no retries)",
    )
    .default("30s")
    .commands(SCHEDULE),
    setting(
        "retention-days",
        "N",
        "BACKUP_RETENTION_DAYS",
        "keep backups younger than N days",
    )
    .commands(RETENTION),
    setting("keep-last", "N", "BACKUP_KEEP_LAST", "keep the newest N").commands(RETENTION),
    setting(
        "keep-daily",
        "N",
        "BACKUP_KEEP_DAILY",
        "keep the newest of each of the last N days",
    )
    .commands(RETENTION),
    setting(
        "keep-weekly",
        "N",
        "BACKUP_KEEP_WEEKLY",
        "keep the newest of each of the last N ISO weeks",
    )
    .commands(RETENTION),
    setting(
        "keep-monthly",
        "N",
        "BACKUP_KEEP_MONTHLY",
        "keep the newest of each of the last N months",
    )
    .commands(RETENTION),
    setting(
        "lock-wait-timeout",
        "DURATION",
        "BACKUP_LOCK_WAIT_TIMEOUT",
        "how long pg_dump waits for a table lock (behind a migration's `ALTER TABLE`, an open transaction) before the run fails, naming the blocker; long enough for an ordinary migration, short enough that a stuck transaction is reported (and the run retried) the same night; `0`: no limit",
    )
    .default("5m")
    .commands(RUN),
    setting(
        "verify",
        "BOOL",
        "BACKUP_VERIFY",
        "verify each new backup (full read) right after the run",
    )
    .default("false")
    .commands(RUN),
    setting("status-file", "FILE", "BACKUP_STATUS_FILE", "the status JSON").commands(RUN),
    setting(
        "ping-url",
        "URL",
        "BACKUP_PING_URL",
        "pinged at `/start`, on success, at `/fail`",
    )
    .commands(RUN),
    setting(
        "metrics-file",
        "FILE",
        "BACKUP_METRICS_FILE",
        "Prometheus metrics, text format",
    )
    .commands(RUN),
    setting(
        "wal",
        "BOOL",
        "BACKUP_WAL",
        "point-in-time recovery: stream WAL with `pg_receivewal` on a replication slot, each completed segment stored like a backup (needs a role with REPLICATION and a `replication` line in `pg_hba.conf`)",
    )
    .default("false")
    .commands(SCHEDULE),
    setting(
        "wal-slot",
        "NAME",
        "BACKUP_WAL_SLOT",
        "the physical replication slot the WAL is streamed on (created if missing; it keeps WAL on the server until received)",
    )
    .default("dockhand")
    .commands(SCHEDULE),
    setting(
        "wal-spool",
        "DIR",
        "BACKUP_WAL_SPOOL",
        "where received WAL waits until stored everywhere (a volume)",
    )
    .default_shown("`BACKUP_DIR/.wal-spool`")
    .commands(SCHEDULE),
    setting(
        "wal-max-lag",
        "SIZE",
        "BACKUP_WAL_MAX_LAG",
        "warn when the slot holds more WAL than this on the server (the sidecar is behind, and the server's disk fills)",
    )
    .default("1GiB")
    .commands(SCHEDULE),
    Setting::var(
        "BACKUP_PG_BIN",
        "directory holding `pg_dump`, `pg_restore`, `pg_dumpall`, `psql`",
    ),
    Setting::switch("remote", "`list`: also the backups in S3").commands(&["list"]),
    Setting::value(
        "from",
        "local\\|s3",
        "`verify`, `restore`, `drill`, `recover`: which copy to read",
    )
    .default_shown("the local copy if any")
    .commands(&["verify", "restore", "drill", "recover"]),
    Setting::value(
        "to-time",
        "TIME\\|latest",
        "`recover`: the moment to recover to (RFC 3339 with its offset, `2026-12-07T16:05:00Z`), or the end of the stored WAL",
    )
    .commands(&["recover"]),
    Setting::value(
        "data-dir",
        "DIR",
        "`recover`: the empty data directory (a new volume) PostgreSQL then starts on",
    )
    .commands(&["recover"]),
    Setting::value("to", "URL", "`restore`: the target database")
        .default_shown("a new database")
        .commands(&["restore"]),
    Setting::switch(
        "clean",
        "`restore`: drop the backup's objects in a non-empty target first",
    )
    .commands(&["restore"]),
    Setting::switch("yes", "`restore`: confirm `--clean` without asking")
        .short('y')
        .commands(&["restore"]),
    Setting::switch("no-owner", "`restore`: skip ownership and privileges")
        .commands(&["restore"]),
    setting(
        "jobs",
        "N",
        "BACKUP_RESTORE_JOBS",
        "`restore`: parallel `pg_restore` jobs into a database it creates (the backup is decoded into a file in `BACKUP_TMP_DIR` first); 1 streams it",
    )
    .default_shown("the CPUs, at most 8")
    .commands(&["restore", "drill"]),
    Setting::var(
        "BACKUP_TMP_DIR",
        "`restore --jobs`: where the decoded backup is written (mode 0600, removed after)",
    )
    .default_shown("`TMPDIR`, else `/tmp`"),
    setting(
        "into",
        "URL",
        "BACKUP_DRILL_URL",
        "`drill` and the daemon's drills: the server of the scratch database (a throwaway PostgreSQL, so production is not loaded)",
    )
    .default_shown("the backup URL's server")
    .commands(&["drill"]),
    Setting::switch(
        "keep",
        "`drill`: keep the scratch database and print its name",
    )
    .commands(&["drill"]),
    Setting::var(
        "BACKUP_DRILL_SQL",
        "`drill` and the daemon's drills: a file of queries that must each return true on the restored copy (`;` ends one; else one a line)",
    ),
    Setting::var(
        "BACKUP_DRILL",
        "the daemon's drills: `off`, `after-backup` (every new backup), or a cron expression (the latest then)",
    )
    .default("off"),
    Setting::switch("dry-run", "`prune`: print, delete nothing")
        .short('n')
        .commands(&["prune"]),
    Setting::var(
        "RUST_LOG",
        "logging (stderr), `json` for one object per line",
    )
    .env_shown("`RUST_LOG`, `LOG_FORMAT`")
    .default_shown("`info`, `text`"),
    Setting::help(),
];

const INTRO: &str = "\
backup: scheduled, streamed pg_dump backups to a folder and S3-compatible storage,
compressed, optionally encrypted, checksummed, with retention, verify and restore.

Usage: backup [daemon]                 run on BACKUP_SCHEDULE until stopped
       backup now                      one run now; the exit status says if it succeeded
       backup base                     a base backup of the cluster (pg_basebackup) for
                                       point-in-time recovery
       backup list [--remote]          the backups (folder; with --remote also S3)
       backup verify NAME|latest       checksum and a full read by pg_restore
       backup restore NAME|latest      into a new database <db>_restore_<time>
              [--to URL] [--from local|s3] [--clean] [--yes] [--no-owner] [--jobs N]
       backup prune [--dry-run]        apply retention now, print what goes
       backup drill NAME|latest        restore into a scratch database, compare every
              [--into URL] [--from local|s3] [--keep] [--jobs N]
                                       table's rows with the backup's, drop it
       backup recover --to-time TIME|latest --data-dir DIR [--from local|s3]
                                       point-in-time recovery into an empty data directory

Options (flag, else environment variable; any variable may be given as NAME_FILE;
each command takes only the flags that mean something to it):
";

const OUTRO: &str = "
Exit status: 0 success, 1 the run/verify/restore/drill failed, 2 invalid arguments or
settings, 128+N stopped by signal N (now, verify, restore, drill).
";

/// `--help`.
pub fn help() -> String {
    super::help(INTRO, TABLE, OUTRO)
}

/// A command with the flags of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Daemon,
    Now,
    /// A base backup of the cluster for point-in-time recovery.
    Base,
    List {
        remote: bool,
    },
    Verify {
        name: String,
        from: Option<Side>,
    },
    Restore {
        name: String,
        from: Option<Side>,
        to: Option<String>,
        clean: bool,
        yes: bool,
        no_owner: bool,
        jobs: usize,
    },
    Prune {
        dry_run: bool,
    },
    Drill {
        name: String,
        from: Option<Side>,
        into: Option<String>,
        keep: bool,
        jobs: usize,
    },
    /// Point-in-time recovery into an empty data directory.
    Recover {
        to: crate::backup::recover::Target,
        data_dir: std::path::PathBuf,
        from: Option<Side>,
    },
}

/// Parses the arguments (without the program name): the command, its name argument,
/// and its flags (a flag another command takes is refused, naming that command).
/// With the command come the matches: the settings are read from them by [`exec`].
pub fn command(
    args: impl IntoIterator<Item = OsString>,
) -> Result<Parsed<(Command, Matches)>, ConfigError> {
    parse_with(TABLE, args, false, command_from)
}

fn command_from(m: Matches) -> Result<(Command, Matches), ConfigError> {
    let words = m.words_utf8("arguments must be UTF-8")?;
    let name = COMMANDS
        .iter()
        .find(|c| Some(**c) == words.first().map(String::as_str))
        .copied();
    let name = match (name, words.first()) {
        (Some(n), _) => n,
        (None, None) => "daemon",
        (None, Some(other)) => {
            return Err(invalid(format!(
                "unknown command {other:?}: use daemon, now, base, list, verify, restore, prune, drill or recover"
            )))
        }
    };
    let needs_name = matches!(name, "verify" | "restore" | "drill");
    match (words.get(1), words.get(2)) {
        (_, Some(extra)) => return Err(invalid(format!("unexpected argument {extra:?}"))),
        (Some(extra), None) if !needs_name => {
            return Err(invalid(format!("unexpected argument {extra:?}")))
        }
        (None, _) if needs_name => {
            return Err(invalid(format!(
                "backup {name} needs a backup name or `latest`"
            )))
        }
        _ => {}
    }
    for s in m.given() {
        if !s.commands.is_empty() && !s.commands.contains(&name) {
            return Err(invalid(format!(
                "backup {name} does not take --{} (it is for: {})",
                s.long,
                s.commands.join(", ")
            )));
        }
    }
    let from = match m.string("from")?.as_deref() {
        None => None,
        Some("local") => Some(Side::Local),
        Some("s3") => Some(Side::S3),
        Some(other) => return Err(invalid(format!("--from {other:?}: use local or s3"))),
    };
    let backup = words.get(1).cloned().unwrap_or_default();
    let command = match name {
        "daemon" => Command::Daemon,
        "now" => Command::Now,
        "base" => Command::Base,
        "list" => Command::List {
            remote: m.switch("remote")?,
        },
        "verify" => Command::Verify { name: backup, from },
        "restore" => Command::Restore {
            name: backup,
            from,
            to: m.string("to")?,
            clean: m.switch("clean")?,
            yes: m.switch("yes")?,
            no_owner: m.switch("no-owner")?,
            jobs: restore_jobs(m.string("jobs")?)?,
        },
        "drill" => Command::Drill {
            name: backup,
            from,
            into: m.string("into")?,
            keep: m.switch("keep")?,
            jobs: restore_jobs(m.string("jobs")?)?,
        },
        "recover" => Command::Recover {
            to: crate::backup::recover::parse_target(&m.string("to-time")?.ok_or_else(|| {
                invalid("backup recover needs --to-time TIME or --to-time latest")
            })?)?,
            data_dir: m
                .string("data-dir")?
                .ok_or_else(|| {
                    invalid("backup recover needs --data-dir DIR (an empty data directory)")
                })?
                .into(),
            from,
        },
        _ => Command::Prune {
            dry_run: m.switch("dry-run")?,
        },
    };
    Ok((command, m))
}

/// `--jobs`/`BACKUP_RESTORE_JOBS`: 1 to 64; by default the CPUs available, at most 8.
fn restore_jobs(v: Option<String>) -> Result<usize, ConfigError> {
    match v {
        None => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)),
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "--jobs/BACKUP_RESTORE_JOBS {s:?}: a number of parallel pg_restore jobs from 1 to 64"
                ))
            }),
    }
}

/// Why a command ended without success: the message (empty when already reported)
/// and the exit status.
#[derive(Debug)]
pub struct Failed {
    pub message: String,
    pub code: u8,
}

impl From<BackupError> for Failed {
    fn from(e: BackupError) -> Self {
        Failed {
            code: e.exit_code(),
            message: e.message().to_string(),
        }
    }
}

/// The exit status of a command stopped by a signal.
fn stopped(first_signal: &Mutex<Option<i32>>) -> Option<u8> {
    let sig = first_signal.lock().ok().and_then(|s| *s)?;
    Some((128 + sig).clamp(0, 255) as u8)
}

/// The age identities of `BACKUP_AGE_IDENTITY`, for reading encrypted backups.
fn identities() -> Result<Vec<age::x25519::Identity>, BackupError> {
    match crate::config::var("BACKUP_AGE_IDENTITY").map_err(usage)? {
        Some(text) => codec::parse_identities(&text).map_err(usage),
        None => Ok(Vec::new()),
    }
}

/// Asks at the terminal before a `--clean` restore; without a terminal, refuses.
fn confirm(database: &str) -> Result<bool, BackupError> {
    if !std::io::stdin().is_terminal() {
        return Err(err(format!(
            "database {database:?} is not empty and --clean would drop the backup's objects in it: pass --yes to confirm (no terminal to ask at)"
        )));
    }
    eprint!(
        "Restoring with --clean drops the objects of the backup in database {database:?} and replaces them.\nType the database name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| err(format!("reading the confirmation: {e}")))?;
    Ok(line.trim() == database)
}

/// `restore --to`: a PostgreSQL URL whose parameters are valid, else invalid usage
/// (exit 2), before any backup is read.
fn target_url(u: &str) -> Result<crate::url::Url, BackupError> {
    let url = crate::url::Url::parse(u)
        .map_err(|e| BackupError::new(BackupKind::Usage, format!("--to: {e}")).with_source(e))?;
    if url.scheme != "postgres" && url.scheme != "postgresql" {
        return Err(usage(invalid(format!(
            "--to {url}: expected a PostgreSQL URL, postgres://user:password@host:5432/database"
        ))));
    }
    crate::pg::PgTarget::from_url(&url)
        .map_err(|e| usage(invalid(format!("--to {url}: {}", e.message()))))?;
    Ok(url)
}

/// `drill --into`/`BACKUP_DRILL_URL`: checked as `--to` is, and named as itself.
fn drill_url(u: &str) -> Result<crate::url::Url, BackupError> {
    target_url(u).map_err(|e| e.map_message(|m| m.replacen("--to", "--into/BACKUP_DRILL_URL", 1)))
}

/// The daemon's drills from `BACKUP_DRILL`, `BACKUP_DRILL_URL`, `BACKUP_DRILL_SQL`,
/// `BACKUP_RESTORE_JOBS` and `BACKUP_TMP_DIR`, checked before the daemon starts.
fn daemon_drills(m: &Matches, settings: &Settings) -> Result<DaemonDrills, BackupError> {
    let when =
        DaemonDrills::when(m.by_env("BACKUP_DRILL").map_err(usage)?.as_deref()).map_err(usage)?;
    if matches!(when, drill::When::Off) {
        return Ok(DaemonDrills::default());
    }
    let into = match m.by_env("BACKUP_DRILL_URL").map_err(usage)? {
        Some(u) => Some(drill_url(&u)?),
        None => None,
    };
    let sql = crate::config::var("BACKUP_DRILL_SQL")
        .map_err(usage)?
        .map(std::path::PathBuf::from);
    if let Some(path) = &sql {
        std::fs::metadata(path).map_err(|e| {
            usage(invalid(format!(
                "BACKUP_DRILL_SQL {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            )))
        })?;
    }
    let identities = identities()?;
    if !settings.recipients.is_empty() && identities.is_empty() {
        return Err(usage(invalid(
            "BACKUP_DRILL: the backups are encrypted (BACKUP_AGE_RECIPIENT) and a drill must read them: set BACKUP_AGE_IDENTITY_FILE, or BACKUP_DRILL=off",
        )));
    }
    Ok(DaemonDrills {
        when,
        request: DrillRequest {
            name: "latest".into(),
            into,
            jobs: restore_jobs(m.string("jobs").map_err(usage)?).map_err(usage)?,
            tmp_dir: crate::config::var("BACKUP_TMP_DIR")
                .map_err(usage)?
                .map(std::path::PathBuf::from),
            sql,
            ..DrillRequest::default()
        },
        identities,
    })
}

/// Runs `command` with the settings of `m` (flags, else the environment); returns
/// the exit status.
pub fn exec(command: &Command, m: &Matches) -> Result<u8, Failed> {
    let settings = Settings::load(&|name| m.by_env(name)).map_err(usage)?;
    // run by hand: a person may watch the progress on a terminal (never the daemon)
    if !matches!(command, Command::Daemon) {
        crate::backup::progress::for_a_person();
    }
    match command {
        Command::Daemon | Command::Now | Command::Base | Command::Prune { .. } => {
            settings.require_destination().map_err(usage)?;
        }
        Command::Restore { to: Some(u), .. } => {
            target_url(u)?;
        }
        Command::Drill { into: Some(u), .. } => {
            drill_url(u)?;
        }
        Command::Drill { into: None, .. } => {
            settings.database_url().map_err(|_| {
                usage(invalid("no server to drill on: pass --into postgres://... or set BACKUP_DRILL_URL or DIRECT_URL (a scratch database is created there)"))
            })?;
        }
        Command::Restore { to: None, .. } => {
            settings.database_url().map_err(|_| {
                usage(invalid("no target: pass --to postgres://... or set DIRECT_URL (a new database is created on its server)"))
            })?;
        }
        _ => {}
    }
    if matches!(command, Command::Daemon | Command::Now | Command::Base) {
        settings.database_url().map_err(usage)?;
    }
    if matches!(
        command,
        Command::List { .. }
            | Command::Verify { .. }
            | Command::Restore { .. }
            | Command::Drill { .. }
            | Command::Recover { .. }
    ) && settings.dir.is_none()
        && settings.s3.is_none()
    {
        return Err(usage(invalid(
            "no backups to read: set BACKUP_DIR and/or BACKUP_S3_BUCKET",
        ))
        .into());
    }
    let (stop, cancel) = (Arc::new(Stop::default()), Arc::new(Cancel::new()));
    let mode = match command {
        Command::Daemon => OnSignal::StopAfter(settings.stop_grace),
        _ => OnSignal::CancelNow,
    };
    let first_signal = daemon::watch_signals(mode, stop.clone(), cancel.clone());
    let runner = Runner::new(settings, cancel.clone())?;
    let was_stopped = |message: &str| {
        stopped(&first_signal).map(|code| Failed {
            message: message.to_string(),
            code,
        })
    };
    match command {
        Command::Daemon => {
            let drills = daemon_drills(m, &runner.settings)?;
            if runner.settings.wal {
                crate::backup::wal::spool_of(&runner)?;
            }
            std::thread::scope(|sc| {
                if runner.settings.wal {
                    sc.spawn(|| crate::backup::wal::stream(&runner, &stop));
                }
                let r = daemon::run_drilling(&runner, &stop, &drills);
                // The WAL streaming ends with the daemon, whatever ended it.
                stop.request();
                Ok(r?.clamp(0, 255) as u8)
            })
        }
        Command::Now => {
            let r = runner.run();
            if let Some(f) = was_stopped(&r.failures.join("; ")) {
                return Err(f);
            }
            if r.failures.is_empty() {
                Ok(0)
            } else {
                Err(err(format!("backup failed: {}", r.failures.join("; "))).into())
            }
        }
        Command::Base => {
            let made = runner.base();
            if let Some(f) = was_stopped("base backup stopped") {
                return Err(f);
            }
            let o = made?;
            let wal = o.manifest.wal.as_ref();
            info!(
                "base backup {}: {} read, {} stored in {}; WAL {} to {} on timeline {}",
                o.manifest.name,
                catalog::human_size(o.manifest.dump_bytes),
                catalog::human_size(o.manifest.size),
                o.stored.join(" and "),
                wal.map_or("?", |w| &w.start),
                wal.map_or("?", |w| &w.end),
                wal.map_or(0, |w| w.timeline)
            );
            for e in &o.errors {
                tracing::warn!("{e} (the copy in {} is kept)", o.stored.join(" and "));
            }
            println!("{}", o.manifest.name);
            if o.errors.is_empty() {
                Ok(0)
            } else {
                Err(err(format!("base backup incomplete: {}", o.errors.join("; "))).into())
            }
        }
        Command::Recover { to, data_dir, from } => {
            let ids = identities()?;
            let backups = runner.backups_for_reading(*from)?;
            let done = crate::backup::recover::recover(
                &runner.reading(&ids),
                &backups,
                *from,
                to,
                data_dir,
                &cancel,
            );
            if let Some(f) = was_stopped("recover stopped") {
                return Err(f);
            }
            let r = done.map_err(|e| e.context("recover failed"))?;
            info!(
                "{} ready: base backup {} and {} WAL files; start PostgreSQL on it to recover{}",
                data_dir.display(),
                r.base,
                r.wal_files,
                match to {
                    crate::backup::recover::Target::Latest =>
                        " to the end of the stored WAL".to_string(),
                    crate::backup::recover::Target::Time(..) => " to the time given".to_string(),
                }
            );
            Ok(0)
        }
        Command::List { remote } => {
            let table = catalog::table(&runner.backups(*remote)?);
            Ok(crate::output::stdout(&table).exit_code("backup"))
        }
        Command::Prune { dry_run } => {
            let decisions = runner.prune(*dry_run)?;
            if runner.settings.retention.is_empty() {
                info!("no retention rule is set (BACKUP_RETENTION_DAYS, BACKUP_KEEP_*): everything is kept");
            }
            let mut out = String::new();
            for (d, b) in decisions {
                let verb = match (d.keep, dry_run) {
                    (true, _) => "keep",
                    (false, true) => "would delete",
                    (false, false) => "deleted",
                };
                out.push_str(&format!("{verb:<13} {:<40} {}\n", b.manifest.name, d.why));
            }
            Ok(crate::output::stdout(&out).exit_code("backup"))
        }
        Command::Verify { name, from } => {
            let verified = runner.verify(name, *from, &identities()?);
            if let Some(f) = was_stopped("verify stopped") {
                return Err(f);
            }
            let m = verified.map_err(|e| e.context("verify failed"))?;
            info!("{}: checksum and full read ok", m.file);
            Ok(0)
        }
        Command::Drill {
            name,
            from,
            into,
            keep,
            jobs,
        } => {
            let ids = identities()?;
            let into = match into {
                Some(u) => Some(drill_url(u)?),
                None => None,
            };
            let backups = runner.backups_for_reading(*from)?;
            let req = DrillRequest {
                name: name.clone(),
                from: *from,
                into,
                keep: *keep,
                jobs: *jobs,
                tmp_dir: crate::config::var("BACKUP_TMP_DIR")
                    .map_err(usage)?
                    .map(std::path::PathBuf::from),
                sql: crate::config::var("BACKUP_DRILL_SQL")
                    .map_err(usage)?
                    .map(std::path::PathBuf::from),
            };
            let done = drill::drill(
                &runner.reading(&ids),
                &backups,
                &req,
                runner.settings.url.as_ref(),
                &cancel,
            );
            if let Some(f) = was_stopped("drill stopped; the scratch database was dropped") {
                return Err(f);
            }
            let o = done.map_err(|e| e.context("drill failed"))?;
            // a drill of the latest backup is the sidecar's health, as the daemon's are
            if name == "latest" {
                drill::record(&runner.settings, &o.backup, &o.drill);
            }
            if o.kept {
                if let crate::output::Written::Failed(e) =
                    crate::output::stdout(&format!("{}\n", o.database))
                {
                    warn!(
                        "cannot write the kept database's name ({:?}) to stdout: {}",
                        o.database,
                        crate::error::io_reason(&e)
                    );
                }
            }
            if o.drill.ok {
                info!(
                    "drill of {} passed: restored in {:.1} s, every table's rows as in the backup{}",
                    o.backup,
                    o.drill.seconds,
                    if o.kept { format!(", kept as database {:?}", o.database) } else { String::new() }
                );
                Ok(0)
            } else {
                Err(err(format!(
                    "drill of {} failed: {}",
                    o.backup,
                    o.drill.problems.join("; ")
                ))
                .into())
            }
        }
        Command::Restore {
            name,
            from,
            to,
            clean,
            yes,
            no_owner,
            jobs,
        } => {
            let ids = identities()?;
            let to = match to {
                Some(u) => Some(target_url(u)?),
                None => None,
            };
            let backups = runner.backups_for_reading(*from)?;
            if let Some(w) = catalog::drill_warning(&backups, name) {
                tracing::warn!("{w}");
            }
            let req = Request {
                name: name.clone(),
                from: *from,
                to,
                clean: *clean,
                yes: *yes,
                no_owner: *no_owner,
                jobs: *jobs,
                tmp_dir: crate::config::var("BACKUP_TMP_DIR")
                    .map_err(usage)?
                    .map(std::path::PathBuf::from),
                drill: false,
            };
            let done = restore::restore(
                &runner.reading(&ids),
                &backups,
                &req,
                runner.settings.url.as_ref(),
                &cancel,
                &confirm,
            );
            if let Some(f) = was_stopped("restore stopped; the target was left as it was") {
                return Err(f);
            }
            let r = done.map_err(|e| e.context("restore failed"))?;
            let globals = r.globals_lines();
            if r.globals {
                info!(
                    "restored the globals {} into the cluster of database {:?}: {}",
                    r.backup,
                    r.database,
                    globals.join("; ")
                );
                let out: String = globals.iter().map(|l| format!("{l}\n")).collect();
                return Ok(crate::output::stdout(&out).exit_code("backup"));
            }
            info!(
                "restored {} into {}database {:?}: tables {}, rows {}, in {:.1} s",
                r.backup,
                if r.created { "the new " } else { "" },
                r.database,
                r.tables,
                r.rows,
                r.seconds
            );
            Ok(crate::output::stdout(&format!("{}\n", r.database)).exit_code("backup"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_defaults_are_the_settings_defaults() {
        // Given explicitly, a setting that does nothing in the configuration is
        // refused, so each default is checked where it applies: under zstd without a
        // bucket, and under gzip with one.
        for (given, skip) in [
            (&[][..], &["BACKUP_GZIP_LEVEL", "BACKUP_S3_PART_SIZE"][..]),
            (
                &[("BACKUP_COMPRESSION", "gzip"), ("BACKUP_S3_BUCKET", "b")][..],
                &["BACKUP_ZSTD_LEVEL", "BACKUP_ZSTD_THREADS"][..],
            ),
        ] {
            let given = |name: &str| {
                given
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            };
            let defaults = |name: &str| {
                Ok(given(name).or_else(|| {
                    TABLE
                        .iter()
                        .find(|s| s.env == name && !s.default.is_empty() && !skip.contains(&name))
                        .map(|s| s.default.to_string())
                }))
            };
            let from_table = Settings::load(&defaults).unwrap();
            let unset = Settings::load(&|name| Ok(given(name))).unwrap();
            assert_eq!(format!("{from_table:?}"), format!("{unset:?}"));
        }
    }

    #[test]
    fn each_command_takes_only_its_own_flags() {
        let parse = |a: &[&str]| command(a.iter().map(OsString::from));
        assert!(matches!(
            parse(&["restore", "latest", "--clean", "-y"]),
            Ok(Parsed::Run((
                Command::Restore {
                    clean: true,
                    yes: true,
                    ..
                },
                _
            )))
        ));
        let e = parse(&["now", "--tz", "UTC"]).unwrap_err();
        assert_eq!(
            e.message(),
            "backup now does not take --tz (it is for: daemon)"
        );
        let e = parse(&["list", "--dry-run"]).unwrap_err();
        assert_eq!(
            e.message(),
            "backup list does not take --dry-run (it is for: prune)"
        );
    }
}
