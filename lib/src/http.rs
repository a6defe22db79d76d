//! A minimal HTTP/1.1 GET for health probes: send one request, read the status line,
//! and read the body only when it must be searched, and only until the text searched
//! for has come (a streaming body never ends). Content-Length, chunked and
//! read-until-close bodies are handled; the head is capped at 64 KiB and the searched
//! body at 1 MiB, so a misbehaving server cannot make the probe grow.
//!
//! Why not hyper or ureq: a probe needs none of connection reuse, redirects, HTTP/2 or
//! cookies, and every KiB of binary and every page of memory is paid on each probe
//! for the life of every container.

use crate::net::{transient, NetError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 64 * 1024;
/// How much of the body `--expect-body` searches.
pub const MAX_BODY: usize = 1024 * 1024;

/// A response's head, with the start of the body that arrived with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    content_length: Option<usize>,
    chunked: bool,
    /// Bytes after the head (the body's start, raw).
    rest: Vec<u8>,
}

/// Whether a body holds the text searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySearch {
    /// It does (the rest of the body was not read).
    Found,
    /// The body ended without it, or its first [`MAX_BODY`] bytes (`capped`) hold none.
    Missing { capped: bool },
}

/// Builds the request bytes. `headers` are sent after the defaults and replace a
/// default of the same name.
pub fn request(
    host_header: &str,
    target: &str,
    headers: &[(String, String)],
    basic_auth: Option<&str>,
) -> Vec<u8> {
    let mut defaults: Vec<(&str, String)> = vec![
        ("Host", host_header.to_string()),
        (
            "User-Agent",
            concat!("dockhand-healthcheck/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("Accept", "*/*".into()),
        ("Connection", "close".into()),
    ];
    if let Some(creds) = basic_auth {
        defaults.push((
            "Authorization",
            format!("Basic {}", base64(creds.as_bytes())),
        ));
    }
    let mut out = format!("GET {target} HTTP/1.1\r\n");
    for (k, v) in &defaults {
        if !headers.iter().any(|(hk, _)| hk.eq_ignore_ascii_case(k)) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Sends `req` and reads the response head; `on_sent` runs once the request is out.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    req: &[u8],
    on_sent: impl FnOnce(),
) -> Result<Head, NetError> {
    stream
        .write_all(req)
        .await
        .map_err(|e| transient(crate::error::io_reason(&e)).with_source(e))?;
    stream
        .flush()
        .await
        .map_err(|e| transient(crate::error::io_reason(&e)).with_source(e))?;
    on_sent();
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(transient("response headers larger than 64 KiB"));
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(transient(if buf.is_empty() {
                "connection closed without a response"
            } else {
                "connection closed in the middle of the response headers"
            }));
        }
    };
    // As lenient as curl where the status line is clear: bare LF line endings, and
    // header values in Latin-1 or any other bytes (only the status line and two
    // header names matter here).
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or("");
    let status = parse_status(status_line).ok_or_else(|| {
        let shown: String = truncate(status_line, 40)
            .escape_default()
            .take(80)
            .collect();
        transient(format!("not an HTTP response: \"{shown}\""))
    })?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    Ok(Head {
        status,
        content_length,
        chunked,
        rest: buf.split_off(head_end),
    })
}

/// Reads the body of `head` only until it contains `needle`, so a body that never
/// ends (server-sent events, a log tail) is healthy as soon as the text has come.
/// Content-Length, chunked and read-until-close bodies; at most [`MAX_BODY`] bytes.
pub async fn body_contains<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: Head,
    needle: &[u8],
) -> Result<BodySearch, NetError> {
    let mut raw = head.rest;
    let limit = head.content_length.unwrap_or(usize::MAX).min(MAX_BODY);
    loop {
        let (body, complete) = if head.chunked {
            match dechunk(&raw) {
                Chunked::Done(b) => (b, true),
                Chunked::Partial(b) => (b, false),
                Chunked::Invalid => return Err(transient("malformed chunked body")),
            }
        } else {
            let end = raw.len().min(limit);
            (raw[..end].to_vec(), raw.len() >= limit)
        };
        let capped = body.len() >= MAX_BODY;
        if find(&body[..body.len().min(MAX_BODY)], needle).is_some() {
            return Ok(BodySearch::Found);
        }
        if complete || capped {
            return Ok(BodySearch::Missing { capped });
        }
        if read_more(stream, &mut raw).await? == 0 {
            return Ok(BodySearch::Missing { capped: false });
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, NetError> {
    let mut chunk = [0u8; 8192];
    let n = match stream.read(&mut chunk).await {
        Ok(n) => n,
        // A TLS peer that closes without close_notify: treat as end of stream.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(transient(crate::error::io_reason(&e)).with_source(e)),
    };
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

enum Chunked {
    Done(Vec<u8>),
    Partial(Vec<u8>),
    Invalid,
}

/// Where the head ends (after its blank line), with CRLF or bare LF line endings.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    let mixed = find(buf, b"\n\r\n").map(|i| i + 3);
    [crlf, lf, mixed].into_iter().flatten().min()
}

/// Decodes a chunked body as far as it has arrived. A peer's sizes are never trusted:
/// every offset is checked, so a size such as `ffffffffffffffff` is an invalid body,
/// not an overflow.
fn dechunk(mut data: &[u8]) -> Chunked {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\n") else {
            return Chunked::Partial(out);
        };
        let line = &data[..eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let size_text = std::str::from_utf8(line).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        if size_text.is_empty() || size_text.len() > 15 {
            return Chunked::Invalid;
        }
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Chunked::Invalid;
        };
        if size == 0 {
            return Chunked::Done(out);
        }
        let start = eol + 1;
        let Some(end) = start.checked_add(size) else {
            return Chunked::Invalid;
        };
        if data.len() < end {
            out.extend_from_slice(&data[start..]);
            return Chunked::Partial(out);
        }
        out.extend_from_slice(&data[start..end]);
        // the chunk's own line ending: CRLF, or a bare LF
        let rest = &data[end..];
        let skip = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else if rest.len() < 2 {
            return Chunked::Partial(out);
        } else {
            return Chunked::Invalid;
        };
        data = &rest[skip..];
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Standard base64 with padding (RFC 4648), for Basic credentials.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn request_headers_override_defaults() {
        let r = String::from_utf8(request(
            "h:1",
            "/x",
            &[("host".into(), "other".into()), ("X-A".into(), "b".into())],
            None,
        ))
        .unwrap();
        assert!(r.starts_with("GET /x HTTP/1.1\r\n"));
        assert!(!r.contains("Host: h:1"));
        assert!(
            r.contains("host: other\r\n") && r.contains("X-A: b\r\n") && r.ends_with("\r\n\r\n")
        );
    }

    #[test]
    fn dechunks() {
        match dechunk(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n") {
            Chunked::Done(b) => assert_eq!(b, b"Wikipedia"),
            _ => panic!("not done"),
        }
        assert!(matches!(dechunk(b"4\r\nWi"), Chunked::Partial(b) if b == b"Wi"));
        assert!(matches!(dechunk(b"zz\r\n"), Chunked::Invalid));
        // sizes that would overflow an offset are invalid, not a panic
        assert!(matches!(
            dechunk(b"ffffffffffffffff\r\nab"),
            Chunked::Invalid
        ));
        assert!(matches!(
            dechunk(b"fffffffffffffff\r\nab"),
            Chunked::Partial(_)
        ));
        match dechunk(b"3\nabc\n0\n\n") {
            Chunked::Done(b) => assert_eq!(b, b"abc"),
            _ => panic!("bare LF chunks not decoded"),
        }
    }

    /// A peer that reads the request and answers `reply`, then keeps the connection
    /// open (a body that never ends) unless `close`.
    async fn answer(
        reply: &'static [u8],
        close: bool,
    ) -> (tokio::io::DuplexStream, Result<Head, NetError>) {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut b = [0u8; 1024];
            let _ = server.read(&mut b).await;
            let _ = server.write_all(reply).await;
            if !close {
                std::future::pending::<()>().await;
            }
        });
        let head = exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", || {}).await;
        (client, head)
    }

    async fn search(
        reply: &'static [u8],
        close: bool,
        needle: &str,
    ) -> Result<BodySearch, NetError> {
        let (mut client, head) = answer(reply, close).await;
        body_contains(&mut client, head?, needle.as_bytes()).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn searches_bodies_of_every_kind() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        assert_eq!(
            search(chunked, true, "cde").await.unwrap(),
            BodySearch::Found
        );
        assert_eq!(
            search(chunked, true, "xyz").await.unwrap(),
            BodySearch::Missing { capped: false }
        );
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
        assert_eq!(search(sized, false, "ok").await.unwrap(), BodySearch::Found);
        assert_eq!(
            search(sized, false, "EXTRA").await.unwrap(),
            BodySearch::Missing { capped: false }
        );
        // a body that never ends: found as soon as the text is there
        let stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nready\n\r\n";
        assert_eq!(
            search(stream, false, "ready").await.unwrap(),
            BodySearch::Found
        );
        let stream = b"HTTP/1.1 200 OK\r\n\r\ndata: ready\n";
        assert_eq!(
            search(stream, false, "ready").await.unwrap(),
            BodySearch::Found
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lenient_where_the_status_line_is_clear() {
        // a Latin-1 header value, and bare LF line endings
        let reply = b"HTTP/1.1 200 OK\r\nX-Name: Jos\xe9\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(answer(reply, true).await.1.unwrap().status, 200);
        assert_eq!(search(reply, true, "ok").await.unwrap(), BodySearch::Found);
        let (_, head) = answer(b"HTTP/1.1 204 No Content\nServer: x\n\n", true).await;
        assert_eq!(head.unwrap().status, 204);
        let e = search(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            true,
            "ab",
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("malformed chunked"), "{e}");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/1.0 200"), Some(200));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
    }
}
