//! Evaluation: loss, top-1/top-5, per-class accuracy and the confusion matrix.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::device_batches::on_device;
use super::error::Result;
use super::shards::Shards;
use crate::data::Loader;
use crate::MixerNet;

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `model` (eval mode) over every batch of `loader` (epoch 0, stored order), each
/// batch split into `shards` that run side by side.
pub fn evaluate(
    model: &MixerNet,
    shards: &Shards,
    loader: &Loader,
    num_classes: usize,
) -> Result<EvalReport> {
    let dev = model.device().clone();
    let mut confusion = vec![vec![0usize; num_classes]; num_classes];
    let (mut loss_sum, mut top5_hits, mut n) = (0f64, 0usize, 0usize);
    for batch in on_device(loader.iter(0), num_classes, &dev) {
        let batch = batch?;
        let b = batch.labels.len();
        let x = batch.images;
        let logits = shards.infer(model, &x)?;
        let labels = Tensor::from_vec(
            batch.labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
            b,
            &dev,
        )?;
        let ce = candle_nn::loss::cross_entropy(&logits, &labels)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        loss_sum += ce * b as f64;
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (row, &label) in rows.iter().zip(&batch.labels) {
            let ranked = rank(row);
            confusion[label][ranked[0]] += 1;
            if ranked.iter().take(5).any(|&c| c == label) {
                top5_hits += 1;
            }
        }
        n += b;
    }
    let correct: usize = (0..num_classes).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            if total == 0 {
                f64::NAN
            } else {
                row[c] as f64 / total as f64
            }
        })
        .collect();
    let nf = n.max(1) as f64;
    Ok(EvalReport {
        images: n,
        loss: loss_sum / nf,
        top1: correct as f64 / nf,
        top5: top5_hits as f64 / nf,
        per_class_accuracy,
        confusion,
    })
}

/// Class indices sorted by decreasing score (ties: lower index first).
pub fn rank(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx
}
