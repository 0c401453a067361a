//! Error type of the sweep module.
//!
//! A sweep fails as a whole only before its runs start or when its own files break; a run that
//! fails is recorded and the others go on. So the variants say which of the sweep's parts is at
//! fault: the sweep file, a run's settings (a [`TrainError`] from the same checks `imixer train`
//! makes), a results file, a finished run whose settings changed, or a train process.

use std::path::PathBuf;

use thiserror::Error;

use crate::files::FileError;
use crate::plot::PlotError;
use crate::train::TrainError;

/// Result alias used throughout `sweep`.
pub type Result<T> = std::result::Result<T, SweepError>;

/// Everything that can stop a sweep or one of its runs.
#[derive(Debug, Error)]
pub enum SweepError {
    /// The sweep file cannot be parsed or does not describe a sweep (an empty seed list, a
    /// reserved field, a grid value that is not a list, a plot of a non-numeric field…).
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    File(#[from] FileError),
    /// A run's training settings are refused, or another sweep holds the directory
    /// ([`TrainError::InUse`]).
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A finished run was trained with other settings than the sweep file now gives.
    #[error("run {run} finished with other settings than the sweep file now gives ({}); use another --out, or delete {} and its line in results.jsonl to run it again", differences.join("; "), dir.display())]
    Changed {
        run: String,
        dir: PathBuf,
        differences: Vec<String>,
    },
    /// A file the sweep reads back (results.jsonl, a run's metrics or saved config) is not
    /// what it wrote.
    #[error("{}: {problem}", path.display())]
    Unusable { path: PathBuf, problem: String },
    /// An `imixer train` process could not be started, or it failed.
    #[error("{0}")]
    Run(String),
    /// Rebuilding a run's initial model (for its initial weight symmetry) failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("cannot serialise a sweep result: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot write a run's configuration: {0}")]
    Toml(#[from] toml::ser::Error),
    /// `error`, in `doing` (e.g. "in sweep.toml: in `[grid]`").
    #[error("{doing}: {error}")]
    Context {
        doing: String,
        error: Box<SweepError>,
    },
}

impl SweepError {
    /// The error under any [`SweepError::Context`] wrappers: what a caller matches on.
    pub fn root(&self) -> &SweepError {
        match self {
            SweepError::Context { error, .. } => error.root(),
            other => other,
        }
    }
}

/// Adds what was being done to an error, keeping it typed.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<SweepError>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| SweepError::Context {
            doing: what(),
            error: Box::new(e.into()),
        })
    }
}

/// `return Err(SweepError::Spec(format!(…)))`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::sweep::SweepError::Spec(format!($($arg)*)))
    };
}
pub(crate) use bail;
