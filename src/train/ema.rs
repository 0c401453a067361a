//! Model EMA (timm `ModelEmaV2`, `--model-ema`): an exponential moving average of the weights,
//! updated after every optimizer step and evaluated every epoch.
//!
//! For every trainable parameter θ: θ_ema ← decay · θ_ema + (1 − decay) · θ, starting from the
//! weights the run starts with (fresh or `--initial-checkpoint`).
//!
//! Buffers are **copied**, never averaged. ModelEmaV2 averages every float entry of the
//! `state_dict`, but the only buffers here are the spectral-norm power-iteration state (u, v and
//! the last σ̂): an average of unit vectors is no unit vector, and u, v are estimates of singular
//! vectors, not weights to smooth. The EMA model's soft SN then normalises the averaged
//! `weight_orig` with the raw model's current u, v (timm's ModelEmaV3 `exclude_buffers` does the
//! same copy).
//!
//! The EMA lives in a second [`MixerNet`] of the same configuration, so it evaluates and saves
//! like the raw model; checkpoints hold it under `checkpoint::EMA_PREFIX` + the reference name.

use std::collections::HashMap;
use std::path::Path;

use super::error::{Doing, Result, TrainError};
use candle_core::Tensor;

use crate::checkpoint::EMA_PREFIX;
use crate::params::Kind;
use crate::MixerNet;

pub struct ModelEma {
    pub decay: f64,
    /// The averaged weights as a model (eval only).
    pub model: MixerNet,
}

impl ModelEma {
    /// An EMA starting at `model`'s current weights and buffers (a deep copy).
    pub fn new(model: &MixerNet, decay: f64) -> Result<Self> {
        let ema = MixerNet::new(&model.config, 0, model.device())?;
        let current: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
        ema.load_state(&current, false)?;
        Ok(Self { decay, model: ema })
    }

    /// One update after an optimizer step of `model`.
    pub fn update(&self, model: &MixerNet) -> Result<()> {
        let (keep, take) = (self.decay, 1.0 - self.decay);
        for (e, m) in self
            .model
            .params
            .entries()
            .iter()
            .zip(model.params.entries())
        {
            debug_assert_eq!(e.name, m.name);
            let now = m.var.as_tensor();
            let next = match e.kind {
                Kind::Param => (e.var.as_tensor().affine(keep, 0.0)? + now.affine(take, 0.0)?)?,
                Kind::Buffer => now.copy()?,
            };
            e.var.set(&next)?;
        }
        Ok(())
    }

    /// The EMA's tensors under their checkpoint names (`ema.` + reference name).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.model
            .state_dict()
            .into_iter()
            .map(|(n, t)| (format!("{EMA_PREFIX}{n}"), t))
            .collect()
    }

    /// Restores the EMA from the `ema.` tensors of a checkpoint at `path` (resume).
    pub fn restore(&self, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let ema: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(EMA_PREFIX)?.to_string(), v.clone())))
            .collect();
        if ema.is_empty() {
            return Err(TrainError::unusable(
                path,
                format!("holds no model EMA ({EMA_PREFIX}* tensors): it was not written by a --model-ema run"),
            ));
        }
        self.model
            .load_state(&ema, false)
            .doing(|| format!("while restoring the model EMA from {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Sets every tensor of `model` to a constant (a stand-in for an optimizer step).
    fn fill(model: &MixerNet, value: f32) {
        for e in model.params.entries() {
            let t = (e.var.as_tensor().zeros_like().unwrap() + value as f64).unwrap();
            e.var.set(&t).unwrap();
        }
    }

    #[test]
    fn params_are_averaged_and_buffers_copied() {
        let cfg = crate::registry::lookup("imixer_n4_28").unwrap();
        let model = MixerNet::new(&cfg, 3, &Device::Cpu).unwrap();
        let start: HashMap<String, Vec<f32>> = model
            .params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), values(e.var.as_tensor())))
            .collect();
        let ema = ModelEma::new(&model, 0.75).unwrap();
        // A deep copy: changing the model leaves the EMA where it was.
        fill(&model, 2.0);
        for e in ema.model.params.entries() {
            assert_eq!(values(e.var.as_tensor()), start[&e.name], "{}", e.name);
        }
        ema.update(&model).unwrap();
        let buffers = model.params.buffers().count();
        assert!(buffers > 0, "the iMixer has spectral-norm buffers");
        for e in ema.model.params.entries() {
            let got = values(e.var.as_tensor());
            for (g, s) in got.iter().zip(&start[&e.name]) {
                let want = match e.kind {
                    // 0.75 · start + 0.25 · 2
                    Kind::Param => 0.75 * s + 0.5,
                    Kind::Buffer => 2.0,
                };
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{}: {g} vs {want}",
                    e.name
                );
            }
        }
        // A second step toward 2: the gap to 2 shrinks by the decay again.
        ema.update(&model).unwrap();
        let p = ema.model.params.params().next().unwrap();
        for (g, s) in values(p.var.as_tensor()).iter().zip(&start[&p.name]) {
            let want = 0.75 * (0.75 * s + 0.5) + 0.5;
            assert!((g - want).abs() <= 1e-6, "{g} vs {want}");
        }
        // Saved under ema.<name>, and restored from there.
        let tensors: HashMap<String, Tensor> = ema.state_tensors().into_iter().collect();
        assert!(tensors.contains_key("ema.stem.proj.weight"));
        assert_eq!(tensors.len(), model.params.entries().len());
        let other = ModelEma::new(&model, 0.75).unwrap();
        other.restore(&tensors, Path::new("x.safetensors")).unwrap();
        for (a, b) in other
            .model
            .params
            .entries()
            .iter()
            .zip(ema.model.params.entries())
        {
            assert_eq!(
                values(a.var.as_tensor()),
                values(b.var.as_tensor()),
                "{}",
                a.name
            );
        }
        let err = other
            .restore(&HashMap::new(), Path::new("x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("--model-ema"),
            "{err}"
        );
    }
}
