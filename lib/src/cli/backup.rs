//! `backup`'s table, its commands, and what each command does (the binary's `exec`).

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::backup::catalog::{self, Side};
use crate::backup::daemon::{self, OnSignal, Stop};
use crate::backup::drill::{self, DaemonDrills, DrillRequest};
use crate::backup::pitr_drill;
use crate::backup::restore::{self, Request};
use crate::backup::run::Runner;
use crate::backup::settings::Settings;
pub use crate::backup::settings::{Flag, TABLE};
use crate::backup::{codec, err, usage, BackupError, BackupKind, Cancel};
use crate::config::{invalid, ConfigError};
use crate::flags::{parse_with, Matches, Parsed};

/// The commands, in the order help and errors list them.
const COMMANDS: [&str; 10] = [
    "daemon", "now", "base", "list", "verify", "restore", "prune", "drill", "recover", "wal",
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
       backup drill --pitr             recover the newest base backup and its WAL to the
              [--from local|s3] [--keep]
                                       latest point with a throwaway PostgreSQL, check it
       backup recover --to-time TIME|latest --data-dir DIR [--from local|s3]
                                       point-in-time recovery into an empty data directory
       backup wal drop-slot            drop the sidecar's replication slot (when removing
                                       the sidecar for good: the slot keeps WAL on the server)

Options (flag, else environment variable; any variable may be given as NAME_FILE;
each command takes only the flags that mean something to it):
";

const OUTRO: &str = "
Exit status: 0 success, 1 the run/verify/restore/drill failed, 2 invalid arguments or
settings, 128+N stopped by signal N (now, verify, restore, drill).
";

/// `--help`.
pub fn help() -> String {
    crate::flags::help(INTRO, TABLE, OUTRO)
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
        /// Drill point-in-time recovery (the newest base backup and its WAL).
        pitr: bool,
    },
    /// Drops the sidecar's replication slot.
    WalDropSlot,
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
) -> Result<Parsed<(Command, Matches<Flag>)>, ConfigError> {
    parse_with(args, false, command_from)
}

/// The command the words and flags name, checked: its arguments, the flags it takes.
fn command_from(m: Matches<Flag>) -> Result<(Command, Matches<Flag>), ConfigError> {
    let words = m.words_utf8("arguments must be UTF-8")?;
    let name = command_name(&words)?;
    check_arguments(name, &words, name == "drill" && m.switch(Flag::Pitr)?)?;
    for s in m.given() {
        if !s.commands.is_empty() && !s.commands.contains(&name) {
            return Err(invalid(format!(
                "backup {name} does not take --{} (it is for: {})",
                s.long,
                s.commands.join(", ")
            )));
        }
    }
    let backup = words.get(1).cloned().unwrap_or_default();
    let command = build(name, backup, &m)?;
    Ok((command, m))
}

/// The command the first word names (`daemon` without one).
fn command_name(words: &[String]) -> Result<&'static str, ConfigError> {
    let name = COMMANDS
        .iter()
        .find(|c| Some(**c) == words.first().map(String::as_str))
        .copied();
    match (name, words.first()) {
        (Some(n), _) => Ok(n),
        (None, None) => Ok("daemon"),
        (None, Some(other)) => Err(invalid(format!(
            "unknown command {other:?}: use daemon, now, base, list, verify, restore, prune, drill, recover or wal drop-slot"
        ))),
    }
}

