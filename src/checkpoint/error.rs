//! Error type of the checkpoint module.
//!
//! A caller of [`super::load_model`] branches on what went wrong: a file it cannot read is
//! reported with its path, a file of the wrong model gets the list of misfits (so the user can
//! pass the right `--model` or flag), a diverged checkpoint is replaced by an earlier one, and
//! settings that contradict each other are the user's to fix. Each is its own variant.

use std::path::PathBuf;

use thiserror::Error;

use super::torch::TorchError;
use super::weights::Weights;
use crate::files::FileError;

/// Result alias used throughout `checkpoint`.
pub type Result<T> = std::result::Result<T, CheckpointError>;

/// Everything that can go wrong reading, checking or writing a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The OS refused to read or write the file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not in a format imixer reads, or is empty, truncated or corrupt.
    #[error("{} {problem}", path.display())]
    Unreadable { path: PathBuf, problem: String },
    /// A PyTorch file is malformed; [`CheckpointError::Context`] around it names the file.
    #[error(transparent)]
    Torch(#[from] TorchError),
    /// The file lacks the weights asked for (`--ema` on a file without EMA weights, or the
    /// reverse).
    #[error("{} holds no {} weights ({detail}): {fix}", path.display(), match weights { Weights::Ema => "EMA", Weights::Model => "model" })]
    NoWeights {
        path: PathBuf,
        weights: Weights,
        detail: String,
        fix: String,
    },
    /// The tensors do not fit the model: missing or unexpected names, wrong shapes, one line
    /// per problem.
    #[error("{file} does not match {model} ({} problems):\n  {}", problems.len(), problems.join("\n  "))]
    Misfit {
        /// The file, or "the checkpoint" when only its tensors are known.
        file: String,
        /// The model it was compared with, and where its settings came from.
        model: String,
        problems: Vec<String>,
    },
    /// The settings asked for are invalid or contradict the file (a flag of another family, an
    /// unknown model name, shapes no model of imixer has).
    #[error("{0}")]
    Settings(String),
    /// The weights hold NaN or ±∞: the run that wrote them diverged.
    #[error("{} holds non-finite weights ({tensor} contains NaN or ±∞): the run that wrote it diverged; use an earlier checkpoint", path.display())]
    NonFinite { path: PathBuf, tensor: String },
    /// The safetensors layer refused the bytes or the tensors.
    #[error("{0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The tensor library failed (out of memory, a device error).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The model configuration could not be written as JSON.
    #[error("cannot serialise the model configuration: {0}")]
    Serialize(#[from] serde_json::Error),
    /// `error`, while `doing` (e.g. "while reading run/last.pth (PyTorch zip)");
    /// [`CheckpointError::root`] looks through it.
    #[error("{doing}: {error}")]
    Context {
        doing: String,
        error: Box<CheckpointError>,
    },
}

impl CheckpointError {
    pub(crate) fn unreadable(path: &std::path::Path, problem: impl Into<String>) -> Self {
        CheckpointError::Unreadable {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// The error under any [`CheckpointError::Context`] wrappers: what a caller matches on.
    pub fn root(&self) -> &CheckpointError {
        match self {
            CheckpointError::Context { error, .. } => error.root(),
            other => other,
        }
    }
}

/// Adds what was being done to an error, keeping it typed.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<CheckpointError>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CheckpointError::Context {
            doing: what(),
            error: Box::new(e.into()),
        })
    }
}

/// `return Err(CheckpointError::Settings(format!(…)))`.
macro_rules! bail_settings {
    ($($arg:tt)*) => {
        return Err($crate::checkpoint::CheckpointError::Settings(format!($($arg)*)))
    };
}
pub(crate) use bail_settings;
