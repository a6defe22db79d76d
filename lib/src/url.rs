//! A small URL parser for the targets dockhand talks to (`http(s)://`, `tcp://`,
//! `postgres(ql)://`, `redis(s)://`, `file://`), and redaction so that a password never
//! reaches a log line, an error or a status file.
//!
//! Deliberately not the `url` crate: that brings IDNA/Unicode tables worth hundreds of
//! KiB to a probe that must stay tiny, and our targets never need them.

use std::fmt;

/// One `host[:port]` of the authority. PostgreSQL URLs may list several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    pub port: Option<u16>,
}

/// A parsed URL. Userinfo and query values are percent-decoded; `path` is kept as
/// written (still encoded) because HTTP sends it on as is.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    /// Lower-cased scheme.
    pub scheme: String,
    pub username: String,
    pub password: Option<String>,
    pub hosts: Vec<HostPort>,
    /// Path as written, `""` or starting with `/`.
    pub path: String,
    /// The raw query string without `?`, if any.
    pub raw_query: Option<String>,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
}

/// A URL that could not be parsed. Its text is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    pub input: String,
    pub reason: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid URL {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Parses `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?query][#fragment]`.
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let fail = |reason: &str| UrlError {
            input: crate::redact::text(input),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| fail("expected scheme://..., e.g. http://localhost:3000/health"))?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(fail("the scheme is not valid"));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(fail(&format!(
                "the URL holds a control character ({}): remove line breaks and tabs",
                c.escape_default()
            )));
        }
        // Userinfo first, the way users mean it: up to the last '@' of the authority,
        // so an unencoded '/', '?', '#' or ':' in a password stays in the password.
        let (userinfo, rest) = match userinfo_end(&scheme.to_ascii_lowercase(), rest) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let rest = rest.split_once('#').map_or(rest, |(a, _)| a);
        let (rest, raw_query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q.to_string())),
            None => (rest, None),
        };
        let (hostlist, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (username, password) = match userinfo {
            None => (String::new(), None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    decode(u).ok_or_else(|| fail("bad %-escape in the user name"))?,
                    Some(decode_lenient(p)),
                ),
                None => (
                    decode(ui).ok_or_else(|| fail("bad %-escape in the user name"))?,
                    None,
                ),
            },
        };
        let mut hosts = Vec::new();
        if !hostlist.is_empty() {
            for part in hostlist.split(',') {
                hosts.push(parse_host_port(part, &fail)?);
            }
        }
        let mut query = Vec::new();
        if let Some(q) = &raw_query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = decode(k).ok_or_else(|| fail("bad %-escape in the query"))?;
                let v = decode(v).ok_or_else(|| fail("bad %-escape in the query"))?;
                query.push((k, v));
            }
        }
        Ok(Url {
            scheme: scheme.to_ascii_lowercase(),
            username,
            password,
            hosts,
            path: path.to_string(),
            raw_query,
            query,
        })
    }

    /// The first host, or `""` when the URL has none.
    pub fn host(&self) -> &str {
        self.hosts.first().map_or("", |h| h.host.as_str())
    }

    /// The first host's port, if given.
    pub fn port(&self) -> Option<u16> {
        self.hosts.first().and_then(|h| h.port)
    }

    /// Path and query as sent in an HTTP request line (`/` when empty).
    pub fn request_target(&self) -> String {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        let target = match &self.raw_query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        // A space would end the request target on the wire; control characters never
        // get this far (parse refuses them).
        target.replace(' ', "%20")
    }

    /// The path, percent-decoded (file paths, database names).
    pub fn decoded_path(&self) -> Option<String> {
        decode(&self.path)
    }

    /// The same PostgreSQL URL naming another database (a `dbname` query parameter is
    /// dropped in favour of the path).
    pub fn with_database(&self, db: &str) -> Url {
        let mut u = self.clone();
        u.path = format!("/{}", encode(db));
        u.query.retain(|(k, _)| k != "dbname");
        u.raw_query = (!u.query.is_empty()).then(|| {
            u.query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        });
        u
    }
}

