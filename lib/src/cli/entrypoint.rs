//! `entrypoint`'s table and arguments: the start-up plan and the supervision options.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{invalid, parse_pair, split_list, ConfigError};
use crate::flags::{parse_with, table, Matches, Parsed, Setting};
use crate::migrate::{split_command, Format, Source};
use crate::startup::Plan;
use crate::supervise::Options;

const START: &str = "start-up";
const SUPERVISE: &str = "supervision";

table! {
    /// Every flag and variable of `entrypoint`.
    pub enum Flag in TABLE {
        FileVars = Setting::var(
            "ENTRYPOINT_FILE_VARS",
            "which `NAME_FILE` variables are secrets: `auto` (files under `/run/secrets/` and dockhand's own variables), `all`, `none`, or `A,B`",
        )
        .default("auto")
        .section(START),
        RequireEnv = Setting::list("require-env", "A,B", "variables that must be set and non-empty")
            .env("ENTRYPOINT_REQUIRE_ENV")
            .section(START),
        Wait = Setting::list(
            "wait",
            "TARGET",
            "`postgres` (= `DIRECT_URL`), `postgres://...`, `tcp://HOST:PORT`, `http(s)://...` (2xx); repeatable",
        )
        .env("ENTRYPOINT_WAIT")
        .env_shown("`ENTRYPOINT_WAIT` (comma/space-separated)")
        .section(START),
        WaitTimeout = Setting::value("wait-timeout", "DURATION", "give up waiting (exit 3)")
            .env("ENTRYPOINT_WAIT_TIMEOUT")
            .default("60s")
            .section(START),
        Migrations = Setting::value("migrations", "DIR", "migrations folder")
            .env("ENTRYPOINT_MIGRATIONS")
            .section(START),
        MigrationsFormat = Setting::value(
            "migrations-format",
            "F",
            "`auto` (detect), `refinery`, `drizzle` (0.x or 1.0) or `prisma`",
        )
        .env("ENTRYPOINT_MIGRATIONS_FORMAT")
        .default("auto")
        .section(START),
        MigrateCmd = Setting::value(
            "migrate-cmd",
            "CMD",
            "the app's migration command, split into words like a shell (no expansion; use `sh -c '...'` for shell syntax)",
        )
        .env("ENTRYPOINT_MIGRATE_CMD")
        .section(START),
        LockTimeout = Setting::value(
            "lock-timeout",
            "DURATION",
            "give up waiting for another replica's migration, or retrying a migration blocked by live traffic (exit 4)",
        )
        .env("ENTRYPOINT_LOCK_TIMEOUT")
        .default("5m")
        .section(START),
        DdlLockTimeout = Setting::value(
            "ddl-lock-timeout",
            "DURATION",
            "`lock_timeout` of every migration statement (`0`: off); a blocked one is rolled back and retried",
        )
        .env("ENTRYPOINT_DDL_LOCK_TIMEOUT")
        .default("5s")
        .section(START),
        MigrateOnly = Setting::switch(
            "migrate-only",
            "secrets, wait, migrate, then exit 0 (or 3/4) without an app: a Kubernetes Job or initContainer, CI",
        )
        .env("ENTRYPOINT_MIGRATE_ONLY")
        .section(START),
        MigrateStatus = Setting::switch(
            "migrate-status",
            "print the folder's applied, pending and failed migrations (a failed one with its logs and how to resolve it); exit 0 when none is pending or failed, 1 otherwise; takes no lock, changes nothing",
        )
        .section(START),
        MigrateLint = Setting::value(
            "migrate-lint",
            "MODE",
            "check each pending statement against the live schema before applying: `warn` (log findings), `error` (refuse, exit 4, when one touches a table above `--lint-min-size`), `off`; allow one with `-- dockhand:allow RULE` on the line above it",
        )
        .env("ENTRYPOINT_MIGRATE_LINT")
        .default("warn")
        .section(START),
        LintMinSize = Setting::value(
            "lint-min-size",
            "SIZE",
            "findings on tables up to this size (`pg_total_relation_size`) only warn, even with `--migrate-lint error`",
        )
        .env("ENTRYPOINT_LINT_MIN_SIZE")
        .default(crate::migrate::lint::DEFAULT_MIN_SIZE)
        .section(START),
        AllowPooler = Setting::switch("allow-pooler", "migrate even through a transaction pooler")
            .env("ENTRYPOINT_ALLOW_POOLER")
            .section(START),
        User = Setting::value(
            "user",
            "USER[:GROUP]",
            "name or UID, resolved from `/etc/passwd` and `/etc/group` (no NSS); the app and `--migrate-cmd` run with its uid, gid, groups and `HOME`",
        )
        .short('u')
        .env("ENTRYPOINT_USER")
        .section(START),
        Chown = Setting::list(
            "chown",
            "PATH",
            "give PATH (recursively, links not followed) to `--user` first",
        )
        .env("ENTRYPOINT_CHOWN")
        .env_shown("`ENTRYPOINT_CHOWN` (comma-separated)")
        .section(START),
        DirectUrl = Setting::var(
            "DIRECT_URL",
            "the migration connection, as above; `sslmode` honoured as in `healthcheck`",
        )
        .env_shown("`DIRECT_URL`, `DATABASE_URL`")
        .section(START),
        Command = Setting::words(
            "COMMAND [ARGS...]",
            "the app; options end at the first word that is not an option, or at `--`",
        )
        .default_shown("(required)")
        .section(SUPERVISE),
        ProcessGroup = Setting::switch(
            "process-group",
            "forward signals to the app's process group (like `tini -g`, dumb-init's default)",
        )
        .short('g')
        .env("ENTRYPOINT_PROCESS_GROUP")
        .section(SUPERVISE),
        Rewrite = Setting::list(
            "rewrite",
            "FROM:TO",
            "send TO when FROM arrives, e.g. `TERM:QUIT` for nginx; `TO`=`0` drops FROM. Names (`TERM`, `SIGUSR1`, `RTMIN+3`) or numbers; repeatable, and a later FROM replaces an earlier one (as in dumb-init)",
        )
        .env("ENTRYPOINT_REWRITE")
        .env_shown("`ENTRYPOINT_REWRITE` (comma-separated)")
        .section(SUPERVISE),
        StopDelay = Setting::value(
            "stop-delay",
            "DURATION",
            "hold SIGTERM this long before passing it on, so a load balancer can drain first; other signals pass meanwhile; a second SIGTERM ends the delay",
        )
        .env("ENTRYPOINT_STOP_DELAY")
        .default("0")
        .section(SUPERVISE),
        Grace = Setting::value(
            "grace",
            "DURATION",
            "time for everything to exit once shutdown begins; then SIGKILL. Keep it below `docker stop -t` / `stop_grace_period`",
        )
        .env("ENTRYPOINT_GRACE")
        .default("10s")
        .section(SUPERVISE),
        RemapExit = Setting::list(
            "remap-exit",
            "FROM:TO",
            "exit TO when the app's status is FROM, e.g. `143:0` (like `tini -e 143`); repeatable, and a later FROM replaces an earlier one",
        )
        .env("ENTRYPOINT_REMAP_EXIT")
        .env_shown("`ENTRYPOINT_REMAP_EXIT` (comma-separated)")
        .section(SUPERVISE),
        RustLog = Setting::var(
            "RUST_LOG",
            "`error`, `warn`, `info`, `debug` (every forwarded signal)",
        )
        .default("info")
        .section(SUPERVISE),
        LogFormat = Setting::var("LOG_FORMAT", "`text` or `json` lines on stderr")
            .default("text")
            .section(SUPERVISE),
        Help = Setting::help().section(SUPERVISE),
    }
}

