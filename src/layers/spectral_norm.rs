//! Linear with *soft* spectral normalisation (i-ResNet style), exactly as the reference hook:
//!
//! W̃ = W / max(1, σ̂/c),  σ̂ = uᵀ W v,
//!
//! with u, v persistent buffers refined by `n_power` power-iteration steps **at every call** of the
//! layer in training (so an iMLP with n_iter repeats runs n_iter × n_power steps per forward), no
//! gradient through u, v, gradient into W through σ̂ only when σ̂ > c. Eval uses the stored u, v.
//! `weight_sigma` records the last σ̂ (train and eval) for logging; the forward never reads it.

use candle_core::{Result, Tensor, Var};

use super::context::ForwardCtx;
use super::linear::{linear, Axis, MLP_BIAS_STD};
use crate::params::Scope;

/// Power-iteration normalisation floor (`F.normalize` eps).
pub const SN_EPS: f64 = 1e-12;

/// One call of a spectral-norm layer, for traces and diagnostics.
#[derive(Clone, Debug)]
pub struct SnCall {
    pub module: String,
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: f64,
    pub factor: f64,
}

#[derive(Clone, Debug)]
pub struct SoftSpectralNorm {
    pub name: String,
    /// `weight_orig` (out, in): the trainable, unnormalised weight.
    pub weight_orig: Var,
    pub bias: Var,
    pub u: Var,
    pub v: Var,
    pub sigma: Var,
    pub coeff: f64,
    pub n_power: usize,
}

impl SoftSpectralNorm {
    /// Registers `bias`, `weight_orig`, `weight_u`, `weight_v`, `weight_sigma` (reference order).
    pub fn new(
        scope: &Scope,
        fan_in: usize,
        fan_out: usize,
        coeff: f64,
        n_power: usize,
    ) -> Result<Self> {
        // The reference draws u, v when the hook is attached, before the xavier re-init of W.
        let bias = scope.normal("bias", &[fan_out], MLP_BIAS_STD)?;
        let u = scope.unit_vector_buffer("weight_u", fan_out)?;
        let v = scope.unit_vector_buffer("weight_v", fan_in)?;
        let sigma = scope.constant("weight_sigma", &[1], 1.0, crate::params::Kind::Buffer)?;
        let weight_orig = scope.xavier_uniform("weight_orig", &[fan_out, fan_in])?;
        Ok(Self {
            name: scope.prefix().to_string(),
            weight_orig,
            bias,
            u,
            v,
            sigma,
            coeff,
            n_power,
        })
    }

    /// The normalised weight W̃ for this call (running the power steps first in training).
    pub fn weight(&self, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let w = self.weight_orig.as_tensor();
        // Copies, never views of the buffers: a later call updates the buffers in place, and this
        // call's graph (∂σ̂/∂W = u vᵀ) must keep this call's u, v — the reference clones them too.
        let (mut u, mut v) = (self.u.as_tensor().copy()?, self.v.as_tensor().copy()?);
        if ctx.train && self.n_power > 0 {
            let wd = w.detach();
            for _ in 0..self.n_power {
                v = normalize(&wd.t()?.matmul(&u.unsqueeze(1)?)?.squeeze(1)?)?;
                u = normalize(&wd.matmul(&v.unsqueeze(1)?)?.squeeze(1)?)?;
            }
            self.u.set(&u)?;
            self.v.set(&v)?;
        }
        let sigma = u
            .unsqueeze(0)?
            .matmul(&w.matmul(&v.unsqueeze(1)?)?)?
            .reshape(1)?;
        let sigma_value = sigma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?[0];
        self.sigma.set(&sigma.detach())?;
        let factor = (sigma_value / self.coeff).max(1.0);
        if let Some(trace) = ctx.sn_trace.as_mut() {
            trace.push(SnCall {
                module: self.name.clone(),
                u: u.clone(),
                v: v.clone(),
                sigma: sigma_value,
                factor,
            });
        }
        if sigma_value / self.coeff > 1.0 {
            // Gradient flows into W both directly and through σ̂ (u, v constants).
            w.broadcast_div(&(sigma / self.coeff)?)
        } else {
            Ok(w.clone())
        }
    }

    pub fn forward(&self, x: &Tensor, axis: Axis, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let w = self.weight(ctx)?;
        linear(x, &w, Some(self.bias.as_tensor()), axis)
    }
}

/// a / max(‖a‖₂, eps).
fn normalize(a: &Tensor) -> Result<Tensor> {
    let norm = a
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    a / norm.max(SN_EPS)
}
