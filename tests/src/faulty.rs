//! A misbehaving S3 in front of the real one: a proxy that passes requests to the
//! test S3 server (moto) and, by rule, stalls some (accepts and never answers),
//! answers some with an error, cuts some answers short or rewrites them. For the
//! faults a real bucket has on its worst day: a stalled UploadPart, a failing manifest
//! PUT, a server that answers nothing, a download cut half-way; and for leftovers that
//! are old without waiting for them to age.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// UploadPart requests are read and never answered.
    StallUploadPart,
    /// PUTs of `*.manifest.json` get a 500.
    FailManifestPut,
    /// Nothing is ever answered.
    StallAll,
    /// The first `times` GETs of a data object (not a listing or a manifest) are
    /// answered with their full `Content-Length` and only `after` bytes of the body,
    /// then the connection is closed.
    CutGets { times: usize, after: usize },
    /// Listings say every upload and object is a year older than it is.
    Backdate,
}

pub struct FaultyS3 {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FaultyS3 {
    pub fn start(upstream: u16, fault: Fault) -> FaultyS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let cuts = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let stop3 = stop2.clone();
                let cuts = cuts.clone();
                std::thread::spawn(move || serve(conn, upstream, fault, stop3, &cuts));
            }
        });
        FaultyS3 { port, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultyS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn hold(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One client connection: its request is passed on over a fresh upstream connection
/// (`Connection: close`), the answer passed back, and the connection closed (clients
/// open a new one for the next request).
fn serve(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    stop: Arc<AtomicBool>,
    cuts: &AtomicUsize,
) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
    {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let request_line = text.lines().next().unwrap_or("").to_string();
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if client.read_exact(&mut body).is_err() {
            return;
        }
        let stall = match fault {
            Fault::StallAll => true,
            Fault::StallUploadPart => {
                request_line.starts_with("PUT ") && request_line.contains("partNumber=")
            }
            _ => false,
        };
        if stall {
            hold(&stop);
            return;
        }
        if fault == Fault::FailManifestPut
            && request_line.starts_with("PUT ")
            && request_line.contains(".manifest.json")
        {
            let msg = "<Error><Code>InternalError</Code><Message>injected</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
            return;
        }
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        let head = text
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let head = format!("{}\r\nConnection: close\r\n\r\n", head.trim_end());
        if up
            .write_all(head.as_bytes())
            .and_then(|()| up.write_all(&body))
            .is_err()
        {
            return;
        }
        let mut answer = Vec::new();
        let _ = up.read_to_end(&mut answer);
        match fault {
            Fault::CutGets { times, after }
                if request_line.starts_with("GET ")
                    && !request_line.contains(".manifest.json")
                    && !request_line.contains("list-type")
                    && !request_line.contains("uploads")
                    && cuts.fetch_add(1, Ordering::SeqCst) < times =>
            {
                let body = answer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(answer.len(), |i| i + 4);
                answer.truncate((body + after).min(answer.len()));
            }
            Fault::Backdate => backdate(&mut answer),
            _ => {}
        }
        let _ = client.write_all(&answer);
    }
}

/// Turns `<Initiated>2026-` and `<LastModified>2026-` into the year before (same
/// length: the Content-Length stays right).
fn backdate(answer: &mut [u8]) {
    for tag in [&b"<Initiated>"[..], b"<LastModified>"] {
        let mut i = 0;
        while let Some(at) = answer[i..].windows(tag.len()).position(|w| w == tag) {
            let y = i + at + tag.len();
            if let Some(year) = answer
                .get(y..y + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u32>().ok())
            {
                answer[y..y + 4].copy_from_slice(format!("{:04}", year - 1).as_bytes());
            }
            i = y;
        }
    }
}
