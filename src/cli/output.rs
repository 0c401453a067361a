//! Standard output of the subcommands.
//!
//! Result lines go through `outln!` instead of `println!`, which panics (with a backtrace) when a
//! write fails: when the reader of a pipe has gone (`imixer models | head -1`) or the file that
//! stdout is redirected to cannot take more (`> /dev/full`, a full disk). Here a failed write is a
//! [`StdoutError`] that the command returns like any other error, and `main` sorts it out:
//!
//! - **Broken pipe** (the reader closed it: Rust ignores SIGPIPE, so the write fails with EPIPE):
//!   the reader wanted no more output, so the process ends quietly with status 0, as after a
//!   complete run ([`is_broken_pipe`]).
//! - **Any other write error**: a one-line error naming standard output and the cause, status 1.
//!
//! Why not restore the default SIGPIPE action instead (the process is killed on the first write to
//! a closed pipe, as `cat` is): that ends with status 141, which fails `set -o pipefail` scripts
//! such as `imixer models | grep -q mixer`, needs `unsafe` FFI, and leaves the other write errors
//! as panics anyway.

use std::fmt;
use std::io::{self, Write};

/// A write to standard output failed.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// Writes one line (the formatted text and a newline) to standard output and flushes it.
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::Error::new(StdoutError(e)))
}

/// Whether `err` is a write to a pipe whose reader has gone: the command should end quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutError>()
            .is_some_and(|e| e.0.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns a write error instead of panicking: `outln!("{x}")?;`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(StdoutError(io::ErrorKind::BrokenPipe.into()))
            .context("printing the table");
        assert!(is_broken_pipe(&err));
        let full = anyhow::Error::new(StdoutError(io::Error::from_raw_os_error(28)));
        assert!(!is_broken_pipe(&full));
        let text = full.to_string();
        assert!(
            text.starts_with("cannot write to standard output: ") && text.len() > 33,
            "{text}"
        );
    }
}
