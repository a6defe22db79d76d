//! Logging: `tracing` events written as one line each to stderr, as text or JSON
//! (`LOG_FORMAT=text|json`), filtered by a level in `RUST_LOG` (`error`, `warn`, `info`,
//! `debug`, `trace`; default `info`). Every line is passed through URL redaction, so a
//! password that slips into a message is still never written.
//!
//! A hand-made subscriber rather than tracing-subscriber: the entrypoint stays resident
//! for the container's life, and this is all of the formatting it needs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::config::{invalid, ConfigError};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

struct LineSubscriber {
    program: &'static str,
    max: Level,
    format: Format,
    next_span: AtomicU64,
}

/// Whether log lines are text (for people) rather than JSON (for a collector).
static TEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// True when logs are text lines (`LOG_FORMAT=text`, the default): a program may then
/// draw for a person on the same terminal.
pub fn is_text() -> bool {
    TEXT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the logger for `program`, reading `RUST_LOG` and `LOG_FORMAT`.
pub fn init(program: &'static str) -> Result<(), ConfigError> {
    let max = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => parse_level(&v)?,
        _ => level_from_file(program),
    };
    let format = match crate::config::var("LOG_FORMAT")?.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(other) => return Err(invalid(format!("LOG_FORMAT={other:?}: use text or json"))),
    };
    TEXT.store(format == Format::Text, std::sync::atomic::Ordering::Relaxed);
    let _ = tracing::subscriber::set_global_default(LineSubscriber {
        program,
        max,
        format,
        next_span: AtomicU64::new(1),
    });
    Ok(())
}

/// The level in `RUST_LOG_FILE` (a secret file, as every `NAME_FILE`), read only when
/// `RUST_LOG` is not set. The logger's variables come from the app's environment, where
/// `RUST_LOG_FILE` may be the app's own (the file it logs to): a file that cannot be
/// read or holds no level is never fatal, only a warning (that does not echo the
/// file), and the level is `info`.
fn level_from_file(program: &str) -> Level {
    let Some(path) = std::env::var_os("RUST_LOG_FILE").filter(|p| !p.is_empty()) else {
        return Level::INFO;
    };
    let path = std::path::Path::new(&path);
    let level = crate::config::read_secret_file("RUST_LOG_FILE", path)
        .map_err(|e| e.message().to_string())
        .and_then(|v| {
            parse_level(&v).map_err(|_| {
                format!(
                    "RUST_LOG_FILE: {} does not hold a log level (error, warn, info, debug or trace)",
                    path.display()
                )
            })
        });
    level.unwrap_or_else(|e| {
        let _ = writeln!(
            std::io::stderr(),
            "{program}: warning: {e}: logging at info"
        );
        Level::INFO
    })
}

/// Parses a level; `RUST_LOG` values like `dockhand=debug` use the last level named.
fn parse_level(v: &str) -> Result<Level, ConfigError> {
    let word = v.rsplit([',', '=']).next().unwrap_or("").trim();
    match word.to_ascii_lowercase().as_str() {
        "error" => Ok(Level::ERROR),
        "warn" | "warning" => Ok(Level::WARN),
        "info" => Ok(Level::INFO),
        "debug" => Ok(Level::DEBUG),
        "trace" => Ok(Level::TRACE),
        "off" => Ok(Level::ERROR),
        _ => Err(invalid(format!(
            "RUST_LOG={v:?}: use error, warn, info, debug or trace"
        ))),
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.rest.push((field.name(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }
}

impl Subscriber for LineSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Libraries' own events (the AWS SDK's instance-metadata warnings, with Debug
        // dumps of responses) only at debug: their failures reach us as errors, which
        // we report in one line of our own.
        let ours = ["dockhand", "entrypoint", "backup", "healthcheck"]
            .iter()
            .any(|p| metadata.target().starts_with(p));
        metadata.level() <= &self.max && (ours || self.max >= Level::DEBUG)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = event.metadata().level();
        let line = match self.format {
            Format::Text => {
                let mut s = format!("{}: {}", self.program, fields.message);
                if *level != Level::INFO {
                    s = format!(
                        "{}: {}: {}",
                        self.program,
                        level.as_str().to_ascii_lowercase(),
                        fields.message
                    );
                }
                for (k, v) in &fields.rest {
                    let _ = write!(s, " {k}={v}");
                }
                s
            }
            Format::Json => {
                let mut s = format!(
                    "{{\"time\":\"{}\",\"level\":\"{}\",\"program\":\"{}\",\"message\":{}",
                    crate::time::rfc3339_now(),
                    level.as_str().to_ascii_lowercase(),
                    self.program,
                    json_string(&fields.message)
                );
                for (k, v) in &fields.rest {
                    let _ = write!(s, ",{}:{}", json_string(k), json_string(v));
                }
                s.push('}');
                s
            }
        };
        let mut line = crate::redact::text(&line);
        // one write(2) per line (stderr is unbuffered: writeln! would make two)
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_json() {
        assert_eq!(parse_level("debug").unwrap(), Level::DEBUG);
        assert_eq!(parse_level("dockhand=warn").unwrap(), Level::WARN);
        assert!(parse_level("loud").is_err());
        assert_eq!(json_string("a\"b\n\u{1}"), "\"a\\\"b\\n\\u0001\"");
    }
}
