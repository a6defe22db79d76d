//! The three binaries' command lines: each one's table of settings, the typed
//! arguments it parses into, and (for `backup`) what each command does. The parser,
//! `--help` and the README's tables they share are [`crate::flags`]; `backup`'s table
//! lives with the settings it loads, in `backup::settings`.

pub use crate::flags::{markdown, Parsed};

#[cfg(feature = "backup")]
pub mod backup;
#[cfg(feature = "startup")]
pub mod entrypoint;
#[cfg(feature = "probe")]
pub mod healthcheck;
