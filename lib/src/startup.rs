//! The entrypoint's start-up phases, in order, each off unless configured: required
//! variables, `--chown`, waiting for services, migrations. (Secrets from `NAME_FILE`
//! are loaded earlier, by `main`, before any thread exists.)
//!
//! All signals are still blocked (see `supervise`): a SIGTERM, SIGINT or SIGQUIT that
//! arrives during start-up is read from a signalfd and ends start-up with 128+N. A
//! running `--migrate-cmd` gets that signal first and is waited for (up to the grace,
//! then SIGKILL) with the migration lock still held, so another replica can never run
//! its migration alongside one that is still shutting down. Every other signal stays
//! pending and is logged, not delivered, when supervision starts: there is no app yet
//! to give it to. The async runtime and connections used here are dropped before
//! supervising begins (and `main` re-executes itself to give their memory back).

use std::path::PathBuf;
use std::time::Duration;

use nix::libc;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::info;

use crate::error::{Error, Kind};
use crate::migrate::{self, MigrateError, Source};
use crate::pg::PgTarget;
use crate::privileges::Credentials;
use crate::probe::{HttpOptions, Target};
use crate::process::ChildGroup;
use crate::signals::{self, signal_name};
use crate::url::Url;

/// What to do before the app starts.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub require_env: Vec<String>,
    /// Wait targets as given; `postgres` means the migration (direct) URL.
    pub wait: Vec<String>,
    pub wait_timeout: Duration,
    pub migrate: Option<Source>,
    pub lock_timeout: Duration,
    /// `lock_timeout` for every migration statement (`--ddl-lock-timeout`).
    pub ddl_lock_timeout: Duration,
    pub allow_pooler: bool,
    pub user: Option<Credentials>,
    pub chown: Vec<PathBuf>,
    /// How long a `--migrate-cmd` may take to exit after a stop signal (`--grace`).
    pub grace: Duration,
    /// `--migrate-lint` and `--lint-min-size`.
    pub lint: migrate::lint::Policy,
}

impl Plan {
    /// True when a phase needs the async runtime.
    pub fn needs_runtime(&self) -> bool {
        !self.wait.is_empty() || self.migrate.is_some()
    }
}

/// Why start-up stopped; each kind has its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupKind {
    /// Invalid configuration (2).
    Config,
    /// A service did not become ready (3).
    Wait,
    /// Migrations failed (4).
    Migrate,
    /// `--chown` failed (5).
    Privileges,
    /// This signal arrived (128+N).
    Signal(i32),
}

impl Kind for StartupKind {
    fn exit_code(self) -> u8 {
        match self {
            StartupKind::Config => 2,
            StartupKind::Wait => 3,
            StartupKind::Migrate => 4,
            StartupKind::Privileges => 5,
            StartupKind::Signal(n) => (128 + n).clamp(0, 255) as u8,
        }
    }
}

/// Why start-up stopped.
pub type StartupError = Error<StartupKind>;

fn config(message: impl Into<String>) -> StartupError {
    StartupError::new(StartupKind::Config, message)
}

fn stopped_by(sig: i32) -> StartupError {
    StartupError::new(
        StartupKind::Signal(sig),
        format!("{} during start-up: stopped", signal_name(sig)),
    )
}

/// A failed migration phase, as start-up reports it.
fn migrate_failed(e: MigrateError) -> StartupError {
    e.into_kind(StartupKind::Migrate)
        .context("migration failed, the app was not started")
}

/// The migration to run: the raw migration URL and its target, and the source.
type Migration = ((String, PgTarget), Source);

