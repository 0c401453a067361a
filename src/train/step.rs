//! One optimisation step: train-mode forward → loss (+ λ term) → backward → AdamW.

use candle_core::{Result, Tensor};

use crate::layers::ForwardCtx;
use crate::models::MixerNet;
use crate::optim::AdamW;

/// Hard labels (u32, (B,)) or soft targets ((B, classes), Mixup/CutMix/label smoothing).
pub enum Targets<'a> {
    Hard(&'a Tensor),
    Soft(&'a Tensor),
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
    images: &Tensor,
    targets: Targets,
    seed: u64,
    clip_grad: Option<f64>,
) -> Result<StepOutput> {
    let mut ctx = ForwardCtx::train(seed);
    let logits = model.forward(images, &mut ctx)?;
    let (loss, ce, _) = match targets {
        Targets::Hard(labels) => model.loss(&logits, labels)?,
        Targets::Soft(t) => model.soft_loss(&logits, t)?,
    };
    let loss_value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    if !loss_value.is_finite() {
        candle_core::bail!("non-finite loss {loss_value}");
    }
    let ce_value = ce.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let grads = loss.backward()?;
    let grads = match clip_grad {
        Some(max_norm) => crate::optim::clip::clip_grad_norm(&model.params, grads, max_norm)?,
        None => grads,
    };
    opt.step(&grads)?;
    Ok(StepOutput {
        loss: loss_value,
        ce: ce_value,
        logits: logits.detach(),
    })
}
