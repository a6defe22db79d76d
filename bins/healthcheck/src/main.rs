//! `healthcheck`: the Docker HEALTHCHECK probe. Exit 0 when every target is healthy,
//! 1 otherwise (usage errors included: Docker reserves 2), one line per failed target.

use std::io::Write;
use std::process::ExitCode;

use dockhand::cli::{healthcheck, Parsed};
use dockhand::probe;

/// Docker keeps 4096 bytes of a probe's output: keep each line short.
fn clip(line: &str) -> String {
    const MAX: usize = 400;
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// Docker keeps the first 4096 bytes of stdout and stderr together.
const MAX_OUTPUT: usize = 4096;

/// The report lines, clipped so that all of them fit in [`MAX_OUTPUT`] bytes: when
/// they do not, the last line says how many more failed.
fn bounded_output(lines: &[String]) -> String {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let line = clip(line);
        let left = lines.len() - i - 1;
        // room for this line and, if more follow, for the "... and N more" line
        let tail = if left > 0 { 40 } else { 0 };
        if out.len() + line.len() + 1 + tail > MAX_OUTPUT {
            out.push_str(&format!("... and {} more failing\n", lines.len() - i));
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One message on stderr; a closed stderr is ignored (eprintln! would panic).
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Writes `text` to stdout; a closed or full stdout is a failure, never a panic.
fn print(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn main() -> ExitCode {
    dockhand::process::install_panic_hook("healthcheck", 1);
    dockhand::pg::set_application_name("dockhand-healthcheck");
    let args = match healthcheck::command(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => return ExitCode::from(u8::from(!print(&healthcheck::help()))),
        Ok(Parsed::Version) => {
            let version = concat!("healthcheck ", env!("CARGO_PKG_VERSION"), "\n");
            return ExitCode::from(u8::from(!print(version)));
        }
        Err(e) => {
            say(&format!(
                "healthcheck: {}\nTry 'healthcheck --help'.",
                dockhand::redact::text(e.message())
            ));
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("healthcheck: cannot start: {e}"));
            return ExitCode::from(1);
        }
    };
    let reports = rt.block_on(probe::probe_all(&args.targets, &args.http, args.timeout));
    let healthy = reports.iter().all(|r| r.outcome.is_ok());
    // Failures first: they are what Docker's 4096 bytes must keep.
    let mut lines: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome.is_err())
        .map(|r| dockhand::redact::text(&r.to_string()))
        .collect();
    if args.verbose {
        lines.extend(
            reports
                .iter()
                .filter(|r| r.outcome.is_ok())
                .map(|r| r.to_string()),
        );
    }
    let written = print(&bounded_output(&lines));
    // Do not wait for lingering connection tasks or DNS threads.
    rt.shutdown_background();
    if healthy && written {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