/// What [`encode`] leaves as it is: the unreserved characters of RFC 3986.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Display is always redacted: the password becomes `***`, and so do the values of
/// query parameters that carry secrets.
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if !self.username.is_empty() || self.password.is_some() {
            write!(f, "{}", self.username)?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            if h.host.contains(':') {
                write!(f, "[{}]", h.host)?;
            } else {
                write!(f, "{}", h.host)?;
            }
            if let Some(p) = h.port {
                write!(f, ":{p}")?;
            }
        }
        write!(f, "{}", self.path)?;
        if !self.query.is_empty() {
            write!(f, "?")?;
            for (i, (k, v)) in self.query.iter().enumerate() {
                if i > 0 {
                    write!(f, "&")?;
                }
                if crate::redact::is_secret_key(k) {
                    write!(f, "{k}=***")?;
                } else if v.is_empty() {
                    write!(f, "{k}")?;
                } else {
                    write!(f, "{k}={v}")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({self})")
    }
}

/// Where the userinfo of `rest` (the URL after `scheme://`) ends: the byte index of
/// the `@` that separates it from the host, or `None` when there is no userinfo.
///
/// The standard authority ends at the first `/`, `?` or `#`; a generated password
/// often holds those unencoded (`Pa/ss`, `12/x`), and users mean everything up to the
/// last `@` as the userinfo. So the last `@` of the whole URL is taken when what
/// follows it is a plausible host list, and for http(s), whose paths and queries may
/// themselves hold `@` (`/users/@me`, `?mail=a@b`), only when the userinfo before it
/// is `user:password` with no `?` or `#`, and not `host:port/path`.
fn userinfo_end(scheme: &str, rest: &str) -> Option<usize> {
    let standard_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let standard = rest[..standard_end].rfind('@');
    let last = rest.rfind('@')?;
    if Some(last) == standard {
        return standard;
    }
    let after = &rest[last + 1..];
    let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let hostlist = &after[..host_end];
    let plausible_host = !hostlist.is_empty()
        && hostlist
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[],%".contains(&b));
    let userinfo = &rest[..last];
    let http = scheme == "http" || scheme == "https";
    let plausible_userinfo = if http {
        // `h:81/users/@me` is a host, a port and a path, not a password "81/users/"
        userinfo.split_once(':').is_some_and(|(u, p)| {
            let port_like = p
                .split('/')
                .next()
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                && p.contains('/');
            !u.contains(['/', '?', '#']) && !port_like
        }) && !userinfo.contains(['?', '#'])
    } else {
        true
    };
    if plausible_host && plausible_userinfo {
        Some(last)
    } else {
        standard
    }
}

/// Percent-decodes a password leniently: a `%` that does not start a valid escape is
/// kept as it is (generated passwords hold bare `%`), and so are bytes that would not
/// decode to UTF-8.
pub fn decode_lenient(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| s.to_string())
}

fn parse_host_port(part: &str, fail: &dyn Fn(&str) -> UrlError) -> Result<HostPort, UrlError> {
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| fail("an IPv6 address opened with [ is not closed with ]"))?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p if p.starts_with(':') => Some(&p[1..]),
            _ => return Err(fail("unexpected text after ]")),
        };
        (host.to_string(), port)
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (part.to_string(), None),
        }
    };
    if host.contains(['[', ']', ' ', '/', '\\']) {
        return Err(fail(&format!("the host {host:?} is not valid")));
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    // Not quoted unless it is digits: a password holding an unencoded
                    // `/`, `?` or `#` is cut there, and its start would be taken for
                    // the port.
                    let shown = if p.bytes().all(|b| b.is_ascii_digit()) {
                        format!(" {p:?}")
                    } else {
                        String::new()
                    };
                    fail(&format!(
                        "the port{shown} is not a number from 1 to 65535 (a password holding / ? # @ : or % must be percent-encoded: %2F %3F %23 %40 %3A %25)"
                    ))
                })?,
        ),
    };
    let host = decode(&host).ok_or_else(|| fail("bad %-escape in the host"))?;
    Ok(HostPort { host, port })
}

/// Query parameters that Prisma's engines and node-postgres accept in the PostgreSQL
/// URLs they share with dockhand (`DATABASE_URL`, `DIRECT_URL`) but that only tune that
/// tool's own pool or driver (prisma-engines `quaint/src/connector/postgres/url.rs`;
/// pg-connection-string). One connection has nothing to apply them to: they are
/// accepted, checked where a wrong value would be refused by their own tool too, and
/// otherwise ignored (with a debug line). Never passed on to libpq, which refuses them.
pub const PG_FOREIGN_PARAMS: &[(&str, &str)] = &[
    ("connection_limit", "Prisma's pool size"),
    ("pool_timeout", "Prisma's pool wait"),
    ("socket_timeout", "Prisma's query socket timeout"),
    ("statement_cache_size", "Prisma's prepared statement cache"),
    ("max_connection_lifetime", "Prisma's pool"),
    ("max_idle_connection_lifetime", "Prisma's pool"),
    ("ssl", "node-postgres' TLS switch"),
    ("uselibpqcompat", "node-postgres' sslmode compatibility"),
    (
        "fallback_application_name",
        "libpq's default name; dockhand names its own connections",
    ),
    ("keepalives_idle", "TCP keepalive tuning"),
    ("keepalives_interval", "TCP keepalive tuning"),
    ("keepalives_count", "TCP keepalive tuning"),
    ("tcp_user_timeout", "TCP tuning"),
];

