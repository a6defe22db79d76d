//! `backup`: the PostgreSQL backup sidecar (daemon, now, list, verify, restore, prune).
//! This release only answers --help and --version; the commands are being built.

use std::process::ExitCode;

const HELP: &str = "\
backup: scheduled, streamed pg_dump backups to a folder and S3-compatible storage.

Usage: backup [daemon|now|list|verify|restore|prune] [OPTIONS]

Not implemented yet in this version: only --help and --version work.
Exit status: 2 for an unknown command or invalid arguments.
";

fn main() -> ExitCode {
    dockhand::config::install_panic_hook("backup", 2);
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("backup {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "backup: {} is not supported yet in this version\nTry 'backup --help'.",
                other.map_or("the daemon".to_string(), |a| format!("command {a:?}"))
            );
            ExitCode::from(2)
        }
    }
}
