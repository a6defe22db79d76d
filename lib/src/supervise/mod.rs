//! PID 1 for the entrypoint and the backup daemon. The init loop is [`init`]; the
//! rest is in rooms of their own, so the loop's file holds only the loop:
//!
//! - [`init`]: run the app, forward signals, reap, shut down in order;
//! - `proctable`: the processes alive, from /proc (for shutdown);
//! - `codepages`: drop start-up's code pages from the resident set;
//! - [`reexec`]: a binary running itself again under the init loop (`supervise_self`).

mod codepages;
pub mod init;
mod proctable;
pub mod reexec;

pub use init::{run, Options};
pub use reexec::supervise_self;
