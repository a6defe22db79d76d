//! Properties of every parser of untrusted bytes, checked on generated input
//! (proptest; failing cases are kept in `proptest-regressions/` and replayed first):
//! URLs, redaction, HTTP heads and chunked bodies, Redis replies, hosts files,
//! durations, signal and rewrite specs, header and status options. None may panic;
//! redaction never lets a password through; output stays bounded.

use proptest::prelude::*;

use dockhand::redact::text as redact_text;
use dockhand::url::Url;

/// Passwords as generators make them: base64-ish with the URL delimiters users
/// forget to encode. The marker makes a leak easy to spot.
fn password() -> impl Strategy<Value = String> {
    "[A-Za-z0-9/?#@:%+=._-]{0,24}".prop_map(|p| format!("Zq9{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn url_parse_never_panics(s in "\\PC{0,80}") {
        let _ = Url::parse(&s);
        let _ = redact_text(&s);
    }

    #[test]
    fn url_parse_never_panics_on_url_shapes(
        scheme in "(http|https|postgres|redis|tcp|file|x)",
        rest in "[a-z0-9@:/?#%\\[\\]=&.,-]{0,60}",
    ) {
        let s = format!("{scheme}://{rest}");
        if let Ok(u) = Url::parse(&s) {
            let _ = u.to_string();
            let _ = u.request_target();
        }
    }

    #[test]
    fn a_password_never_survives_parsing_or_redaction(
        scheme in "(postgres|postgresql|redis|rediss|http|https)",
        user in "[a-z]{1,8}",
        pw in password(),
        host in "[a-z]{1,10}",
        port in proptest::option::of(1u32..70000),
        path in "(/[a-z]{0,8})?",
    ) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let s = format!("{scheme}://{user}:{pw}@{host}{port}{path}");
        match Url::parse(&s) {
            Ok(u) => {
                prop_assert!(!u.to_string().contains(&pw), "{s} -> {u}");
                let debug = format!("{u:?}");
                prop_assert!(!debug.contains(&pw), "{}", debug);
                let pg_like = !scheme.starts_with("http");
                if pg_like {
                    // the whole password is the password (percent-escapes decoded)
                    let decoded = dockhand::url::decode_lenient(&pw);
                    prop_assert_eq!(u.password.as_deref(), Some(decoded.as_str()), "{}", s);
                    prop_assert_eq!(u.host(), host.as_str());
                }
            }
            Err(e) => prop_assert!(!e.to_string().contains(&pw), "{s} -> {e}"),
        }
        let text = format!("error connecting to {s}: refused");
        prop_assert!(!redact_text(&text).contains(&pw), "{}", redact_text(&text));
    }

    #[test]
    fn durations_never_panic_and_never_overflow_a_clock(s in "[0-9a-z. ]{0,24}") {
        if let Ok(d) = dockhand::duration::parse(&s) {
            prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            let _ = dockhand::duration::format(d);
        }
    }

    #[test]
    fn bare_numbers_as_durations(n in any::<u64>()) {
        if let Ok(d) = dockhand::duration::parse(&n.to_string()) {
            prop_assert!(std::time::Instant::now().checked_add(d).is_some());
        }
    }
}

#[cfg(feature = "probe")]
mod probe {
    use super::*;
    use dockhand::probe::{parse_header, split_targets, StatusSet, Target};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn options_never_panic(s in "\\PC{0,60}") {
            let _ = StatusSet::parse(&s);
            let _ = parse_header(&s);
            for t in split_targets(&s) {
                let _ = Target::parse(&t);
            }
        }

        #[test]
        fn header_errors_never_echo_the_value(token in "[A-Za-z0-9]{12,20}", sep in "( |\\t|  )") {
            let h = format!("Authorization{sep}Bearer {token}");
            if let Err(e) = parse_header(&h) {
                prop_assert!(!e.message().contains(&token), "{e}");
            }
        }

        #[test]
        fn hosts_files_never_panic(text in "\\PC{0,200}", name in "[a-z.]{1,12}") {
            let _ = dockhand::net::hosts_lookup(&text, &name);
        }