/// Runs the plan.
pub fn run(plan: &Plan) -> Result<(), StartupError> {
    let stop_signals = stop_signalfd().map_err(|e| config(format!("cannot watch signals: {e}")))?;
    let stopped = || {
        stop_signals
            .read_signal()
            .ok()
            .flatten()
            .map(|i| i.ssi_signo as i32)
    };
    crate::secrets::require(&plan.require_env).map_err(|e| e.into_kind(StartupKind::Config))?;
    hand_over_paths(plan, &stopped)?;
    if let Some(sig) = stopped() {
        return Err(stopped_by(sig));
    }
    if !plan.needs_runtime() {
        return Ok(());
    }
    let (targets, migration) = resolve_targets(plan)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| config(format!("cannot start: {e}")))?;
    let running = ChildGroup::default();
    let phases = async {
        crate::wait::wait_all(&targets, &HttpOptions::default(), plan.wait_timeout)
            .await
            .map_err(|e| e.into_kind(StartupKind::Wait).context("waiting failed"))?;
        if let Some(((raw, target), source)) = &migration {
            let opts = migrate::Options {
                source: source.clone(),
                lock_timeout: plan.lock_timeout,
                ddl_lock_timeout: plan.ddl_lock_timeout,
                allow_pooler: plan.allow_pooler,
                user: plan.user.clone(),
                running: running.clone(),
                lint: plan.lint,
            };
            migrate::run(target, raw, &opts)
                .await
                .map_err(migrate_failed)?;
        }
        Ok(())
    };
    let result = rt.block_on(until_stopped(plan, phases, &running, stop_signals));
    rt.shutdown_background();
    result
}

/// `--chown`: hands each path to `--user`, stopping between entries when `stopped`
/// says a stop signal arrived.
fn hand_over_paths(plan: &Plan, stopped: &impl Fn() -> Option<i32>) -> Result<(), StartupError> {
    let Some(user) = &plan.user else {
        if !plan.chown.is_empty() {
            return Err(config("--chown needs --user (whom to give the paths to)"));
        }
        return Ok(());
    };
    for p in &plan.chown {
        let mut signal = None;
        let result = crate::privileges::chown_recursive(p, user, || {
            signal = signal.or_else(stopped);
            signal.is_some()
        });
        if let Some(sig) = signal {
            return Err(stopped_by(sig));
        }
        let n = result.map_err(|e| e.into_kind(StartupKind::Privileges))?;
        info!(
            "handed {} ({n} entries) to uid {} gid {}",
            p.display(),
            user.uid,
            user.gid
        );
    }
    Ok(())
}

/// The services to wait for and the migration to run, resolved before waiting on
/// anything; the migration URL (and its warnings) only when something uses it.
fn resolve_targets(plan: &Plan) -> Result<(Vec<Target>, Option<Migration>), StartupError> {
    let needs_direct = plan.migrate.is_some() || plan.wait.iter().any(|w| w == "postgres");
    let direct = if needs_direct {
        migrate::direct_url().map_err(|e| e.into_kind(StartupKind::Config))?
    } else {
        None
    };
    let direct_target = |what: &str| direct_target(direct.as_deref(), what);
    let mut targets = Vec::new();
    for w in &plan.wait {
        if w == "postgres" {
            targets.push(Target::Postgres(Box::new(
                direct_target("--wait postgres")?.1,
            )));
        } else {
            targets.push(
                Target::parse(w).map_err(|e| e.into_kind(StartupKind::Config).context("--wait"))?,
            );
        }
    }
    let migration = match &plan.migrate {
        Some(source) => Some((direct_target("migrating")?, source.clone())),
        None => None,
    };
    Ok((targets, migration))
}

/// Runs the start-up `phases` until they end or a stop signal arrives. A signal while
/// a `--migrate-cmd` runs is passed on to it, and the command gets `--grace` to exit
/// (under our lock) before it is killed; start-up stops with the signal either way.
async fn until_stopped(
    plan: &Plan,
    phases: impl std::future::Future<Output = Result<(), StartupError>>,
    running: &ChildGroup,
    stop_signals: SignalFd,
) -> Result<(), StartupError> {
    let mut signals = Signals::new(stop_signals);
    tokio::pin!(phases);
    let sig = tokio::select! {
        r = &mut phases => return r,
        sig = signals.next() => sig,
    };
    if !running.is_running() {
        return Err(stopped_by(sig));
    }
    // The migration command is running under our lock: it gets the signal, and
    // the lock is held until it has exited.
    info!(
        "received {} during --migrate-cmd: passing it on and waiting up to {} for the command (the migration lock stays held)",
        signal_name(sig),
        crate::duration::format(plan.grace)
    );
    pass_on(running, sig);
    let deadline = tokio::time::sleep(plan.grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut phases => return Err(stopped_by(sig)),
            _ = &mut deadline => break,
            again = signals.next() => {
                info!("received {}: passing it on to the migration command", signal_name(again));
                pass_on(running, again);
            }
        }
    }
    tracing::warn!(
        "the migration command did not exit within {}: killing it",
        crate::duration::format(plan.grace)
    );
    pass_on(running, libc::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut phases).await;
    Err(stopped_by(sig))
}