/// Who reads `key` when it is one of [`PG_FOREIGN_PARAMS`].
pub fn pg_foreign_param(key: &str) -> Option<&'static str> {
    PG_FOREIGN_PARAMS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, whose)| *whose)
}

/// Percent-decodes; `None` on a malformed escape or invalid UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let escapes_valid = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| {
            b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_valid {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password holding an unencoded `/`, `?` or `#` ends the authority there: its
    /// start looks like a port, and the error must not quote it.
    #[test]
    fn a_port_cut_from_a_password_is_not_quoted() {
        for (url, secret) in [
            ("http://app:Pw/?#x@web/", "Pw"),
            ("redis://app:Pw/x@", "Pw"),
            ("https://app:Pw/@:x@/h", "Pw"),
        ] {
            let e = Url::parse(url)
                .map(|u| u.to_string())
                .unwrap_err()
                .to_string();
            assert!(!e.contains(secret), "{url}: {e}");
            assert!(e.contains("percent-encoded"), "{url}: {e}");
        }
        let e = Url::parse("http://web:99999/").unwrap_err().to_string();
        assert!(e.contains("\"99999\""), "{e}");
    }

    #[test]
    fn parses_postgres_url() {
        let u = Url::parse("postgres://app:s%40cret@db:5432/my%20db?sslmode=require").unwrap();
        assert_eq!(u.scheme, "postgres");
        assert_eq!(u.username, "app");
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.host(), "db");
        assert_eq!(u.port(), Some(5432));
        assert_eq!(u.decoded_path().unwrap(), "/my db");
        assert_eq!(
            u.to_string(),
            "postgres://app:***@db:5432/my%20db?sslmode=require"
        );
    }

    #[test]
    fn parses_ipv6_multi_host_and_http() {
        let u = Url::parse("postgresql://[::1]:5433,10.0.0.2/app").unwrap();
        assert_eq!(u.hosts.len(), 2);
        assert_eq!(u.hosts[0].host, "::1");
        assert_eq!(u.hosts[0].port, Some(5433));
        assert_eq!(u.hosts[1].port, None);
        let h = Url::parse("HTTP://localhost:3000/api/health?x=1#frag").unwrap();
        assert_eq!(h.scheme, "http");
        assert_eq!(h.request_target(), "/api/health?x=1");
        assert_eq!(
            Url::parse("http://h/a b?c d").unwrap().request_target(),
            "/a%20b?c%20d"
        );
        assert_eq!(
            Url::parse("http://h").unwrap().request_target(),
            "/",
            "empty path requests /"
        );
    }

    #[test]
    fn rejects_malformed_without_leaking() {
        for bad in [
            "localhost:3000",
            "http://h:99999/",
            "http://h:abc/",
            "http://[::1/",
            "postgres://u:pw@h:0/db",
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
        let e = Url::parse("postgres://u:hunter2@h:0/db").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn redacts_secret_query_params() {
        let u = Url::parse("postgres://h/db?password=hunter2&sslmode=disable").unwrap();
        assert_eq!(
            u.to_string(),
            "postgres://h/db?password=***&sslmode=disable"
        );
    }

    #[test]
    fn passwords_with_unencoded_delimiters_stay_passwords() {
        for (input, pw, host, port, path) in [
            (
                "postgres://app:Pa/ssSECRET@db:5432/app",
                "Pa/ssSECRET",
                "db",
                Some(5432),
                "/app",
            ),
            (
                "postgres://app:12/SECRET@db/app",
                "12/SECRET",
                "db",
                None,
                "/app",
            ),
            (
                "postgres://app:a?b#c@d@db:6543/app?sslmode=disable",
                "a?b#c@d",
                "db",
                Some(6543),
                "/app",
            ),
            (
                "redis://:x/y:z%@cache:6379",
                "x/y:z%",
                "cache",
                Some(6379),
                "",
            ),
            (
                "http://u:p/q@h:8080/health",
                "p/q",
                "h",
                Some(8080),
                "/health",
            ),
        ] {
            let u = Url::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(u.password.as_deref(), Some(pw), "{input}");
            assert_eq!(
                (u.host(), u.port(), u.path.as_str()),
                (host, port, path),
                "{input}"
            );
            assert!(!u.to_string().contains(pw), "{input}: {u}");
        }
        // http paths and queries may hold '@' without being userinfo
        let u = Url::parse("http://h/check?mail=a@b.com").unwrap();
        assert_eq!((u.host(), u.password.as_deref()), ("h", None));
        let u = Url::parse("http://h:81/users/@me").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path.as_str()),
            ("h", Some(81), "/users/@me")
        );
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "http://h/a\r\nX-Injected: 1",
            "http://h/\nx",
            "http://h/\tx",
            "http://h/\0",
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert!(e.to_string().contains("control character"), "{e}");
        }
    }
}
