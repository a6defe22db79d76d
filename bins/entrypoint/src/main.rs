//! `entrypoint`: container PID 1 (signal forwarding, reaping, start-up phases).
//! This release only answers --help and --version; supervision is being built.

use std::process::ExitCode;

const HELP: &str = "\
entrypoint: PID 1 for containers: waits for services, migrates, supervises the app.

Usage: entrypoint [OPTIONS] -- COMMAND [ARGS...]

Not implemented yet in this version: only --help and --version work.
Exit status: 2 for invalid arguments.
";

fn main() -> ExitCode {
    dockhand::config::install_panic_hook("entrypoint", 2);
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("entrypoint {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "entrypoint: {} is not supported yet in this version\nTry 'entrypoint --help'.",
                other.map_or("running a command".to_string(), |a| format!("{a:?}"))
            );
            ExitCode::from(2)
        }
    }
}
