//! The error of the PyTorch readers.
//!
//! A malformed `torch.save` file can be wrong in hundreds of ways (a truncated storage, a forged
//! size, an unknown opcode), and what a caller does about each is the same: report it and use
//! another file. So [`TorchError`] is one type whose message is the chain of what was being read,
//! outermost first (`tensor blocks.0.w: storage 3 is truncated`), built with [`Context`] the way
//! `anyhow` builds one. `super::super::CheckpointError::Torch` carries it to callers.

use std::fmt::Display;

use thiserror::Error;

/// What is wrong with a PyTorch file, and where in it.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct TorchError {
    message: String,
}

/// Result alias of the PyTorch readers.
pub type Result<T> = std::result::Result<T, TorchError>;

impl TorchError {
    pub fn new(message: impl Into<String>) -> Self {
        TorchError {
            message: message.into(),
        }
    }

    /// The same error, read while doing `what`.
    pub fn context(self, what: impl Display) -> Self {
        TorchError::new(format!("{what}: {}", self.message))
    }
}

/// Returns a [`TorchError`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::checkpoint::torch::error::TorchError::new(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// A [`TorchError`] built like `format!`.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::checkpoint::torch::error::TorchError::new(format!($($arg)*))
    };
}
pub(crate) use err;

/// Adds what was being read to a failure, as `anyhow::Context` does.
pub trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| TorchError::new(format!("{what}: {e}")))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| TorchError::new(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| TorchError::new(what.to_string()))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| TorchError::new(what().to_string()))
    }
}

/// Failures of the libraries the readers call, kept as their message.
macro_rules! from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for TorchError {
            fn from(e: $t) -> Self {
                TorchError::new(e.to_string())
            }
        }
    )*};
}
from_display!(std::io::Error, candle_core::Error, zip::result::ZipError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_reads_outermost_first() {
        let inner: Result<()> = Err(TorchError::new("storage 3 is truncated"));
        let e = inner.context("tensor w").unwrap_err().context("data.pkl");
        assert_eq!(e.to_string(), "data.pkl: tensor w: storage 3 is truncated");
        let none: Option<u8> = None;
        assert_eq!(none.context("no key").unwrap_err().to_string(), "no key");
    }
}
