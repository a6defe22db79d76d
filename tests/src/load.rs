//! A load generator for the rolling-update test (tests/tests/swarm.rs), run by the
//! `swarm_load` binary inside the stack's overlay network. Worker threads send
//! HTTP/1.1 GETs at a steady total rate to every task of a service: each new
//! connection resolves the name again (Swarm's `tasks.<service>`, one address per
//! healthy task in `dnsrr` mode) and takes the next address, so tasks that appear get
//! traffic and tasks that leave DNS get no new connections. Connections are kept alive
//! for a while (`--conn-max-age`, as client pools do) and closed when the server says
//! `Connection: close`. Nothing is retried: every request that does not get a 2xx
//! answer is a failure, sorted by kind (refused, reset, closed, timeout, 5xx, ...; a
//! `-reused` suffix when it happened on a kept-alive connection).
//!
//! The test names the current phase in `CTL/phase` (the generator reads it every
//! 50 ms; `stop` ends the run); figures are kept per phase and written to
//! `CTL/progress` every 200 ms and to `CTL/report` at the end, one [`Phase`] a line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to load and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name to resolve for each connection, e.g. `tasks.app`.
    pub host: String,
    pub port: u16,
    /// Concurrent connections (one thread each).
    pub workers: usize,
    /// Requests per second across all workers.
    pub rate: u32,
    /// Every Nth request is `/slow` (in flight for a while); 0: none.
    pub slow_every: u64,
    /// How long a connection is reused (each one picks 0.5x to 1.5x of it).
    pub conn_max_age: Duration,
    /// How long a resolved address list is reused (0: resolve for every connection),
    /// like clients that cache DNS answers.
    pub dns_cache: Duration,
    /// Connect and answer timeout.
    pub timeout: Duration,
    /// The control folder.
    pub ctl: PathBuf,
}

impl Config {
    /// From `--name value` arguments; unknown names are errors.
    pub fn from_args(args: &[String]) -> Result<Config, String> {
        let mut c = Config {
            host: "tasks.app".into(),
            port: 3000,
            workers: 16,
            rate: 600,
            slow_every: 20,
            conn_max_age: Duration::from_secs(10),
            dns_cache: Duration::ZERO,
            timeout: Duration::from_secs(5),
            ctl: PathBuf::from("/ctl"),
        };
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}"));
            let ms = |v: &str| num(v).map(Duration::from_millis);
            match name.as_str() {
                "--host" => c.host = value.clone(),
                "--port" => c.port = num(value)? as u16,
                "--workers" => c.workers = num(value)?.max(1) as usize,
                "--rate" => c.rate = num(value)?.max(1) as u32,
                "--slow-every" => c.slow_every = num(value)?,
                "--conn-max-age-ms" => c.conn_max_age = ms(value)?,
                "--dns-cache-ms" => c.dns_cache = ms(value)?,
                "--timeout-ms" => c.timeout = ms(value)?,
                "--ctl" => c.ctl = PathBuf::from(value),
                _ => return Err(format!("unknown option {name}")),
            }
        }
        Ok(c)
    }
}

/// One phase's figures. Latencies are those of `/` (the `/slow` requests, there to be
/// in flight when a task stops, wait 200 ms on purpose); counts include both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phase {
    pub name: String,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Seconds from the phase's first request to its last.
    pub secs: f64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Successful answers by the app's `version`.
    pub versions: BTreeMap<String, u64>,
    /// Requests by task address.
    pub tasks: BTreeMap<String, u64>,
}

impl Phase {
    /// One line: `name=.. sent=.. ... fail:KIND=N version:V=N task:IP=N`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "name={} sent={} ok={} failed={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} secs={:.2}",
            self.name,
            self.sent,
            self.ok,
            self.failed,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.secs
        );
        for (prefix, map) in [
            ("fail", &self.failures),
            ("version", &self.versions),
            ("task", &self.tasks),
        ] {
            for (k, v) in map {
                s.push_str(&format!(" {prefix}:{k}={v}"));
            }
        }
        s
    }

    /// Reads a [`Phase::line`].
    pub fn parse(line: &str) -> Option<Phase> {
        let mut p = Phase::default();
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            let n = || v.parse::<u64>().ok();
            let f = || v.parse::<f64>().ok();
            match k {
                "name" => p.name = v.to_string(),
                "sent" => p.sent = n()?,
                "ok" => p.ok = n()?,
                "failed" => p.failed = n()?,
                "p50_ms" => p.p50_ms = f()?,
                "p99_ms" => p.p99_ms = f()?,
                "max_ms" => p.max_ms = f()?,
                "secs" => p.secs = f()?,
                _ => {
                    let (prefix, key) = k.split_once(':')?;
                    let map = match prefix {
                        "fail" => &mut p.failures,
                        "version" => &mut p.versions,
                        "task" => &mut p.tasks,
                        _ => return None,
                    };
                    map.insert(key.to_string(), n()?);
                }
            }
        }
        (!p.name.is_empty()).then_some(p)
    }

    /// Requests per second over the phase.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.sent as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Reads a report or progress file: one [`Phase`] a line.