        #[test]
        fn http_answers_never_panic_and_stay_bounded(reply in proptest::collection::vec(any::<u8>(), 0..600), want_body: bool) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let r = rt.block_on(async {
                let (mut client, mut server) = tokio::io::duplex(1 << 16);
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let reply2 = reply.clone();
                tokio::spawn(async move {
                    let mut b = [0u8; 512];
                    let _ = server.read(&mut b).await;
                    let _ = server.write_all(&reply2).await;
                });
                let head = dockhand::http::exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", || {}).await?;
                if want_body {
                    dockhand::http::body_contains(&mut client, head, b"zz").await?;
                }
                Ok::<(), dockhand::net::NetError>(())
            });
            if let Err(e) = r {
                prop_assert!(e.message().len() < 300, "{e}");
            }
        }

        #[test]
        fn http_heads_with_chunked_bodies_never_panic(sizes in proptest::collection::vec("[0-9a-fA-F]{1,20}", 0..4), data in "[a-z\r\n]{0,40}") {
            let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for s in &sizes {
                reply.extend_from_slice(s.as_bytes());
                reply.extend_from_slice(b"\r\n");
                reply.extend_from_slice(data.as_bytes());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = rt.block_on(async {
                let (mut client, mut server) = tokio::io::duplex(1 << 16);
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tokio::spawn(async move {
                    let mut b = [0u8; 512];
                    let _ = server.read(&mut b).await;
                    let _ = server.write_all(&reply).await;
                });
                let head = dockhand::http::exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", || {}).await?;
                dockhand::http::body_contains(&mut client, head, b"zz").await
            });
        }

        #[test]
        fn redis_replies_never_panic(reply in proptest::collection::vec(any::<u8>(), 0..300), n in 1usize..3) {
            let r = dockhand::probe::redis_replies(&reply, n);
            if let Err(f) = r {
                prop_assert!(f.message().len() <= reply.len() * 3 + 100);
            }
        }
    }
}

#[cfg(feature = "pid1")]
mod signals {
    use super::*;
    use dockhand::config::parse_pair;
    use dockhand::process::parse_exit_code;
    use dockhand::signals::parse_signal;

    proptest! {
        #[test]
        fn signal_and_rewrite_specs_never_panic(s in "\\PC{0,20}") {
            let _ = parse_signal(&s, true);
            let _ = parse_pair(&s, "--rewrite", |x| parse_signal(x, true));
            let _ = parse_pair(&s, "--remap-exit", parse_exit_code);
        }

        #[test]
        fn rtmin_offsets_never_overflow(off in any::<i32>(), name in "(RTMIN\\+|RTMAX-|SIGRTMIN\\+)") {
            let _ = parse_signal(&format!("{name}{off}"), false);
        }
    }
}

// ---- every failure the properties found, kept as a plain test ---------------------

#[test]
fn regression_redaction_after_a_multibyte_character_before_a_key() {
    // panicked: "byte index 3 is not a char boundary" in redact_params
    assert_eq!(redact_text("/P\u{fb15}3=x"), "/P\u{fb15}3=x");
    assert_eq!(
        redact_text("\u{fb15}password=x y"),
        "\u{fb15}password=*** y"
    );
}

#[test]
fn regression_a_percent_escape_in_a_password_decodes_and_a_stray_percent_stays() {
    let u = Url::parse("postgres://a:Zq9%%00@a").unwrap();
    assert_eq!(u.password.as_deref(), Some("Zq9%\0"));
    let u = Url::parse("postgres://a:50%off@h/db").unwrap();
    assert_eq!(u.password.as_deref(), Some("50%off"));
}

#[cfg(feature = "probe")]
#[test]
fn regression_a_binary_answer_gives_a_short_reason() {
    // the reason quoted 60 escaped characters: over 300 bytes for binary garbage
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1 << 16);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tokio::spawn(async move {
                let mut b = [0u8; 512];
                let _ = server.read(&mut b).await;
                let _ = server.write_all(&[0x80; 200]).await;
                let _ = server.write_all(b"\r\n\r\n").await;
            });
            dockhand::http::exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", || {}).await
        })
        .unwrap_err();
    assert!(e.message().len() < 120, "{e}");
}