const INTRO: &str = "\
entrypoint: PID 1 for containers: secrets, wait for services, migrate over a direct
connection, drop privileges, then supervise the app (signals, zombies, ordered shutdown).

Usage: entrypoint [OPTIONS] [--] COMMAND [ARGS...]
       ENTRYPOINT [\"entrypoint\"] with the app as CMD
Each start-up phase is off unless configured. Every NAME_FILE variable of a secret is
read into NAME first. DIRECT_URL is the migration connection (DATABASE_URL, left to
the app, is the fallback).
";

const OUTRO: &str = "
Exit status: the app's (128+N when signal N killed it), after --remap-exit;
2 invalid options or environment, 3 a service never became ready, 4 migrations failed,
1 (--migrate-status) migrations are pending or failed,
5 --chown failed, 126 command not executable, 127 command not found,
128+N when signal N stopped start-up (143 for SIGTERM).
";

/// `--help`.
pub fn help() -> String {
    crate::flags::help(INTRO, TABLE, OUTRO)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Start-up, then supervise the app.
    Run(Box<(Plan, Options)>),
    /// `--migrate-only`: start-up, then exit.
    MigrateOnly(Box<Plan>),
    /// `--migrate-status`.
    Status(Box<Plan>),
}

/// Parses the arguments (without the program name) and the environment.
pub fn command(args: impl IntoIterator<Item = OsString>) -> Result<Parsed<Command>, ConfigError> {
    parse_with(args, true, |m| command_from(&m))
}

fn command_from(m: &Matches<Flag>) -> Result<Command, ConfigError> {
    let migrate_only = m.switch(Flag::MigrateOnly)?;
    let migrate_status = m.switch(Flag::MigrateStatus)?;
    if m.words.is_empty() && !migrate_only && !migrate_status {
        return Err(invalid("no command to run: give one after the options (entrypoint -- node server.js) or as the image's CMD"));
    }
    let (plan, opts) = plan_and_options(m)?;
    if !(migrate_status || migrate_only) {
        return Ok(Command::Run(Box::new((plan, opts))));
    }
    if !matches!(plan.migrate, Some(Source::Folder { .. })) && migrate_status {
        return Err(invalid(
            "--migrate-status needs --migrations DIR (a command's state is its own)",
        ));
    }
    if plan.migrate.is_none() {
        return Err(invalid(
            "--migrate-only needs --migrations DIR or --migrate-cmd CMD",
        ));
    }
    if !opts.command.is_empty() {
        return Err(invalid(format!(
            "--migrate-{} runs no app: leave out the command",
            if migrate_status { "status" } else { "only" }
        )));
    }
    Ok(if migrate_status {
        Command::Status(Box::new(plan))
    } else {
        Command::MigrateOnly(Box::new(plan))
    })
}

/// A FROM:TO table where a later FROM replaces an earlier one, as dumb-init's
/// `--rewrite` does (its table is indexed by FROM): `--rewrite USR1:HUP` in an image
/// and `--rewrite USR1:USR2` added on `docker run` means USR2.
fn last_wins(
    pairs: impl Iterator<Item = Result<(i32, i32), ConfigError>>,
) -> Result<Vec<(i32, i32)>, ConfigError> {
    let mut table: Vec<(i32, i32)> = Vec::new();
    for pair in pairs {
        let (from, to) = pair?;
        table.retain(|(f, _)| *f != from);
        table.push((from, to));
    }
    Ok(table)
}

fn plan_and_options(m: &Matches<Flag>) -> Result<(Plan, Options), ConfigError> {
    let rewrite = last_wins(
        m.list(Flag::Rewrite)?
            .iter()
            .map(|r| parse_pair(r, "--rewrite", |s| crate::signals::parse_signal(s, true))),
    )?;
    let remap_exit = last_wins(
        m.list(Flag::RemapExit)?
            .iter()
            .map(|r| parse_pair(r, "--remap-exit", crate::process::parse_exit_code)),
    )?;
    let user = m
        .string(Flag::User)?
        .map(|u| crate::privileges::resolve(&u).map_err(|e| e.context("--user")))
        .transpose()?;
    let migrate = match (m.string(Flag::Migrations)?, m.string(Flag::MigrateCmd)?) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "--migrations and --migrate-cmd are both set: choose one",
            ))
        }
        (Some(dir), None) => Some(Source::Folder {
            dir: PathBuf::from(dir),
            format: Format::parse(&m.string(Flag::MigrationsFormat)?.unwrap_or_default())?,
        }),
        (None, Some(cmd)) => Some(Source::Command(
            split_command(&cmd).map_err(|e| e.context("--migrate-cmd"))?,
        )),
        (None, None) => None,
    };
    let grace = m.duration(Flag::Grace)?;
    let plan = Plan {
        grace,
        require_env: m
            .list(Flag::RequireEnv)?
            .iter()
            .flat_map(|l| split_list(l).map(String::from).collect::<Vec<_>>())
            .collect(),
        wait: match m.flags(Flag::Wait) {
            given if !given.is_empty() => given,
            _ => m
                .string(Flag::Wait)?
                .map(|w| crate::probe::split_targets(&w))
                .unwrap_or_default(),
        },
        wait_timeout: m.duration(Flag::WaitTimeout)?,
        migrate,
        lock_timeout: m.duration(Flag::LockTimeout)?,
        ddl_lock_timeout: m.duration(Flag::DdlLockTimeout)?,
        allow_pooler: m.switch(Flag::AllowPooler)?,
        user: user.clone(),
        chown: m
            .list(Flag::Chown)?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        lint: lint_policy(m)?,
    };
    let opts = Options {
        command: m.words.clone(),
        process_group: m.switch(Flag::ProcessGroup)?,
        rewrite,
        stop_delay: m.duration(Flag::StopDelay)?,
        grace,
        remap_exit,
        user,
    };
    Ok((plan, opts))
}

/// `--migrate-lint` and `--lint-min-size`.
fn lint_policy(m: &Matches<Flag>) -> Result<crate::migrate::lint::Policy, ConfigError> {
    use crate::migrate::lint::{Mode, Policy};
    let mode = Mode::parse(&m.string(Flag::MigrateLint)?.unwrap_or_default())?;
    // (the row's default applies when neither flag nor variable is set)
    let s = m.string(Flag::LintMinSize)?.unwrap_or_default();
    let min_size = crate::config::parse_size(&s).ok_or_else(|| {
        invalid(format!(
            "--lint-min-size {s:?}: use a size such as 10MB, 512kB or 1048576 (bytes)"
        ))
    })?;
    Ok(Policy { mode, min_size })
}
