//! Spectral norms: the layer's own estimate σ̂ = uᵀWv from its stored power-iteration state, and
//! an independent σ(W) by many power-iteration steps, for W and the normalised W̃.

use candle_core::{DType, Result, Tensor};
use serde::Serialize;

use crate::layers::SoftSpectralNorm;

/// GELU's maximal slope, max_x GELU′(x) ≈ 1.1289 (at x ≈ 0.7518).
pub const GELU_MAX_SLOPE: f64 = 1.128_904_3;

/// σ_max(w) by `steps` power-iteration steps on wᵀw in f64.
pub fn largest_singular_value(w: &Tensor, steps: usize) -> Result<f64> {
    let w = w.to_dtype(DType::F64)?;
    let mut v = Tensor::ones((w.dim(1)?, 1), DType::F64, w.device())?;
    let mut sigma = 0.0;
    for _ in 0..steps {
        let u = w.matmul(&v)?;
        sigma = u.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        let nv = w.t()?.matmul(&u)?;
        let n = nv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if n == 0.0 {
            return Ok(0.0);
        }
        v = (nv / n)?;
    }
    Ok(sigma)
}

#[derive(Clone, Debug, Serialize)]
pub struct SnReport {
    pub module: String,
    /// uᵀWv with the stored u, v (what the model uses in eval).
    pub sigma_hat: f64,
    /// σ(W) of `weight_orig` (200 power steps).
    pub sigma_weight: f64,
    /// σ(W̃) of the weight the model actually applies.
    pub sigma_effective: f64,
    pub coeff: f64,
}

pub fn sn_report(sn: &SoftSpectralNorm) -> Result<SnReport> {
    let w = sn.weight_orig.as_tensor().to_dtype(DType::F64)?;
    let u = sn.u.as_tensor().to_dtype(DType::F64)?;
    let v = sn.v.as_tensor().to_dtype(DType::F64)?;
    let sigma_hat = u
        .unsqueeze(0)?
        .matmul(&w.matmul(&v.unsqueeze(1)?)?)?
        .flatten_all()?
        .to_vec1::<f64>()?[0];
    let factor = (sigma_hat / sn.coeff).max(1.0);
    Ok(SnReport {
        module: sn.name.clone(),
        sigma_hat,
        sigma_weight: largest_singular_value(&w, 200)?,
        sigma_effective: largest_singular_value(&(w / factor)?, 200)?,
        coeff: sn.coeff,
    })
}