/// Checks the words after the command: `wal drop-slot`, a backup name for the
/// commands that read one (a PITR drill takes none, or `latest`), nothing for the
/// others.
fn check_arguments(name: &str, words: &[String], pitr: bool) -> Result<(), ConfigError> {
    let needs_name = matches!(name, "verify" | "restore") || (name == "drill" && !pitr);
    if let (true, Some(b)) = (pitr, words.get(1).filter(|b| *b != "latest")) {
        return Err(invalid(format!(
            "backup drill --pitr drills the newest base backup and the WAL stored after it, to the latest point: it takes no backup name ({b:?}); drill a dump backup without --pitr"
        )));
    }
    if name == "wal" && words.get(1).map(String::as_str) != Some("drop-slot") {
        return Err(invalid(match words.get(1) {
            Some(other) => format!("backup wal {other:?}: the one wal command is drop-slot"),
            None => "backup wal needs a command: drop-slot".to_string(),
        }));
    }
    match (words.get(1), words.get(2)) {
        (Some(_), None) if name == "wal" => Ok(()),
        (_, Some(extra)) => Err(invalid(format!("unexpected argument {extra:?}"))),
        (Some(extra), None) if !needs_name => {
            Err(invalid(format!("unexpected argument {extra:?}")))
        }
        (None, _) if needs_name => Err(invalid(format!(
            "backup {name} needs a backup name or `latest`"
        ))),
        _ => Ok(()),
    }
}

/// `--from`: which copy to read.
fn from_side(m: &Matches<Flag>) -> Result<Option<Side>, ConfigError> {
    match m.string(Flag::From)?.as_deref() {
        None => Ok(None),
        Some("local") => Ok(Some(Side::Local)),
        Some("s3") => Ok(Some(Side::S3)),
        Some(other) => Err(invalid(format!("--from {other:?}: use local or s3"))),
    }
}

/// The command `name`, on the backup `backup` (empty when it takes none), with its flags.
fn build(name: &str, backup: String, m: &Matches<Flag>) -> Result<Command, ConfigError> {
    let from = from_side(m)?;
    Ok(match name {
        "daemon" => Command::Daemon,
        "now" => Command::Now,
        "base" => Command::Base,
        "list" => Command::List {
            remote: m.switch(Flag::Remote)?,
        },
        "verify" => Command::Verify { name: backup, from },
        "wal" => Command::WalDropSlot,
        "restore" => Command::Restore {
            name: backup,
            from,
            to: m.string(Flag::To)?,
            clean: m.switch(Flag::Clean)?,
            yes: m.switch(Flag::Yes)?,
            no_owner: m.switch(Flag::NoOwner)?,
            jobs: restore_jobs(m)?,
        },
        "drill" if m.switch(Flag::Pitr)? => {
            pitr_flags(m)?;
            Command::Drill {
                name: "latest".into(),
                from,
                into: None,
                keep: m.switch(Flag::Keep)?,
                jobs: 1,
                pitr: true,
            }
        }
        "drill" => Command::Drill {
            name: backup,
            from,
            into: m.string(Flag::Into)?,
            keep: m.switch(Flag::Keep)?,
            jobs: restore_jobs(m)?,
            pitr: false,
        },
        "recover" => Command::Recover {
            to: crate::backup::recover::parse_target(&m.string(Flag::ToTime)?.ok_or_else(
                || invalid("backup recover needs --to-time TIME or --to-time latest"),
            )?)?,
            data_dir: m
                .string(Flag::DataDir)?
                .ok_or_else(|| {
                    invalid("backup recover needs --data-dir DIR (an empty data directory)")
                })?
                .into(),
            from,
        },
        _ => Command::Prune {
            dry_run: m.switch(Flag::DryRun)?,
        },
    })
}

/// Refuses the dump drill's flags with `--pitr`: its server is a throwaway one of its
/// own, and it restores no dump. (`BACKUP_DRILL_URL` and `BACKUP_RESTORE_JOBS` in the
/// environment are for the daemon's dump drills, and left alone.)
fn pitr_flags(m: &Matches<Flag>) -> Result<(), ConfigError> {
    for (k, flag, why) in [
        (
            Flag::Into,
            "into",
            "it starts a throwaway PostgreSQL of its own",
        ),
        (Flag::Jobs, "jobs", "PostgreSQL replays the WAL itself"),
    ] {
        if !m.flags(k).is_empty() {
            return Err(invalid(format!(
                "backup drill --pitr does not take --{flag} ({why})"
            )));
        }
    }
    Ok(())
}

