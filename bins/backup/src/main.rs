//! `backup`: the PostgreSQL backup sidecar. Parses the command line and hands over to
//! `dockhand::backup`; as PID 1 it first puts a small supervisor in front of itself
//! (the entrypoint's), which reaps orphans and forwards signals.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use dockhand::backup::catalog::{self, From};
use dockhand::backup::daemon::{self, OnSignal, Stop};
use dockhand::backup::restore::{self, Request};
use dockhand::backup::run::Runner;
use dockhand::backup::settings::Settings;
use dockhand::backup::{codec, dump, Cancel};
use dockhand::{cli, supervise};
use tracing::info;

const HELP: &str = "\
backup: scheduled, streamed pg_dump backups to a folder and S3-compatible storage,
compressed, optionally encrypted, checksummed, with retention, verify and restore.

Usage: backup [daemon]                 run on BACKUP_SCHEDULE until stopped
       backup now                      one run now; the exit status says if it succeeded
       backup list [--remote]          the backups (folder; with --remote also S3)
       backup verify NAME|latest       checksum and a full read by pg_restore
       backup restore NAME|latest      into a new database <db>_restore_<time>
              [--to URL] [--from local|s3] [--clean] [--yes] [--no-owner]
       backup prune [--dry-run]        apply retention now, print what goes

Options (flag, else environment variable; any variable may be given as NAME_FILE):
      --SETTING VALUE      every setting below as a flag, e.g. --s3-bucket NAME for
                           BACKUP_S3_BUCKET, --keep-last 7, --tz Europe/Berlin
                           (see the README's table for what each means)
      --remote             list: also the backups in S3
      --from local|s3      verify/restore: which copy to read
      --to URL             restore: target database (default: a new one)
      --clean              restore: drop the backup's objects in a non-empty target first
      --yes                restore: do not ask before --clean
      --no-owner           restore: skip ownership and privileges
      --dry-run            prune: print, delete nothing
  -h, --help               this help
  -V, --version            the version
Database: DIRECT_URL (PostgreSQL itself, not PgBouncer), else DATABASE_URL; secrets
(URLs, BACKUP_AGE_IDENTITY, AWS keys) only through the environment or NAME_FILE.
Settings: {SETTINGS}

Exit status: 0 success, 1 the run/verify/restore failed, 2 invalid arguments or
settings, 128+N stopped by signal N (now, verify, restore).
";

/// Which commands a setting's flag belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Where backups are: every command.
    Store,
    /// How a run dumps and reports: daemon and now.
    Run,
    /// When the daemon runs: daemon only.
    Schedule,
    /// What to keep: daemon, now and prune.
    Retention,
}

/// Settings that also exist as flags: `--dir` for BACKUP_DIR, `--s3-bucket` for
/// BACKUP_S3_BUCKET, and so on (secrets are left out: argv is visible in `ps`).
const SETTINGS: &[(&str, Group)] = &[
    ("BACKUP_DIR", Group::Store),
    ("BACKUP_S3_BUCKET", Group::Store),
    ("BACKUP_S3_PREFIX", Group::Store),
    ("BACKUP_S3_ENDPOINT", Group::Store),
    ("BACKUP_S3_PATH_STYLE", Group::Store),
    ("BACKUP_S3_REGION", Group::Store),
    ("BACKUP_S3_STORAGE_CLASS", Group::Run),
    ("BACKUP_S3_SSE", Group::Run),
    ("BACKUP_S3_SSE_KMS_KEY_ID", Group::Run),
    ("BACKUP_S3_PART_SIZE", Group::Run),
    ("BACKUP_DATABASES", Group::Run),
    ("BACKUP_GLOBALS", Group::Run),
    ("BACKUP_COMPRESSION", Group::Run),
    ("BACKUP_ZSTD_LEVEL", Group::Run),
    ("BACKUP_ZSTD_THREADS", Group::Run),
    ("BACKUP_GZIP_LEVEL", Group::Run),
    ("BACKUP_AGE_RECIPIENT", Group::Run),
    ("BACKUP_SCHEDULE", Group::Schedule),
    ("TZ", Group::Schedule),
    ("BACKUP_ON_START", Group::Schedule),
    ("BACKUP_STOP_GRACE", Group::Schedule),
    ("BACKUP_WAIT_TIMEOUT", Group::Schedule),
    ("BACKUP_RETRY_DELAY", Group::Schedule),
    ("BACKUP_RETENTION_DAYS", Group::Retention),
    ("BACKUP_KEEP_LAST", Group::Retention),
    ("BACKUP_KEEP_DAILY", Group::Retention),
    ("BACKUP_KEEP_WEEKLY", Group::Retention),
    ("BACKUP_KEEP_MONTHLY", Group::Retention),
    ("BACKUP_VERIFY", Group::Run),
    ("BACKUP_STATUS_FILE", Group::Run),
    ("BACKUP_PING_URL", Group::Run),
    ("BACKUP_METRICS_FILE", Group::Run),
];

