//! dockhand: the building blocks of three small container tools.
//!
//! - `entrypoint`: PID 1, waits for services, migrates, drops privileges, supervises.
//! - `backup`: scheduled, streamed `pg_dump` backups to a folder and S3.
//! - `healthcheck`: the Docker HEALTHCHECK probe.
//!
//! The binaries are thin: [`cli`] holds each one's table of flags and variables, parses
//! against it and calls these modules. Dependencies run one way (a test checks it):
//!
//! - leaves: [`error`] (the one error shape), [`redact`], [`time`], [`duration`],
//!   [`files`], [`output`], [`jitter`];
//! - the base: [`config`] (settings from the environment and `NAME_FILE`), [`url`],
//!   [`log`], [`process`], [`signals`], [`privileges`];
//! - talking to services: [`net`], [`tls`], [`http`], [`pg`], then [`probe`] and
//!   [`wait`] on top;
//! - the tools: [`migrate`] and [`startup`], [`supervise`], [`backup`];
//! - [`cli`], above all of them.
//!
//! Modules that need heavy dependencies sit behind cargo features so each binary links
//! only what it uses (`probe`: tokio, tokio-postgres, rustls; `pid1`: nix).

pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod files;
pub mod flags;
pub mod jitter;
pub mod log;
pub mod output;
pub mod process;
pub mod redact;
pub mod time;
pub mod url;

#[cfg(feature = "probe")]
pub mod http;
#[cfg(feature = "probe")]
pub mod net;
#[cfg(feature = "probe")]
pub mod pg;
#[cfg(feature = "probe")]
pub mod probe;
#[cfg(feature = "probe")]
pub mod tls;

#[cfg(feature = "pid1")]
pub mod privileges;
#[cfg(feature = "pid1")]
pub mod signals;
#[cfg(feature = "pid1")]
pub mod supervise;

#[cfg(feature = "backup")]
pub mod backup;
#[cfg(any(feature = "startup", feature = "backup"))]
pub mod digest;
#[cfg(feature = "startup")]
pub mod migrate;
#[cfg(any(feature = "startup", feature = "backup"))]
pub mod secrets;
#[cfg(feature = "startup")]
pub mod startup;
#[cfg(feature = "probe")]
pub mod wait;