/// `--jobs`/`BACKUP_RESTORE_JOBS`: 1 to 64; by default the CPUs available, at most 8.
fn restore_jobs(m: &Matches<Flag>) -> Result<usize, ConfigError> {
    match m.string(Flag::Jobs)? {
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

/// How long the PID 1 supervisor gives its worker (this same command) after passing
/// on SIGTERM: the stop grace (`--stop-grace`, else `BACKUP_STOP_GRACE`, else its
/// row's default) and 5 s more to finish. A malformed value is the worker's to report
/// (it exits 2 at once): then the 5 s.
pub fn supervisor_grace(args: impl IntoIterator<Item = OsString>) -> std::time::Duration {
    let grace = crate::flags::parse::<Flag>(args, false)
        .and_then(|m| m.duration(Flag::StopGrace))
        .unwrap_or_default();
    grace + std::time::Duration::from_secs(5)
}

/// A path setting the user gave (`BACKUP_TMP_DIR`, `BACKUP_DRILL_SQL`), if any.
fn path(m: &Matches<Flag>, k: Flag) -> Result<Option<std::path::PathBuf>, BackupError> {
    Ok(m.explicit(k).map_err(usage)?.map(std::path::PathBuf::from))
}

/// The signal that stopped a command, if one did.
fn stopped(first_signal: &Mutex<Option<i32>>) -> Option<i32> {
    first_signal.lock().ok().and_then(|s| *s)
}

/// The age identities of `BACKUP_AGE_IDENTITY`, for reading encrypted backups.
fn identities(m: &Matches<Flag>) -> Result<Vec<age::x25519::Identity>, BackupError> {
    match m.explicit(Flag::AgeIdentity).map_err(usage)? {
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
fn daemon_drills(m: &Matches<Flag>, settings: &Settings) -> Result<DaemonDrills, BackupError> {
    let when =
        DaemonDrills::when(m.string(Flag::Drill).map_err(usage)?.as_deref()).map_err(usage)?;
    if matches!(when, drill::When::Off) {
        return Ok(DaemonDrills::default());
    }
    let into = match m.string(Flag::Into).map_err(usage)? {
        Some(u) => Some(drill_url(&u)?),
        None => None,
    };
    let sql = path(m, Flag::DrillSql)?;
    if let Some(path) = &sql {
        std::fs::metadata(path).map_err(|e| {
            usage(invalid(format!(
                "BACKUP_DRILL_SQL {}: {}",
                path.display(),
                crate::error::io_reason(&e)
            )))
        })?;
    }
    let identities = identities(m)?;
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
            jobs: restore_jobs(m).map_err(usage)?,
            tmp_dir: path(m, Flag::TmpDir)?,
            sql,
            ..DrillRequest::default()
        },
        identities,
    })
}

/// Runs `command` with the settings of `m` (flags, else the environment); returns
/// the exit status.
/// A command ends with an error whose kind gives the exit status (a usage error 2, a
/// failure 1, a stop by signal N 128+N) and whose message is printed once, by the
/// binary's main (empty: already reported).
pub fn exec(command: &Command, m: &Matches<Flag>) -> Result<u8, BackupError> {
    let settings = Settings::load(m).map_err(usage)?;
    // run by hand: a person may watch the progress on a terminal (never the daemon)
    if !matches!(command, Command::Daemon) {
        crate::backup::progress::for_a_person();
    }
    check(command, &settings)?;
    let (stop, cancel) = (Arc::new(Stop::default()), Arc::new(Cancel::new()));
    let mode = match command {
        Command::Daemon => OnSignal::StopAfter(settings.stop_grace),
        _ => OnSignal::CancelNow,
    };
    let first_signal = daemon::watch_signals(mode, stop.clone(), cancel.clone());
    let s = Session {
        runner: Runner::new(settings, cancel.clone())?,
        m,
        cancel,
        stop,
        first_signal,
    };
    match command {
        Command::Daemon => cmd_daemon(&s),
        Command::Now => cmd_now(&s),
        Command::Base => cmd_base(&s),
        Command::Recover { to, data_dir, from } => cmd_recover(&s, to, data_dir, from),
        Command::WalDropSlot => cmd_wal_drop_slot(&s),
        Command::List { remote } => cmd_list(&s, remote),
        Command::Prune { dry_run } => cmd_prune(&s, dry_run),
        Command::Verify { name, from } => cmd_verify(&s, name, from),
        Command::Drill {
            from,
            keep,
            pitr: true,
            ..
        } => cmd_pitr_drill(&s, from, keep),
        Command::Drill {
            name,
            from,
            into,
            keep,
            jobs,
            pitr: false,
        } => cmd_drill(&s, name, from, into, keep, jobs),
        Command::Restore {
            name,
            from,
            to,
            clean,
            yes,
            no_owner,
            jobs,
        } => cmd_restore(&s, name, from, to, clean, yes, no_owner, jobs),
    }
}

/// What a command needs from the settings, checked before anything runs (exit 2): a
/// destination to write to, a database to read, backups to read.
fn check(command: &Command, settings: &Settings) -> Result<(), BackupError> {
    match command {
        Command::Daemon | Command::Now | Command::Base | Command::Prune { .. } => {
            settings.require_destination().map_err(usage)?;
        }
        Command::Restore { to: Some(u), .. } => {
            target_url(u)?;
        }
        Command::Drill { pitr: true, .. } => {}
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
    if matches!(
        command,
        Command::Daemon | Command::Now | Command::Base | Command::WalDropSlot
    ) {
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
        )));
    }
    Ok(())
}

