//! Scripted HTTP(S) servers on 127.0.0.1 for probe tests: fixed status and body,
//! chunked bodies, a streaming endpoint that never ends its body, a server that
//! accepts and never answers, and a record of the requests received.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Status and body with Content-Length.
    Fixed { status: u16, body: String },
    /// Status 200 and the body in chunks (Transfer-Encoding: chunked).
    Chunked(Vec<String>),
    /// Accepts, reads, never answers.
    Hang,
    /// Status 200 and the start of a body that never ends (server-sent events, a log
    /// tail): `text`, then the connection stays open. Chunked, or read-until-close.
    Stream { chunked: bool, text: String },
}

pub struct HttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// A plain HTTP server.
    pub fn start(behaviour: Behaviour) -> HttpServer {
        Self::start_inner(behaviour, None)
    }

    /// An HTTPS server with `config`'s certificate.
    pub fn start_tls(behaviour: Behaviour, config: Arc<rustls::ServerConfig>) -> HttpServer {
        Self::start_inner(behaviour, Some(config))
    }

    fn start_inner(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (b, t, r, s) = (
                    behaviour.clone(),
                    tls.clone(),
                    requests2.clone(),
                    stop2.clone(),
                );
                std::thread::spawn(move || serve(conn, b, t, r, s));
            }
        });
        HttpServer {
            port,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// The request heads received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    behaviour: Behaviour,
    tls: Option<Arc<rustls::ServerConfig>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    match tls {
        None => handle(conn, &behaviour, &requests, &stop),
        Some(config) => {
            let Ok(server) = rustls::ServerConnection::new(config) else {
                return;
            };
            let stream = rustls::StreamOwned::new(server, conn);
            handle(stream, &behaviour, &requests, &stop)
        }
    }
}

fn handle<S: Read + Write>(
    mut s: S,
    behaviour: &Behaviour,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    requests
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let reply = match behaviour {
        Behaviour::Fixed { status, body } => format!(
            "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Behaviour::Chunked(chunks) => {
            let mut r =
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_string();
            for c in chunks {
                r.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
            }
            r.push_str("0\r\n\r\n");
            r
        }
        Behaviour::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        Behaviour::Stream { chunked, text } => {
            let start = if *chunked {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{text}\r\n",
                    text.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{text}")
            };
            let _ = s.write_all(start.as_bytes());
            let _ = s.flush();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let _ = s.write_all(reply.as_bytes());
    let _ = s.flush();
}
