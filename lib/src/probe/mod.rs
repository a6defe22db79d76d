//! Health probes: is a target up? One implementation serves `healthcheck` (one pass,
//! all targets must pass) and `entrypoint`'s wait phase (retry until up).
//!
//! Targets: `http://`, `https://` (GET, expected status and body), `tcp://host:port`
//! (connects), `postgres://`/`postgresql://` (connects, authenticates, `SELECT 1`),
//! `redis://`/`rediss://` (`PING`), `file:///path?max-age=26h` (exists, recently
//! modified). Every target's failure is one short reason line.
//!
//! Here: the targets and their options, running probes, and the HTTP, TCP and
//! PostgreSQL probes; [`connect`] opens a (TLS) stream and tracks the stage for the
//! timeout message; the Redis and file probes are [`redis`] and [`file`].

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::config::{invalid, ConfigError};
use crate::duration;
use crate::http;
use crate::net::{self, transient, NetError};
use crate::pg::PgTarget;
use crate::tls::Verify;
use crate::url::Url;

use connect::{open, Stage};
pub use redis::redis_replies;

mod connect;
mod file;
mod redis;

/// Which HTTP statuses count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet(vec![(200, 299)])
    }
}

impl StatusSet {
    /// Parses `200`, `200,204`, `200-399` or `2xx`, comma-separated.
    pub fn parse(s: &str) -> Result<StatusSet, ConfigError> {
        let bad = || {
            invalid(format!(
                "invalid status {s:?}: use e.g. 200, 200,204, 200-399 or 2xx"
            ))
        };
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let code = |t: &str| t.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
            let range = if let Some(d) = part.strip_suffix("xx").or_else(|| part.strip_suffix("XX"))
            {
                let d: u16 = d
                    .parse()
                    .ok()
                    .filter(|d| (1..=5).contains(d))
                    .ok_or_else(bad)?;
                (d * 100, d * 100 + 99)
            } else if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (
                    code(a.trim()).ok_or_else(bad)?,
                    code(b.trim()).ok_or_else(bad)?,
                );
                if a > b {
                    return Err(bad());
                }
                (a, b)
            } else {
                let c = code(part).ok_or_else(bad)?;
                (c, c)
            };
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err(bad());
        }
        Ok(StatusSet(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }
}

/// Options that apply to HTTP(S) targets.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    pub expect_status: StatusSet,
    pub expect_body: Option<String>,
    pub headers: Vec<(String, String)>,
    pub insecure: bool,
}