pub fn read_phases(path: &Path) -> Vec<Phase> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(Phase::parse)
        .collect()
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    tasks: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Tally {
    fn phase(&mut self, name: &str) -> Phase {
        self.latencies_us.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 * q).ceil() as usize)
                .clamp(1, self.latencies_us.len());
            f64::from(self.latencies_us[i - 1]) / 1000.0
        };
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        Phase {
            name: name.to_string(),
            sent: self.sent,
            ok: self.ok,
            failed: self.sent - self.ok,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            secs,
            failures: self.failures.clone(),
            versions: self.versions.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

/// The figures of every phase, in the order the phases began.
#[derive(Default)]
struct Book {
    order: Vec<String>,
    tallies: BTreeMap<String, Tally>,
}

impl Book {
    fn record(
        &mut self,
        phase: &str,
        started: Instant,
        slow: bool,
        task: Option<IpAddr>,
        outcome: &Outcome,
    ) {
        if !self.tallies.contains_key(phase) {
            self.order.push(phase.to_string());
        }
        let t = self.tallies.entry(phase.to_string()).or_default();
        let now = Instant::now();
        t.sent += 1;
        t.first.get_or_insert(started);
        t.last = Some(now);
        if !slow {
            t.latencies_us
                .push((now - started).as_micros().min(u128::from(u32::MAX)) as u32);
        }
        if let Some(ip) = task {
            *t.tasks.entry(ip.to_string()).or_default() += 1;
        }
        match outcome {
            Outcome::Ok { version } => {
                t.ok += 1;
                *t.versions.entry(version.clone()).or_default() += 1;
            }
            Outcome::Failed(kind) => *t.failures.entry(kind.clone()).or_default() += 1,
        }
    }

    fn text(&mut self) -> String {
        let order = self.order.clone();
        order
            .iter()
            .map(|n| self.tallies.get_mut(n).unwrap().phase(n).line() + "\n")
            .collect()
    }
}

enum Outcome {
    Ok { version: String },
    Failed(String),
}

/// Runs until the control file says `stop`; writes the report.
pub fn run(cfg: Config) -> std::io::Result<()> {
    let phase = Arc::new(Mutex::new(read_phase(&cfg.ctl)));
    let book = Arc::new(Mutex::new(Book::default()));
    let dns = Arc::new(Mutex::new(None::<(Instant, Vec<IpAddr>)>));
    let interval = Duration::from_secs_f64(cfg.workers as f64 / f64::from(cfg.rate));
    let workers: Vec<_> = (0..cfg.workers)
        .map(|w| {
            let (cfg, phase, book, dns) = (cfg.clone(), phase.clone(), book.clone(), dns.clone());
            std::thread::spawn(move || worker(w, &cfg, interval, &phase, &book, &dns))
        })
        .collect();
    let mut last_progress = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = read_phase(&cfg.ctl);
        *phase.lock().unwrap() = now.clone();
        if now == "stop" {
            break;
        }
        if last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            let text = book.lock().unwrap().text();
            write_atomic(&cfg.ctl.join("progress"), &text)?;
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let text = book.lock().unwrap().text();
    write_atomic(&cfg.ctl.join("progress"), &text)?;
    write_atomic(&cfg.ctl.join("report"), &text)
}

fn read_phase(ctl: &Path) -> String {
    std::fs::read_to_string(ctl.join("phase"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "warmup".into())
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

struct Conn {
    reader: BufReader<TcpStream>,
    peer: IpAddr,
    until: Instant,
    used: bool,
}

fn worker(
    w: usize,
    cfg: &Config,
    interval: Duration,
    phase: &Mutex<String>,
    book: &Mutex<Book>,
    dns: &Mutex<Option<(Instant, Vec<IpAddr>)>>,
) {
    // Spread the workers' first sends over one interval.
    let mut next = Instant::now() + interval.mul_f64(w as f64 / cfg.workers as f64);
    let mut conn: Option<Conn> = None;
    let mut n: u64 = w as u64;
    let mut pick = w;
    loop {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // far behind (a stall): do not burst to catch up
        }
        next += interval;
        let current = phase.lock().unwrap().clone();
        if current == "stop" {
            return;
        }
        n += 1;
        let slow = cfg.slow_every > 0 && n % cfg.slow_every == 0;
        let path = if slow { "/slow" } else { "/" };
        let started = Instant::now();
        if conn.as_ref().is_some_and(|c| started >= c.until) {
            conn = None;
        }
        if conn.is_none() {
            match connect(cfg, dns, &mut pick, w) {
                Ok(c) => conn = Some(c),
                Err((kind, peer)) => {
                    book.lock().unwrap().record(
                        &current,
                        started,
                        slow,
                        peer,
                        &Outcome::Failed(kind),
                    );
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let reused = c.used;
        c.used = true;
        let peer = c.peer;
        let (outcome, keep) = match request(c, path, &cfg.host) {
            Ok((status, close, body)) if (200..300).contains(&status) => (
                Outcome::Ok {
                    version: version_of(&body),
                },
                !close,
            ),
            Ok((status, _, _)) => (
                Outcome::Failed(if status >= 500 {
                    "http-5xx".to_string()
                } else {
                    format!("http-{status}")
                }),
                false,
            ),
            Err(e) => {
                let mut kind = io_kind(&e);
                if reused {
                    kind.push_str("-reused");
                }
                (Outcome::Failed(kind), false)
            }
        };
        if !keep {
            conn = None;
        }
        book.lock()
            .unwrap()
            .record(&current, started, slow, Some(peer), &outcome);
    }
}

/// Resolves (or reuses a cached answer) and connects to the next address.
fn connect(
    cfg: &Config,
    dns: &Mutex<Option<(Instant, Vec<IpAddr>)>>,
    pick: &mut usize,
    w: usize,
) -> Result<Conn, (String, Option<IpAddr>)> {
    let cached = dns
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(at, _)| !cfg.dns_cache.is_zero() && at.elapsed() < cfg.dns_cache)
        .map(|(_, a)| a.clone());
    let addrs = match cached {
        Some(a) => a,
        None => {
            let mut a: Vec<IpAddr> = (cfg.host.as_str(), cfg.port)
                .to_socket_addrs()
                .map_err(|_| ("dns".to_string(), None))?
                .map(|s| s.ip())
                .collect();
            a.sort();
            a.dedup();
            if !cfg.dns_cache.is_zero() {
                *dns.lock().unwrap() = Some((Instant::now(), a.clone()));
            }
            a
        }
    };
    if addrs.is_empty() {
        return Err(("dns-empty".into(), None));
    }
    *pick = pick.wrapping_add(1);
    let ip = addrs[*pick % addrs.len()];
    let stream = TcpStream::connect_timeout(&SocketAddr::new(ip, cfg.port), cfg.timeout)
        .map_err(|e| (format!("connect-{}", io_kind(&e)), Some(ip)))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(cfg.timeout));
    let _ = stream.set_write_timeout(Some(cfg.timeout));
    // Each connection lives 0.5x to 1.5x of the maximum age, so they do not all
    // reconnect at once.
    let spread = ((w as u64 * 7919 + *pick as u64 * 104_729) % 1000) as f64 / 1000.0;
    Ok(Conn {
        reader: BufReader::new(stream),
        peer: ip,
        until: Instant::now() + cfg.conn_max_age.mul_f64(0.5 + spread),
        used: false,
    })
}

fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::ConnectionReset | K::ConnectionAborted => "reset".into(),
        K::BrokenPipe | K::UnexpectedEof => "closed".into(),
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::InvalidData => "bad-response".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Sends one GET and reads the answer: (status, `Connection: close`, body).
fn request(c: &mut Conn, path: &str, host: &str) -> std::io::Result<(u16, bool, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dockhand-load\r\n\r\n");
    c.reader.get_mut().write_all(req.as_bytes())?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if c.reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    // HTTP/1.0 closes unless told otherwise
    let mut close = line.starts_with("HTTP/1.0");
    loop {
        line.clear();
        if c.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = !v.contains("keep-alive"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            if c.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            c.reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        c.reader.read_exact(&mut body)?;
    } else {
        c.reader.read_to_end(&mut body)?;
        close = true;
    }
    Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
}

/// The `"version":"..."` of the app's JSON answer, or `-`.
fn version_of(body: &str) -> String {
    body.split_once("\"version\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_string())
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_line_reads_back() {
        let mut p = Phase {
            name: "rollout".into(),
            sent: 10,
            ok: 9,
            failed: 1,
            p50_ms: 1.5,
            p99_ms: 20.25,
            max_ms: 31.0,
            secs: 2.5,
            ..Phase::default()
        };
        p.failures.insert("reset-reused".into(), 1);
        p.versions.insert("v2".into(), 9);
        p.tasks.insert("10.0.1.7".into(), 10);
        assert_eq!(Phase::parse(&p.line()), Some(p));
        assert_eq!(version_of("{\"version\":\"v3\",\"uid\":1000}"), "v3");
        assert_eq!(version_of("ok"), "-");
    }
}