/// `--migrate-status`: prints each migration of the folder as applied, pending or
/// failed (with its logs and how to resolve it), and the format found; returns how many
/// are not applied. Takes no lock, changes nothing.
pub fn migrate_status(plan: &Plan) -> Result<usize, StartupError> {
    let Some(Source::Folder { dir, format }) = &plan.migrate else {
        return Err(config("--migrate-status needs --migrations DIR"));
    };
    let (format, states, findings) = read_status(plan, dir, *format)?;
    // a failed migration counts as not applied: exit 1, as for a pending one
    let pending = states
        .iter()
        .filter(|s| !s.applied || s.failed.is_some())
        .count();
    let out = status_report(plan, dir, format, &states, &findings, pending);
    // A closed pipe or a full disk must not hide the answer: the exit status (pending
    // or not) still says it; a write failure is said on stderr.
    if let crate::output::Written::Failed(e) = crate::output::stdout(&out) {
        tracing::warn!(
            "cannot write the status to stdout: {}",
            crate::error::io_reason(&e)
        );
    }
    // CI fails the build on what a start would refuse: exit 4, as the start would.
    if plan.lint.mode == migrate::lint::Mode::Error && findings.iter().any(|f| f.blocks) {
        return Err(migrate_failed(migrate::MigrateError::new(
            migrate::MigrateKind::Failed,
            "--migrate-lint error: a pending statement would lock a table larger than --lint-min-size (see the findings above)",
        )));
    }
    Ok(pending)
}

/// The folder's format, each migration's state in the database, and (unless lint is
/// off) the lint findings for the pending ones.
fn read_status(
    plan: &Plan,
    dir: &std::path::Path,
    format: Option<migrate::Format>,
) -> Result<
    (
        migrate::Format,
        Vec<migrate::Status>,
        Vec<migrate::lint::Finding>,
    ),
    StartupError,
> {
    let direct = migrate::direct_url().map_err(|e| e.into_kind(StartupKind::Config))?;
    let (_, target) = direct_target(direct.as_deref(), "--migrate-status")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| config(format!("cannot start: {e}")))?;
    let result = rt.block_on(async {
        let format = migrate::resolve_format(dir, format).map_err(migrate_failed)?;
        let mut client = migrate::connect_for_status(&target)
            .await
            .map_err(migrate_failed)?;
        migrate::prepare_session(&client, &target, format)
            .await
            .map_err(migrate_failed)?;
        let states = migrate::status(&mut client, dir, format)
            .await
            .map_err(migrate_failed)?;
        let findings = if plan.lint.mode == migrate::lint::Mode::Off {
            Vec::new()
        } else {
            let ctx =
                migrate::lint_context(format, plan.ddl_lock_timeout, plan.allow_pooler, &plan.lint);
            let scripts = migrate::pending_scripts(dir, format, &states).map_err(migrate_failed)?;
            migrate::lint::findings(&client, &scripts, &ctx)
                .await
                .map_err(migrate_failed)?
        };
        Ok::<_, StartupError>((format, states, findings))
    });
    rt.shutdown_background();
    result
}