/// Parses a `--header 'Name: value'` argument.
pub fn parse_header(s: &str) -> Result<(String, String), ConfigError> {
    // The value is often a token: errors name the problem, never the text.
    let (k, v) = s.split_once(':').ok_or_else(|| {
        invalid("invalid header: no ':' between name and value (use 'Name: value')")
    })?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    {
        return Err(invalid(
            "invalid header name: only letters, digits and -_!#$%&'*+.^`|~ are allowed before the ':' (use 'Name: value')",
        ));
    }
    if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(invalid(format!(
            "invalid header value for {k}: no line breaks or control characters"
        )));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// One thing to probe.
pub enum Target {
    Http {
        url: Url,
        tls: bool,
        port: u16,
    },
    Tcp {
        url: Url,
        port: u16,
    },
    Postgres(Box<PgTarget>),
    Redis {
        url: Url,
        tls: bool,
        port: u16,
    },
    File {
        url: Url,
        path: PathBuf,
        max_age: Option<Duration>,
    },
}

impl Target {
    /// Parses a target URL; errors say what is wrong and never contain a password.
    pub fn parse(s: &str) -> Result<Target, ConfigError> {
        let url = Url::parse(s).map_err(|e| invalid(e.to_string()).with_source(e))?;
        let need_host = |url: &Url| {
            if url.host().is_empty() {
                Err(invalid(format!("{url}: the URL names no host")))
            } else if url.hosts.len() > 1 {
                Err(invalid(format!(
                    "{url}: only postgres:// URLs may list several hosts"
                )))
            } else {
                Ok(())
            }
        };
        match url.scheme.as_str() {
            "http" | "https" => {
                need_host(&url)?;
                let tls = url.scheme == "https";
                let port = url.port().unwrap_or(if tls { 443 } else { 80 });
                Ok(Target::Http { url, tls, port })
            }
            "tcp" => {
                need_host(&url)?;
                let port = url.port().ok_or_else(|| {
                    invalid(format!(
                        "{url}: a tcp:// target needs a port, e.g. tcp://db:5432"
                    ))
                })?;
                Ok(Target::Tcp { url, port })
            }
            "postgres" | "postgresql" => PgTarget::from_url(&url)
                .map(|t| Target::Postgres(Box::new(t)))
                .map_err(|e| e.context(&url)),
            "redis" | "rediss" => {
                need_host(&url)?;
                let tls = url.scheme == "rediss";
                let port = url.port().unwrap_or(6379);
                Ok(Target::Redis { url, tls, port })
            }
            "file" => {
                if !(url.host().is_empty() || url.host() == "localhost") {
                    return Err(invalid(format!(
                        "{url}: use file:///absolute/path (three slashes)"
                    )));
                }
                let path = url
                    .decoded_path()
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| invalid(format!("{url}: use file:///absolute/path")))?;
                let mut max_age = None;
                for (k, v) in &url.query {
                    match k.as_str() {
                        "max-age" | "max_age" => {
                            max_age = Some(
                                duration::parse(v)
                                    .map_err(|e| invalid(format!("{url}: max-age: {e}")))?,
                            )
                        }
                        other => {
                            return Err(invalid(format!(
                                "{url}: unknown parameter {other:?} (file targets take max-age)"
                            )))
                        }
                    }
                }
                Ok(Target::File {
                    path: path.into(),
                    url,
                    max_age,
                })
            }
            other => Err(invalid(format!(
                "{url}: unknown scheme {other:?}: use http, https, tcp, postgres, redis or file"
            ))),
        }
    }

    /// The target as shown in reports (redacted).
    pub fn url(&self) -> &Url {
        match self {
            Target::Http { url, .. }
            | Target::Tcp { url, .. }
            | Target::Redis { url, .. }
            | Target::File { url, .. } => url,
            Target::Postgres(p) => &p.url,
        }
    }
}

/// The result of one target.
#[derive(Debug, Clone)]
pub struct Report {
    /// Redacted target.
    pub target: String,
    /// Healthy detail (`status 200`) or the failure.
    pub outcome: Result<String, NetError>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(
                f,
                "{}: ok, {} in {}",
                self.target,
                detail,
                duration::format(self.elapsed)
            ),
            Err(fail) => write!(f, "{}: {}", self.target, fail.message()),
        }
    }
}

/// Splits a target list on whitespace, and on commas that start a new URL (a
/// PostgreSQL URL may itself hold commas between hosts).
pub fn split_targets(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in list.split_whitespace() {
        for piece in word.split(',') {
            // `postgres` alone is entrypoint's name for the direct URL, never a host.
            let starts_url = piece == "postgres"
                || piece.split_once("://").is_some_and(|(s, _)| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                });
            match out.last_mut() {
                Some(last) if !starts_url && !piece.is_empty() && last.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ if piece.is_empty() => {}
                _ => out.push(piece.to_string()),
            }
        }
    }
    out
}

/// Probes one target once, giving up at `deadline`.
pub async fn probe(target: &Target, opts: &HttpOptions, deadline: tokio::time::Instant) -> Report {
    let started = Instant::now();
    let stage = Cell::new(Stage::Connecting);
    let outcome = match tokio::time::timeout_at(deadline, probe_inner(target, opts, &stage)).await {
        Ok(r) => r,
        Err(_) => Err(transient(format!(
            "timed out after {} ({})",
            duration::format(started.elapsed()),
            stage.get().describe(opts.expect_body.as_deref())
        ))),
    };
    // A server may echo what it was sent (Redis: "with args beginning with: 'pw'").
    let outcome = match (outcome, &target.url().password) {
        (Err(f), Some(pw)) => Err(f.map_message(|m| crate::redact::scrub(m, pw))),
        (o, _) => o,
    };
    Report {
        target: target.url().to_string(),
        outcome,
        elapsed: started.elapsed(),
    }
}

/// Probes every target concurrently, all under one timeout.
pub async fn probe_all(targets: &[Target], opts: &HttpOptions, timeout: Duration) -> Vec<Report> {
    let deadline = tokio::time::Instant::now() + timeout;
    join_all(targets.iter().map(|t| probe(t, opts, deadline)).collect()).await
}

