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
connection, drop privileges, then supervise the app (signals, zombies, ordered
shutdown).

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
            // the error quotes the command, which may hold a URL with a password
            split_command(&cmd)
                .map_err(|e| e.context("--migrate-cmd").map_message(crate::redact::text))?,
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

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;
    use std::time::Duration;

    use nix::libc;

    use super::*;
    use crate::flags::{parse_with_vars, Key};
    use crate::migrate::lint::Mode;

    /// The command line `args` with the variables `vars` (never the process's).
    fn parse(args: &[&str], vars: &[(&str, &str)]) -> Result<Parsed<Command>, ConfigError> {
        parse_os(args.iter().map(OsString::from).collect(), vars)
    }

    fn parse_os(
        args: Vec<OsString>,
        vars: &[(&str, &str)],
    ) -> Result<Parsed<Command>, ConfigError> {
        parse_with_vars(args, true, vars, |m| command_from(&m))
    }

    /// What an app's start-up and supervision would be.
    fn run(args: &[&str], vars: &[(&str, &str)]) -> (Plan, Options) {
        match parse(args, vars) {
            Ok(Parsed::Run(Command::Run(b))) => *b,
            other => panic!("{args:?} {vars:?}: expected an app to run, got {other:?}"),
        }
    }

    /// The message of the error `args` and `vars` give.
    fn error(args: &[&str], vars: &[(&str, &str)]) -> String {
        match parse(args, vars) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.message().to_string()
            }
            Ok(p) => panic!("{args:?} {vars:?}: expected an error, got {p:?}"),
        }
    }

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_defaults_apply_when_nothing_is_set() {
        let (plan, opts) = run(&["node", "server.js"], &[]);
        assert!(plan.require_env.is_empty());
        assert!(plan.wait.is_empty());
        assert_eq!(plan.wait_timeout, Duration::from_secs(60));
        assert!(plan.migrate.is_none());
        assert_eq!(plan.lock_timeout, Duration::from_secs(300));
        assert_eq!(plan.ddl_lock_timeout, Duration::from_secs(5));
        assert!(!plan.allow_pooler);
        assert!(plan.user.is_none() && opts.user.is_none());
        assert!(plan.chown.is_empty());
        assert_eq!(plan.grace, Duration::from_secs(10));
        assert_eq!(plan.lint.mode, Mode::Warn);
        assert_eq!(plan.lint.min_size, 10 << 20);
        assert!(!plan.needs_runtime());
        assert_eq!(opts.command, os(&["node", "server.js"]));
        assert!(!opts.process_group);
        assert!(opts.rewrite.is_empty());
        assert_eq!(opts.stop_delay, Duration::ZERO);
        assert_eq!(opts.grace, Duration::from_secs(10));
        assert!(opts.remap_exit.is_empty());
    }

    #[test]
    fn every_flag_reaches_its_setting() {
        let (plan, opts) = run(
            &[
                "--require-env",
                "A,B",
                "--require-env=C",
                "--wait",
                "postgres",
                "--wait",
                "tcp://cache:6379",
                "--wait-timeout",
                "90s",
                "--migrations",
                "/app/migrations",
                "--migrations-format",
                "drizzle",
                "--lock-timeout",
                "2m",
                "--ddl-lock-timeout",
                "0",
                "--allow-pooler",
                "--migrate-lint",
                "error",
                "--lint-min-size",
                "512kB",
                "-u",
                "4242:4343",
                "--chown",
                "/data",
                "--chown",
                "/cache",
                "-g",
                "--rewrite",
                "TERM:QUIT",
                "--stop-delay",
                "1500ms",
                "--grace",
                "30",
                "--remap-exit",
                "143:0",
                "nginx",
                "-g",
                "daemon off;",
            ],
            &[],
        );
        assert_eq!(plan.require_env, ["A", "B", "C"]);
        assert_eq!(plan.wait, ["postgres", "tcp://cache:6379"]);
        assert_eq!(plan.wait_timeout, Duration::from_secs(90));
        match &plan.migrate {
            Some(Source::Folder { dir, format }) => {
                assert_eq!(dir, &PathBuf::from("/app/migrations"));
                assert_eq!(*format, Some(Format::Drizzle));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(plan.lock_timeout, Duration::from_secs(120));
        assert_eq!(plan.ddl_lock_timeout, Duration::ZERO);
        assert!(plan.allow_pooler);
        assert_eq!(plan.lint.mode, Mode::Error);
        assert_eq!(plan.lint.min_size, 512 << 10);
        let user = plan.user.as_ref().unwrap();
        assert_eq!((user.uid, user.gid), (4242, 4343));
        assert_eq!(
            opts.user.as_ref().map(|u| (u.uid, u.gid)),
            Some((4242, 4343))
        );
        assert_eq!(
            plan.chown,
            [PathBuf::from("/data"), PathBuf::from("/cache")]
        );
        assert!(plan.needs_runtime());
        assert!(opts.process_group);
        assert_eq!(opts.rewrite, [(libc::SIGTERM, libc::SIGQUIT)]);
        assert_eq!(opts.stop_delay, Duration::from_millis(1500));
        assert_eq!(plan.grace, Duration::from_secs(30));
        assert_eq!(opts.grace, Duration::from_secs(30));
        assert_eq!(opts.remap_exit, [(143, 0)]);
        // the app's own options stay the app's, `-g` included
        assert_eq!(opts.command, os(&["nginx", "-g", "daemon off;"]));
    }

    #[test]
    fn every_variable_reaches_its_setting() {
        let (plan, opts) = run(
            &["app"],
            &[
                ("ENTRYPOINT_REQUIRE_ENV", "A, B\nC"),
                (
                    "ENTRYPOINT_WAIT",
                    "postgres,tcp://cache:6379 postgres://u:pw@h1,h2/db",
                ),
                ("ENTRYPOINT_WAIT_TIMEOUT", "2m"),
                (
                    "ENTRYPOINT_MIGRATE_CMD",
                    "sh -c 'npx prisma migrate deploy'",
                ),
                ("ENTRYPOINT_LOCK_TIMEOUT", "1h"),
                ("ENTRYPOINT_DDL_LOCK_TIMEOUT", "250ms"),
                ("ENTRYPOINT_ALLOW_POOLER", "yes"),
                ("ENTRYPOINT_MIGRATE_LINT", "off"),
                ("ENTRYPOINT_LINT_MIN_SIZE", "1G"),
                ("ENTRYPOINT_USER", "4242"),
                ("ENTRYPOINT_CHOWN", "/data,/cache"),
                ("ENTRYPOINT_PROCESS_GROUP", "true"),
                ("ENTRYPOINT_REWRITE", "TERM:QUIT, USR1:0"),
                ("ENTRYPOINT_STOP_DELAY", "5s"),
                ("ENTRYPOINT_GRACE", "1m"),
                ("ENTRYPOINT_REMAP_EXIT", "143:0,1:3"),
            ],
        );
        assert_eq!(plan.require_env, ["A", "B", "C"]);
        // the variable is split as targets: a PostgreSQL URL keeps its host list
        assert_eq!(
            plan.wait,
            ["postgres", "tcp://cache:6379", "postgres://u:pw@h1,h2/db"]
        );
        assert_eq!(plan.wait_timeout, Duration::from_secs(120));
        match &plan.migrate {
            Some(Source::Command(argv)) => {
                assert_eq!(argv, &["sh", "-c", "npx prisma migrate deploy"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(plan.lock_timeout, Duration::from_secs(3600));
        assert_eq!(plan.ddl_lock_timeout, Duration::from_millis(250));
        assert!(plan.allow_pooler);
        assert_eq!(plan.lint.mode, Mode::Off);
        assert_eq!(plan.lint.min_size, 1 << 30);
        assert_eq!(plan.user.as_ref().map(|u| u.uid), Some(4242));
        assert_eq!(
            plan.chown,
            [PathBuf::from("/data"), PathBuf::from("/cache")]
        );
        assert!(opts.process_group);
        assert_eq!(
            opts.rewrite,
            [(libc::SIGTERM, libc::SIGQUIT), (libc::SIGUSR1, 0)]
        );
        assert_eq!(opts.stop_delay, Duration::from_secs(5));
        assert_eq!(opts.grace, Duration::from_secs(60));
        assert_eq!(opts.remap_exit, [(143, 0), (1, 3)]);
        assert_eq!(opts.command, os(&["app"]));
    }

    #[test]
    fn a_flag_wins_over_its_variable_and_an_empty_variable_is_unset() {
        let vars = [
            ("ENTRYPOINT_GRACE", "7s"),
            ("ENTRYPOINT_WAIT", "tcp://env:1"),
            ("ENTRYPOINT_REWRITE", "USR1:USR2"),
            ("ENTRYPOINT_PROCESS_GROUP", "false"),
            ("ENTRYPOINT_STOP_DELAY", ""),
        ];
        let (plan, opts) = run(
            &[
                "--grace",
                "3s",
                "--wait",
                "tcp://flag:2",
                "--rewrite",
                "HUP:TERM",
                "-g",
                "app",
            ],
            &vars,
        );
        assert_eq!(plan.grace, Duration::from_secs(3));
        assert_eq!(plan.wait, ["tcp://flag:2"]);
        assert_eq!(opts.rewrite, [(libc::SIGHUP, libc::SIGTERM)]);
        assert!(opts.process_group);
        assert_eq!(opts.stop_delay, Duration::ZERO);
        let (plan, opts) = run(&["app"], &vars);
        assert_eq!(plan.grace, Duration::from_secs(7));
        assert_eq!(plan.wait, ["tcp://env:1"]);
        assert_eq!(opts.rewrite, [(libc::SIGUSR1, libc::SIGUSR2)]);
        assert!(!opts.process_group);
    }

    #[test]
    fn a_name_file_variable_holds_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        };
        let grace = file("grace", "45s\n");
        let cmd = file("cmd", "pnpm db:migrate\r\n");
        let (plan, opts) = run(
            &["app"],
            &[
                ("ENTRYPOINT_GRACE_FILE", &grace),
                ("ENTRYPOINT_MIGRATE_CMD_FILE", &cmd),
            ],
        );
        assert_eq!(opts.grace, Duration::from_secs(45));
        match plan.migrate {
            Some(Source::Command(argv)) => assert_eq!(argv, ["pnpm", "db:migrate"]),
            other => panic!("{other:?}"),
        }
        // the flag still wins over the file
        let (plan, _) = run(
            &["--grace", "1s", "app"],
            &[("ENTRYPOINT_GRACE_FILE", &grace)],
        );
        assert_eq!(plan.grace, Duration::from_secs(1));
        assert_eq!(
            error(
                &["app"],
                &[
                    ("ENTRYPOINT_GRACE", "1s"),
                    ("ENTRYPOINT_GRACE_FILE", &grace)
                ]
            ),
            "both ENTRYPOINT_GRACE and ENTRYPOINT_GRACE_FILE are set: unset one of them"
        );
        let missing = dir.path().join("missing");
        let e = error(
            &["app"],
            &[("ENTRYPOINT_WAIT_FILE", missing.to_str().unwrap())],
        );
        assert!(e.starts_with("ENTRYPOINT_WAIT_FILE: cannot read "), "{e}");
        // a file's value is checked like any other, and named by its setting
        let bad = file("bad", "soon\n");
        let e = error(&["app"], &[("ENTRYPOINT_STOP_DELAY_FILE", &bad)]);
        assert!(
            e.starts_with("--stop-delay / ENTRYPOINT_STOP_DELAY: invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn given_twice_the_last_value_or_every_item_counts() {
        let (plan, opts) = run(
            &[
                "--grace",
                "1s",
                "--grace",
                "2s",
                "-g",
                "-g",
                "--wait",
                "tcp://a:1",
                "--wait",
                "tcp://b:2",
                "--chown",
                "/x",
                "--chown",
                "/x",
                "app",
            ],
            &[],
        );
        assert_eq!(plan.grace, Duration::from_secs(2));
        assert!(opts.process_group);
        assert_eq!(plan.wait, ["tcp://a:1", "tcp://b:2"]);
        assert_eq!(plan.chown, [PathBuf::from("/x"), PathBuf::from("/x")]);
        // a later FROM replaces an earlier one, and moves to the end
        let (_, opts) = run(
            &[
                "--rewrite",
                "USR1:HUP",
                "--rewrite",
                "TERM:QUIT",
                "--rewrite",
                "SIGUSR1:USR2",
                "--remap-exit",
                "143:0",
                "--remap-exit",
                "1:3",
                "--remap-exit",
                "143:1",
                "app",
            ],
            &[],
        );
        assert_eq!(
            opts.rewrite,
            [
                (libc::SIGTERM, libc::SIGQUIT),
                (libc::SIGUSR1, libc::SIGUSR2)
            ]
        );
        assert_eq!(opts.remap_exit, [(1, 3), (143, 1)]);
        // in one variable too
        let (_, opts) = run(&["app"], &[("ENTRYPOINT_REMAP_EXIT", "143:0 143:2")]);
        assert_eq!(opts.remap_exit, [(143, 2)]);
    }

    #[test]
    fn options_end_at_the_first_word_or_at_double_dash() {
        let (plan, opts) = run(&["--", "--grace", "x", "-h"], &[]);
        assert_eq!(opts.command, os(&["--grace", "x", "-h"]));
        assert_eq!(plan.grace, Duration::from_secs(10));
        let (_, opts) = run(&["-g", "--", "app", "--", "-g"], &[]);
        assert!(opts.process_group);
        assert_eq!(opts.command, os(&["app", "--", "-g"]));
        // after the command, even a bad option or --help is the app's
        let (_, opts) = run(&["app", "--bogus", "--help", "--version"], &[]);
        assert_eq!(opts.command, os(&["app", "--bogus", "--help", "--version"]));
        // a command that is not UTF-8 is passed on as it is
        let word = OsString::from_vec(b"caf\xe9".to_vec());
        match parse_os(vec![word.clone(), "x".into()], &[]) {
            Ok(Parsed::Run(Command::Run(b))) => assert_eq!(b.1.command, [word, "x".into()]),
            other => panic!("{other:?}"),
        }
        let no_command = "no command to run: give one after the options (entrypoint -- node server.js) or as the image's CMD";
        assert_eq!(error(&[], &[]), no_command);
        assert_eq!(error(&["--"], &[]), no_command);
        assert_eq!(error(&["-g", "--grace", "1s"], &[]), no_command);
    }

    #[test]
    fn help_and_version_come_before_everything_else() {
        let bad = [
            ("ENTRYPOINT_GRACE", "soon"),
            ("ENTRYPOINT_MIGRATE_ONLY", "maybe"),
        ];
        for args in [
            &["--help"][..],
            &["-h"],
            &["-g", "--grace", "x", "-h"],
            &["-h", "--bogus"],
        ] {
            assert!(
                matches!(parse(args, &bad), Ok(Parsed::Help)),
                "{args:?}: {:?}",
                parse(args, &bad)
            );
        }
        for args in [&["--version"][..], &["-V"], &["-V", "app"]] {
            assert!(
                matches!(parse(args, &bad), Ok(Parsed::Version)),
                "{args:?}: {:?}",
                parse(args, &bad)
            );
        }
    }

    #[test]
    fn unknown_or_malformed_options_say_which() {
        assert_eq!(error(&["--bogus", "app"], &[]), "invalid option '--bogus'");
        assert_eq!(error(&["-z", "app"], &[]), "invalid option '-z'");
        // a row without a flag is no flag, whatever its name
        assert_eq!(
            error(&["--RUST_LOG", "app"], &[]),
            "invalid option '--RUST_LOG'"
        );
        assert_eq!(error(&["--grace"], &[]), "--grace needs a value");
        assert_eq!(error(&["-u"], &[]), "--user needs a value");
        let e = error(&["--migrate-only=yes", "app"], &[]);
        assert!(e.contains("--migrate-only"), "{e}");
        let bytes = OsString::from_vec(b"1\xffs".to_vec());
        let e = parse_os(vec!["--grace".into(), bytes, "app".into()], &[]).unwrap_err();
        assert_eq!(e.message(), "--grace: the value is not valid UTF-8");
        // `--flag=value` is the flag's value
        let (plan, _) = run(&["--grace=4s", "app"], &[]);
        assert_eq!(plan.grace, Duration::from_secs(4));
    }

    #[test]
    fn bad_values_name_the_setting_and_what_to_write() {
        let says = |args: &[&str]| error(args, &[]);
        let e = says(&["--grace", "soon", "app"]);
        assert_eq!(
            e,
            "--grace / ENTRYPOINT_GRACE: invalid duration \"soon\": use a number with a unit, e.g. 500ms, 5s, 2m, 26h, 7d, 1h30m"
        );
        for (flag, var) in [
            ("--wait-timeout", "ENTRYPOINT_WAIT_TIMEOUT"),
            ("--lock-timeout", "ENTRYPOINT_LOCK_TIMEOUT"),
            ("--ddl-lock-timeout", "ENTRYPOINT_DDL_LOCK_TIMEOUT"),
            ("--stop-delay", "ENTRYPOINT_STOP_DELAY"),
        ] {
            let e = says(&[flag, "-1s", "app"]);
            assert!(
                e.starts_with(&format!("{flag} / {var}: invalid duration \"-1s\"")),
                "{e}"
            );
            let e = error(&["app"], &[(var, "5 minutes")]);
            assert!(
                e.starts_with(&format!("{flag} / {var}: invalid duration")),
                "{e}"
            );
        }
        assert_eq!(
            error(&["app"], &[("ENTRYPOINT_MIGRATE_ONLY", "maybe")]),
            "ENTRYPOINT_MIGRATE_ONLY=\"maybe\" is not a boolean: use true or false"
        );
        assert_eq!(
            error(&["app"], &[("ENTRYPOINT_PROCESS_GROUP", "2")]),
            "ENTRYPOINT_PROCESS_GROUP=\"2\" is not a boolean: use true or false"
        );
        assert_eq!(
            says(&["--rewrite", "TERM", "app"]),
            "invalid --rewrite \"TERM\": use FROM:TO"
        );
        assert!(says(&["--rewrite", "TERM:BOGUS", "app"])
            .starts_with("unknown signal \"BOGUS\": use a name such as TERM"));
        assert_eq!(
            says(&["--remap-exit", "143:256", "app"]),
            "invalid exit status \"256\": use a number from 0 to 255"
        );
        assert_eq!(
            error(&["app"], &[("ENTRYPOINT_REMAP_EXIT", "143")]),
            "invalid --remap-exit \"143\": use FROM:TO"
        );
        assert_eq!(
            says(&["--migrate-lint", "loud", "app"]),
            "--migrate-lint \"loud\": use warn, error or off"
        );
        assert_eq!(
            says(&["--lint-min-size", "10XB", "app"]),
            "--lint-min-size \"10XB\": use a size such as 10MB, 512kB or 1048576 (bytes)"
        );
        assert_eq!(
            says(&["--migrations", "m", "--migrations-format", "yaml", "app"]),
            "--migrations-format \"yaml\": use auto, refinery, drizzle or prisma"
        );
        assert_eq!(
            says(&["--migrations", "m", "--migrate-cmd", "x", "app"]),
            "--migrations and --migrate-cmd are both set: choose one"
        );
        assert_eq!(
            error(
                &["--migrations", "m", "app"],
                &[("ENTRYPOINT_MIGRATE_CMD", "x")]
            ),
            "--migrations and --migrate-cmd are both set: choose one"
        );
        assert_eq!(
            says(&["--migrate-cmd", "   ", "app"]),
            "--migrate-cmd: the migration command is empty"
        );
        assert_eq!(
            says(&["--migrate-cmd", "sh -c 'x", "app"]),
            "--migrate-cmd: unclosed ' in \"sh -c 'x\""
        );
        assert_eq!(
            says(&["--user", "", "app"]),
            "--user: invalid user \"\": use NAME, UID, NAME:GROUP or UID:GID"
        );
        assert_eq!(
            says(&["-u", "1000:", "app"]),
            "--user: invalid user \"1000:\": use NAME, UID, NAME:GROUP or UID:GID"
        );
    }

    #[test]
    fn migrate_only_and_status_need_migrations_and_no_app() {
        match parse(&["--migrate-only", "--migrations", "/m"], &[]) {
            Ok(Parsed::Run(Command::MigrateOnly(plan))) => {
                assert!(matches!(plan.migrate, Some(Source::Folder { .. })))
            }
            other => panic!("{other:?}"),
        }
        match parse(
            &["--migrate-cmd", "pnpm migrate"],
            &[("ENTRYPOINT_MIGRATE_ONLY", "1")],
        ) {
            Ok(Parsed::Run(Command::MigrateOnly(plan))) => {
                assert!(matches!(plan.migrate, Some(Source::Command(_))))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["--migrate-status", "--migrations", "/m"], &[]) {
            Ok(Parsed::Run(Command::Status(plan))) => {
                assert!(matches!(plan.migrate, Some(Source::Folder { .. })))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error(&["--migrate-only"], &[]),
            "--migrate-only needs --migrations DIR or --migrate-cmd CMD"
        );
        assert_eq!(
            error(&["--migrate-status"], &[]),
            "--migrate-status needs --migrations DIR (a command's state is its own)"
        );
        assert_eq!(
            error(&["--migrate-status", "--migrate-cmd", "x"], &[]),
            "--migrate-status needs --migrations DIR (a command's state is its own)"
        );
        assert_eq!(
            error(&["--migrate-only", "--migrations", "/m", "app"], &[]),
            "--migrate-only runs no app: leave out the command"
        );
        assert_eq!(
            error(&["--migrate-status", "--migrations", "/m", "app"], &[]),
            "--migrate-status runs no app: leave out the command"
        );
        // `--migrate-status` has no variable: setting one that looks like it does nothing
        assert_eq!(
            error(&[], &[("ENTRYPOINT_MIGRATE_STATUS", "1"), ("ENTRYPOINT_MIGRATIONS", "/m")]),
            "no command to run: give one after the options (entrypoint -- node server.js) or as the image's CMD"
        );
    }

    #[test]
    fn hostile_values_are_refused_or_kept_never_a_panic() {
        let huge = "x".repeat(1 << 20);
        let (plan, _) = run(&["--wait", &huge, "--chown", &huge, "app"], &[]);
        assert_eq!(plan.wait, [huge.as_str()]);
        assert_eq!(plan.chown, [PathBuf::from(&huge)]);
        for d in [
            "99999999999999999999",
            "99999999999999999999s",
            "1e400s",
            "1.5.5s",
            "NaNs",
            "\u{1F600}",
            &huge,
        ] {
            let e = error(&["--wait-timeout", d, "app"], &[]);
            assert!(
                e.starts_with("--wait-timeout / ENTRYPOINT_WAIT_TIMEOUT: invalid duration"),
                "{e}"
            );
        }
        for size in ["18446744073709551615G", "99999999999999999999", "-1", ""] {
            let e = error(&["--lint-min-size", size, "app"], &[]);
            assert!(e.starts_with("--lint-min-size "), "{e}");
        }
        for pair in [":", "::", "TERM:", ":TERM", "RTMIN+:TERM", "TERM:TERM:TERM"] {
            let e = error(&["--rewrite", pair, "app"], &[]);
            assert!(e.starts_with("unknown signal "), "{pair}: {e}");
        }
        let e = error(&["--remap-exit", "99999999999999999999:0", "app"], &[]);
        assert!(e.starts_with("invalid exit status "), "{e}");
        // an empty flag value is a value, and checked as one
        let e = error(&["--grace", "", "app"], &[]);
        assert!(
            e.starts_with("--grace / ENTRYPOINT_GRACE: invalid duration \"\""),
            "{e}"
        );
        let e = error(&["--migrate-cmd", "", "app"], &[]);
        assert_eq!(e, "--migrate-cmd: the migration command is empty");
    }

    #[test]
    fn a_password_in_a_bad_value_stays_out_of_the_error() {
        let pw = "Pw/?#@:%zz";
        let url = format!("postgres://app:{pw}@db:5432/app");
        let e = error(
            &["--migrate-cmd", &format!("psql {url} -c 'select 1"), "app"],
            &[],
        );
        assert!(e.starts_with("--migrate-cmd: unclosed ' in "), "{e}");
        assert!(!e.contains("Pw"), "{e}");
        assert!(e.contains("postgres://app:***@db:5432/app"), "{e}");
        // a URL given as a wait target is kept as given, for start-up to check
        let (plan, _) = run(&["--wait", &url, "app"], &[]);
        assert_eq!(plan.wait, [url.as_str()]);
        let (plan, _) = run(&["app"], &[("ENTRYPOINT_WAIT", &url)]);
        assert_eq!(plan.wait, [url]);
    }

    #[test]
    fn help_lists_every_flag_and_variable_within_88_columns() {
        let h = help();
        assert!(h.starts_with(INTRO) && h.ends_with(OUTRO), "{h}");
        crate::flags::assert_help_covers(&h, TABLE);
        assert!(h.contains("  -u, --user USER[:GROUP]"), "{h}");
        assert!(h.contains("[ENTRYPOINT_GRACE, default 10s]"), "{h}");
        assert!(h.contains("\nSupervision:\n"), "{h}");
        // every key is its own row
        assert_eq!(Flag::User.row().short, Some('u'));
        assert_eq!(Flag::Grace.row().env, "ENTRYPOINT_GRACE");
        assert_eq!(Flag::Help.index(), TABLE.len() - 1);
    }
}