/// What every command runs with: the runner, the command line, and how a stop is seen.
struct Session<'a> {
    runner: Runner,
    m: &'a Matches<Flag>,
    cancel: Arc<Cancel>,
    stop: Arc<Stop>,
    first_signal: Arc<Mutex<Option<i32>>>,
}

impl Session<'_> {
    /// The error of a command stopped by a signal (exit 128+N), if one stopped it.
    fn stopped(&self, message: &str) -> Option<BackupError> {
        stopped(&self.first_signal)
            .map(|sig| BackupError::new(BackupKind::Stopped(sig), message.to_string()))
    }
}

/// `daemon`: runs on the schedule until stopped, with WAL streaming beside it when on.
fn cmd_daemon(s: &Session) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let stop = &s.stop;
    let m = s.m;
    let drills = daemon_drills(m, &runner.settings)?;
    if runner.settings.wal {
        crate::backup::wal::spool_of(runner)?;
    }
    std::thread::scope(|sc| {
        if runner.settings.wal {
            sc.spawn(|| crate::backup::wal::stream(runner, stop));
        }
        let r = daemon::run_drilling(runner, stop, &drills);
        // The WAL streaming ends with the daemon, whatever ended it.
        stop.request();
        Ok(r?.clamp(0, 255) as u8)
    })
}

/// `now`: one run; the exit status says if it succeeded.
fn cmd_now(s: &Session) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let r = runner.run();
    if let Some(f) = s.stopped(&r.failures.join("; ")) {
        return Err(f);
    }
    match r.failures.iter().next() {
        None => Ok(0),
        Some(first) => {
            Err(err(format!("backup failed: {}", r.failures.join("; "))).with_source(first.clone()))
        }
    }
}