/// Polls futures of one type together on the current task (no `'static`, no spawn).
///
/// Written here rather than taken from futures-util (which tokio-postgres links): its
/// `join_all` made `healthcheck` bigger, by 8,808 bytes in the release build
/// (2,414,720 to 2,423,528) and 12,288 in the static `small` build that ships
/// (2,056,472 to 2,068,760); tokio's `JoinSet` spawns, so it needs `'static` futures.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

async fn probe_inner(
    target: &Target,
    opts: &HttpOptions,
    stage: &Cell<Stage>,
) -> Result<String, NetError> {
    match target {
        Target::Http { url, tls, port } => probe_http(url, *tls, *port, opts, stage).await,
        Target::Tcp { url, port } => {
            net::connect(url.host(), *port).await?;
            Ok("connected".into())
        }
        Target::Postgres(pg) => {
            pg.ping().await?;
            Ok("SELECT 1".into())
        }
        Target::Redis { url, tls, port } => {
            redis::probe_redis(url, *tls, *port, opts.insecure, stage).await
        }
        Target::File { path, max_age, .. } => file::probe_file(path, *max_age),
    }
}

async fn probe_http(
    url: &Url,
    tls: bool,
    port: u16,
    opts: &HttpOptions,
    stage: &Cell<Stage>,
) -> Result<String, NetError> {
    let verify = if opts.insecure {
        Verify::None
    } else {
        Verify::Full
    };
    let mut stream = open(url.host(), port, tls, verify, stage).await?;
    let host = if url.host().contains(':') {
        format!("[{}]", url.host())
    } else {
        url.host().to_string()
    };
    let default_port = if tls { 443 } else { 80 };
    let host_header = if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    };
    let auth = url
        .password
        .as_ref()
        .map(|p| format!("{}:{}", url.username, p));
    let req = http::request(
        &host_header,
        &url.request_target(),
        &opts.headers,
        auth.as_deref(),
    );
    let head = http::exchange(&mut stream, &req, || stage.set(Stage::Waiting)).await?;
    let status = head.status;
    if !opts.expect_status.contains(status) {
        return Err(transient(format!("status {status}")));
    }
    if let Some(want) = &opts.expect_body {
        stage.set(Stage::Searching(status));
        if let http::BodySearch::Missing { capped } =
            http::body_contains(&mut stream, head, want.as_bytes()).await?
        {
            let within = if capped {
                " (searched the first 1 MiB)"
            } else {
                ""
            };
            return Err(transient(format!(
                "status {status}, but the body does not contain {want:?}{within}"
            )));
        }
    }
    Ok(format!("status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("200-299,418").unwrap();
        assert!(s.contains(204) && s.contains(418) && !s.contains(301));
        assert!(StatusSet::parse("3xx").unwrap().contains(302));
        for bad in ["", "abc", "99", "600", "300-200", "6xx"] {
            assert!(StatusSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("X-Token: abc ").unwrap(),
            ("X-Token".into(), "abc".into())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn targets_parse_or_explain() {
        assert!(matches!(
            Target::parse("http://localhost:3000/health").unwrap(),
            Target::Http { port: 3000, .. }
        ));
        assert!(matches!(
            Target::parse("https://example.com").unwrap(),
            Target::Http {
                port: 443,
                tls: true,
                ..
            }
        ));
        assert!(matches!(
            Target::parse("file:///tmp/x?max-age=26h").unwrap(),
            Target::File {
                max_age: Some(_),
                ..
            }
        ));
        let e = |s| Target::parse(s).err().unwrap().to_string();
        assert!(e("ftp://x").contains("unknown scheme"));
        assert!(e("tcp://db").contains("needs a port"));
        assert!(e("file://tmp/x").contains("three slashes"));
        assert!(e("file:///x?max-age=soon").contains("invalid duration"));
        assert!(e("http://:80/").contains("no host"));
        assert!(!e("redis://:hunter2@h:99999").contains("hunter2"));
    }

    #[test]
    fn splits_target_lists() {
        assert_eq!(
            split_targets("http://a/x, tcp://b:1\npostgres://u@h1,h2:5/db,file:///f"),
            [
                "http://a/x",
                "tcp://b:1",
                "postgres://u@h1,h2:5/db",
                "file:///f"
            ]
        );
        assert_eq!(
            split_targets("tcp://c:1,postgres"),
            ["tcp://c:1", "postgres"]
        );
    }
}
