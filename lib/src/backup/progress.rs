//! Progress of a long read (a backup being written, read back, downloaded, verified or
//! restored), so that minutes of work are never silent. A reader wrapper counts the
//! bytes that pass; every few seconds it logs bytes done (of the total where known)
//! and the rate. When a person watches (`backup now`, `verify`, `restore` or `drill`
//! run by hand, stderr a terminal, logs as text) it draws a one-line bar on the
//! terminal instead; never in logs that a machine collects, never under the daemon.
//! One implementation for every reading path.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::human_size;

/// How often a progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the terminal bar is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(200);
/// The bar's width in characters.
const WIDTH: usize = 24;

static INTERACTIVE: AtomicBool = AtomicBool::new(false);

/// Called by a command run by hand (not the daemon): from now on progress is drawn as
/// a bar when stderr is a terminal and logs are text. Returns whether it will be.
pub fn for_a_person() -> bool {
    let on = std::io::stderr().is_terminal() && crate::log::is_text();
    INTERACTIVE.store(on, Ordering::Relaxed);
    on
}

/// A reader that reports how much has passed through it.
pub struct Progress<R> {
    inner: R,
    label: String,
    verb: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    drawn: bool,
}

impl<R: Read> Progress<R> {
    /// `label` names what is read (a file), `verb` what happens to it (`read`,
    /// `decoded`, `dumped`), `total` the bytes expected when known.
    pub fn new(inner: R, label: &str, verb: &'static str, total: Option<u64>) -> Progress<R> {
        let now = Instant::now();
        Progress {
            inner,
            label: label.to_string(),
            verb,
            total: total.filter(|t| *t > 0),
            done: 0,
            started: now,
            last: now,
            drawn: false,
        }
    }

    /// `12.0 MiB of 40.0 MiB (30%), 8.0 MiB/s`
    fn summary(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = human_size((self.done as f64 / secs) as u64);
        match self.total {
            Some(t) => format!(
                "{} of {} ({:.0}%), {rate}/s",
                human_size(self.done),
                human_size(t),
                self.done as f64 * 100.0 / t as f64
            ),
            None => format!("{}, {rate}/s", human_size(self.done)),
        }
    }

    fn draw(&mut self, end: bool) {
        let filled = match self.total {
            Some(t) => ((self.done.min(t) as f64 / t as f64) * WIDTH as f64) as usize,
            None => 0,
        };
        let bar: String = "#".repeat(filled) + &".".repeat(WIDTH - filled);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{}: {} [{bar}] {}{}",
            self.label,
            self.verb,
            self.summary(),
            if end { "\n" } else { "" }
        );
        let _ = err.flush();
        self.drawn = !end;
    }

    fn report(&mut self) {
        if INTERACTIVE.load(Ordering::Relaxed) {
            if self.last.elapsed() >= DRAW_EVERY || !self.drawn {
                self.last = Instant::now();
                self.draw(false);
            }
        } else if self.last.elapsed() >= LOG_EVERY {
            self.last = Instant::now();
            tracing::info!("{}: {} {}", self.label, self.verb, self.summary());
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if n == 0 {
            if self.drawn {
                self.draw(true);
            }
        } else {
            self.report();
        }
        Ok(n)
    }
}

impl<R> Drop for Progress<R> {
    fn drop(&mut self) {
        // A bar left mid-line (an error, a cancel) ends its line, so the next message
        // starts on its own.
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_what_passes_and_says_how_much_of_the_total() {
        let data = vec![7u8; 3 * 1024 * 1024];
        let mut p = Progress::new(&data[..], "x.dump.zst", "read", Some(6 * 1024 * 1024));
        let mut out = Vec::new();
        std::io::copy(&mut p, &mut out).unwrap();
        assert_eq!(out.len(), data.len());
        assert!(
            p.summary().starts_with("3.0 MiB of 6.0 MiB (50%), "),
            "{}",
            p.summary()
        );
        let p = Progress::new(&data[..0], "x", "read", None);
        assert!(p.summary().starts_with("0 B, "), "{}", p.summary());
        // an unknown or zero total is no total
        assert!(Progress::new(&data[..0], "x", "read", Some(0))
            .total
            .is_none());
    }
}
