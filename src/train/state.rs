//! Training checkpoints: model + optimizer moments + where the run stands, in one safetensors
//! file. Every random draw of a run is a pure function of (seed, epoch, batch), so "where the run
//! stands" (next epoch and batch, optimizer step) is the whole RNG state: a resumed run replays
//! exactly the batches, augmentations, Mixup draws and drop-path masks it would have seen.

use std::collections::HashMap;
use std::path::Path;

use super::error::{Doing, Result, TrainError};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ema::ModelEma;
use crate::checkpoint::{self, CONFIG_KEY, TRAIN_STATE_PREFIX};
use crate::optim::AdamW;
use crate::MixerNet;

pub const STATE_KEY: &str = "imixer.train_state";
pub const TRAIN_CONFIG_KEY: &str = "imixer.train_config";
pub const CLASSES_KEY: &str = "imixer.classes";

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epoch to run next (or the one in progress when `next_batch > 0`).
    pub epoch: usize,
    /// First batch of `epoch` not yet trained on.
    pub next_batch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// −∞ until the first epoch has been evaluated (JSON writes it as `null`).
    #[serde(deserialize_with = "best_top1_or_null")]
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
    /// Running training statistics of the epoch in progress (saved mid-epoch so that a resumed
    /// epoch reports the same train loss/accuracy and solver statistics as an uninterrupted one).
    #[serde(default)]
    pub partial: EpochProgress,
}

/// Sums over the batches of the current epoch trained so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Σ (batch mean loss × batch size).
    pub loss_sum: f64,
    /// Images whose top-1 prediction matched their (hard) label.
    pub correct: usize,
    /// Images trained on.
    pub seen: usize,
    /// iMLP solver statistics per block (picard/anderson modes).
    pub solver_blocks: Vec<crate::train::metrics::BlockSolverStats>,
}

impl RunState {
    /// The state of a run that has not taken a step yet.
    pub fn start() -> Self {
        Self {
            epoch: 0,
            next_batch: 0,
            step: 0,
            best_top1: f64::NEG_INFINITY,
            best_epoch: None,
            partial: EpochProgress::default(),
        }
    }
}

/// Reads `best_top1`, mapping `null` (how serde_json writes the initial −∞) back to −∞; without
/// this a checkpoint saved inside the first epoch (`--save-every-steps`, `--stop-after-steps`, a
/// kill) could not be resumed.
fn best_top1_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

/// Writes model + optimizer + model EMA + state atomically.
pub fn save(
    path: &Path,
    model: &MixerNet,
    opt: Option<&AdamW>,
    ema: Option<&ModelEma>,
    state: &RunState,
    train_config_toml: &str,
    classes: &[String],
) -> Result<()> {
    let mut tensors = model.state_dict();
    if let Some(opt) = opt {
        tensors.extend(
            opt.state_tensors()
                .into_iter()
                .map(|(n, t)| (format!("{TRAIN_STATE_PREFIX}{n}"), t)),
        );
    }
    if let Some(ema) = ema {
        tensors.extend(ema.state_tensors());
    }
    let mut meta = HashMap::new();
    meta.insert(
        CONFIG_KEY.to_string(),
        serde_json::to_string(&model.config)?,
    );
    meta.insert(STATE_KEY.to_string(), serde_json::to_string(state)?);
    meta.insert(TRAIN_CONFIG_KEY.to_string(), train_config_toml.to_string());
    meta.insert(CLASSES_KEY.to_string(), serde_json::to_string(classes)?);
    meta.insert("format".to_string(), "pt".to_string());
    Ok(checkpoint::write(path, &tensors, &meta)?)
}

/// Restores model weights, optimizer moments, the model EMA (when the run keeps one) and the
/// run state from `path`.
pub fn restore(
    path: &Path,
    model: &MixerNet,
    opt: &mut AdamW,
    ema: Option<&ModelEma>,
    device: &Device,
) -> Result<RunState> {
    let file = checkpoint::read(path, device)?;
    let state = file.metadata.get(STATE_KEY).ok_or_else(|| {
        TrainError::unusable(
            path,
            "is not a training checkpoint (no run state): resume from a run's last.safetensors",
        )
    })?;
    let state: RunState = serde_json::from_str(state)
        .map_err(|e| TrainError::unusable(path, format!("unreadable run state: {e}")))?;
    let weights: HashMap<String, Tensor> = file
        .tensors
        .iter()
        .filter(|(k, _)| checkpoint::is_model_tensor(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    model
        .load_state(&weights, false)
        .doing(|| format!("while resuming from {}", path.display()))?;
    opt.load_state(state.step, |name| {
        file.tensors
            .get(&format!("{TRAIN_STATE_PREFIX}{name}"))
            .cloned()
    })
    .doing(|| format!("while restoring the optimizer from {}", path.display()))?;
    if let Some(ema) = ema {
        ema.restore(&file.tensors, path)?;
    }
    Ok(state)
}

/// Class names stored in a checkpoint, if any.
pub fn classes(metadata: &HashMap<String, String>) -> Option<Vec<String>> {
    metadata
        .get(CLASSES_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
}