/// `base`: a base backup of the cluster for point-in-time recovery.
fn cmd_base(s: &Session) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let made = runner.base();
    if let Some(f) = s.stopped("base backup stopped") {
        return Err(f);
    }
    let o = made?;
    let wal = o.manifest.wal.as_ref();
    info!(
        "base backup {}: {} read, {} stored in {}; WAL {} to {} on timeline {}",
        o.manifest.name,
        catalog::human_size(o.manifest.dump_bytes),
        catalog::human_size(o.manifest.size),
        o.places(),
        wal.map_or("?", |w| &w.start),
        wal.map_or("?", |w| &w.end),
        wal.map_or(0, |w| w.timeline)
    );
    for e in &o.errors {
        tracing::warn!("{e} (the copy in {} is kept)", o.places());
    }
    println!("{}", o.manifest.name);
    if o.errors.is_empty() {
        Ok(0)
    } else {
        Err(err(format!(
            "base backup incomplete: {}",
            o.errors.join("; ")
        )))
    }
}

/// `recover`: point-in-time recovery into an empty data directory.
fn cmd_recover(
    s: &Session,
    to: &crate::backup::recover::Target,
    data_dir: &std::path::Path,
    from: &Option<Side>,
) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let cancel = &s.cancel;
    let m = s.m;
    let ids = identities(m)?;
    let backups = runner.backups_for_reading(*from)?;
    let done = crate::backup::recover::recover(
        &runner.reading(&ids),
        &backups,
        *from,
        to,
        data_dir,
        cancel,
    );
    if let Some(f) = s.stopped("recover stopped") {
        return Err(f);
    }
    let r = done.map_err(|e| e.context("recover failed"))?;
    info!(
        "{} ready: base backup {} and {} WAL files; start PostgreSQL on it to recover{}",
        data_dir.display(),
        r.base,
        r.wal_files,
        match (to, &r.to_end) {
            (crate::backup::recover::Target::Latest, _) => {
                " to the end of the stored WAL".to_string()
            }
            (crate::backup::recover::Target::Time(..), Some(why)) => {
                format!(" to the end of the stored WAL ({why})")
            }
            (crate::backup::recover::Target::Time(..), None) => " to the time given".to_string(),
        }
    );
    Ok(0)
}

/// `wal drop-slot`: drops the sidecar's replication slot.
fn cmd_wal_drop_slot(s: &Session) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let slot = &runner.settings.wal_slot;
    let target = runner
        .target()
        .ok_or_else(|| usage(invalid("no database: set DIRECT_URL (or DATABASE_URL)")))?;
    let dropped = runner
        .rt
        .block_on(crate::backup::wal::drop_slot(target, slot))?;
    if dropped {
        info!("dropped the replication slot {slot:?}: the server keeps no WAL for the sidecar any more");
    } else {
        info!("there is no replication slot {slot:?} on the server: nothing to drop");
    }
    Ok(0)
}

/// `list`: the backups, as a table on stdout.
fn cmd_list(s: &Session, remote: &bool) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let table = catalog::table(&runner.backups(*remote)?);
    Ok(crate::output::stdout(&table).exit_code("backup"))
}

/// `prune`: applies retention now and prints what goes.
fn cmd_prune(s: &Session, dry_run: &bool) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let decisions = runner.prune(*dry_run)?;
    if runner.settings.retention.is_empty() {
        info!(
            "no retention rule is set (BACKUP_RETENTION_DAYS, BACKUP_KEEP_*): everything is kept"
        );
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

/// `verify`: checksum and full read of one backup, and the continuity of the WAL beside it.
fn cmd_verify(s: &Session, name: &str, from: &Option<Side>) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let m = s.m;
    let verified = runner.verify(name, *from, &identities(m)?);
    if let Some(f) = s.stopped("verify stopped") {
        return Err(f);
    }
    let m = verified.map_err(|e| e.context("verify failed"))?;
    info!("{}: checksum and full read ok", m.file);
    // The WAL stored beside: a gap after a base backup ends its recovery there.
    let backups = runner.backups_for_reading(*from)?;
    let manifests: Vec<&crate::backup::manifest::Manifest> =
        backups.iter().map(|b| &b.manifest).collect();
    let base = (m.kind == crate::backup::manifest::Content::Base).then_some(m.name.as_str());
    // A gap fails a base backup's verify; no WAL at all (not streamed, or not
    // yet) is said, as the backup itself is sound.
    match crate::backup::continuity::check(&manifests, base) {
        Some(c) if !c.gaps.is_empty() && c.newest.is_some() && base.is_some() => {
            Err(err(format!("verify failed: {}", c.describe())))
        }
        Some(c) if !c.is_continuous() => {
            warn!("{}", c.describe());
            Ok(0)
        }
        Some(c) => {
            info!("WAL {}", c.describe());
            Ok(0)
        }
        None => Ok(0),
    }
}

