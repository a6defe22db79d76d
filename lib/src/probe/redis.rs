//! The Redis probe (`redis://`, `rediss://`): `AUTH` when the URL has a password, then
//! `PING`, in the RESP protocol written and read here. Its own module because its
//! protocol and its reasons (a refused connection that says why, a password echoed
//! back) are Redis's alone.

use std::cell::Cell;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::{open, Stage};
use crate::net::{transient, NetError, Retry};
use crate::tls::Verify;
use crate::url::Url;

pub(super) async fn probe_redis(
    url: &Url,
    tls: bool,
    port: u16,
    insecure: bool,
    stage: &Cell<Stage>,
) -> Result<String, NetError> {
    let verify = if insecure { Verify::None } else { Verify::Full };
    let mut stream = open(url.host(), port, tls, verify, stage).await?;
    let mut cmd = Vec::new();
    if let Some(pw) = &url.password {
        if url.username.is_empty() {
            cmd.extend(resp_command(&["AUTH", pw]));
        } else {
            cmd.extend(resp_command(&["AUTH", &url.username, pw]));
        }
    }
    cmd.extend(resp_command(&["PING"]));
    stage.set(Stage::Waiting);
    let io = |e: &std::io::Error| transient(crate::error::io_reason(e));
    // A server that refuses the connection (maxclients, protected mode) says why and
    // closes, maybe before our command arrives: what it said is read even when
    // writing, or reading more, fails.
    let written = stream.write_all(&cmd).await;
    let mut buf = Vec::new();
    let replies = if url.password.is_some() { 2 } else { 1 };
    loop {
        let lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
        if lines.len() > replies || buf.len() > 4096 {
            break;
        }
        let mut chunk = [0u8; 512];
        let ended = match stream.read(&mut chunk).await {
            Ok(0) => Err(None),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(Some(e)),
        };
        if let Err(cause) = ended {
            // A Redis error among the lines that arrived first is the reason.
            let text = String::from_utf8_lossy(&buf);
            if let Some(line) = text.lines().find(|l| l.starts_with('-')) {
                redis_replies(line.as_bytes(), 1)?;
            }
            return Err(match (cause, written) {
                (Some(e), _) | (None, Err(e)) => io(&e),
                (None, Ok(())) => transient("connection closed without a reply"),
            });
        }
    }
    redis_replies(&buf, replies)
}

/// Interprets the first `replies` reply lines of a Redis server (the last one answers
/// PING). Any bytes at all: the reason quotes at most 60 characters of the reply.
pub fn redis_replies(buf: &[u8], replies: usize) -> Result<String, NetError> {
    let text = String::from_utf8_lossy(buf);
    let quote = |s: &str| -> String {
        let s: String = s.chars().take(60).collect();
        format!("{:?}", s)
    };
    for line in text.lines().take(replies) {
        if let Some(err) = line.strip_prefix('-') {
            let permanent = err.starts_with("WRONGPASS")
                || err.starts_with("NOAUTH")
                || err.contains("invalid password");
            // Not cut here: the password is scrubbed from the whole reason first (in
            // `probe`), and only then is the line clipped for output.
            let kind = if permanent {
                Retry::Permanent
            } else {
                Retry::Transient
            };
            return Err(NetError::new(kind, err.trim()));
        }
    }
    match text.lines().nth(replies.saturating_sub(1)) {
        Some("+PONG") => Ok("PONG".into()),
        other => Err(transient(format!(
            "unexpected reply to PING: {}",
            quote(other.unwrap_or(""))
        ))),
    }
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend(a.bytes());
        out.extend(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
    }
}
