//! `healthcheck`'s table and arguments.

use std::ffi::OsString;
use std::time::Duration;

use super::{parse_with, Matches, Parsed, Setting};
use crate::config::{invalid, ConfigError};
use crate::probe::{self, HttpOptions, StatusSet, Target};

/// Every flag and variable of `healthcheck`.
pub static TABLE: &[Setting] = &[
    Setting::words(
        "TARGET...",
        "targets; the env var is space- or comma-separated",
    )
    .env("HEALTHCHECK_URL")
    .default_shown("(required)"),
    Setting::value(
        "timeout",
        "DURATION",
        "bound for the whole run (`500ms`, `5s`, `1m`)",
    )
    .short('t')
    .env("HEALTHCHECK_TIMEOUT")
    .default("5s"),
    Setting::value(
        "expect-status",
        "CODES",
        "healthy HTTP statuses: `200`, `200,204`, `200-399`, `2xx`",
    )
    .env("HEALTHCHECK_EXPECT_STATUS")
    .default("2xx"),
    Setting::value(
        "expect-body",
        "TEXT",
        "the HTTP body (first 1 MiB) must contain TEXT; it is read only until it does, so a body that never ends (server-sent events) works",
    )
    .env("HEALTHCHECK_EXPECT_BODY"),
    Setting::list(
        "header",
        "'NAME: VALUE'",
        "extra request header, repeatable",
    )
    .short('H')
    .env("HEALTHCHECK_HEADERS")
    .env_shown("`HEALTHCHECK_HEADERS` (one per line)")
    .lines(),
    Setting::switch("insecure", "accept any HTTPS certificate")
        .short('k')
        .env("HEALTHCHECK_INSECURE"),
    Setting::switch("verbose", "also print healthy targets")
        .short('v')
        .env("HEALTHCHECK_VERBOSE"),
    Setting::var(
        "SSL_CERT_FILE",
        "PEM file of CA certificates to trust for HTTPS/`rediss`",
    ),
    Setting::var(
        "DOCKHAND_HOSTS",
        "hosts file to read instead of `/etc/hosts`",
    )
    .default("/etc/hosts"),
    Setting::help(),
];

const INTRO: &str = "\
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
";

const OUTRO: &str = "
Any variable may be given as NAME_FILE, the path of a file holding its value.
Exit status: 0 healthy, 1 unhealthy or invalid arguments. Never 2 (reserved by Docker).
";

/// `--help`.
pub fn help() -> String {
    super::help(INTRO, TABLE, OUTRO)
}

/// What to probe, and how.
pub struct Args {
    pub targets: Vec<Target>,
    pub timeout: Duration,
    pub http: HttpOptions,
    pub verbose: bool,
}

/// Parses the arguments (without the program name) and the environment.
pub fn command(args: impl IntoIterator<Item = OsString>) -> Result<Parsed<Box<Args>>, ConfigError> {
    parse_with(TABLE, args, false, |m| args_from(&m).map(Box::new))
}

fn args_from(m: &Matches) -> Result<Args, ConfigError> {
    let mut targets = m.words_utf8("a target is not valid UTF-8")?;
    if targets.is_empty() {
        if let Some(list) = crate::config::var("HEALTHCHECK_URL")? {
            targets = probe::split_targets(&list);
        }
    }
    if targets.is_empty() {
        return Err(invalid("no target: give one (e.g. healthcheck http://localhost:3000/health) or set HEALTHCHECK_URL"));
    }
    let timeout = m.duration("timeout")?;
    if timeout.is_zero() {
        return Err(invalid("--timeout must be more than 0"));
    }
    let expect_status = match m.string("expect-status")? {
        Some(s) => StatusSet::parse(&s).map_err(|e| e.context("--expect-status"))?,
        None => StatusSet::default(),
    };
    let headers = m
        .list("header")?
        .iter()
        .map(|h| probe::parse_header(h).map_err(|e| e.context("--header")))
        .collect::<Result<Vec<_>, _>>()?;
    let http = HttpOptions {
        expect_status,
        expect_body: m.string("expect-body")?,
        headers,
        insecure: m.switch("insecure")?,
    };
    let verbose = m.switch("verbose")?;
    let targets = targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Args {
        targets,
        timeout,
        http,
        verbose,
    })
}