/// `drill`: restores a backup into a scratch database and compares every table.
fn cmd_drill(
    s: &Session,
    name: &str,
    from: &Option<Side>,
    into: &Option<String>,
    keep: &bool,
    jobs: &usize,
) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let cancel = &s.cancel;
    let m = s.m;
    let ids = identities(m)?;
    let into = match into {
        Some(u) => Some(drill_url(u)?),
        None => None,
    };
    let backups = runner.backups_for_reading(*from)?;
    let req = DrillRequest {
        name: name.to_string(),
        from: *from,
        into,
        keep: *keep,
        jobs: *jobs,
        tmp_dir: path(m, Flag::TmpDir)?,
        sql: path(m, Flag::DrillSql)?,
    };
    let done = drill::drill(
        &runner.reading(&ids),
        &backups,
        &req,
        runner.settings.url.as_ref(),
        cancel,
    );
    if let Some(f) = s.stopped("drill stopped; the scratch database was dropped") {
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
            if o.kept {
                format!(", kept as database {:?}", o.database)
            } else {
                String::new()
            }
        );
        Ok(0)
    } else {
        Err(err(format!(
            "drill of {} failed: {}",
            o.backup,
            o.drill.problems.join("; ")
        )))
    }
}

/// `drill --pitr`: recovers the newest base backup and its WAL to the latest point with
/// a throwaway PostgreSQL and checks it; recorded as the sidecar's drill, as a
/// `drill latest` is.
fn cmd_pitr_drill(s: &Session, from: &Option<Side>, keep: &bool) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let m = s.m;
    let ids = identities(m)?;
    let backups = runner.backups_for_reading(*from)?;
    let req = pitr_drill::Request {
        from: *from,
        keep: *keep,
        tmp_dir: path(m, Flag::TmpDir)?,
        sql: path(m, Flag::DrillSql)?,
    };
    let done = pitr_drill::drill(
        &runner.reading(&ids),
        &backups,
        &req,
        runner.settings.url.as_ref(),
        &s.cancel,
    );
    if let Some(f) = s.stopped("drill stopped; its server was stopped and its directory removed") {
        return Err(f);
    }
    let o = done.map_err(|e| e.context("drill failed"))?;
    drill::record(&runner.settings, &o.base, &o.drill);
    if let Some(dir) = &o.kept {
        if let crate::output::Written::Failed(e) =
            crate::output::stdout(&format!("{}\n", dir.display()))
        {
            warn!(
                "cannot write the kept directory ({}) to stdout: {}",
                dir.display(),
                crate::error::io_reason(&e)
            );
        }
    }
    if !o.drill.ok {
        return Err(err(format!(
            "drill of {} failed: {}",
            o.base,
            o.drill.problems.join("; ")
        )));
    }
    info!("drill of {} passed: {}", o.base, pitr_summary(&o));
    Ok(0)
}

/// What a PITR drill that passed found, for its log line.
fn pitr_summary(o: &pitr_drill::Outcome) -> String {
    let point = o.point.as_ref();
    let recovered = match point.and_then(|p| Some((p.time()?, p.behind_now()?))) {
        Some((t, behind)) => format!(
            "recovered to {t} ({} WAL files) in {:.1} s; that point is {:.1} s behind now",
            o.wal_files, o.drill.seconds, behind
        ),
        None => format!(
            "recovered to the end of the stored WAL at {} ({} WAL files; no transaction ended after the base backup) in {:.1} s",
            point.map_or("?", |p| p.lsn.as_str()),
            o.wal_files,
            o.drill.seconds
        ),
    };
    let databases = point.map_or(0, |p| p.databases);
    match &o.kept {
        Some(dir) => format!(
            "{recovered}; {databases} databases connect; kept in {} (its server stopped)",
            dir.display()
        ),
        None => format!("{recovered}; {databases} databases connect"),
    }
}

