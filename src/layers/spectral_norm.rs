//! Linear with *soft* spectral normalisation (i-ResNet style), exactly as the reference hook:
//!
//! W̃ = W / max(1, σ̂/c),  σ̂ = uᵀ W v,
//!
//! with u, v persistent buffers refined by `n_power` power-iteration steps **at every call** of the
//! layer in training (so an iMLP with n_iter repeats runs n_iter × n_power steps per forward), no
//! gradient through u, v, gradient into W through σ̂ only when σ̂ > c. Eval uses the stored u, v.
//! `weight_sigma` records the last σ̂ (train and eval) for logging; the forward never reads it.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, Var};

use super::context::ForwardCtx;
use super::linear::{linear, Epilogue, MLP_BIAS_STD};
use super::sn_state::{SnBuffers, SnCall, SnVars};
use crate::kernels::cpu::{dispatch, Float, SliceKernel};
use crate::kernels::fused;
use crate::params::Scope;

/// Power-iteration normalisation floor (`F.normalize` eps).
pub const SN_EPS: f64 = 1e-12;

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

    /// The model variables this layer's calls commit into.
    pub fn vars(&self) -> SnVars {
        SnVars {
            u: self.u.clone(),
            v: self.v.clone(),
            sigma: self.sigma.clone(),
        }
    }

    /// The normalised weight W̃ for this call (running the power steps first in training). The
    /// buffers it leaves go to `ctx.sn`, never into the layer's variables (see `sn_state`).
    pub fn weight(&self, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let w = self.weight_orig.as_tensor();
        // Copies, never views of the variables: the commit after the forward overwrites them in
        // place, and this call's graph (∂σ̂/∂W = u vᵀ) must keep this call's u, v, as the
        // reference clones them too. Buffers of an earlier call are never written, so sharing
        // them is as safe as the copies.
        let (mut u, mut v) = match ctx.sn.get(&self.name) {
            Some(b) => (b.u.clone(), b.v.clone()),
            None => (self.u.as_tensor().copy()?, self.v.as_tensor().copy()?),
        };
        let iterated = ctx.is_train() && self.n_power > 0;
        if iterated {
            (u, v) = power_iteration(&w.detach(), &u, &v, self.n_power)?;
        }
        let sigma = u
            .unsqueeze(0)?
            .matmul(&w.matmul(&v.unsqueeze(1)?)?)?
            .reshape(1)?;
        let sigma_value = sigma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?[0];
        let factor = (sigma_value / self.coeff).max(1.0);
        if let Some(calls) = ctx.observer.sn_calls.as_mut() {
            calls.push(SnCall {
                module: self.name.clone(),
                u: u.clone(),
                v: v.clone(),
                sigma: sigma_value,
                factor,
            });
        }
        let buffers = SnBuffers {
            u,
            v,
            sigma: sigma.detach(),
            iterated,
        };
        ctx.sn.record(&self.name, &self.vars(), buffers);
        if sigma_value / self.coeff > 1.0 {
            // Gradient flows into W both directly and through σ̂ (u, v constants).
            w.broadcast_div(&(sigma / self.coeff)?)
        } else {
            Ok(w.clone())
        }
    }

    /// x W̃ᵀ + b over the last axis with this call's normalised weight W̃, then `epilogue`.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let w = self.weight(ctx)?;
        linear(x, &w, Some(self.bias.as_tensor()), epilogue)
    }
}

/// `steps` power-iteration steps v ← normalize(Wᵀu), u ← normalize(W v) from (u, v).
///
/// On the CPU this is one kernel (`PowerIteration`): composed of tensor ops, each step is ~12
/// tiny ops (two mat-vecs, norms, scalar reads), and an iMixer train step runs hundreds of
/// steps — that dispatch cost was a large share of the iMixer's overhead. Other devices keep the
/// composed path.
pub fn power_iteration(
    w: &Tensor,
    u: &Tensor,
    v: &Tensor,
    steps: usize,
) -> Result<(Tensor, Tensor)> {
    if fused(w) {
        let (rows, cols) = w.dims2()?;
        let uv = w
            .contiguous()?
            .apply_op2_no_bwd(&u.contiguous()?, &PowerIteration { steps })?;
        return Ok((uv.narrow(0, 0, rows)?, uv.narrow(0, rows, cols)?));
    }
    power_iteration_composed(w, u, v, steps)
}

/// [`power_iteration`] from candle ops (the reference's two mat-vecs and normalisations).
pub fn power_iteration_composed(
    w: &Tensor,
    u: &Tensor,
    v: &Tensor,
    steps: usize,
) -> Result<(Tensor, Tensor)> {
    // The reference iterates under `torch.no_grad()`: u and v are constants of the forward, so
    // no gradient reaches the buffers (or W) through the iteration.
    let w = w.detach();
    let (mut u, mut v) = (u.detach(), v.detach());
    for _ in 0..steps {
        v = normalize(&w.t()?.matmul(&u.unsqueeze(1)?)?.squeeze(1)?)?;
        u = normalize(&w.matmul(&v.unsqueeze(1)?)?.squeeze(1)?)?;
    }
    Ok((u, v))
}

/// CPU power iteration on W (rows, cols) from u (rows); output [u; v] (rows + cols).
/// Accumulates in f64 (at least as accurate as the reference's f32 mat-vecs).
struct PowerIteration {
    steps: usize,
}

impl SliceKernel for PowerIteration {
    fn run<T: Float>(&self, inputs: &[&[T]]) -> Vec<T> {
        let (w, u0) = (inputs[0], inputs[1]);
        let rows = u0.len();
        let cols = w.len() / rows;
        let mut u: Vec<f64> = u0.iter().map(|x| x.to_f64()).collect();
        let mut v = vec![0f64; cols];
        let normalize = |a: &mut [f64]| {
            let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(SN_EPS);
            a.iter_mut().for_each(|x| *x /= norm);
        };
        for _ in 0..self.steps {
            v.fill(0.0);
            for (row, &ur) in w.chunks_exact(cols).zip(&u) {
                v.iter_mut()
                    .zip(row)
                    .for_each(|(vc, w)| *vc += ur * w.to_f64());
            }
            normalize(&mut v);
            for (row, ur) in w.chunks_exact(cols).zip(u.iter_mut()) {
                *ur = row.iter().zip(&v).map(|(w, vc)| w.to_f64() * vc).sum();
            }
            normalize(&mut u);
        }
        u.iter().chain(&v).map(|&x| T::from_f64(x)).collect()
    }
}

impl CustomOp2 for PowerIteration {
    fn name(&self) -> &'static str {
        "imixer-power-iteration"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        if l2.dims() != [rows] {
            candle_core::bail!("{}: u {:?} for W {:?}", self.name(), l2.shape(), l1.shape());
        }
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2)])?,
            Shape::from(rows + cols),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device};

    /// The CPU kernel equals the composed tensor-op power iteration (f64, 8 steps, rectangular W).
    #[test]
    fn power_iteration_kernel_matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let w = seeded_normal(1, &[7, 12], 1.0, DType::F64, &dev)?;
        let u0 = normalize(&seeded_normal(2, &[7], 1.0, DType::F64, &dev)?)?;
        let v0 = normalize(&seeded_normal(3, &[12], 1.0, DType::F64, &dev)?)?;
        let (u, v) = power_iteration(&w, &u0, &v0, 8)?;
        let (u_ref, v_ref) = power_iteration_composed(&w, &u0, &v0, 8)?;
        for (a, b) in [(u, u_ref), (v, v_ref)] {
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-14, "{d}");
        }
        Ok(())
    }
}
