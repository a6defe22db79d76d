//! `healthcheck` end to end: every target kind healthy and unhealthy against real
//! servers, Docker's exit-code contract (0/1, never 2), short one-line reasons, and no
//! password in any output.

use std::process::Command;

use dockhand_tests::bins::bin;
use dockhand_tests::certs::TestCa;
use dockhand_tests::http::{Behaviour, HttpServer};
use dockhand_tests::pg::Postgres;
use dockhand_tests::pgbouncer::PgBouncer;
use dockhand_tests::redis::Redis;
use dockhand_tests::run::Run;

fn healthcheck_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin("healthcheck"));
    cmd.args(args);
    for var in [
        "HEALTHCHECK_URL",
        "HEALTHCHECK_TIMEOUT",
        "SSL_CERT_FILE",
        "PGPASSWORD",
        "PGUSER",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = dockhand_tests::run::run(cmd, std::time::Duration::from_secs(60));
    assert!(r.code.is_some(), "healthcheck was killed by a signal");
    r
}

fn healthcheck(args: &[&str]) -> Run {
    healthcheck_env(args, &[])
}

fn assert_healthy(r: &Run) {
    assert_eq!(r.code, Some(0), "expected healthy: {}", r.output());
}

/// Unhealthy with exactly one line that equals `line` or, when `line` ends with `*`,
/// starts with it.
fn assert_unhealthy(r: &Run, line: &str) {
    assert_eq!(r.code, Some(1), "expected unhealthy: {}", r.output());
    let got = r.stdout.trim_end();
    assert_eq!(got.lines().count(), 1, "expected one line: {got:?}");
    match line.strip_suffix('*') {
        Some(prefix) => assert!(
            got.starts_with(prefix),
            "{got:?} does not start with {prefix:?}"
        ),
        None => assert_eq!(got, line),
    }
}

fn fixed(status: u16, body: &str) -> HttpServer {
    HttpServer::start(Behaviour::Fixed {
        status,
        body: body.into(),
    })
}

fn closed_port() -> u16 {
    dockhand_tests::free_port()
}

// ---- HTTP -----------------------------------------------------------------------

#[test]
fn http_2xx_is_healthy_and_silent() {
    let s = fixed(200, "ok");
    let url = format!("http://127.0.0.1:{}/api/health", s.port);
    let r = healthcheck(&[&url]);
    assert_healthy(&r);
    assert_eq!(r.output(), "", "silent on success");
    let r = healthcheck(&["-v", &url]);
    assert_healthy(&r);
    assert!(
        r.stdout.starts_with(&format!("{url}: ok, status 200 in ")),
        "{}",
        r.stdout
    );
    let req = &s.requests()[0];
    assert!(req.starts_with("GET /api/health HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains(&format!("Host: 127.0.0.1:{}\r\n", s.port)),
        "{req}"
    );
}

#[test]
fn http_500_is_unhealthy_with_the_status() {
    let s = fixed(500, "boom");
    let url = format!("http://127.0.0.1:{}/api/health", s.port);
    assert_unhealthy(&healthcheck(&[&url]), &format!("{url}: status 500"));
}

#[test]
fn http_refused_port() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    assert_unhealthy(&healthcheck(&[&url]), &format!("{url}: connection refused"));
}

#[test]
fn http_server_that_never_answers_times_out() {
    let s = HttpServer::start(Behaviour::Hang);
    let url = format!("http://127.0.0.1:{}/", s.port);
    let r = healthcheck(&["--timeout", "1s", &url]);
    assert_unhealthy(&r, &format!("{url}: timed out after *"));
    assert!(
        r.stdout.contains("(connected, no response)"),
        "{}",
        r.stdout
    );
}

