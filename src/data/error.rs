//! Error type of the data module.
//!
//! Every variant names the offending file or directory and says what to do about it, because the
//! person who sees the message is usually someone who pointed the trainer at the wrong folder or
//! has a half-downloaded archive; a bare "unexpected EOF" would not help them.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Result alias used throughout `data`.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while loading, decoding, augmenting or batching data.
#[derive(Debug, Error)]
pub enum DataError {
    /// The OS refused to read a file or list a directory.
    #[error("cannot read {}: {error}. {hint}", path.display())]
    Io {
        path: PathBuf,
        /// Shown in the message, not chained as a `source` (a report would print it twice).
        error: std::io::Error,
        hint: String,
    },
    /// A file or directory the dataset needs does not exist.
    #[error("{what} not found: {}. {hint}", path.display())]
    Missing {
        what: String,
        path: PathBuf,
        hint: String,
    },
    /// A file exists but its content is not what the format requires.
    #[error("{}: {problem}. {hint}", path.display())]
    Format {
        path: PathBuf,
        problem: String,
        hint: String,
    },
    /// The `image` crate could not decode a picture of an image-folder dataset.
    #[error("cannot decode image {}: {error}. Re-save it as PNG/JPEG or remove it from the folder", path.display())]
    Decode {
        path: PathBuf,
        /// Shown in the message, not chained as a `source` (a report would print it twice).
        error: image::ImageError,
    },
    /// A transform, loader or mixup setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An image handed to a transform cannot be processed (empty, unsupported channel count…).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A loader worker thread died without producing its batch.
    #[error("data loader worker failed: {0}")]
    Worker(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error, hint: impl Into<String>) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            error: source,
            hint: hint.into(),
        }
    }

    pub(crate) fn missing(what: impl Into<String>, path: &Path, hint: impl Into<String>) -> Self {
        DataError::Missing {
            what: what.into(),
            path: path.to_path_buf(),
            hint: hint.into(),
        }
    }

    pub(crate) fn format(path: &Path, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_reported_once() {
        let os = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = os.to_string();
        let e = anyhow::Error::from(DataError::io(Path::new("/data/x"), os, "Check it"));
        let report = format!("{e:#}");
        assert_eq!(report.matches(&text).count(), 1, "{report}");
        assert!(report.contains("/data/x") && report.contains("Check it"));
    }
}
