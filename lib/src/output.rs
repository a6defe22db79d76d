//! Writing a command's answer to stdout, as ripgrep does: a reader that went away
//! (`backup list | head -1`: EPIPE, since Rust's runtime ignores SIGPIPE) ends the
//! command quietly with success, while a stdout that cannot take the text (a full disk,
//! `> /dev/full`) is a failure with a message, never a panic or an "internal error".
//! One place for the three binaries, so each prints its answers the same way.

use std::io::Write;

/// How writing to stdout went.
#[derive(Debug)]
pub enum Written {
    /// All of it was written and flushed.
    Done,
    /// The reader closed the pipe: stop quietly, with success.
    ReaderGone,
    /// It could not be written (ENOSPC, EIO, ...): report it and fail.
    Failed(std::io::Error),
}

/// Writes `text` to stdout and flushes it.
pub fn stdout(text: &str) -> Written {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Written::Done,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Written::ReaderGone,
        Err(e) => Written::Failed(e),
    }
}

impl Written {
    /// The exit status for a command whose only job was this output (`--help`,
    /// `--version`, a listing): 0 when it was written or the reader left, else 1 after
    /// saying on stderr that `bin` could not write it.
    pub fn exit_code(self, bin: &str) -> u8 {
        match self {
            Written::Done | Written::ReaderGone => 0,
            Written::Failed(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{bin}: cannot write to stdout: {}",
                    crate::error::io_reason(&e)
                );
                1
            }
        }
    }
}
