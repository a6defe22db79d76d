//! `healthcheck`'s table and arguments.

use std::ffi::OsString;
use std::time::Duration;

use crate::config::{invalid, ConfigError};
use crate::flags::{parse_with, table, Key, Matches, Parsed, Setting};
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
healthcheck: probe targets for a Docker HEALTHCHECK; exit 0 when all are healthy,
1 if not.

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
        return Err(invalid(format!(
            "{} must be more than 0",
            Flag::Timeout.row().label()
        )));
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

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;
    use crate::flags::parse_with_vars;

    /// The command line `args` with the variables `vars` (never the process's).
    fn parse(args: &[&str], vars: &[(&str, &str)]) -> Result<Parsed<Box<Args>>, ConfigError> {
        parse_os(args.iter().map(OsString::from).collect(), vars)
    }

    fn parse_os(
        args: Vec<OsString>,
        vars: &[(&str, &str)],
    ) -> Result<Parsed<Box<Args>>, ConfigError> {
        parse_with_vars(args, false, vars, |m| args_from(&m).map(Box::new))
    }

    fn outcome(p: &Result<Parsed<Box<Args>>, ConfigError>) -> String {
        match p {
            Ok(Parsed::Run(a)) => format!("Run({:?})", shown(&a.targets)),
            Ok(Parsed::Help) => "Help".into(),
            Ok(Parsed::Version) => "Version".into(),
            Err(e) => format!("Err({e})"),
        }
    }

    /// What would be probed, and how.
    fn run(args: &[&str], vars: &[(&str, &str)]) -> Args {
        match parse(args, vars) {
            Ok(Parsed::Run(a)) => *a,
            other => panic!(
                "{args:?} {vars:?}: expected targets, got {}",
                outcome(&other)
            ),
        }
    }

    /// The message of the error `args` and `vars` give.
    fn error(args: &[&str], vars: &[(&str, &str)]) -> String {
        match parse(args, vars) {
            Err(e) => {
                // the binary exits 1 on any error; the kind is still a setting's
                assert_eq!(e.kind(), crate::config::ConfigKind::Invalid, "{e}");
                e.message().to_string()
            }
            other => panic!(
                "{args:?} {vars:?}: expected an error, got {}",
                outcome(&other)
            ),
        }
    }

    /// The targets as reports show them (redacted).
    fn shown(targets: &[Target]) -> Vec<String> {
        targets.iter().map(|t| t.url().to_string()).collect()
    }

    const NO_TARGET: &str =
        "no target: give one (e.g. healthcheck http://localhost:3000/health) or set HEALTHCHECK_URL";

    #[test]
    fn the_defaults_apply_when_nothing_else_is_set() {
        let a = run(&["http://localhost:3000/health"], &[]);
        assert!(matches!(
            a.targets[..],
            [Target::Http {
                tls: false,
                port: 3000,
                ..
            }]
        ));
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.http.expect_status, StatusSet::default());
        assert!(a.http.expect_status.contains(200) && a.http.expect_status.contains(299));
        assert!(!a.http.expect_status.contains(300));
        assert_eq!(a.http.expect_body, None);
        assert!(a.http.headers.is_empty());
        assert!(!a.http.insecure);
        assert!(!a.verbose);
    }

    #[test]
    fn every_flag_reaches_its_setting_and_words_mix_with_options() {
        let a = run(
            &[
                "tcp://db:5432",
                "-t",
                "2s",
                "--expect-status",
                "200,204,300-399",
                "https://web/health",
                "--expect-body",
                "\"ok\": true",
                "-H",
                "Authorization: Bearer t0k3n",
                "--header",
                "X-Probe:  yes ",
                "-k",
                "--verbose",
                "redis://cache",
            ],
            &[],
        );
        assert_eq!(
            shown(&a.targets),
            ["tcp://db:5432", "https://web/health", "redis://cache"]
        );
        assert!(matches!(a.targets[0], Target::Tcp { port: 5432, .. }));
        assert!(matches!(
            a.targets[1],
            Target::Http {
                tls: true,
                port: 443,
                ..
            }
        ));
        assert!(matches!(
            a.targets[2],
            Target::Redis {
                tls: false,
                port: 6379,
                ..
            }
        ));
        assert_eq!(a.timeout, Duration::from_secs(2));
        let s = &a.http.expect_status;
        assert!(s.contains(204) && s.contains(350) && !s.contains(201) && !s.contains(400));
        assert_eq!(a.http.expect_body.as_deref(), Some("\"ok\": true"));
        assert_eq!(
            a.http.headers,
            [
                ("Authorization".to_string(), "Bearer t0k3n".to_string()),
                ("X-Probe".to_string(), "yes".to_string())
            ]
        );
        assert!(a.http.insecure);
        assert!(a.verbose);
        // `--flag=value` and the short forms
        let a = run(&["--timeout=750ms", "-kv", "tcp://db:1"], &[]);
        assert_eq!(a.timeout, Duration::from_millis(750));
        assert!(a.http.insecure && a.verbose);
    }

    #[test]
    fn every_variable_reaches_its_setting() {
        let a = run(
            &[],
            &[
                (
                    "HEALTHCHECK_URL",
                    "tcp://db:5432, http://web:3000/h\tpostgres://u:pw@h1,h2:5433/app",
                ),
                ("HEALTHCHECK_TIMEOUT", "1m"),
                ("HEALTHCHECK_EXPECT_STATUS", "2xx,3xx"),
                ("HEALTHCHECK_EXPECT_BODY", "up"),
                // one header a line: a value keeps its commas and spaces
                ("HEALTHCHECK_HEADERS", "Accept: a/b, c/d\n\n  \nX-A: 1\n"),
                ("HEALTHCHECK_INSECURE", "yes"),
                ("HEALTHCHECK_VERBOSE", "on"),
            ],
        );
        assert_eq!(
            shown(&a.targets),
            [
                "tcp://db:5432",
                "http://web:3000/h",
                "postgres://u:***@h1,h2:5433/app"
            ]
        );
        assert!(matches!(a.targets[2], Target::Postgres(_)));
        assert_eq!(a.timeout, Duration::from_secs(60));
        assert!(a.http.expect_status.contains(399) && !a.http.expect_status.contains(400));
        assert_eq!(a.http.expect_body.as_deref(), Some("up"));
        assert_eq!(
            a.http.headers,
            [
                ("Accept".to_string(), "a/b, c/d".to_string()),
                ("X-A".to_string(), "1".to_string())
            ]
        );
        assert!(a.http.insecure);
        assert!(a.verbose);
    }

    #[test]
    fn arguments_and_flags_win_over_variables() {
        let vars = [
            ("HEALTHCHECK_URL", "tcp://env:1"),
            ("HEALTHCHECK_TIMEOUT", "9s"),
            ("HEALTHCHECK_HEADERS", "X-Env: 1"),
            ("HEALTHCHECK_VERBOSE", "false"),
            ("HEALTHCHECK_INSECURE", ""),
        ];
        let a = run(&["tcp://arg:2", "-t", "1s", "-H", "X-Flag: 2", "-v"], &vars);
        assert_eq!(shown(&a.targets), ["tcp://arg:2"]);
        assert_eq!(a.timeout, Duration::from_secs(1));
        assert_eq!(a.http.headers, [("X-Flag".to_string(), "2".to_string())]);
        assert!(a.verbose);
        assert!(!a.http.insecure);
        let a = run(&[], &vars);
        assert_eq!(shown(&a.targets), ["tcp://env:1"]);
        assert_eq!(a.timeout, Duration::from_secs(9));
        assert_eq!(a.http.headers, [("X-Env".to_string(), "1".to_string())]);
        assert!(!a.verbose);
    }

    #[test]
    fn a_name_file_variable_holds_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        };
        let url = file("url", "postgres://app:s3cr3t@db/app\n");
        let headers = file("headers", "Authorization: Bearer t0k3n\r\nX-A: 1\n");
        let hosts = file("hosts", "10.0.0.1 db\n");
        let a = run(
            &[],
            &[
                ("HEALTHCHECK_URL_FILE", &url),
                ("HEALTHCHECK_HEADERS_FILE", &headers),
                ("DOCKHAND_HOSTS_FILE", &hosts),
            ],
        );
        assert_eq!(shown(&a.targets), ["postgres://app:***@db/app"]);
        assert_eq!(
            a.http.headers,
            [
                ("Authorization".to_string(), "Bearer t0k3n".to_string()),
                ("X-A".to_string(), "1".to_string())
            ]
        );
        assert_eq!(
            error(
                &[],
                &[
                    ("HEALTHCHECK_URL", "tcp://a:1"),
                    ("HEALTHCHECK_URL_FILE", &url)
                ]
            ),
            "both HEALTHCHECK_URL and HEALTHCHECK_URL_FILE are set: unset one of them"
        );
        // a hosts file that cannot be read is an error, not a silent /etc/hosts
        let missing = dir.path().join("missing");
        let e = error(
            &["tcp://a:1"],
            &[("DOCKHAND_HOSTS_FILE", missing.to_str().unwrap())],
        );
        assert!(e.starts_with("DOCKHAND_HOSTS_FILE: cannot read "), "{e}");
        let e = error(
            &["tcp://a:1"],
            &[("HEALTHCHECK_TIMEOUT_FILE", dir.path().to_str().unwrap())],
        );
        assert!(
            e.starts_with("HEALTHCHECK_TIMEOUT_FILE: cannot read "),
            "{e}"
        );
        let zero = file("zero", "0\n");
        assert_eq!(
            error(&["tcp://a:1"], &[("HEALTHCHECK_TIMEOUT_FILE", &zero)]),
            "--timeout / HEALTHCHECK_TIMEOUT must be more than 0"
        );
    }

    #[test]
    fn given_twice_the_last_value_or_every_header_counts() {
        let a = run(
            &[
                "-t",
                "1s",
                "-t",
                "2s",
                "-v",
                "-v",
                "-H",
                "A: 1",
                "-H",
                "A: 2",
                "tcp://a:1",
                "tcp://a:1",
            ],
            &[],
        );
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert!(a.verbose);
        assert_eq!(
            a.http.headers,
            [
                ("A".to_string(), "1".to_string()),
                ("A".to_string(), "2".to_string())
            ]
        );
        assert_eq!(shown(&a.targets), ["tcp://a:1", "tcp://a:1"]);
    }

    #[test]
    fn double_dash_ends_the_options() {
        let a = run(&["-t", "1s", "--", "tcp://a:1"], &[]);
        assert_eq!(shown(&a.targets), ["tcp://a:1"]);
        assert_eq!(a.timeout, Duration::from_secs(1));
        // after `--`, an option is a target, and not a valid one
        assert_eq!(
            error(&["--", "--help"], &[]),
            "invalid URL \"--help\": expected scheme://..., e.g. http://localhost:3000/health"
        );
        assert_eq!(error(&["--"], &[]), NO_TARGET);
    }

    #[test]
    fn help_and_version_come_before_everything_else() {
        let bad = [
            ("HEALTHCHECK_TIMEOUT", "soon"),
            ("HEALTHCHECK_INSECURE", "maybe"),
        ];
        for args in [
            &["--help"][..],
            &["-h"],
            &["tcp://a:1", "--help"],
            &["-t", "x", "-h", "--bogus"],
        ] {
            let p = parse(args, &bad);
            assert!(matches!(p, Ok(Parsed::Help)), "{args:?}: {}", outcome(&p));
        }
        for args in [&["--version"][..], &["-V"], &["ftp://x", "-V"]] {
            let p = parse(args, &bad);
            assert!(
                matches!(p, Ok(Parsed::Version)),
                "{args:?}: {}",
                outcome(&p)
            );
        }
    }

    #[test]
    fn unknown_or_malformed_options_say_which() {
        assert_eq!(
            error(&["--bogus", "tcp://a:1"], &[]),
            "invalid option '--bogus'"
        );
        assert_eq!(error(&["-x", "tcp://a:1"], &[]), "invalid option '-x'");
        // variables only are not flags
        assert_eq!(
            error(&["--hosts", "/h", "tcp://a:1"], &[]),
            "invalid option '--hosts'"
        );
        assert_eq!(
            error(&["tcp://a:1", "--timeout"], &[]),
            "--timeout needs a value"
        );
        assert_eq!(error(&["tcp://a:1", "-H"], &[]), "--header needs a value");
        let e = error(&["--insecure=yes", "tcp://a:1"], &[]);
        assert!(e.contains("--insecure"), "{e}");
        let bytes = OsString::from_vec(b"tcp://caf\xe9:1".to_vec());
        let e = parse_os(vec![bytes.clone()], &[]).err().unwrap();
        assert_eq!(e.message(), "a target is not valid UTF-8");
        let e = parse_os(vec!["--expect-body".into(), bytes, "tcp://a:1".into()], &[])
            .err()
            .unwrap();
        assert_eq!(e.message(), "--expect-body: the value is not valid UTF-8");
    }

    #[test]
    fn bad_values_name_the_setting_and_what_to_write() {
        assert_eq!(error(&[], &[]), NO_TARGET);
        assert_eq!(error(&[], &[("HEALTHCHECK_URL", " , \n,")]), NO_TARGET);
        assert_eq!(
            error(&["-t", "0", "tcp://a:1"], &[]),
            "--timeout / HEALTHCHECK_TIMEOUT must be more than 0"
        );
        assert_eq!(
            error(&["tcp://a:1"], &[("HEALTHCHECK_TIMEOUT", "0s")]),
            "--timeout / HEALTHCHECK_TIMEOUT must be more than 0"
        );
        assert_eq!(
            error(&["-t", "soon", "tcp://a:1"], &[]),
            "--timeout / HEALTHCHECK_TIMEOUT: invalid duration \"soon\": use a number with a unit, e.g. 500ms, 5s, 2m, 26h, 7d, 1h30m"
        );
        assert_eq!(
            error(&["--expect-status", "600", "tcp://a:1"], &[]),
            "--expect-status: invalid status \"600\": use e.g. 200, 200,204, 200-399 or 2xx"
        );
        assert_eq!(
            error(&["tcp://a:1"], &[("HEALTHCHECK_EXPECT_STATUS", "399-200")]),
            "--expect-status: invalid status \"399-200\": use e.g. 200, 200,204, 200-399 or 2xx"
        );
        assert_eq!(
            error(&["tcp://a:1"], &[("HEALTHCHECK_INSECURE", "maybe")]),
            "HEALTHCHECK_INSECURE=\"maybe\" is not a boolean: use true or false"
        );
        assert_eq!(
            error(&["ftp://files/x"], &[]),
            "ftp://files/x: unknown scheme \"ftp\": use http, https, tcp, postgres, redis or file"
        );
        assert_eq!(
            error(&["tcp://db"], &[]),
            "tcp://db: a tcp:// target needs a port, e.g. tcp://db:5432"
        );
        assert_eq!(
            error(&["localhost:3000"], &[]),
            "invalid URL \"localhost:3000\": expected scheme://..., e.g. http://localhost:3000/health"
        );
        // one bad target among good ones fails the whole command line
        let e = error(&["tcp://a:1", "http://"], &[]);
        assert_eq!(e, "http://: the URL names no host");
    }

    #[test]
    fn a_bad_header_never_echoes_its_value() {
        for (h, says) in [
            (
                "Authorization Bearer s3cr3t",
                "--header: invalid header: no ':' between name and value (use 'Name: value')",
            ),
            (
                "Bad Name s3cr3t: x",
                "--header: invalid header name: only letters, digits and -_!#$%&'*+.^`|~ are allowed before the ':' (use 'Name: value')",
            ),
            (
                "Authorization: Bearer s3cr3t\r\nX-Injected: 1",
                "--header: invalid header value for Authorization: no line breaks or control characters",
            ),
        ] {
            assert_eq!(error(&["-H", h, "http://a/"], &[]), says);
        }
        let e = error(
            &["http://a/"],
            &[("HEALTHCHECK_HEADERS", "X-A: 1\nAuthorization Bearer s3cr3t")],
        );
        assert!(e.starts_with("--header: invalid header: no ':'"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn a_password_holding_url_syntax_stays_out_of_every_error() {
        let pw = "Pw/?#@:%zz";
        // a password written as is, URL syntax and all, is the password
        let a = run(&[&format!("postgres://app:{pw}@db:5432/app")], &[]);
        assert_eq!(shown(&a.targets), ["postgres://app:***@db:5432/app"]);
        let a = run(&[&format!("redis://:{pw}@cache")], &[]);
        assert_eq!(a.targets[0].url().password.as_deref(), Some(pw));
        // http(s) paths and queries may hold `@`: there a password with `?` or `#`
        // must be %-encoded, one with `/ @ : %` need not be
        let http_pw = "Pw/@:%zz";
        let a = run(&[&format!("https://app:{http_pw}@web/h")], &[]);
        assert_eq!(a.targets[0].url().password.as_deref(), Some(http_pw));
        for bad in [
            format!("tcp://app:{pw}@db"),
            format!("ftp://app:{pw}@files/"),
            format!("postgres://app:{pw}@db/app?sslmode=bogus"),
            format!("postgres://app:{pw}@db:0/app"),
            format!("postgresql://app:{pw}@db:5432,:5433/app?target_session_attrs=x"),
            format!("file://app:{pw}@host/x"),
            format!("redis://app:{pw}@cache:port"),
            format!("http://app:{pw}@web/\u{7}"),
            format!("http://app:{http_pw}@web:99999/"),
            format!("http://app:{http_pw}@web:port/"),
            format!("http://app:{http_pw}@a,b/"),
            format!("http://a%zzp:{http_pw}@web/"),
        ] {
            for e in [
                error(&[&bad], &[]),
                error(&[], &[("HEALTHCHECK_URL", &bad)]),
            ] {
                assert!(!e.contains("Pw"), "{bad}: {e}");
                assert!(!e.contains("%zz@"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn hostile_values_are_refused_or_kept_never_a_panic() {
        let path = "p".repeat(1 << 20);
        let a = run(&[&format!("http://web/{path}")], &[]);
        assert_eq!(a.targets[0].url().path.len(), (1 << 20) + 1);
        let body = "\u{1F600}\u{0}".replace('\u{0}', "x").repeat(1000);
        let a = run(&["--expect-body", &body, "tcp://a:1"], &[]);
        assert_eq!(a.http.expect_body, Some(body));
        // an empty flag value is a value, and checked as one
        assert!(error(&["--timeout", "", "tcp://a:1"], &[])
            .starts_with("--timeout / HEALTHCHECK_TIMEOUT: invalid duration \"\""));
        assert!(error(&["--expect-status", "", "tcp://a:1"], &[])
            .starts_with("--expect-status: invalid status \"\""));
        assert!(error(&["", "tcp://a:1"], &[]).starts_with("invalid URL \"\": expected scheme"));
        for t in [
            "99999999999999999999",
            "1e400s",
            "18446744073709551616ms",
            "\u{1F600}",
        ] {
            let e = error(&["-t", t, "tcp://a:1"], &[]);
            assert!(
                e.starts_with("--timeout / HEALTHCHECK_TIMEOUT: invalid duration"),
                "{t}: {e}"
            );
        }
        for s in [
            "99999",
            "0xx",
            "6xx",
            "1-",
            "-",
            ",,",
            "200-99999999999999999999",
        ] {
            let e = error(&["--expect-status", s, "tcp://a:1"], &[]);
            assert!(e.starts_with("--expect-status: invalid status"), "{s}: {e}");
        }
    }

    #[test]
    fn help_lists_every_flag_and_variable_within_88_columns() {
        let h = help();
        assert!(h.starts_with(INTRO) && h.ends_with(OUTRO), "{h}");
        crate::flags::assert_help_covers(&h, TABLE);
        assert!(h.contains("  -t, --timeout DURATION"), "{h}");
        assert!(h.contains("[HEALTHCHECK_TIMEOUT, default 5s]"), "{h}");
        assert!(h.contains("[HEALTHCHECK_HEADERS (one\n"), "{h}");
        assert_eq!(Flag::Timeout.row().short, Some('t'));
        assert_eq!(Flag::Help.index(), TABLE.len() - 1);
    }
}
