//! `entrypoint`: container PID 1. Parses options, runs the start-up phases
//! (`dockhand::startup`), re-executes itself to shed their memory, then hands over to
//! `dockhand::supervise`, which holds all of the init logic.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dockhand::cli;
use dockhand::migrate::{split_command, Format, Source};
use dockhand::startup::{self, Plan};
use dockhand::supervise::{self, Options};

/// Internal: the first argument after a re-exec, meaning "start-up is done".
const SUPERVISE_ONLY: &str = "--internal-supervise-only";

const HELP: &str = "\
entrypoint: PID 1 for containers: secrets, wait for services, migrate over a direct
connection, drop privileges, then supervise the app (signals, zombies, ordered shutdown).

Usage: entrypoint [OPTIONS] [--] COMMAND [ARGS...]
       ENTRYPOINT [\"entrypoint\"] with the app as CMD

Start-up (each phase off unless configured; each option has its environment variable):
      --require-env A,B      fail at once, listing every one that is unset
                             [ENTRYPOINT_REQUIRE_ENV]
      --wait TARGET          wait for postgres (the direct URL), postgres://..., tcp://HOST:PORT,
                             http(s)://...; repeatable, all in parallel [ENTRYPOINT_WAIT]
      --wait-timeout DUR     give up waiting after this [ENTRYPOINT_WAIT_TIMEOUT, default 60s]
      --migrations DIR       apply the migrations in DIR over DIRECT_URL
                             [ENTRYPOINT_MIGRATIONS]
      --migrations-format F  auto, refinery (V1__name.sql), drizzle (0.x journal or 1.0
                             folders) or prisma [ENTRYPOINT_MIGRATIONS_FORMAT, default auto]
      --migrate-cmd CMD      run the app's own migration tool with DATABASE_URL set to the
                             direct URL, under the lock [ENTRYPOINT_MIGRATE_CMD]
      --lock-timeout DUR     give up waiting for another replica's migration lock, or
                             retrying a migration blocked by live traffic
                             [ENTRYPOINT_LOCK_TIMEOUT, default 5m]
      --ddl-lock-timeout DUR lock_timeout of every migration statement (0: off), so a
                             blocked ALTER never queues the app's queries for long
                             [ENTRYPOINT_DDL_LOCK_TIMEOUT, default 5s]
      --migrate-only         secrets, wait, migrate, then exit (a Kubernetes Job or
                             initContainer, CI) [ENTRYPOINT_MIGRATE_ONLY]
      --migrate-status       print applied and pending migrations; exit 0 when none is
                             pending, 1 when some are; no lock, no change
      --allow-pooler         migrate even through a transaction pooler [ENTRYPOINT_ALLOW_POOLER]
  -u, --user USER[:GROUP]    run the app (and --migrate-cmd) as this user [ENTRYPOINT_USER]
      --chown PATH           give PATH to that user first; repeatable [ENTRYPOINT_CHOWN]
Every NAME_FILE variable is read into NAME first (ENTRYPOINT_FILE_VARS=all|none|A,B).
DIRECT_URL is the migration connection (DATABASE_URL, left to the app, is the fallback).

Supervision:
  -g, --process-group        forward signals to the app's whole process group
                             [ENTRYPOINT_PROCESS_GROUP=true]
      --rewrite FROM:TO      send TO when FROM arrives (TERM:QUIT; TO=0 drops it);
                             repeatable [ENTRYPOINT_REWRITE, comma-separated]
      --stop-delay DURATION  hold SIGTERM this long before passing it on, so a load
                             balancer can drain first [ENTRYPOINT_STOP_DELAY, default 0]
      --grace DURATION       time for everything to exit once shutdown begins, then
                             SIGKILL [ENTRYPOINT_GRACE, default 10s]
      --remap-exit FROM:TO   exit TO when the app exits FROM (143:0); repeatable
                             [ENTRYPOINT_REMAP_EXIT, comma-separated]
  -h, --help                 this help
  -V, --version              the version
Logging: RUST_LOG=error|warn|info|debug, LOG_FORMAT=text|json (stderr).

Exit status: the app's (128+N when signal N killed it), after --remap-exit;
2 invalid options or environment, 3 a service never became ready, 4 migrations failed,
1 (--migrate-status) migrations are pending,
5 --chown failed, 126 command not executable, 127 command not found,
128+N when signal N stopped start-up (143 for SIGTERM).
";

enum Parsed {
    Run(Box<(Plan, Options)>),
    /// `--migrate-only`: start-up, then exit.
    MigrateOnly(Box<Plan>),
    /// `--migrate-status`.
    Status(Box<Plan>),
    Exit(&'static str),
}

fn parse_args(args: Vec<OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut process_group = false;
    let mut allow_pooler = false;
    let (mut migrate_only, mut migrate_status) = (false, false);
    let mut ddl_lock_timeout = None;
    let (mut rewrite, mut remap, mut wait, mut chown) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut stop_delay, mut grace, mut wait_timeout, mut lock_timeout) = (None, None, None, None);
    let (mut require, mut migrations, mut format, mut migrate_cmd, mut user) =
        (None, None, None, None, None);
    let mut command: Vec<OsString> = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('g') | Long("process-group") => process_group = true,
            Long("rewrite") => rewrite.push(cli::value(&mut parser, "--rewrite")?),
            Long("remap-exit") => remap.push(cli::value(&mut parser, "--remap-exit")?),
            Long("stop-delay") => stop_delay = Some(cli::value(&mut parser, "--stop-delay")?),
            Long("grace") => grace = Some(cli::value(&mut parser, "--grace")?),
            Long("require-env") => require = Some(cli::value(&mut parser, "--require-env")?),
            Long("wait") => wait.push(cli::value(&mut parser, "--wait")?),
            Long("wait-timeout") => wait_timeout = Some(cli::value(&mut parser, "--wait-timeout")?),
            Long("migrations") => migrations = Some(cli::value(&mut parser, "--migrations")?),
            Long("migrations-format") => {
                format = Some(cli::value(&mut parser, "--migrations-format")?)
            }
            Long("migrate-cmd") => migrate_cmd = Some(cli::value(&mut parser, "--migrate-cmd")?),
            Long("lock-timeout") => lock_timeout = Some(cli::value(&mut parser, "--lock-timeout")?),
            Long("allow-pooler") => allow_pooler = true,
            Long("migrate-only") => migrate_only = true,
            Long("migrate-status") => migrate_status = true,
            Long("ddl-lock-timeout") => {
                ddl_lock_timeout = Some(cli::value(&mut parser, "--ddl-lock-timeout")?)
            }
            Short('u') | Long("user") => user = Some(cli::value(&mut parser, "--user")?),
            Long("chown") => chown.push(cli::value(&mut parser, "--chown")?),
            Short('h') | Long("help") => return Ok(Parsed::Exit(HELP)),
            Short('V') | Long("version") => {
                return Ok(Parsed::Exit(concat!(
                    "entrypoint ",
                    env!("CARGO_PKG_VERSION"),
                    "\n"
                )))
            }
            Value(first) => {
                // The command starts here: everything after it is its own.
                command.push(first);
                command.extend(parser.raw_args().map_err(|e| e.to_string())?);
                break;
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let migrate_only = cli::switch_or_env(migrate_only, "ENTRYPOINT_MIGRATE_ONLY")?;
    if command.is_empty() && !migrate_only && !migrate_status {
        return Err("no command to run: give one after the options (entrypoint -- node server.js) or as the image's CMD".into());
    }
    let rewrite = cli::list_or_env(rewrite, "ENTRYPOINT_REWRITE")?
        .iter()
        .map(|r| supervise::parse_pair(r, "--rewrite", |s| supervise::parse_signal(s, true)))
        .collect::<Result<Vec<_>, _>>()?;
    let remap_exit = cli::list_or_env(remap, "ENTRYPOINT_REMAP_EXIT")?
        .iter()
        .map(|r| supervise::parse_pair(r, "--remap-exit", supervise::parse_exit_code))
        .collect::<Result<Vec<_>, _>>()?;
    let user = cli::or_env(user, "ENTRYPOINT_USER")?
        .map(|u| dockhand::privileges::resolve(&u).map_err(|e| format!("--user: {e}")))
        .transpose()?;
    let wait = if wait.is_empty() {
        cli::or_env(None, "ENTRYPOINT_WAIT")?
            .map(|w| dockhand::probe::split_targets(&w))
            .unwrap_or_default()
    } else {
        wait
    };
    let migrations = cli::or_env(migrations, "ENTRYPOINT_MIGRATIONS")?;
    let migrate_cmd = cli::or_env(migrate_cmd, "ENTRYPOINT_MIGRATE_CMD")?;
    let format = cli::or_env(format, "ENTRYPOINT_MIGRATIONS_FORMAT")?;
    let migrate = match (migrations, migrate_cmd) {
        (Some(_), Some(_)) => {
            return Err("--migrations and --migrate-cmd are both set: choose one".into())
        }
        (Some(dir), None) => Some(Source::Folder {
            dir: PathBuf::from(dir),
            format: Format::parse(format.as_deref().unwrap_or("auto"))?,
        }),
        (None, Some(cmd)) => Some(Source::Command(
            split_command(&cmd).map_err(|e| format!("--migrate-cmd: {e}"))?,
        )),
        (None, None) => None,
    };
    let grace = cli::duration_or_env(
        grace,
        "--grace",
        "ENTRYPOINT_GRACE",
        Duration::from_secs(10),
    )?;
    let plan = Plan {
        grace,
        require_env: cli::list_or_env(require.into_iter().collect(), "ENTRYPOINT_REQUIRE_ENV")?
            .iter()
            .flat_map(|l| {
                dockhand::config::split_list(l)
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect(),
        wait,
        wait_timeout: cli::duration_or_env(
            wait_timeout,
            "--wait-timeout",
            "ENTRYPOINT_WAIT_TIMEOUT",
            Duration::from_secs(60),
        )?,
        migrate,
        lock_timeout: cli::duration_or_env(
            lock_timeout,
            "--lock-timeout",
            "ENTRYPOINT_LOCK_TIMEOUT",
            Duration::from_secs(300),
        )?,
        ddl_lock_timeout: cli::duration_or_env(
            ddl_lock_timeout,
            "--ddl-lock-timeout",
            "ENTRYPOINT_DDL_LOCK_TIMEOUT",
            Duration::from_secs(5),
        )?,
        allow_pooler: cli::switch_or_env(allow_pooler, "ENTRYPOINT_ALLOW_POOLER")?,
        user: user.clone(),
        chown: cli::list_or_env(chown, "ENTRYPOINT_CHOWN")?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
    };
    let opts = Options {
        command,
        process_group: cli::switch_or_env(process_group, "ENTRYPOINT_PROCESS_GROUP")?,
        rewrite,
        stop_delay: cli::duration_or_env(
            stop_delay,
            "--stop-delay",
            "ENTRYPOINT_STOP_DELAY",
            Duration::ZERO,
        )?,
        grace,
        remap_exit,
        user,
    };
    if migrate_status || migrate_only {
        if !matches!(plan.migrate, Some(Source::Folder { .. })) && migrate_status {
            return Err(
                "--migrate-status needs --migrations DIR (a command's state is its own)".into(),
            );
        }
        if plan.migrate.is_none() {
            return Err("--migrate-only needs --migrations DIR or --migrate-cmd CMD".into());
        }
        if !opts.command.is_empty() {
            return Err(format!(
                "--migrate-{} runs no app: leave out the command",
                if migrate_status { "status" } else { "only" }
            ));
        }
        return Ok(if migrate_status {
            Parsed::Status(Box::new(plan))
        } else {
            Parsed::MigrateOnly(Box::new(plan))
        });
    }
    Ok(Parsed::Run(Box::new((plan, opts))))
}

/// Replaces this process with a fresh copy of itself that only supervises: the start-up
/// runtime, connections and buffers are gone, the PID (1) stays, and the blocked and
/// pending signals carry over. Returns only if that cannot be done (no /proc).
fn reexec_supervisor() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStringExt;
    let mut argv = vec![CString::new(SUPERVISE_ONLY).unwrap_or_default()];
    argv.splice(
        0..0,
        std::env::args_os()
            .take(1)
            .filter_map(|a| CString::new(a.into_vec()).ok()),
    );
    argv.extend(
        std::env::args_os()
            .skip(1)
            .filter_map(|a| CString::new(a.into_vec()).ok()),
    );
    let exe = c"/proc/self/exe";
    let err = nix::unistd::execv(exe, &argv);
    tracing::debug!("could not re-execute for supervision ({err:?}); supervising in place");
}

fn main() -> ExitCode {
    // First, before anything else can run: as PID 1 a signal without a handler is
    // dropped, a blocked one waits for us.
    let signals = supervise::block_signals();
    dockhand::config::install_panic_hook("entrypoint", 2);
    let fail = |msg: &str, code: i32| {
        eprintln!("entrypoint: {}", dockhand::url::redact_text(msg));
        ExitCode::from(code.clamp(0, 255) as u8)
    };
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let supervise_only = args.first().is_some_and(|a| a == SUPERVISE_ONLY);
    if supervise_only {
        args.remove(0);
    } else {
        // Secrets first, before any thread exists, so everything after sees them.
        let which = dockhand::secrets::FileVars::parse(
            &std::env::var("ENTRYPOINT_FILE_VARS").unwrap_or_default(),
        );
        // SAFETY: no other thread exists yet (the runtime starts in startup::run).
        if let Err(e) = unsafe { dockhand::secrets::load_file_vars(&which) } {
            return fail(&e.to_string(), 2);
        }
    }
    if let Err(e) = dockhand::log::init("entrypoint") {
        return fail(&e.to_string(), 2);
    }
    dockhand::pg::set_application_name("dockhand-entrypoint");
    let (plan, opts) = match parse_args(args) {
        Ok(Parsed::Run(p)) => *p,
        Ok(Parsed::MigrateOnly(plan)) => {
            return match startup::run(&plan) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string(), e.exit_code()),
            }
        }
        Ok(Parsed::Status(plan)) => {
            return match startup::migrate_status(&plan) {
                Ok(pending) => ExitCode::from(u8::from(pending > 0)),
                Err(e) => fail(&e.to_string(), e.exit_code()),
            }
        }
        Ok(Parsed::Exit(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&format!("{e}\nTry 'entrypoint --help'."), 2),
    };
    let signals = match signals {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot block signals: {e}"), 2),
    };
    if !supervise_only {
        if let Err(e) = startup::run(&plan) {
            return fail(&e.to_string(), e.exit_code());
        }
        if plan.needs_runtime() {
            reexec_supervisor();
        }
    }
    match supervise::run(&opts, &signals) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(&e.message, e.code),
    }
}
