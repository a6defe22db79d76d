//! `healthcheck` under hostile input and misbehaving peers: passwords holding
//! unencoded URL delimiters, servers that echo secrets, lie about chunk sizes, answer
//! in Latin-1 or with bare LF, header injection, unbounded output, a full stdout, and
//! hosts files and CA files that are FIFOs or devices; and the reasons printed for a
//! missing password, a server without TLS, an expired certificate, a streaming body and
//! a Redis at maxclients. Each test failed before its fix.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dockhand_tests::bins::bin;
use dockhand_tests::certs::TestCa;
use dockhand_tests::http::{Behaviour, HttpServer};
use dockhand_tests::pg::Postgres;
use dockhand_tests::pgbouncer::PgBouncer;
use dockhand_tests::redis::Redis;
use dockhand_tests::run::{command, run, Run};

const LONG: Duration = Duration::from_secs(30);

fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(command(&bin("healthcheck"), args, env), LONG)
}

/// A peer that answers every connection with `reply` (after reading the request).
fn raw_server(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut b = [0u8; 4096];
            let _ = c.read(&mut b);
            let _ = c.write_all(reply);
        }
    });
    port
}

#[test]
fn a_password_with_unencoded_delimiters_is_never_printed() {
    let pg = Postgres::start();
    for pw in ["Pa/ssSECRET", "12/SECRET", "a?b#SECRET", "x@y:SECRET%"] {
        // the right host and port are used (not "app" port 12), and nothing leaks
        let url = format!("postgres://app:{pw}@127.0.0.1:{}/app", pg.port);
        let r = healthcheck(&[&url], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        assert!(
            r.stdout.contains("password authentication failed"),
            "{pw}: {}",
            r.output()
        );
        r.assert_no_secret("SECRET");
        // a URL that does not parse at all
        let r = healthcheck(&[&format!("postgres://app:{pw}@127.0.0.1:99999/app")], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        r.assert_no_secret("SECRET");
    }
    // and the real password with a '/' in it works unencoded
    pg.psql("ALTER ROLE app PASSWORD 'Pa/ss?wo#rd@1'");
    let url = format!("postgres://app:Pa/ss?wo#rd@1@127.0.0.1:{}/app", pg.port);
    let r = healthcheck(&[&url], &[]);
    assert_eq!(r.code, Some(0), "{}", r.output());
}

#[test]
fn a_redis_reply_that_echoes_the_password_is_redacted() {
    let redis = Redis::start_with(None, &["--rename-command", "AUTH", ""]);
    let r = healthcheck(
        &[&format!(
            "redis://:MyRedisSecret99@127.0.0.1:{}",
            redis.port
        )],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stdout.contains("unknown command"), "{}", r.output());
    r.assert_no_secret("MyRedisSecret99");
}

#[test]
fn a_malformed_header_is_named_not_echoed() {
    for h in [
        "Authorization Bearer TOKEN123",
        "Authorization Bearer TOKEN123: x",
        "X: a\u{1}TOKEN123",
    ] {
        let r = healthcheck(&["-H", h, "http://127.0.0.1:1/"], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        assert!(r.stderr.contains("invalid header"), "{}", r.output());
        r.assert_no_secret("TOKEN123");
    }
}

#[test]
fn a_chunk_size_that_overflows_is_a_failure_not_a_panic() {
    let port =
        raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab");
    let ok = HttpServer::start(Behaviour::Fixed {
        status: 200,
        body: "fine".into(),
    });
    let r = healthcheck(
        &[
            "-v",
            "--expect-body",
            "fine",
            &format!("http://127.0.0.1:{port}/"),
            &format!("http://127.0.0.1:{}/", ok.port),
        ],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("malformed chunked body"),
        "{}",
        r.output()
    );
    // the other target's result is not lost
    assert!(
        r.stdout.contains(&format!("127.0.0.1:{}/: ok", ok.port)),
        "{}",
        r.output()
    );
    assert!(!r.output().contains("internal error"), "{}", r.output());
}

#[test]
fn latin1_headers_and_bare_lf_answers_are_healthy() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nX-Owner: Jos\xe9\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"[..],
    ] {
        let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
        let port = raw_server(reply);
        for extra in [&[][..], &["--expect-body", "ok"][..]] {
            let url = format!("http://127.0.0.1:{port}/");
            let mut args = extra.to_vec();
            args.push(&url);
            let r = healthcheck(&args, &[]);
            assert_eq!(
                r.code,
                Some(0),
                "{:?}: {}",
                String::from_utf8_lossy(reply),
                r.output()
            );
        }
    }
}

#[test]
fn output_fits_in_what_docker_keeps() {
    let targets: Vec<String> = (0..200)
        .map(|i| format!("tcp://127.0.0.1:{}", 1 + i % 3))
        .collect();
    let args: Vec<&str> = targets.iter().map(String::as_str).collect();
    let r = healthcheck(&args, &[]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stdout.len() + r.stderr.len() <= 4096,
        "{} bytes",
        r.stdout.len()
    );
    assert!(
        r.stdout.trim_end().ends_with("more failing"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_full_stdout_gives_exit_1_not_a_signal() {
    // The release build (panic = "abort") is what ships and what aborted with 134.
    let healthcheck = dockhand_tests::bins::static_bin("healthcheck");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut cmd = command(&healthcheck, &["tcp://127.0.0.1:1"], &[]);
    cmd.stdout(full);
    let r = run(cmd, LONG);
    assert_eq!(r.code, Some(1), "{}", r.output());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut cmd = command(&healthcheck, &["--help"], &[]);
    cmd.stdout(full);
    assert_eq!(run(cmd, LONG).code, Some(1));
}

#[test]
fn durations_that_would_overflow_are_refused_at_parse_time() {
    let r = healthcheck(&["-t", "18446744073709551615", "tcp://127.0.0.1:1"], &[]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("invalid duration"), "{}", r.output());
    let r = run(
        command(
            &bin("entrypoint"),
            &["--grace", "18446744073709551615", "--", "true"],
            &[],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
    assert!(r.stderr.contains("invalid duration"), "{}", r.output());
    let r = run(
        command(
            &bin("entrypoint"),
            &["--wait-timeout", "18446744073709551615", "--", "true"],
            &[],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(2), "{}", r.output());
}

#[test]
fn control_characters_in_a_target_never_reach_the_wire() {
    let server = HttpServer::start(Behaviour::Fixed {
        status: 200,
        body: "ok".into(),
    });
    let injected = format!("http://127.0.0.1:{}/a\r\nX-Injected: 1", server.port);
    let r = healthcheck(&[&injected], &[]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stderr.contains("control character"), "{}", r.output());
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // a space is sent percent-encoded, on one request line
    let spaced = format!("http://127.0.0.1:{}/a b", server.port);
    let r = healthcheck(&[&spaced], &[]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert!(
        server.requests()[0].starts_with("GET /a%20b HTTP/1.1\r\n"),
        "{:?}",
        server.requests()
    );
}

#[test]
fn insecure_applies_to_rediss_too() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.install_server_files(dir.path());
    let tls_port = dockhand_tests::free_port();
    let redis = Redis::start_with(
        Some("pw123"),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.ca_pem.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    assert!(dockhand_tests::wait_until(LONG, || {
        dockhand_tests::port_open(tls_port)
    }));
    let url = format!("rediss://:pw123@localhost:{tls_port}");
    let r = healthcheck(&[&url], &[]);
    assert_eq!(
        r.code,
        Some(1),
        "self-signed must fail without -k: {}",
        r.output()
    );
    let r = healthcheck(&["-k", &url], &[]);
    assert_eq!(r.code, Some(0), "{}", r.output());
    drop(redis);
}

#[test]
fn an_https_wait_target_keeps_waiting_through_handshake_resets() {
    // The first connections are accepted and closed mid-handshake (a server still
    // starting); then a real HTTPS server answers on the same port.
    let ca = TestCa::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let config = ca.server_config();
    std::thread::spawn(move || {
        let started = Instant::now();
        for c in l.incoming().flatten() {
            if started.elapsed() < Duration::from_millis(1500) {
                drop(c);
                continue;
            }
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, c);
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                let _ = s.flush();
            });
        }
    });
    let r = run(
        command(
            &bin("entrypoint"),
            &[
                "--wait",
                &format!("https://localhost:{port}/"),
                "--wait-timeout",
                "20s",
                "--",
                "echo",
                "started",
            ],
            &[("SSL_CERT_FILE", ca.ca_pem.to_str().unwrap())],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
    assert_eq!(r.stdout, "started\n");
}

#[test]
fn a_missing_database_through_pgbouncer_fails_at_once_with_its_cause() {
    let pg = Postgres::start();
    let bouncer = PgBouncer::start(&pg);
    let url = format!(
        "postgres://app:{}@127.0.0.1:{}/nosuchdb",
        pg.password, bouncer.port
    );
    let started = Instant::now();
    let r = run(
        command(
            &bin("entrypoint"),
            &[
                "--wait",
                "postgres",
                "--wait-timeout",
                "20s",
                "--",
                "echo",
                "started",
            ],
            &[("DIRECT_URL", &url)],
        ),
        LONG,
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?}: {}",
        started.elapsed(),
        r.output()
    );
    assert_eq!(r.code, Some(3), "{}", r.output());
    assert!(
        r.stderr.contains("nosuchdb") && r.stderr.contains("does not exist"),
        "{}",
        r.output()
    );
    r.assert_no_secret(&pg.password);
}

#[test]
fn a_unix_socket_target_connects_without_tls() {
    let pg = Postgres::start();
    let url = format!(
        "postgres://app:{}@/app?host={}&port={}",
        pg.password,
        pg.dir.path().display(),
        pg.port
    );
    let r = healthcheck(&[&url], &[]);
    assert_eq!(r.code, Some(0), "{}", r.output());
}

#[test]
fn hosts_and_ca_files_that_are_fifos_or_devices_do_not_hang_or_grow() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let server = HttpServer::start(Behaviour::Fixed {
        status: 200,
        body: "ok".into(),
    });
    let url = format!("http://localhost:{}/", server.port);
    for hosts in [fifo.to_str().unwrap(), "/dev/zero"] {
        let started = Instant::now();
        let r = healthcheck(&["-t", "3s", &url], &[("DOCKHAND_HOSTS", hosts)]);
        assert_eq!(r.code, Some(0), "{hosts}: {}", r.output());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{hosts}: {:?}",
            started.elapsed()
        );
    }
    // a CA file that is a FIFO: a clear failure, at once
    let ca = TestCa::new();
    let tls = HttpServer::start_tls(
        Behaviour::Fixed {
            status: 200,
            body: "ok".into(),
        },
        ca.server_config(),
    );
    let started = Instant::now();
    let r = healthcheck(
        &["-t", "3s", &format!("https://localhost:{}/", tls.port)],
        &[("SSL_CERT_FILE", fifo.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(r.stdout.contains("FIFO"), "{}", r.output());
    assert!(started.elapsed() < Duration::from_secs(3));
    // a non-UTF-8 line spoils that line only
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, b"10.9.9.9 caf\xe9.test\n127.0.0.1 db.test\n").unwrap();
    let r = healthcheck(
        &[&format!("http://db.test:{}/", server.port)],
        &[("DOCKHAND_HOSTS", hosts.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(0), "{}", r.output());
}

// ---- reasons that say what is wrong ------------------------------------------------

#[test]
fn a_postgres_target_without_a_password_names_the_settings_that_give_one() {
    let pg = Postgres::start();
    let r = healthcheck(&[&format!("postgres://app@127.0.0.1:{}/app", pg.port)], &[]);
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout.contains("no password")
            && r.stdout.contains("PGPASSWORD")
            && !r.stdout.contains("invalid configuration"),
        "{}",
        r.output()
    );
    // waiting for it cannot help: the entrypoint's wait stops at once with the reason
    let r = run(
        command(
            &bin("entrypoint"),
            &["--wait", "postgres", "--wait-timeout", "1h", "--", "true"],
            &[(
                "DIRECT_URL",
                &format!("postgres://app@127.0.0.1:{}/app", pg.port),
            )],
        ),
        LONG,
    );
    assert_eq!(r.code, Some(3), "{}", r.output());
    assert!(r.stderr.contains("PGPASSWORD"), "{}", r.output());
}

#[test]
fn sslmode_require_against_a_server_without_tls_says_the_server_has_none() {
    let pg = Postgres::start();
    for mode in ["require", "verify-full"] {
        let r = healthcheck(&[&format!("{}?sslmode={mode}", pg.url())], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        assert!(
            r.stdout.contains("does not support TLS") && r.stdout.contains("sslmode"),
            "{mode}: {}",
            r.output()
        );
        r.assert_no_secret(&pg.password);
    }
}

#[test]
fn an_expired_certificate_says_when_it_expired_and_for_which_name() {
    let ca = TestCa::expired();
    let server = HttpServer::start_tls(
        Behaviour::Fixed {
            status: 200,
            body: "ok".into(),
        },
        ca.server_config(),
    );
    let r = healthcheck(
        &[&format!("https://localhost:{}/", server.port)],
        &[("SSL_CERT_FILE", ca.ca_pem.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout
            .contains("certificate of localhost expired on 2021-01-01")
            && !r.stdout.contains("Context"),
        "{}",
        r.output()
    );
    // PostgreSQL with sslmode=verify-full: the same reason, for the host connected to
    let pg = Postgres::start_tls_with(TestCa::expired());
    let root = pg.ca.as_ref().unwrap().ca_pem.display().to_string();
    let r = healthcheck(
        &[&format!(
            "{}?sslmode=verify-full&sslrootcert={root}",
            pg.url()
        )],
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.output());
    assert!(
        r.stdout
            .contains("certificate of 127.0.0.1 expired on 2021-01-01"),
        "{}",
        r.output()
    );
    r.assert_no_secret(&pg.password);
}

#[test]
fn expect_body_matches_a_streaming_body_as_it_arrives() {
    for chunked in [false, true] {
        let server = HttpServer::start(Behaviour::Stream {
            chunked,
            text: "event: status\ndata: ready\n\n".into(),
        });
        let url = format!("http://127.0.0.1:{}/events", server.port);
        let r = healthcheck(&["-t", "10s", "--expect-body", "ready", &url], &[]);
        assert_eq!(r.code, Some(0), "chunked {chunked}: {}", r.output());
        // text that never comes: the reason says the status came, the text did not
        let r = healthcheck(&["-t", "1s", "--expect-body", "never", &url], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        assert!(
            r.stdout.contains("status 200")
                && r.stdout.contains("\"never\"")
                && !r.stdout.contains("no response"),
            "chunked {chunked}: {}",
            r.output()
        );
    }
}

#[test]
fn a_redis_at_maxclients_shows_its_own_error() {
    for password in [None, Some("RedisPw42")] {
        let redis = Redis::start_with(password, &["--maxclients", "1"]);
        // the one client it allows, registered before the probe comes (a connection
        // that the harness's readiness check just closed may still hold the slot)
        let mut holder = None;
        assert!(dockhand_tests::wait_until(LONG, || {
            let mut c = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
            c.write_all(b"PING\r\n").unwrap();
            let mut line = String::new();
            let _ = std::io::BufReader::new(c.try_clone().unwrap()).read_line(&mut line);
            let admitted = line.starts_with("+PONG") || line.starts_with("-NOAUTH");
            if admitted {
                holder = Some(c);
            }
            admitted
        }));
        let url = match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", redis.port),
            None => format!("redis://127.0.0.1:{}", redis.port),
        };
        let r = healthcheck(&[&url], &[]);
        assert_eq!(r.code, Some(1), "{}", r.output());
        assert!(
            r.stdout.contains("max number of clients reached"),
            "{password:?}: {}",
            r.output()
        );
        r.assert_no_secret("RedisPw42");
        drop(holder);
    }
}
