//! `healthcheck`'s table and arguments.

use std::ffi::OsString;
use std::time::Duration;

use crate::config::{invalid, ConfigError};
use crate::flags::{parse_with, table, Matches, Parsed, Setting};
use crate::probe::{self, HttpOptions, StatusSet, Target};

table! {
    /// Every flag and variable of `healthcheck`.
    pub enum Flag in TABLE {
        Targets = Setting::words(
            "TARGET...",
            "targets; the env var is space- or comma-separated",
        )
        .env("HEALTHCHECK_URL")
        .default_shown("(required)"),
        Timeout = Setting::value(
            "timeout",
            "DURATION",
            "bound for the whole run (`500ms`, `5s`, `1m`)",
        )
        .short('t')
        .env("HEALTHCHECK_TIMEOUT")
        .default("5s"),
        ExpectStatus = Setting::value(
            "expect-status",
            "CODES",
            "healthy HTTP statuses: `200`, `200,204`, `200-399`, `2xx`",
        )
        .env("HEALTHCHECK_EXPECT_STATUS")
        .default("2xx"),
        ExpectBody = Setting::value(
            "expect-body",
            "TEXT",
            "the HTTP body (first 1 MiB) must contain TEXT; it is read only until it does, so a body that never ends (server-sent events) works",
        )
        .env("HEALTHCHECK_EXPECT_BODY"),
        Header = Setting::list(
            "header",
            "'NAME: VALUE'",
            "extra request header, repeatable",
        )
        .short('H')
        .env("HEALTHCHECK_HEADERS")
        .env_shown("`HEALTHCHECK_HEADERS` (one per line)")
        .lines(),
        Insecure = Setting::switch("insecure", "accept any HTTPS certificate")
            .short('k')
            .env("HEALTHCHECK_INSECURE"),
        Verbose = Setting::switch("verbose", "also print healthy targets")
            .short('v')
            .env("HEALTHCHECK_VERBOSE"),
        SslCertFile = Setting::var(
            "SSL_CERT_FILE",
            "PEM file of CA certificates to trust for HTTPS/`rediss`",
        ),
        Hosts = Setting::var(
            "DOCKHAND_HOSTS",
            "hosts file to read instead of `/etc/hosts`",
        )
        .default(crate::net::DEFAULT_HOSTS),
        Help = Setting::help(),
    }
}

const INTRO: &str = "\
healthcheck: probe targets for a Docker HEALTHCHECK; exit 0 when all are healthy, 1 if not.

Usage: healthcheck [OPTIONS] [TARGET...]

Targets (from the arguments, else from HEALTHCHECK_URL, space- or comma-separated):
  http://HOST[:PORT]/PATH    GET; healthy on 2xx (see --expect-status, --expect-body)
  https://...                the same over TLS (rustls; system CAs or built-in roots)
  tcp://HOST:PORT            the port accepts a connection
  postgres://USER:PW@HOST[:PORT][,HOST2...]/DB[?sslmode=...]
                             connects, authenticates and runs SELECT 1
  redis://[[USER]:PW@]HOST[:PORT]
                             PING answers PONG (AUTH first with a password;
                             rediss:// for TLS)
  file:///PATH[?max-age=26h] the file exists (and was modified within max-age)

Options (each with its environment variable):
";

const OUTRO: &str = "
Any variable may be given as NAME_FILE, the path of a file holding its value.
Exit status: 0 every target healthy; 1 a target is unhealthy, or the arguments or
environment are invalid. Never 2 (Docker reserves it).
";

/// `--help`.
pub fn help() -> String {
    crate::flags::help(INTRO, TABLE, OUTRO)
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
    parse_with(args, false, |m| args_from(&m).map(Box::new))
}

fn args_from(m: &Matches<Flag>) -> Result<Args, ConfigError> {
    let mut targets = m.words_utf8("a target is not valid UTF-8")?;
    if targets.is_empty() {
        if let Some(list) = m.string(Flag::Targets)? {
            targets = probe::split_targets(&list);
        }
    }
    // checked here so a bad DOCKHAND_HOSTS(_FILE) is an error, not a silent /etc/hosts
    m.string(Flag::Hosts)?;
    if targets.is_empty() {
        return Err(invalid("no target: give one (e.g. healthcheck http://localhost:3000/health) or set HEALTHCHECK_URL"));
    }
    let timeout = m.duration(Flag::Timeout)?;
    if timeout.is_zero() {
        return Err(invalid("--timeout must be more than 0"));
    }
    let expect_status = match m.string(Flag::ExpectStatus)? {
        Some(s) => StatusSet::parse(&s).map_err(|e| e.context("--expect-status"))?,
        None => StatusSet::default(),
    };
    let headers = m
        .list(Flag::Header)?
        .iter()
        .map(|h| probe::parse_header(h).map_err(|e| e.context("--header")))
        .collect::<Result<Vec<_>, _>>()?;
    let http = HttpOptions {
        expect_status,
        expect_body: m.string(Flag::ExpectBody)?,
        headers,
        insecure: m.switch(Flag::Insecure)?,
    };
    let verbose = m.switch(Flag::Verbose)?;
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
