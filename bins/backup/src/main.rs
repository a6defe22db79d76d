//! `backup`: the PostgreSQL backup sidecar. Parses the command line and hands over to
//! `dockhand::cli::backup`; as PID 1 it first puts a small supervisor in front of
//! itself (the entrypoint's), which reaps orphans and forwards signals.

use std::process::ExitCode;

use dockhand::cli::{backup, Parsed};
use dockhand::{process, signals, supervise};

fn fail(msg: &str, code: u8) -> ExitCode {
    if !msg.is_empty() {
        eprintln!("backup: {}", dockhand::redact::text(msg));
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    process::install_panic_hook("backup", 1);
    dockhand::pg::set_application_name("dockhand-backup");
    // As PID 1: this same command runs as a supervised child, given the stop grace and
    // a little more to finish.
    let grace = || backup::supervisor_grace(std::env::args_os().skip(1));
    // SAFETY: first thing in main: this process has one thread.
    match unsafe { supervise::supervise_self("backup", "DOCKHAND_BACKUP_WORKER", grace) } {
        Some(Ok(code)) => return ExitCode::from(code.clamp(0, 255) as u8),
        Some(Err(e)) => return fail(e.message(), e.exit_code()),
        None => {}
    }
    // The AWS credential chain reads its variables itself: load their _FILE forms
    // (Docker secrets) first, while this process has one thread, by the same rule as
    // the entrypoint (dockhand's own variables and files under /run/secrets/).
    // SAFETY: no other thread exists yet (the runtime starts later).
    if let Err(e) = unsafe { dockhand::secrets::load_file_vars(&dockhand::secrets::FileVars::Auto) }
    {
        return fail(e.message(), e.exit_code());
    }
    // Before any thread starts, so every thread inherits the mask and only the
    // signal thread sees them.
    if let Err(e) = signals::set_of(&signals::BACKUP).thread_block() {
        return fail(&format!("cannot block signals: {e}"), 2);
    }
    if let Err(e) = dockhand::log::init("backup") {
        return fail(e.message(), e.exit_code());
    }
    match backup::command(std::env::args_os().skip(1)) {
        Ok(Parsed::Run((command, m))) => match backup::exec(&command, &m) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(e.message(), e.exit_code()),
        },
        Ok(Parsed::Help) => {
            ExitCode::from(dockhand::output::stdout(&backup::help()).exit_code("backup"))
        }
        Ok(Parsed::Version) => {
            let version = concat!("backup ", env!("CARGO_PKG_VERSION"), "\n");
            ExitCode::from(dockhand::output::stdout(version).exit_code("backup"))
        }
        Err(e) => fail(&format!("{}\nTry 'backup --help'.", e.message()), 2),
    }
}
