//! `entrypoint`: container PID 1. Reads secrets and options, runs the start-up phases
//! (`dockhand::startup`), re-executes itself to shed their memory, then hands over to
//! `dockhand::supervise`, which holds all of the init logic.

use std::ffi::OsString;
use std::process::ExitCode;

use dockhand::cli::entrypoint::{self, Command};
use dockhand::cli::Parsed;
use dockhand::{process, signals, startup, supervise};

/// Internal: the first argument after a re-exec, meaning "start-up is done".
const SUPERVISE_ONLY: &str = "--internal-supervise-only";

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("entrypoint: {}", dockhand::redact::text(msg));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    // First, before anything else can run: as PID 1 a signal without a handler is
    // dropped, a blocked one waits for us.
    let blocked = signals::block_all();
    process::install_panic_hook("entrypoint", 2);
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
            return fail(e.message(), e.exit_code());
        }
    }
    if let Err(e) = dockhand::log::init("entrypoint") {
        return fail(e.message(), e.exit_code());
    }
    dockhand::pg::set_application_name("dockhand-entrypoint");
    let (plan, opts) = match entrypoint::command(args) {
        Ok(Parsed::Run(Command::Run(p))) => *p,
        Ok(Parsed::Run(Command::MigrateOnly(plan))) => {
            return match startup::run(&plan) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.message(), e.exit_code()),
            }
        }
        Ok(Parsed::Run(Command::Status(plan))) => {
            return match startup::migrate_status(&plan) {
                Ok(pending) => ExitCode::from(u8::from(pending > 0)),
                Err(e) => fail(e.message(), e.exit_code()),
            }
        }
        Ok(Parsed::Help) => {
            return ExitCode::from(
                dockhand::output::stdout(&entrypoint::help()).exit_code("entrypoint"),
            );
        }
        Ok(Parsed::Version) => {
            let version = concat!("entrypoint ", env!("CARGO_PKG_VERSION"), "\n");
            return ExitCode::from(dockhand::output::stdout(version).exit_code("entrypoint"));
        }
        Err(e) => {
            let msg = format!("{}\nTry 'entrypoint --help'.", e.message());
            return fail(&msg, e.exit_code());
        }
    };
    let blocked = match blocked {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot block signals: {e}"), 2),
    };
    if !supervise_only {
        if let Err(e) = startup::run(&plan) {
            return fail(e.message(), e.exit_code());
        }
        if plan.needs_runtime() {
            let e = process::reexec_self(SUPERVISE_ONLY);
            tracing::debug!("could not re-execute for supervision ({e}); supervising in place");
        }
    }
    match supervise::run(&opts, &blocked) {
        Ok(code) => process::exit_now(code.clamp(0, 255)),
        Err(e) => fail(e.message(), e.exit_code()),
    }
}
