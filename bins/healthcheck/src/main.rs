//! `healthcheck`: the Docker HEALTHCHECK probe. Exit 0 when every target is healthy,
//! 1 otherwise (usage errors included: Docker reserves 2), one line per failed target.

use std::process::ExitCode;
use std::time::Duration;

use dockhand::probe::{self, HttpOptions, StatusSet, Target};
use dockhand::{cli, config};

const HELP: &str = "\
healthcheck: probe targets for a Docker HEALTHCHECK; exit 0 when all are healthy, 1 if not.

Usage: healthcheck [OPTIONS] [TARGET...]

Targets (from the arguments, else from HEALTHCHECK_URL, space- or comma-separated):
  http://HOST[:PORT]/PATH    GET; healthy on 2xx (see --expect-status, --expect-body)
  https://...                the same over TLS (rustls; system CAs or built-in roots)
  tcp://HOST:PORT            the port accepts a connection
  postgres://USER:PW@HOST[:PORT]/DB[?sslmode=...]
                             connects, authenticates and runs SELECT 1
  redis://[:PW@]HOST[:PORT]  PING answers PONG (rediss:// for TLS)
  file:///PATH[?max-age=26h] the file exists (and was modified within max-age)

Options (each with its environment variable):
  -t, --timeout DURATION     bound for the whole run, targets probed concurrently
                             [HEALTHCHECK_TIMEOUT, default 5s]
      --expect-status CODES  healthy HTTP statuses: 200, 200,204, 200-399, 2xx
                             [HEALTHCHECK_EXPECT_STATUS, default 2xx]
      --expect-body TEXT     the HTTP body (first 1 MiB) must contain TEXT
                             [HEALTHCHECK_EXPECT_BODY]
  -H, --header 'NAME: VALUE' extra HTTP request header, repeatable
                             [HEALTHCHECK_HEADERS, one per line]
  -k, --insecure             accept any HTTPS certificate (self-signed)
                             [HEALTHCHECK_INSECURE=true]
  -v, --verbose              also print healthy targets [HEALTHCHECK_VERBOSE=true]
  -h, --help                 this help
  -V, --version              the version

Any variable may be given as NAME_FILE, the path of a file holding its value.
Exit status: 0 healthy, 1 unhealthy or invalid arguments. Never 2 (reserved by Docker).
";

struct Args {
    targets: Vec<String>,
    timeout: Duration,
    http: HttpOptions,
    verbose: bool,
}

enum Parsed {
    Run(Args),
    Exit(&'static str),
}

fn parse_args() -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut targets = Vec::new();
    let mut timeout = None;
    let mut expect_status = None;
    let mut expect_body = None;
    let mut headers = Vec::new();
    let mut insecure = false;
    let mut verbose = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('t') | Long("timeout") => timeout = Some(cli::value(&mut parser, "--timeout")?),
            Long("expect-status") => {
                expect_status = Some(cli::value(&mut parser, "--expect-status")?)
            }
            Long("expect-body") => expect_body = Some(cli::value(&mut parser, "--expect-body")?),
            Short('H') | Long("header") => headers.push(cli::value(&mut parser, "--header")?),
            Short('k') | Long("insecure") => insecure = true,
            Short('v') | Long("verbose") => verbose = true,
            Short('h') | Long("help") => return Ok(Parsed::Exit(HELP)),
            Short('V') | Long("version") => {
                return Ok(Parsed::Exit(concat!(
                    "healthcheck ",
                    env!("CARGO_PKG_VERSION"),
                    "\n"
                )))
            }
            Value(v) => targets.push(
                v.into_string()
                    .map_err(|_| "a target is not valid UTF-8".to_string())?,
            ),
            other => return Err(format!("{}", other.unexpected())),
        }
    }
    if targets.is_empty() {
        if let Some(list) = cli::or_env(None, "HEALTHCHECK_URL")? {
            targets = probe::split_targets(&list);
        }
    }
    if targets.is_empty() {
        return Err("no target: give one (e.g. healthcheck http://localhost:3000/health) or set HEALTHCHECK_URL".into());
    }
    let timeout = cli::duration_or_env(
        timeout,
        "--timeout",
        "HEALTHCHECK_TIMEOUT",
        Duration::from_secs(5),
    )?;
    if timeout.is_zero() {
        return Err("--timeout must be more than 0".into());
    }
    let expect_status = match cli::or_env(expect_status, "HEALTHCHECK_EXPECT_STATUS")? {
        Some(s) => StatusSet::parse(&s).map_err(|e| format!("--expect-status: {e}"))?,
        None => StatusSet::default(),
    };
    let expect_body = cli::or_env(expect_body, "HEALTHCHECK_EXPECT_BODY")?;
    if headers.is_empty() {
        if let Some(h) = cli::or_env(None, "HEALTHCHECK_HEADERS")? {
            headers = h
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
        }
    }
    let headers = headers
        .iter()
        .map(|h| probe::parse_header(h).map_err(|e| format!("--header: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed::Run(Args {
        targets,
        timeout,
        http: HttpOptions {
            expect_status,
            expect_body,
            headers,
            insecure: cli::switch_or_env(insecure, "HEALTHCHECK_INSECURE")?,
        },
        verbose: cli::switch_or_env(verbose, "HEALTHCHECK_VERBOSE")?,
    }))
}

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
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn main() -> ExitCode {
    config::install_panic_hook("healthcheck", 1);
    dockhand::pg::set_application_name("dockhand-healthcheck");
    let args = match parse_args() {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Exit(text)) => {
            use std::io::Write;
            return match std::io::stdout().write_all(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            };
        }
        Err(e) => {
            say(&format!(
                "healthcheck: {}\nTry 'healthcheck --help'.",
                dockhand::url::redact_text(&e)
            ));
            return ExitCode::from(1);
        }
    };
    let mut targets = Vec::new();
    for t in &args.targets {
        match Target::parse(t) {
            Ok(t) => targets.push(t),
            Err(e) => {
                say(&format!("healthcheck: {}", dockhand::url::redact_text(&e)));
                return ExitCode::from(1);
            }
        }
    }
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
    let reports = rt.block_on(probe::probe_all(&targets, &args.http, args.timeout));
    let healthy = reports.iter().all(|r| r.outcome.is_ok());
    // Failures first: they are what Docker's 4096 bytes must keep.
    let mut lines: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome.is_err())
        .map(|r| dockhand::url::redact_text(&r.to_string()))
        .collect();
    if args.verbose {
        lines.extend(
            reports
                .iter()
                .filter(|r| r.outcome.is_ok())
                .map(|r| r.to_string()),
        );
    }
    // A closed or full stdout is a failed probe (exit 1), never a panic.
    let written = {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(bounded_output(&lines).as_bytes())
            .and_then(|()| out.flush())
    };
    // Do not wait for lingering connection tasks or DNS threads.
    rt.shutdown_background();
    if healthy && written.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
