//! Error type of the training module.
//!
//! A caller (the CLI, a sweep, a notebook-style driver) branches on what went wrong: an
//! interrupted run is resumed, a run directory in use is waited for, a non-finite loss is
//! retried with another learning rate, a bad setting is reported as the user's mistake. So each
//! of those is its own variant, with the fields a program needs (paths, epoch and step) and a
//! message that tells a person what to do.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::device::DeviceError;
use crate::files::FileError;
use crate::plot::PlotError;

/// Result alias used throughout `train`.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Everything that can stop a training run or one of its parts.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The settings are invalid or contradict each other (a flag on the wrong family, an
    /// unknown model name, an empty split…). The message names the setting and the fix.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A checkpoint could not be read, written or fitted to the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A figure of the run (curves, confusion matrix) could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// The tensor library failed (out of memory, a device error, a shape the model cannot take).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Run metadata (state, metrics, classes) could not be written as JSON.
    #[error("cannot serialise the run's metadata: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The OS refused a file operation of the run.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        /// Shown in the message, not chained as a `source` (a report would print it twice).
        error: std::io::Error,
    },
    /// A fresh run was pointed at a directory that holds another run's files.
    #[error("{} already holds {what} pass --overwrite to replace it or choose another --out", dir.display())]
    OutputOccupied { dir: PathBuf, what: String },
    /// Another process holds the directory's lock.
    #[error("{} is in use by another {holder} (it holds {}); wait for it to finish or choose another --out", dir.display(), lock.display())]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    /// `--resume` on a directory with no run in it.
    #[error("--resume: no run to resume in {} ({} missing)", dir.display(), missing.display())]
    NothingToResume { dir: PathBuf, missing: PathBuf },
    /// `--resume` with settings that would make it a different run.
    #[error("--resume: the configuration differs from the one saved in {} ({}); resume with the same settings", saved.display(), differences.join("; "))]
    ResumeMismatch {
        saved: PathBuf,
        differences: Vec<String>,
    },
    /// A file this run needs exists but cannot serve it (an initial checkpoint of another
    /// model, a run state this version cannot restore, a corrupt metrics history).
    #[error("{}: {problem}", path.display())]
    Unusable { path: PathBuf, problem: String },
    /// The loss, the validation loss or a weight became NaN or ±∞. Nothing of the failing
    /// step was written: `last`, when the run has one, still holds the last good state.
    #[error("{quantity} became {value} {when}; {}", non_finite_advice(last.as_deref()))]
    NonFinite {
        /// "loss", "validation loss" or "the weights".
        quantity: String,
        /// The value, or which tensor went non-finite.
        value: String,
        /// Where in the run, e.g. "at epoch 3, batch 17 (step 401)".
        when: String,
        /// The optimizer step that produced it, in a run.
        step: Option<u64>,
        last: Option<PathBuf>,
    },
    /// The run was stopped through `RunOptions::stop` (Ctrl-C, SIGTERM) and saved.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The run stopped after `RunOptions::stop_after_steps` steps and saved.
    #[error("stopped after {steps} steps as requested (--stop-after-steps); resume with --resume")]
    StoppedAfterSteps { steps: u64 },
    /// `error`, in the middle of `doing` (e.g. "while restoring the optimizer from run/last…").
    /// [`TrainError::root`] looks through it to the error that caused it.
    #[error("{doing}: {error}")]
    Context {
        doing: String,
        error: Box<TrainError>,
    },
    /// A data-parallel shard of the batch failed or its thread panicked.
    #[error("{0}")]
    Shard(String),
}

/// The error of a run stopped through `RunOptions::stop`: `last.safetensors` holds the step
/// it stopped at, and `--resume` continues bit-identically from there.
#[derive(Debug, Error)]
#[error("interrupted: saved {} at epoch {epoch}, batch {batch} (step {step}); continue with `imixer train --resume --out {}` and the same settings", last.display(), out.display())]
pub struct Interrupted {
    pub out: PathBuf,
    pub last: PathBuf,
    pub epoch: usize,
    pub batch: usize,
    pub step: u64,
}

fn non_finite_advice(last: Option<&Path>) -> String {
    let fix = "lower --lr or enable --clip-grad";
    match last {
        Some(last) => format!(
            "the last good checkpoint {} is untouched — {fix}",
            last.display()
        ),
        None => fix.to_string(),
    }
}

impl From<FileError> for TrainError {
    fn from(e: FileError) -> Self {
        TrainError::Io {
            action: e.action,
            path: e.path,
            error: e.error,
        }
    }
}

impl TrainError {
    pub(crate) fn io(action: impl Into<String>, path: &Path, error: std::io::Error) -> Self {
        TrainError::Io {
            action: action.into(),
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn unusable(path: &Path, problem: impl Into<String>) -> Self {
        TrainError::Unusable {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// The error under any [`TrainError::Context`] wrappers: what a caller matches on.
    pub fn root(&self) -> &TrainError {
        match self {
            TrainError::Context { error, .. } => error.root(),
            other => other,
        }
    }

    /// Whether the run ended on request (a signal or `--stop-after-steps`) with its state saved.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self.root(),
            TrainError::Interrupted(_) | TrainError::StoppedAfterSteps { .. }
        )
    }
}

/// Adds what was being done to an error, as `anyhow::Context` does, keeping it typed.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<TrainError>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| TrainError::Context {
            doing: what(),
            error: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_reported_once() {
        let os = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = os.to_string();
        let e = anyhow::Error::from(TrainError::io("create", Path::new("/runs/x"), os));
        let report = format!("{e:#}");
        assert_eq!(report.matches(&text).count(), 1, "{report}");
        assert!(report.starts_with("cannot create /runs/x"), "{report}");
    }

    #[test]
    fn a_non_finite_loss_names_the_place_and_the_fix() {
        let e = TrainError::NonFinite {
            quantity: "loss".into(),
            value: "NaN".into(),
            when: "at epoch 2, batch 5 (step 41)".into(),
            step: Some(41),
            last: Some(PathBuf::from("run/last.safetensors")),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("loss became NaN at epoch 2, batch 5 (step 41)"),
            "{text}"
        );
        assert!(text.contains("run/last.safetensors") && text.contains("--lr"));
        assert!(!e.is_interruption());
        assert!(TrainError::StoppedAfterSteps { steps: 3 }.is_interruption());
    }

    #[test]
    fn context_keeps_the_cause_matchable() {
        let inner: std::result::Result<(), TrainError> =
            Err(TrainError::StoppedAfterSteps { steps: 2 });
        let e = inner
            .doing(|| "while resuming from run/last".into())
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("while resuming from run/last: stopped after 2"));
        assert!(matches!(
            e.root(),
            TrainError::StoppedAfterSteps { steps: 2 }
        ));
        assert!(e.is_interruption());
    }
}
