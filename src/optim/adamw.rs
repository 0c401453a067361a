//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments), with
//! timm's `param_groups_weight_decay`: no decay for tensors with ndim ≤ 1 or names ending in
//! `.bias`; decay for everything else, including `weight_orig` and 2-D joint-LayerNorm weights.

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw_kernels::{update_moment, update_param, MomentUpdate, ParamUpdate};
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

/// Per-step scalars shared by every parameter.
struct StepScalars {
    step_size: f64,
    bc2_sqrt: f64,
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
    /// torch skips `p.grad is None`). On the fused CPU path the moments and parameters are updated
    /// in place ([`super::adamw_kernels`]); elsewhere through [`Self::step_composed`]. Both give the same bits.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        let fused = self
            .slots
            .iter()
            .all(|s| crate::kernels::fused(s.var.as_tensor()));
        if !fused {
            return self.step_composed(grads);
        }
        let k = self.begin_step();
        let first = MomentUpdate {
            beta: self.config.beta1,
            square: false,
        };
        let second = MomentUpdate {
            beta: self.config.beta2,
            square: true,
        };
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let (m, v) = (s.m.as_tensor(), s.v.as_tensor());
            update_moment(m, g, &first)?;
            update_moment(v, g, &second)?;
            let op = ParamUpdate {
                decay_factor: self.decay_factor(s),
                inv_bc2_sqrt: 1.0 / k.bc2_sqrt,
                eps: self.config.eps,
                step_size: k.step_size,
            };
            update_param(s.var.as_tensor(), m, v, &op)?;
        }
        Ok(())
    }

    /// The same step from candle tensor ops (fresh tensors, then `Var::set`): the path for
    /// devices without the in-place kernels, and the reference they are tested against.
    pub fn step_composed(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        let k = self.begin_step();
        let c = &self.config;
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let m = ((s.m.as_tensor() * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((s.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let p = s.var.as_tensor();
            let p = match self.decay_factor(s) {
                Some(f) => (p * f)?,
                None => p.clone(),
            };
            let denom = ((v.sqrt()? / k.bc2_sqrt)? + c.eps)?;
            let p = (p - ((&m / &denom)? * k.step_size)?)?;
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.var.set(&p)?;
        }
        Ok(())
    }

    /// Counts the step and returns its bias-correction scalars (torch's formulas).
    fn begin_step(&mut self) -> StepScalars {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        StepScalars {
            step_size: c.lr / bc1,
            bc2_sqrt: bc2.sqrt(),
        }
    }

    /// The decoupled weight-decay factor 1 − lr·wd, for decayed parameters only.
    fn decay_factor(&self, s: &Slot) -> Option<f64> {
        let c = &self.config;
        (s.decay && c.weight_decay != 0.0).then_some(1.0 - c.lr * c.weight_decay)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{seeded_normal, Builder};
    use candle_core::{DType, Device};

    /// A weight (decayed), a bias (not decayed) and a 3-D tensor, each with its own "loss".
    fn store(dtype: DType) -> Result<ParamStore> {
        let b = Builder::new(7, dtype, &Device::Cpu);
        let root = b.root();
        root.sub("fc").normal("weight", &[33, 70_000 / 33], 1.0)?;
        root.sub("fc").normal("bias", &[33], 1.0)?;
        root.sub("norm").normal("weight", &[4, 5, 6], 1.0)?;
        Ok(b.finish())
    }

    fn grads(params: &ParamStore, round: u64) -> Result<candle_core::backprop::GradStore> {
        let mut loss: Option<Tensor> = None;
        for (i, e) in params.params().enumerate() {
            let probe = seeded_normal(
                round * 10 + i as u64,
                e.var.dims(),
                1.0,
                e.var.dtype(),
                &Device::Cpu,
            )?;
            let term = (e.var.as_tensor().sqr()? * probe)?.sum_all()?;
            loss = Some(match loss {
                Some(l) => (l + term)?,
                None => term,
            });
        }
        loss.expect("parameters").backward()
    }

    #[test]
    fn in_place_step_equals_the_composed_step_bit_for_bit() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let (fast, slow) = (store(dtype)?, store(dtype)?);
            let config = AdamWConfig {
                lr: 3e-3,
                ..AdamWConfig::default()
            };
            let mut a = AdamW::new(&fast, config.clone())?;
            let mut b = AdamW::new(&slow, config.clone())?;
            assert_eq!(a.decayed_names(), vec!["fc.weight", "norm.weight"]);
            for round in 0..3 {
                a.step(&grads(&fast, round)?)?;
                b.step_composed(&grads(&slow, round)?)?;
            }
            let same = |x: &Tensor, y: &Tensor| -> Result<bool> {
                let x = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let y = y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                Ok(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()))
            };
            for (e, f) in fast.params().zip(slow.params()) {
                assert!(
                    same(e.var.as_tensor(), f.var.as_tensor())?,
                    "{} ({dtype:?})",
                    e.name
                );
            }
            for ((n, x), (_, y)) in a.state_tensors().iter().zip(b.state_tensors().iter()) {
                assert!(same(x, y)?, "{n} ({dtype:?})");
            }
            assert_eq!(a.step, 3);
        }
        Ok(())
    }
}