/// The text `--migrate-status` prints: each migration's state, the counts, and the
/// lint findings when something is pending.
fn status_report(
    plan: &Plan,
    dir: &std::path::Path,
    format: migrate::Format,
    states: &[migrate::Status],
    findings: &[migrate::lint::Finding],
    pending: usize,
) -> String {
    let mut out = format!("{} migrations in {}:\n", format.name(), dir.display());
    for s in states {
        let state = match (&s.failed, s.applied) {
            (Some(_), _) => "failed",
            (None, true) => "applied",
            (None, false) => "pending",
        };
        out.push_str(&format!("  {state:<8} {}\n", s.name));
        if let Some(why) = &s.failed {
            out.push_str(&format!("           {why}\n"));
        }
    }
    let failed = states.iter().filter(|s| s.failed.is_some()).count();
    out.push_str(&format!(
        "{} applied, {}{} pending\n",
        states.len() - pending,
        if failed > 0 {
            format!("{failed} failed, ")
        } else {
            String::new()
        },
        pending.saturating_sub(failed)
    ));
    if plan.lint.mode != migrate::lint::Mode::Off && pending > 0 {
        out.push_str(&format!("migration lint: {} finding(s)\n", findings.len()));
        for f in findings {
            out.push_str(&format!("  {}{f}\n", if f.blocks { "BLOCKS " } else { "" }));
        }
    }
    out
}

/// The migration connection: the raw `DIRECT_URL` (or `DATABASE_URL`) and its target;
/// `what` names the option that needs it in the error.
fn direct_target(raw: Option<&str>, what: &str) -> Result<(String, PgTarget), StartupError> {
    let raw =
        raw.ok_or_else(|| config(format!("{what} needs DIRECT_URL (or DATABASE_URL) set")))?;
    let url = Url::parse(raw).map_err(|e| config(format!("DIRECT_URL: {e}")).with_source(e))?;
    let t = PgTarget::from_url(&url).map_err(|e| {
        e.into_kind(StartupKind::Config)
            .context(format!("DIRECT_URL {url}"))
    })?;
    Ok((raw.to_string(), t))
}

/// A signalfd for the signals that stop start-up (still blocked process-wide).
fn stop_signalfd() -> nix::Result<SignalFd> {
    SignalFd::with_flags(
        &signals::set_of(&signals::STOP),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
}

/// The stop signalfd, read on the runtime.
struct Signals(Option<tokio::io::unix::AsyncFd<SignalFd>>);

impl Signals {
    fn new(sfd: SignalFd) -> Signals {
        // SAFETY: the AsyncFd owns the signalfd, so the descriptor stays open for as
        // long as it is registered.
        Signals(unsafe { tokio::io::unix::AsyncFd::register(sfd) }.ok())
    }

    async fn next(&mut self) -> i32 {
        let Some(afd) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return std::future::pending().await;
            };
            if let Ok(Some(info)) = afd.get_ref().read_signal() {
                return info.ssi_signo as i32;
            }
            guard.clear_ready();
        }
    }
}

/// Sends `sig` to the running migration command's process group; an error other
/// than its having exited is logged (the shutdown goes on).
fn pass_on(running: &crate::process::ChildGroup, sig: i32) {
    if let Err(e) = running.signal(sig) {
        tracing::warn!(
            "cannot send {} to the migration command: {e}",
            signal_name(sig)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_exits_with_its_documented_status() {
        assert_eq!(config("x").exit_code(), 2);
        assert_eq!(StartupError::new(StartupKind::Wait, "x").exit_code(), 3);
        assert_eq!(StartupError::new(StartupKind::Migrate, "x").exit_code(), 4);
        assert_eq!(
            StartupError::new(StartupKind::Privileges, "x").exit_code(),
            5
        );
        let e = stopped_by(libc::SIGTERM);
        assert_eq!(e.exit_code(), 143);
        assert_eq!(e.message(), "SIGTERM during start-up: stopped");
    }

    #[test]
    fn the_direct_url_is_checked_before_anything_connects() {
        let e = direct_target(None, "--migrations").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("needs DIRECT_URL"), "{e}");
        let e = direct_target(Some("postgres://u:s3cret@h:port/db"), "x").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.message().contains("s3cret"), "{e}");
        let e = direct_target(Some("postgres://u:s3cret@h/db?sslmode=bogus"), "x").unwrap_err();
        assert!(e.message().starts_with("DIRECT_URL "), "{e}");
        assert!(!e.message().contains("s3cret"), "{e}");
        let (raw, t) = direct_target(Some("postgres://u:p@h:6543/db"), "x").unwrap();
        assert_eq!(raw, "postgres://u:p@h:6543/db");
        assert_eq!(t.dbname(), "db");
    }
}