/// `restore`: restores a backup into a new or given database.
#[allow(clippy::too_many_arguments)] // (each is one of the command's own flags)
fn cmd_restore(
    s: &Session,
    name: &str,
    from: &Option<Side>,
    to: &Option<String>,
    clean: &bool,
    yes: &bool,
    no_owner: &bool,
    jobs: &usize,
) -> Result<u8, BackupError> {
    let runner = &s.runner;
    let cancel = &s.cancel;
    let m = s.m;
    let ids = identities(m)?;
    let to = match to {
        Some(u) => Some(target_url(u)?),
        None => None,
    };
    let backups = runner.backups_for_reading(*from)?;
    if let Some(w) = catalog::drill_warning(&backups, name) {
        tracing::warn!("{w}");
    }
    let req = Request {
        name: name.to_string(),
        from: *from,
        to,
        clean: *clean,
        yes: *yes,
        no_owner: *no_owner,
        jobs: *jobs,
        tmp_dir: path(m, Flag::TmpDir)?,
        drill: false,
    };
    let done = restore::restore(
        &runner.reading(&ids),
        &backups,
        &req,
        runner.settings.url.as_ref(),
        cancel,
        &confirm,
    );
    if let Some(f) = s.stopped("restore stopped; the target was left as it was") {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_word_names_the_command_and_none_is_the_daemon() {
        assert_eq!(command_name(&words(&[])).unwrap(), "daemon");
        assert_eq!(command_name(&words(&["prune"])).unwrap(), "prune");
        let e = command_name(&words(&["backup"])).unwrap_err();
        assert!(
            e.message()
                .starts_with("unknown command \"backup\": use daemon, now"),
            "{e}"
        );
    }

    #[test]
    fn each_command_takes_the_words_it_needs_and_no_more() {
        let check =
            |w: &[&str]| check_arguments(command_name(&words(w)).unwrap(), &words(w), false);
        assert!(check(&["verify", "latest"]).is_ok());
        assert!(check(&["wal", "drop-slot"]).is_ok());
        assert!(check(&["now"]).is_ok());
        let says = |w: &[&str]| check(w).unwrap_err().message().to_string();
        assert_eq!(
            says(&["restore"]),
            "backup restore needs a backup name or `latest`"
        );
        assert_eq!(says(&["now", "x"]), "unexpected argument \"x\"");
        assert_eq!(says(&["verify", "a", "b"]), "unexpected argument \"b\"");
        assert_eq!(says(&["wal"]), "backup wal needs a command: drop-slot");
        assert_eq!(
            says(&["wal", "drop"]),
            "backup wal \"drop\": the one wal command is drop-slot"
        );
        assert_eq!(
            says(&["wal", "drop-slot", "x"]),
            "unexpected argument \"x\""
        );
    }

    #[test]
    fn from_names_the_copy_to_read() {
        let parse = |a: &[&str]| command(a.iter().map(OsString::from));
        assert!(matches!(
            parse(&["verify", "latest", "--from", "s3"]),
            Ok(Parsed::Run((
                Command::Verify {
                    from: Some(Side::S3),
                    ..
                },
                _
            )))
        ));
        let e = parse(&["verify", "latest", "--from", "nas"]).unwrap_err();
        assert_eq!(e.message(), "--from \"nas\": use local or s3");
        let e = parse(&["recover", "--data-dir", "/d"]).unwrap_err();
        assert!(e.message().contains("--to-time"), "{e}");
    }
}
