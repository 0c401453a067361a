//! Per-epoch metrics: the lines of `metrics.jsonl`, the iMLP solver statistics they carry, and the
//! `curves.png` plot drawn from them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::error::{Result, TrainError};
use serde::{Deserialize, Serialize};

use crate::plot::{line_panels, Series};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// The model EMA's validation metrics (`--model-ema` runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_ema: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top1_ema: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top5_ema: Option<f64>,
    pub seconds: f64,
    pub img_per_s: f64,
    /// iMLP fixed-point solves of this epoch (picard/anderson modes): mean iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_mean_iters: Option<f64>,
    /// … and the largest final residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_max_residual: Option<f64>,
    /// The same per iMLP block (picard/anderson modes), in block order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solver_blocks: Vec<BlockSolverStats>,
    /// Block-averaged weight symmetry after the epoch (`analysis::symmetry::summary`): how far
    /// each MLP is from the gradient of an energy, tracked over training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_symmetry: Option<crate::analysis::symmetry::SymmetrySummary>,
}

/// One iMLP block's fixed-point solves over an epoch. Each data-parallel shard of a batch solves
/// its own rows, so a batch counts `shards` solves per block.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockSolverStats {
    pub module: String,
    pub solves: usize,
    pub mean_iterations: f64,
    pub max_residual: f64,
    /// Solves that hit the iteration cap.
    pub unconverged: usize,
}

/// The epoch's solves over all blocks, derived from the per-block statistics.
pub(crate) struct SolverTotals {
    pub solves: usize,
    pub mean_iterations: f64,
    pub max_residual: f64,
    pub unconverged: usize,
}

impl SolverTotals {
    pub fn of(blocks: &[BlockSolverStats]) -> Self {
        let solves: usize = blocks.iter().map(|b| b.solves).sum();
        let iterations: f64 = blocks
            .iter()
            .map(|b| b.mean_iterations * b.solves as f64)
            .sum();
        Self {
            solves,
            mean_iterations: iterations / solves.max(1) as f64,
            max_residual: blocks.iter().map(|b| b.max_residual).fold(0.0, f64::max),
            unconverged: blocks.iter().map(|b| b.unconverged).sum(),
        }
    }
}

/// Accumulates [`BlockSolverStats`] per module, keeping first-seen (block) order.
pub(crate) fn record_solve(blocks: &mut Vec<BlockSolverStats>, s: &crate::layers::SolverStats) {
    let i = match blocks.iter().position(|b| b.module == s.module) {
        Some(i) => i,
        None => {
            blocks.push(BlockSolverStats {
                module: s.module.clone(),
                ..Default::default()
            });
            blocks.len() - 1
        }
    };
    let b = &mut blocks[i];
    // Running mean over this block's solves.
    b.mean_iterations += (s.iterations as f64 - b.mean_iterations) / (b.solves + 1) as f64;
    b.solves += 1;
    b.max_residual = b.max_residual.max(s.residual);
    b.unconverged += usize::from(!s.converged);
}

/// The lines of `metrics.jsonl`. A last line without its newline that does not parse is the
/// torn write of a killed process: it is dropped (its epoch is not in the checkpoint either,
/// and will be recomputed). Any other bad line is an error.
pub fn read_history(path: &Path) -> Result<Vec<EpochMetrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io("read", path, e))?;
    let torn = (!text.ends_with('\n'))
        .then(|| text.lines().last())
        .flatten();
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(l) {
            Ok(m) => out.push(m),
            Err(_) if Some(l) == torn => {
                eprintln!(
                    "warning: {}: dropping the torn last line (a run was killed while writing it)",
                    path.display()
                );
            }
            Err(e) => {
                return Err(TrainError::unusable(path, format!("bad line {l}: {e}")));
            }
        }
    }
    Ok(out)
}

pub(crate) fn rewrite_history(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    Ok(crate::files::write_atomically(path, text.as_bytes())?)
}

pub(crate) fn append_history(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io("open", path, e))?;
    // One write of the whole line, then fsync: a kill leaves either the line or a torn tail
    // that `read_history` recognises.
    let mut line = serde_json::to_string(m)?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| TrainError::io("write", path, e))?;
    Ok(())
}

pub(crate) fn plot_curves(path: &Path, h: &[EpochMetrics]) -> Result<()> {
    let series = |name, f: fn(&EpochMetrics) -> f64| Series {
        name,
        points: h.iter().map(|m| (m.epoch as f64, f(m))).collect(),
    };
    // The model EMA's curves, in runs that keep one.
    let ema_series = |name, f: fn(&EpochMetrics) -> Option<f64>| {
        let points: Vec<(f64, f64)> = h
            .iter()
            .filter_map(|m| Some((m.epoch as f64, f(m)?)))
            .collect();
        (!points.is_empty()).then_some(Series { name, points })
    };
    let mut loss = vec![
        series("train", |m| m.train_loss),
        series("val", |m| m.val_loss),
    ];
    loss.extend(ema_series("val EMA", |m| m.val_loss_ema));
    let mut accuracy = vec![
        series("train", |m| m.train_acc),
        series("val top-1", |m| m.val_top1),
        series("val top-5", |m| m.val_top5),
    ];
    accuracy.extend(ema_series("val EMA top-1", |m| m.val_top1_ema));
    Ok(line_panels(
        path,
        &[
            ("loss", "epoch", "cross-entropy", loss),
            ("accuracy", "epoch", "accuracy", accuracy),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            lr: 0.1 + 0.2,
            train_loss: 1.0 / 3.0,
            train_acc: 0.5,
            val_loss: 2.0_f64.sqrt(),
            val_top1: 0.25,
            val_top5: 0.75,
            val_loss_ema: None,
            val_top1_ema: None,
            val_top5_ema: None,
            seconds: 1.5,
            img_per_s: 100.0,
            solver_mean_iters: None,
            solver_max_residual: None,
            solver_blocks: Vec::new(),
            weight_symmetry: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_floats_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        append_history(&p, &line(0)).unwrap();
        append_history(&p, &line(1)).unwrap();
        let back = read_history(&p).unwrap();
        assert_eq!(back.len(), 2);
        for f in [back[1].lr, back[1].train_loss, back[1].val_loss] {
            let want = [line(1).lr, line(1).train_loss, line(1).val_loss];
            assert!(want.iter().any(|w| w.to_bits() == f.to_bits()), "{f}");
        }
        // A process killed inside the write of epoch 2's line.
        let mut text = std::fs::read_to_string(&p).unwrap();
        let whole = serde_json::to_string(&line(2)).unwrap();
        text.push_str(&whole[..whole.len() / 2]);
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_history(&p).unwrap().len(), 2);
        // A bad line that is not the torn tail is still an error.
        std::fs::write(&p, format!("{{\"epoch\":\n{}\n", whole)).unwrap();
        assert!(read_history(&p).is_err());
    }
}
