//! dockhand: the building blocks of three small container tools.
//!
//! - `entrypoint`: PID 1, waits for services, migrates, drops privileges, supervises.
//! - `backup`: scheduled, streamed `pg_dump` backups to a folder and S3.
//! - `healthcheck`: the Docker HEALTHCHECK probe.
//!
//! The binaries are thin: they parse arguments and call these modules. Modules that
//! need heavy dependencies sit behind cargo features so each binary links only what it
//! uses (`probe`: tokio, tokio-postgres, rustls; `pid1`: nix).

pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod files;
pub mod log;
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
#[cfg(feature = "startup")]
pub mod migrate;
#[cfg(any(feature = "startup", feature = "backup"))]
pub mod secrets;
#[cfg(feature = "startup")]
pub mod startup;
#[cfg(feature = "probe")]
pub mod wait;
