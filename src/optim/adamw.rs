//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments), with
//! timm's `param_groups_weight_decay`: no decay for tensors with ndim ≤ 1 or names ending in
//! `.bias`; decay for everything else, including `weight_orig` and 2-D joint-LayerNorm weights.

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::params::ParamStore;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// timm's rule: decay unless the tensor is 1-D (or a scalar) or its name ends in `.bias`.
pub fn decays(name: &str, rank: usize) -> bool {
    !(rank <= 1 || name.ends_with(".bias"))
}

struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
    decay: bool,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of steps taken (torch's per-parameter `step`, identical for all here).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: &ParamStore, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .params()
            .map(|e| {
                Ok(Slot {
                    name: e.name.clone(),
                    var: e.var.clone(),
                    m: Var::zeros(e.var.shape(), e.var.dtype(), e.var.device())?,
                    v: Var::zeros(e.var.shape(), e.var.dtype(), e.var.device())?,
                    decay: decays(&e.name, e.var.rank()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Names of the decayed parameters (for checks against the reference groups).
    pub fn decayed_names(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// One step from the gradients in `grads` (parameters without a gradient are skipped, as
    /// torch skips `p.grad is None`).
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = c.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let m = ((s.m.as_tensor() * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((s.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let p = s.var.as_tensor();
            let p = if s.decay && c.weight_decay != 0.0 {
                (p * (1.0 - c.lr * c.weight_decay))?
            } else {
                p.clone()
            };
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let p = (p - ((&m / &denom)? * step_size)?)?;
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.var.set(&p)?;
        }
        Ok(())
    }

    /// Optimizer state for checkpoints: (`<name>.exp_avg`, `<name>.exp_avg_sq`) tensors.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("{}.exp_avg", s.name), s.m.as_tensor().clone()));
            out.push((format!("{}.exp_avg_sq", s.name), s.v.as_tensor().clone()));
        }
        out
    }

    /// Restores moments saved by [`Self::state_tensors`].
    pub fn load_state(&mut self, step: u64, get: impl Fn(&str) -> Option<Tensor>) -> Result<()> {
        for s in &self.slots {
            for (suffix, var) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let t = get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state misses {key}"))
                })?;
                if t.shape() != var.shape() {
                    candle_core::bail!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.shape(),
                        var.shape()
                    );
                }
                var.set(&t.to_dtype(var.dtype())?)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