#[test]
fn expected_body_and_status() {
    let s = fixed(200, r#"{"status":"ok","db":"up"}"#);
    let url = format!("http://127.0.0.1:{}/", s.port);
    assert_healthy(&healthcheck(&["--expect-body", r#""db":"up""#, &url]));
    assert_unhealthy(
        &healthcheck(&["--expect-body", "degraded", &url]),
        &format!("{url}: status 200, but the body does not contain \"degraded\""),
    );
    let s503 = fixed(503, "maintenance");
    let url503 = format!("http://127.0.0.1:{}/", s503.port);
    assert_healthy(&healthcheck(&["--expect-status", "200,503", &url503]));
    assert_healthy(&healthcheck_env(
        &[&url503],
        &[("HEALTHCHECK_EXPECT_STATUS", "5xx")],
    ));
    assert_unhealthy(
        &healthcheck(&["--expect-status", "200-299", &url503]),
        &format!("{url503}: status 503"),
    );
}

#[test]
fn chunked_body_is_searched() {
    let s = HttpServer::start(Behaviour::Chunked(vec!["hea".into(), "lthy".into()]));
    let url = format!("http://127.0.0.1:{}/", s.port);
    assert_healthy(&healthcheck(&["--expect-body", "healthy", &url]));
}

#[test]
fn headers_and_basic_auth_are_sent_without_leaking_the_password() {
    let s = fixed(200, "ok");
    let url = format!("http://probe:s3cret@127.0.0.1:{}/", s.port);
    let r = healthcheck(&["-v", "-H", "X-Probe: yes", &url]);
    assert_healthy(&r);
    assert!(!r.output().contains("s3cret"), "{}", r.output());
    assert!(r.stdout.contains("probe:***@"), "{}", r.stdout);
    let req = &s.requests()[0];
    assert!(req.contains("X-Probe: yes\r\n"), "{req}");
    assert!(
        req.contains("Authorization: Basic cHJvYmU6czNjcmV0\r\n"),
        "{req}"
    );
}

#[test]
fn localhost_falls_back_from_ipv6_to_ipv4_without_hosts_file() {
    // The server listens on 127.0.0.1 only: ::1 is refused, as busybox wget finds out.
    let s = fixed(200, "ok");
    let url = format!("http://localhost:{}/", s.port);
    assert_healthy(&healthcheck_env(
        &[&url],
        &[("DOCKHAND_HOSTS", "/nonexistent")],
    ));
}

#[test]
fn names_from_the_hosts_file_resolve_without_nss() {
    let s = fixed(200, "ok");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# test\n127.0.0.1 app-server app\n").unwrap();
    let hosts = hosts.to_str().unwrap();
    assert_healthy(&healthcheck_env(
        &[&format!("http://app-server:{}/", s.port)],
        &[("DOCKHAND_HOSTS", hosts)],
    ));
    let r = healthcheck_env(
        &["http://no-such-host.invalid/"],
        &[("DOCKHAND_HOSTS", hosts)],
    );
    assert_unhealthy(
        &r,
        "http://no-such-host.invalid/: host no-such-host.invalid not found",
    );
}

/// `DOCKHAND_HOSTS` is read as every setting is, so its `NAME_FILE` form works as
/// `--help` promises.
#[test]
fn the_hosts_file_also_comes_from_name_file() {
    let s = fixed(200, "ok");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 app-server\n").unwrap();
    let named = dir.path().join("hosts-path");
    std::fs::write(&named, format!("{}\n", hosts.display())).unwrap();
    let url = format!("http://app-server:{}/", s.port);
    assert_healthy(&healthcheck_env(
        &[&url],
        &[("DOCKHAND_HOSTS_FILE", named.to_str().unwrap())],
    ));
    let r = healthcheck_env(
        &[&url],
        &[
            ("DOCKHAND_HOSTS", hosts.to_str().unwrap()),
            ("DOCKHAND_HOSTS_FILE", named.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("both DOCKHAND_HOSTS and DOCKHAND_HOSTS_FILE are set"),
        "{}",
        r.stderr
    );
}

// ---- HTTPS ----------------------------------------------------------------------

#[test]
fn https_self_signed_needs_insecure_or_its_ca() {
    let ca = TestCa::new();
    let s = HttpServer::start_tls(
        Behaviour::Fixed {
            status: 200,
            body: "secure".into(),
        },
        ca.server_config(),
    );
    let url = format!("https://localhost:{}/", s.port);
    let r = healthcheck(&[&url]);
    assert_unhealthy(
        &r,
        &format!("{url}: the TLS certificate of localhost is not trusted: its issuer is an unknown authority (use --insecure*"),
    );
    assert_healthy(&healthcheck(&[
        "--insecure",
        "--expect-body",
        "secure",
        &url,
    ]));
    assert_healthy(&healthcheck_env(
        &[&url],
        &[("HEALTHCHECK_INSECURE", "true")],
    ));
    assert_healthy(&healthcheck_env(
        &[&url],
        &[("SSL_CERT_FILE", ca.ca_pem.to_str().unwrap())],
    ));
    // Plain HTTP against the TLS port fails with a reason, not a hang.
    let r = healthcheck(&["--timeout", "3s", &format!("http://localhost:{}/", s.port)]);
    assert_eq!(r.code, Some(1), "{}", r.output());
}

// ---- TCP ------------------------------------------------------------------------

#[test]
fn tcp_open_and_refused() {
    let s = fixed(200, "");
    assert_healthy(&healthcheck(&[&format!("tcp://127.0.0.1:{}", s.port)]));
    let url = format!("tcp://localhost:{}", closed_port());
    assert_unhealthy(&healthcheck(&[&url]), &format!("{url}: connection refused"));
}

// ---- PostgreSQL -----------------------------------------------------------------

#[test]
fn postgres_select_1_and_failures() {
    let pg = Postgres::start();
    let r = healthcheck(&["-v", &pg.url()]);
    assert_healthy(&r);
    assert!(
        !r.output().contains(&pg.password),
        "password leaked: {}",
        r.output()
    );

    let wrong = pg.url_with("app", "not-the-password", "app");
    let r = healthcheck(&[&wrong]);
    let shown = format!("postgres://app:***@127.0.0.1:{}/app", pg.port);
    assert_unhealthy(
        &r,
        &format!("{shown}: password authentication failed for user \"app\""),
    );
    assert!(!r.output().contains("not-the-password"));

    let missing = pg.url_with("app", &pg.password, "nodb");
    let r = healthcheck(&[&missing]);
    assert_unhealthy(&r, "*");
    assert!(
        r.stdout.contains("database \"nodb\" does not exist"),
        "{}",
        r.stdout
    );
    assert!(!r.output().contains(&pg.password));

    // The password may also come from PGPASSWORD_FILE.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", pg.password)).unwrap();
    let no_pw = format!("postgres://app@127.0.0.1:{}/app", pg.port);
    assert_healthy(&healthcheck_env(
        &[&no_pw],
        &[("PGPASSWORD_FILE", pw.to_str().unwrap())],
    ));
}

#[test]
fn postgres_refused_and_stopped_server() {
    let mut pg = Postgres::start();
    let url = pg.url();
    pg.stop_server();
    let r = healthcheck(&[&url]);
    assert_unhealthy(
        &r,
        &format!(
            "postgres://app:***@127.0.0.1:{}/app: connection refused",
            pg.port
        ),
    );
}

#[test]
fn postgres_through_pgbouncer() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    assert_healthy(&healthcheck(&[&bouncer.url()]));
    let wrong = format!("postgres://app:nope@127.0.0.1:{}/app", bouncer.port);
    let r = healthcheck(&[&wrong]);
    assert_unhealthy(&r, "*");
    // PgBouncer answers with its own wording.
    assert!(
        r.stdout.ends_with(": SASL authentication failed\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn postgres_sslmode() {
    let pg = Postgres::start_tls();
    let ca = pg.ca.as_ref().unwrap().ca_pem.to_str().unwrap().to_string();
    let base = pg.url();
    assert_healthy(&healthcheck(&[&format!("{base}?sslmode=require")]));
    assert_healthy(&healthcheck(&[&format!(
        "{base}?sslmode=verify-full&sslrootcert={ca}"
    )]));
    assert_healthy(&healthcheck(&[&format!(
        "{base}?sslmode=verify-ca&sslrootcert={ca}"
    )]));
    // Full verification against the built-in public roots fails: the CA is private.
    let r = healthcheck_env(
        &[&format!("{base}?sslmode=verify-full")],
        &[("SSL_CERT_FILE", "")],
    );
    assert_unhealthy(&r, "*");
    assert!(
        r.stdout
            .contains("the TLS certificate of 127.0.0.1 is not trusted")
            && r.stdout.contains("sslrootcert"),
        "{}",
        r.stdout
    );

    let plain = Postgres::start();
    let r = healthcheck(&[&format!("{}?sslmode=require", plain.url())]);
    assert_unhealthy(&r, "*");
    assert!(r.stdout.to_lowercase().contains("tls"), "{}", r.stdout);
    assert_healthy(&healthcheck(&[&format!("{}?sslmode=prefer", plain.url())]));
    assert_healthy(&healthcheck(&[&format!("{}?sslmode=disable", plain.url())]));
}

/// The URL the app shares with Prisma (`prisma init` writes `?schema=public`; guides add
/// pool settings, `pgbouncer=true`, and Prisma's TLS settings) is a healthy target: what
/// applies is honoured (`sslcert` is Prisma's CA, `sslaccept=strict` verifies), what
/// tunes Prisma's pool is ignored, a misspelt parameter is still named.
#[test]
fn postgres_urls_with_prismas_parameters() {
    let pg = Postgres::start_tls();
    let ca = pg.ca.as_ref().unwrap().ca_pem.to_str().unwrap().to_string();
    let base = pg.url();
    for query in [
        "?schema=public".to_string(),
        "?schema=public&connection_limit=5&pool_timeout=10".into(),
        "?pgbouncer=true&connection_limit=1&statement_cache_size=0".into(),
        "?connect_timeout=0&application_name=web&options=-c%20search_path%3Dfoo".into(),
        format!("?schema=public&sslmode=require&sslcert={ca}&sslaccept=strict"),
    ] {
        let r = healthcheck(&[&format!("{base}{query}")]);
        assert_healthy(&r);
        assert!(!r.output().contains(&pg.password), "{}", r.output());
    }
    // sslaccept=strict verifies: against the public roots, the private CA fails
    let r = healthcheck_env(
        &[&format!(
            "{base}?schema=public&sslmode=require&sslaccept=strict"
        )],
        &[("SSL_CERT_FILE", "")],
    );
    assert_unhealthy(&r, "*");
    assert!(r.stdout.contains("unknown authority"), "{}", r.stdout);
    let r = healthcheck(&[&format!("{base}?schema=public&pool_timout=10")]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stderr.contains("unknown parameter \"pool_timout\""),
        "{}",
        r.output()
    );
    assert!(!r.output().contains(&pg.password), "{}", r.output());
}

// ---- Redis ----------------------------------------------------------------------

#[test]
fn redis_ping_and_auth() {
    let open = Redis::start(None);
    assert_healthy(&healthcheck(&[&format!("redis://127.0.0.1:{}", open.port)]));
    let locked = Redis::start(Some("redis-pw"));
    assert_healthy(&healthcheck(&[&format!(
        "redis://:redis-pw@localhost:{}/0",
        locked.port
    )]));
    let r = healthcheck(&[&format!("redis://localhost:{}", locked.port)]);
    assert_unhealthy(&r, &format!("redis://localhost:{}: NOAUTH*", locked.port));
    let r = healthcheck(&[&format!("redis://:wrong-pw@localhost:{}", locked.port)]);
    assert_unhealthy(&r, "*");
    assert!(
        r.stdout.contains("WRONGPASS") || r.stdout.contains("invalid password"),
        "{}",
        r.stdout
    );
    assert!(!r.output().contains("wrong-pw"));
    let url = format!("redis://127.0.0.1:{}", closed_port());
    assert_unhealthy(&healthcheck(&[&url]), &format!("{url}: connection refused"));
}

// ---- Files ----------------------------------------------------------------------

#[test]
fn file_freshness() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("status.json");
    std::fs::write(&f, "{}").unwrap();
    let url = format!("file://{}?max-age=26h", f.display());
    assert_healthy(&healthcheck(&[&url]));
    assert_healthy(&healthcheck(&[&format!("file://{}", f.display())]));
    let st = Command::new("touch")
        .args(["-d", "27 hours ago"])
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    assert_unhealthy(
        &healthcheck(&[&url]),
        &format!("{url}: stale: modified 1d3h ago, max-age 1d2h"),
    );
    let missing = format!("file://{}/nothing?max-age=1h", dir.path().display());
    assert_unhealthy(&healthcheck(&[&missing]), &format!("{missing}: missing"));
}

// ---- Several targets, env, bad input ----------------------------------------------

#[test]
fn several_targets_all_must_pass_and_are_probed_concurrently() {
    let ok = fixed(200, "");
    let bad = fixed(503, "");
    let good_url = format!("http://127.0.0.1:{}/", ok.port);
    let bad_url = format!("http://127.0.0.1:{}/", bad.port);
    assert_healthy(&healthcheck(&[
        &good_url,
        &format!("tcp://127.0.0.1:{}", ok.port),
    ]));
    assert_unhealthy(
        &healthcheck(&[&good_url, &bad_url]),
        &format!("{bad_url}: status 503"),
    );
    // Two servers that never answer: under one 1 s budget both must have connected,
    // which a sequential prober could not do for the second.
    let h1 = HttpServer::start(Behaviour::Hang);
    let h2 = HttpServer::start(Behaviour::Hang);
    let r = healthcheck(&[
        "-t",
        "1s",
        &format!("http://127.0.0.1:{}/", h1.port),
        &format!("http://127.0.0.1:{}/", h2.port),
    ]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stdout.matches("(connected, no response)").count(),
        2,
        "{}",
        r.stdout
    );
}

#[test]
fn targets_and_options_from_env_and_files() {
    let ok = fixed(200, "fine");
    let bad = fixed(500, "");
    let list = format!("http://127.0.0.1:{}/, tcp://127.0.0.1:{}", ok.port, ok.port);
    assert_healthy(&healthcheck_env(&[], &[("HEALTHCHECK_URL", &list)]));
    let list = format!(
        "http://127.0.0.1:{}/ http://127.0.0.1:{}/",
        ok.port, bad.port
    );
    assert_eq!(
        healthcheck_env(&[], &[("HEALTHCHECK_URL", &list)]).code,
        Some(1)
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("url");
    std::fs::write(&f, format!("http://127.0.0.1:{}/\n", ok.port)).unwrap();
    assert_healthy(&healthcheck_env(
        &[],
        &[("HEALTHCHECK_URL_FILE", f.to_str().unwrap())],
    ));
    let r = healthcheck_env(
        &[],
        &[
            ("HEALTHCHECK_URL", "http://x/"),
            ("HEALTHCHECK_URL_FILE", f.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("both HEALTHCHECK_URL and HEALTHCHECK_URL_FILE are set"),
        "{}",
        r.stderr
    );
    let r = healthcheck_env(
        &[&format!("http://127.0.0.1:{}/", ok.port)],
        &[("HEALTHCHECK_EXPECT_BODY", "nope")],
    );
    assert_eq!(r.code, Some(1));
}

#[test]
fn bad_input_exits_1_with_a_clear_message_never_2() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["ftp://example.com/"], &[], "unknown scheme \"ftp\""),
        (&["localhost:3000"], &[], "expected scheme://"),
        (
            &["http://localhost:99999/"],
            &[],
            "not a number from 1 to 65535",
        ),
        (&["tcp://db"], &[], "needs a port"),
        (
            &["--timeout", "soon", "http://x/"],
            &[],
            "invalid duration \"soon\"",
        ),
        (&["--timeout", "0s", "http://x/"], &[], "more than 0"),
        (
            &["http://x/"],
            &[("HEALTHCHECK_TIMEOUT", "forever")],
            "invalid duration \"forever\"",
        ),
        (
            &["--expect-status", "abc", "http://x/"],
            &[],
            "invalid status",
        ),
        (&["-H", "nocolon", "http://x/"], &[], "invalid header"),
        (&["--bogus"], &[], "invalid option '--bogus'"),
        (&["--timeout"], &[], "--timeout needs a value"),
        (&[], &[], "no target"),
        (&["file:///x?max-age=1y"], &[], "invalid duration"),
        (
            &["postgres://u:topsecret@h/db?sslmode=maybe"],
            &[],
            "sslmode",
        ),
        (
            &["http://x/"],
            &[("HEALTHCHECK_INSECURE", "perhaps")],
            "not a boolean",
        ),
        // passwords with an unencoded / ? #: their start looks like a port; a URL
        // with one slash after the scheme
        (&["http://app:topsecret/?#x@web/"], &[], "percent-encoded"),
        (&["redis://app:topsecret/x@"], &[], "percent-encoded"),
        (&["https://app:topsecret/@:x@/h"], &[], "percent-encoded"),
        (&["http:/app:topsecret@web/"], &[], "expected scheme://"),
    ];
    for (args, env, want) in cases {
        let r = healthcheck_env(args, env);
        assert_eq!(
            r.code,
            Some(1),
            "{args:?}: exit {:?}: {}",
            r.code,
            r.output()
        );
        assert!(
            r.stderr.contains(want),
            "{args:?}: {:?} does not mention {want:?}",
            r.stderr
        );
        assert!(!r.output().contains("topsecret"), "{}", r.output());
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let r = healthcheck(&["--help"]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains("HEALTHCHECK_TIMEOUT"));
}
