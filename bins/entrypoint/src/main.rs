//! `entrypoint`: container PID 1. Parses options, then hands over to
//! `dockhand::supervise`, which holds all of the init logic.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use dockhand::cli;
use dockhand::supervise::{self, Options};

const HELP: &str = "\
entrypoint: PID 1 for containers: forwards signals, reaps zombies, shuts down in order.

Usage: entrypoint [OPTIONS] [--] COMMAND [ARGS...]
       ENTRYPOINT [\"entrypoint\"] with the app as CMD

Options (each with its environment variable):
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

Shutdown begins when the app exits or SIGTERM/SIGINT arrives: the signal goes to the
app, then every remaining process gets SIGTERM; the wait ends as soon as all are gone,
and what is left after the grace is SIGKILLed (at once on a second SIGTERM/SIGINT).

Exit status: the app's (128+N when signal N killed it), after --remap-exit;
127 command not found, 126 command not executable, 2 invalid arguments.
";

enum Parsed {
    Run(Options),
    Exit(&'static str),
}

fn parse_args() -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut process_group = false;
    let mut rewrite = Vec::new();
    let mut remap = Vec::new();
    let mut stop_delay = None;
    let mut grace = None;
    let mut command: Vec<OsString> = Vec::new();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('g') | Long("process-group") => process_group = true,
            Long("rewrite") => rewrite.push(cli::value(&mut parser, "--rewrite")?),
            Long("remap-exit") => remap.push(cli::value(&mut parser, "--remap-exit")?),
            Long("stop-delay") => stop_delay = Some(cli::value(&mut parser, "--stop-delay")?),
            Long("grace") => grace = Some(cli::value(&mut parser, "--grace")?),
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
    if command.is_empty() {
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
    Ok(Parsed::Run(Options {
        command,
        process_group: cli::switch_or_env(process_group, "ENTRYPOINT_PROCESS_GROUP")?,
        rewrite,
        stop_delay: cli::duration_or_env(
            stop_delay,
            "--stop-delay",
            "ENTRYPOINT_STOP_DELAY",
            Duration::ZERO,
        )?,
        grace: cli::duration_or_env(
            grace,
            "--grace",
            "ENTRYPOINT_GRACE",
            Duration::from_secs(10),
        )?,
        remap_exit,
    }))
}

fn main() -> ExitCode {
    // First, before anything else can run: as PID 1 a signal without a handler is
    // dropped, a blocked one waits for us.
    let signals = supervise::block_signals();
    dockhand::config::install_panic_hook("entrypoint", 2);
    let fail = |msg: &str, code: u8| {
        eprintln!("entrypoint: {}", dockhand::url::redact_text(msg));
        ExitCode::from(code)
    };
    if let Err(e) = dockhand::log::init("entrypoint") {
        return fail(&e.to_string(), 2);
    }
    let opts = match parse_args() {
        Ok(Parsed::Run(o)) => o,
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
    match supervise::run(&opts, &signals) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(&e.message, e.code as u8),
    }
}
