//! One optimisation step: train-mode forward → loss (+ λ term) → backward → AdamW, the batch
//! optionally split into data-parallel shards ([`Shards`]).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::error::{Result, TrainError};
use super::shards::Shards;
use crate::layers::{ForwardCtx, Observe, SolverStats};
use crate::models::MixerNet;
use crate::optim::AdamW;

/// Hard labels (u32, (B,)) or soft targets ((B, classes), Mixup/CutMix/label smoothing).
#[derive(Clone, Copy)]
pub enum Targets<'a> {
    Hard(&'a Tensor),
    Soft(&'a Tensor),
}

/// What a forward + backward pass over one batch leaves.
pub struct BatchGrads {
    /// The parameters' gradients of the batch's mean loss, divided by the `accum` given.
    pub grads: GradStore,
    /// Mean loss over the batch (λ term included) and mean cross-entropy.
    pub loss: f64,
    pub ce: f64,
    /// (B, classes) logits, detached, rows in batch order.
    pub logits: Tensor,
    /// Every iMLP solve of the pass, shard by shard.
    pub solver_stats: Vec<SolverStats>,
}

/// The drop-path seed of shard `i`: shard 0 keeps the batch's seed, so a one-shard pass draws
/// exactly what the unsharded step drew.
fn shard_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Forward and backward over `images` in `shards`. Shard i's loss is its mean over its rows;
/// it is backpropagated divided by (B · accum / rows), so the summed gradients are those of the
/// batch mean divided by `accum` (gradient accumulation). Spectral-norm buffers: each shard's
/// forward advances its own copy from the same start (the power iteration depends only on W and
/// u, so all copies agree), and shard 0's is committed at the end, however many shards run.
pub fn forward_backward(
    model: &MixerNet,
    shards: &Shards,
    images: &Tensor,
    targets: Targets,
    seed: u64,
    accum: usize,
) -> Result<BatchGrads> {
    let b = images.dim(0)?;
    let parts = shards.run(b, |i, rows| {
        let n = rows.len();
        // A full-range narrow is the tensor itself (candle), so one shard sees exactly the
        // unsharded inputs.
        let rows_of = |t: &Tensor| t.narrow(0, rows.start, n);
        let mut ctx = ForwardCtx::train(shard_seed(seed, i)).observing(&[Observe::SolverStats]);
        let logits = model.forward(&rows_of(images)?, &mut ctx)?;
        let (loss, ce, _) = match targets {
            Targets::Hard(labels) => model.loss(&logits, &rows_of(labels)?)?,
            Targets::Soft(soft) => model.soft_loss(&logits, &rows_of(soft)?)?,
        };
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar()?) };
        let (loss_value, ce_value) = (scalar(&loss)?, scalar(&ce)?);
        // x / 1 is exact, so one shard without accumulation backpropagates the plain loss.
        let grads = (&loss / ((b * accum) as f64 / n as f64))?.backward()?;
        let weight = n as f64 / b as f64;
        Ok((
            grads,
            loss_value * weight,
            ce_value * weight,
            logits.detach(),
            ctx,
        ))
    })?;
    let mut acc: Option<GradStore> = None;
    let (mut loss, mut ce) = (0.0, 0.0);
    let mut logits = Vec::with_capacity(parts.len());
    let mut solver_stats = Vec::new();
    for (i, (grads, l, c, z, ctx)) in parts.into_iter().enumerate() {
        if i == 0 {
            ctx.sn.commit()?;
        }
        add_grads(&mut acc, grads, model)?;
        loss += l;
        ce += c;
        logits.push(z);
        solver_stats.extend(ctx.observer.solver_stats.unwrap_or_default());
    }
    let grads = acc.ok_or_else(|| TrainError::Config("empty batch: nothing to train on".into()))?;
    let logits = match logits.len() {
        1 => logits.pop().expect("one shard"),
        _ => Tensor::cat(&logits, 0)?,
    };
    Ok(BatchGrads {
        grads,
        loss,
        ce,
        logits,
        solver_stats,
    })
}

/// Adds `new` into `acc` for every parameter (shards, gradient accumulation).
pub fn add_grads(acc: &mut Option<GradStore>, new: GradStore, model: &MixerNet) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(acc) => {
            for e in model.params.params() {
                if let Some(g) = new.get(e.var.as_tensor()) {
                    let sum = match acc.get(e.var.as_tensor()) {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    };
                    acc.insert(e.var.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

pub struct StepOutput {
    pub loss: f64,
    pub ce: f64,
    pub logits: Tensor,
}

/// Runs one step; `seed` drives this step's drop-path draws. A non-finite loss is an error and
/// leaves the weights untouched.
pub fn train_step(
    model: &MixerNet,
    opt: &mut AdamW,
    shards: &Shards,
    images: &Tensor,
    targets: Targets,
    seed: u64,
    clip_grad: Option<f64>,
) -> Result<StepOutput> {
    let pass = forward_backward(model, shards, images, targets, seed, 1)?;
    if !pass.loss.is_finite() {
        return Err(TrainError::NonFinite {
            quantity: "loss".into(),
            value: pass.loss.to_string(),
            when: "in a training step".into(),
            step: None,
            last: None,
        });
    }
    let grads = match clip_grad {
        Some(max_norm) => crate::optim::clip::clip_grad_norm(&model.params, pass.grads, max_norm)?,
        None => pass.grads,
    };
    opt.step(&grads)?;
    Ok(StepOutput {
        loss: pass.loss,
        ce: pass.ce,
        logits: pass.logits,
    })
}