/// The commands, and the flags of their own each takes (besides the settings of the
/// groups [`takes_group`] gives it).
const COMMANDS: &[(&str, &[&str])] = &[
    ("daemon", &[]),
    ("now", &[]),
    ("list", &["remote"]),
    ("verify", &["from"]),
    ("restore", &["from", "to", "clean", "yes", "no-owner"]),
    ("prune", &["dry-run"]),
];

fn takes_group(command: &str, g: Group) -> bool {
    match command {
        "daemon" => true,
        "now" => g != Group::Schedule,
        "prune" => matches!(g, Group::Store | Group::Retention),
        _ => g == Group::Store,
    }
}

/// The flag for a setting: `BACKUP_S3_BUCKET` -> `s3-bucket`, `TZ` -> `tz`.
fn flag_of(env: &str) -> String {
    env.trim_start_matches("BACKUP_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The setting a flag names, with its group.
fn setting_of(flag: &str) -> Option<(&'static str, Group)> {
    SETTINGS.iter().copied().find(|(e, _)| flag_of(e) == flag)
}

struct Args {
    command: String,
    name: Option<String>,
    overrides: HashMap<&'static str, String>,
    remote: bool,
    from: Option<From>,
    to: Option<String>,
    clean: bool,
    yes: bool,
    no_owner: bool,
    dry_run: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut a = Args {
        command: String::new(),
        name: None,
        overrides: HashMap::new(),
        remote: false,
        from: None,
        to: None,
        clean: false,
        yes: false,
        no_owner: false,
        dry_run: false,
    };
    let mut command = None;
    // Every flag given, with its group (None: a command's own flag), checked against
    // the command once it is known.
    let mut given: Vec<(String, Option<Group>)> = Vec::new();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        if let Long(flag) = &arg {
            if let Some((env, group)) = setting_of(flag) {
                let flag = format!("--{flag}");
                a.overrides.insert(env, cli::value(&mut parser, &flag)?);
                given.push((flag, Some(group)));
                continue;
            }
        }
        match &arg {
            Long(f @ ("remote" | "clean" | "yes" | "no-owner" | "dry-run" | "to" | "from")) => {
                given.push((format!("--{f}"), None))
            }
            Short('y') => given.push(("--yes".into(), None)),
            Short('n') => given.push(("--dry-run".into(), None)),
            _ => {}
        }
        match arg {
            Long("remote") => a.remote = true,
            Long("clean") => a.clean = true,
            Long("yes") | Short('y') => a.yes = true,
            Long("no-owner") => a.no_owner = true,
            Long("dry-run") | Short('n') => a.dry_run = true,
            Long("to") => a.to = Some(cli::value(&mut parser, "--to")?),
            Long("from") => {
                a.from = Some(match cli::value(&mut parser, "--from")?.as_str() {
                    "local" => From::Local,
                    "s3" => From::S3,
                    other => return Err(format!("--from {other:?}: use local or s3")),
                })
            }
            Short('h') | Long("help") => {
                let mut flags = String::new();
                let mut width = 10;
                for (e, _) in SETTINGS {
                    let f = format!("--{}", flag_of(e));
                    if width + f.len() > 86 {
                        flags.push_str("\n         ");
                        width = 10;
                    }
                    flags.push(' ');
                    flags.push_str(&f);
                    width += f.len() + 1;
                }
                print!("{}", HELP.replace(" {SETTINGS}", &flags));
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("backup {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Value(v) => {
                let v = v
                    .into_string()
                    .map_err(|_| "arguments must be UTF-8".to_string())?;
                if command.is_none() {
                    command = Some(v);
                } else if a.name.is_none() {
                    a.name = Some(v);
                } else {
                    return Err(format!("unexpected argument {v:?}"));
                }
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    a.command = command.unwrap_or_else(|| "daemon".into());
    match a.command.as_str() {
        "daemon" | "now" | "list" | "prune" => {
            if let Some(n) = &a.name {
                return Err(format!("unexpected argument {n:?}"));
            }
        }
        "verify" | "restore" => {
            if a.name.is_none() {
                return Err(format!(
                    "backup {} needs a backup name or `latest`",
                    a.command
                ));
            }
        }
        other => {
            return Err(format!(
                "unknown command {other:?}: use daemon, now, list, verify, restore or prune"
            ))
        }
    }
    let own: &[&str] = COMMANDS
        .iter()
        .find(|(c, _)| *c == a.command)
        .map_or(&[], |(_, f)| f);
    for (flag, group) in &given {
        let ok = match group {
            Some(g) => takes_group(&a.command, *g),
            None => own.contains(&flag.trim_start_matches('-')),
        };
        if !ok {
            let owners: Vec<&str> = COMMANDS
                .iter()
                .filter(|(c, f)| match group {
                    Some(g) => takes_group(c, *g),
                    None => f.contains(&flag.trim_start_matches('-')),
                })
                .map(|(c, _)| *c)
                .collect();
            return Err(format!(
                "backup {} does not take {flag} (it is for: {})",
                a.command,
                owners.join(", ")
            ));
        }
    }
    Ok(Some(a))
}

fn identities() -> Result<Vec<age::x25519::Identity>, String> {
    match dockhand::config::var("BACKUP_AGE_IDENTITY").map_err(|e| e.0)? {
        Some(text) => codec::parse_identities(&text),
        None => Ok(Vec::new()),
    }
}

/// Asks at the terminal before a `--clean` restore; without a terminal, refuses.
fn confirm(database: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "database {database:?} is not empty and --clean would drop the backup's objects in it: pass --yes to confirm (no terminal to ask at)"
        ));
    }
    eprint!(
        "Restoring with --clean drops the objects of the backup in database {database:?} and replaces them.\nType the database name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim() == database)
}

/// Exit status for a command that was stopped by a signal.
fn stopped(first_signal: &std::sync::Mutex<Option<i32>>) -> Option<u8> {
    first_signal
        .lock()
        .ok()
        .and_then(|s| *s)
        .map(|s| (128 + s) as u8)
}

fn run(args: Args, cancel: Arc<Cancel>, stop: Arc<Stop>) -> Result<u8, (String, u8)> {
    let usage = |e: String| (e, 2u8);
    let failed = |e: String| (e, 1u8);
    let overrides = args.overrides.clone();
    let settings = Settings::load(&move |name| match overrides.get(name) {
        Some(v) => Ok(Some(v.clone())),
        None => dockhand::config::var(name).map_err(|e| e.0),
    })
    .map_err(usage)?;
    match args.command.as_str() {
        "daemon" | "now" | "prune" => {
            settings.require_destination().map_err(usage)?;
        }
        "restore" if args.to.is_none() => {
            settings.database_url().map_err(|_| {
                usage("no target: pass --to postgres://... or set DIRECT_URL (a new database is created on its server)".into())
            })?;
        }
        _ => {}
    }
    if matches!(args.command.as_str(), "daemon" | "now") {
        settings.database_url().map_err(usage)?;
    }
    if matches!(args.command.as_str(), "list" | "verify" | "restore")
        && settings.dir.is_none()
        && settings.s3.is_none()
    {
        return Err(usage(
            "no backups to read: set BACKUP_DIR and/or BACKUP_S3_BUCKET".into(),
        ));
    }
    let mode = if args.command == "daemon" {
        OnSignal::StopAfter(settings.stop_grace)
    } else {
        OnSignal::CancelNow
    };
    let first_signal = daemon::watch_signals(mode, stop.clone(), cancel.clone());
    let runner = Runner::new(settings, cancel.clone()).map_err(|e| failed(e.0))?;
    match args.command.as_str() {
        "daemon" => daemon::run(&runner, &stop).map(|c| c as u8).map_err(usage),
        "now" => {
            let r = runner.run();
            if let Some(code) = stopped(&first_signal) {
                return Err((r.failures.join("; "), code));
            }
            if r.failures.is_empty() {
                Ok(0)
            } else {
                Err(failed(format!("backup failed: {}", r.failures.join("; "))))
            }
        }
        "list" => {
            let backups = runner.backups(args.remote).map_err(|e| failed(e.0))?;
            print!("{}", catalog::table(&backups));
            Ok(0)
        }
        "prune" => {
            let decisions = runner.prune(args.dry_run).map_err(|e| failed(e.0))?;
            if runner.settings.retention.is_empty() {
                info!("no retention rule is set (BACKUP_RETENTION_DAYS, BACKUP_KEEP_*): everything is kept");
            }
            for (d, b) in decisions {
                let verb = match (d.keep, args.dry_run) {
                    (true, _) => "keep",
                    (false, true) => "would delete",
                    (false, false) => "deleted",
                };
                println!("{verb:<13} {:<40} {}", b.manifest.name, d.why);
            }
            Ok(0)
        }
        "verify" => {
            let ids = identities().map_err(usage)?;
            let backups = runner
                .backups_for_reading(args.from)
                .map_err(|e| failed(e.0))?;
            let b = catalog::find(&backups, args.name.as_deref().unwrap_or("latest"))
                .map_err(|e| failed(e.0))?;
            let from = args
                .from
                .unwrap_or(if b.local { From::Local } else { From::S3 });
            let tools = dump::find_tools(b.manifest.pg_dump_major()).map_err(|e| failed(e.0))?;
            let verified =
                catalog::verify(&runner.reading(&ids), b, from, &tools.pg_restore, &cancel);
            if let Some(code) = stopped(&first_signal) {
                return Err(("verify stopped".into(), code));
            }
            verified.map_err(|e| failed(format!("verify failed: {e}")))?;
            info!("{}: checksum and full read ok", b.manifest.file);
            Ok(0)
        }
        "restore" => {
            let ids = identities().map_err(usage)?;
            let to = match &args.to {
                Some(u) => {
                    Some(dockhand::url::Url::parse(u).map_err(|e| usage(format!("--to: {e}")))?)
                }
                None => None,
            };
            let backups = runner
                .backups_for_reading(args.from)
                .map_err(|e| failed(e.0))?;
            let req = Request {
                name: args.name.clone().unwrap_or_default(),
                from: args.from,
                to,
                clean: args.clean,
                yes: args.yes,
                no_owner: args.no_owner,
            };
            let done = restore::restore(
                &runner.reading(&ids),
                &backups,
                &req,
                runner.settings.url.as_ref(),
                &cancel,
                &confirm,
            );
            if let Some(code) = stopped(&first_signal) {
                return Err((
                    "restore stopped; the target was left as it was".into(),
                    code,
                ));
            }
            let r = done.map_err(|e| failed(format!("restore failed: {e}")))?;
            info!(
                "restored {} into {}database {:?}: tables {}, rows {}, in {:.1} s",
                r.backup,
                if r.created { "the new " } else { "" },
                r.database,
                r.tables,
                r.rows,
                r.seconds
            );
            println!("{}", r.database);
            Ok(0)
        }
        _ => unreachable!("checked in parse_args"),
    }
}

/// As PID 1, runs this same command as a supervised child: the supervisor reaps
/// every orphan in the container and forwards signals; the child does the work.
fn supervise_self() -> Option<ExitCode> {
    const WORKER: &str = "DOCKHAND_BACKUP_WORKER";
    if std::process::id() != 1 || std::env::var_os(WORKER).is_some() {
        return None;
    }
    let signals = supervise::block_signals().ok()?;
    // Single-threaded here: nothing else reads the environment.
    std::env::set_var(WORKER, "1");
    let mut command = vec![std::ffi::OsString::from("/proc/self/exe")];
    command.extend(std::env::args_os().skip(1));
    let grace = dockhand::config::var("BACKUP_STOP_GRACE")
        .ok()
        .flatten()
        .and_then(|g| dockhand::duration::parse(&g).ok())
        .unwrap_or(std::time::Duration::from_secs(8));
    let opts = supervise::Options {
        command,
        process_group: false,
        rewrite: Vec::new(),
        stop_delay: std::time::Duration::ZERO,
        grace: grace + std::time::Duration::from_secs(5),
        remap_exit: Vec::new(),
        user: None,
    };
    Some(match supervise::run(&opts, &signals) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("backup: {}", e.message);
            ExitCode::from(e.code.clamp(0, 255) as u8)
        }
    })
}

fn main() -> ExitCode {
    dockhand::config::install_panic_hook("backup", 1);
    dockhand::pg::set_application_name("dockhand-backup");
    if let Some(code) = supervise_self() {
        return code;
    }
    // The AWS credential chain reads its variables itself: load their _FILE forms
    // (Docker secrets) first, while this process has one thread, by the same rule as
    // the entrypoint (dockhand's own variables and files under /run/secrets/).
    let which = dockhand::secrets::FileVars::Auto;
    // SAFETY: no other thread exists yet (the runtime starts later).
    if let Err(e) = unsafe { dockhand::secrets::load_file_vars(&which) } {
        eprintln!("backup: {e}");
        return ExitCode::from(2);
    }
    // Before any thread starts, so every thread inherits the mask and only the
    // signal thread sees them.
    if let Err(e) = daemon::signal_set().thread_block() {
        eprintln!("backup: cannot block signals: {e}");
        return ExitCode::from(2);
    }
    let fail = |msg: &str, code: u8| {
        eprintln!("backup: {}", dockhand::url::redact_text(msg));
        ExitCode::from(code)
    };
    if let Err(e) = dockhand::log::init("backup") {
        return fail(&e.to_string(), 2);
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return fail(&format!("{e}\nTry 'backup --help'."), 2),
    };
    match run(args, Arc::new(Cancel::new()), Arc::new(Stop::default())) {
        Ok(code) => ExitCode::from(code),
        Err((msg, code)) if msg.is_empty() => ExitCode::from(code),
        Err((msg, code)) => fail(&msg, code),
    }
}
