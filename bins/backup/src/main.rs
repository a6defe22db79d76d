//! `backup`: the PostgreSQL backup sidecar. This version has `now`, `list` and
//! `verify` for a local folder; the daemon, S3, encryption, retention and restore are
//! being built.

use std::path::PathBuf;
use std::process::ExitCode;

use dockhand::backup::{archive, catalog, dump, status};
use dockhand::cli;
use dockhand::url::Url;
use tracing::{error, info};

const HELP: &str = "\
backup: streamed pg_dump backups, compressed with zstd, checksummed, written atomically.

Usage: backup now      [OPTIONS]   one backup now; exit status says if it succeeded
       backup list     [OPTIONS]   the backups in the folder
       backup verify   NAME|latest checksum, then a full read by pg_restore
Not built yet in this version: the scheduled daemon (backup, backup daemon), S3 upload,
age encryption, retention (backup prune), backup restore.

Options (each with its environment variable):
      --dir DIR              the backup folder [BACKUP_DIR, required]
      --level N              zstd level 1-19 [BACKUP_ZSTD_LEVEL, default 3]
      --threads N            zstd worker threads, 0 = one [BACKUP_ZSTD_THREADS, default: cores]
      --status-file FILE     status JSON whose mtime is the last success
                             [BACKUP_STATUS_FILE]
  -h, --help                 this help
  -V, --version              the version
Database: DIRECT_URL (PostgreSQL itself: PgBouncer in transaction mode breaks pg_dump),
else DATABASE_URL. pg_dump: BACKUP_PG_BIN, /usr/lib/postgresql/N/bin, PATH; at least the
server's major version. Any variable may be given as NAME_FILE.
Logging: RUST_LOG, LOG_FORMAT=text|json (stderr).

Exit status: 0 success, 1 the backup or verification failed, 2 invalid arguments.
";

struct Args {
    command: String,
    name: Option<String>,
    dir: PathBuf,
    level: i32,
    threads: u32,
    status_file: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let (mut command, mut name) = (None, None);
    let (mut dir, mut level, mut threads, mut status_file) = (None, None, None, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("dir") => dir = Some(cli::value(&mut parser, "--dir")?),
            Long("level") => level = Some(cli::value(&mut parser, "--level")?),
            Long("threads") => threads = Some(cli::value(&mut parser, "--threads")?),
            Long("status-file") => status_file = Some(cli::value(&mut parser, "--status-file")?),
            Short('h') | Long("help") => {
                print!("{HELP}");
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
                } else if name.is_none() {
                    name = Some(v);
                } else {
                    return Err(format!("unexpected argument {v:?}"));
                }
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let command = command.unwrap_or_else(|| "daemon".into());
    match command.as_str() {
        "now" | "list" | "verify" => {}
        "daemon" | "restore" | "prune" => {
            return Err(format!("`backup {command}` is not built yet in this version: use `backup now` from your scheduler"))
        }
        other => return Err(format!("unknown command {other:?}: use now, list or verify")),
    }
    if command == "verify" && name.is_none() {
        return Err("backup verify needs a backup name or `latest`".into());
    }
    let dir = cli::or_env(dir, "BACKUP_DIR")?.ok_or("no backup folder: set BACKUP_DIR or --dir")?;
    let level = match cli::or_env(level, "BACKUP_ZSTD_LEVEL")? {
        Some(l) => l
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=19).contains(l))
            .ok_or_else(|| {
                format!("--level / BACKUP_ZSTD_LEVEL {l:?}: use a number from 1 to 19")
            })?,
        None => 3,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let threads = match cli::or_env(threads, "BACKUP_ZSTD_THREADS")? {
        Some(t) => t.parse::<u32>().ok().filter(|t| *t <= 256).ok_or_else(|| {
            format!("--threads / BACKUP_ZSTD_THREADS {t:?}: use a number from 0 to 256")
        })?,
        None => cores,
    };
    Ok(Some(Args {
        command,
        name,
        dir: PathBuf::from(dir),
        level,
        threads,
        status_file: cli::or_env(status_file, "BACKUP_STATUS_FILE")?.map(PathBuf::from),
    }))
}

fn database_url() -> Result<Url, String> {
    let raw = match cli::or_env(None, "DIRECT_URL")? {
        Some(u) => u,
        None => cli::or_env(None, "DATABASE_URL")?
            .ok_or("no database: set DIRECT_URL (or DATABASE_URL)")?,
    };
    Url::parse(&raw).map_err(|e| format!("DIRECT_URL: {e}"))
}

fn run(args: &Args) -> Result<(), String> {
    match args.command.as_str() {
        "now" => {
            let url = database_url()?;
            let opts = archive::Options {
                dir: args.dir.clone(),
                level: args.level,
                threads: args.threads,
            };
            match archive::run(&url, &opts) {
                Ok(m) => {
                    info!(
                        "backup {} done: {} of dump stored as {}, sha256 {}",
                        m.file,
                        catalog::human_size(m.dump_bytes),
                        catalog::human_size(m.size),
                        m.sha256
                    );
                    if let Some(p) = &args.status_file {
                        status::success(p, &m).map_err(|e| e.0)?;
                    }
                    Ok(())
                }
                Err(e) => {
                    if let Some(p) = &args.status_file {
                        if let Err(se) = status::failure(p, &e.0) {
                            error!("cannot write the status file: {se}");
                        }
                    }
                    Err(format!("backup failed: {e}"))
                }
            }
        }
        "list" => {
            print!(
                "{}",
                catalog::table(&catalog::list(&args.dir).map_err(|e| e.0)?)
            );
            Ok(())
        }
        "verify" => {
            let m = catalog::find(&args.dir, args.name.as_deref().unwrap_or("latest"))
                .map_err(|e| e.0)?;
            let major: u32 = m
                .pg_dump_version
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.split('.').next()?.parse().ok())
                .unwrap_or(0);
            let tools = dump::find_tools(major).map_err(|e| e.0)?;
            catalog::verify(&args.dir, &m, &tools.pg_restore)
                .map_err(|e| format!("verify failed: {e}"))?;
            info!("{}: checksum and full read by pg_restore ok", m.file);
            Ok(())
        }
        _ => unreachable!("checked in parse_args"),
    }
}

fn main() -> ExitCode {
    dockhand::config::install_panic_hook("backup", 1);
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
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}
