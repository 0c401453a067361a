//! Weight symmetry of an MLP x ↦ W_out·φ(W_in·x).
//!
//! Such an MLP is the gradient of an energy (−∇ of −Σ Φ(W_in x), paper 2) exactly when
//! W_out = W_inᵀ; up to a positive scale it still is. We report, per MLP,
//!
//! - `cosine` = ⟨W_out, W_inᵀ⟩ / (‖W_out‖‖W_in‖) ∈ [−1, 1]: 1 for SymMixer (tied weights),
//!   ≈ 0 for independent random weights, negative for an anti-aligned configuration;
//! - `antisymmetric_ratio` = ‖Â − B̂‖ / ‖Â + B̂‖ with Â = W_out/‖W_out‖, B̂ = W_inᵀ/‖W_in‖: the
//!   relative norm of the antisymmetric part of the normalised pair (0 symmetric, 1 orthogonal,
//!   ∞ anti-symmetric); it equals sqrt((1 − cos)/(1 + cos)).
//!
//! W_out is the map the block applies: `fc2.weight` for Mixer/vMlp, Wᵀ for SymMixer (so cos = 1),
//! W1ᵀ + W2 for AsymMixer (h W1 + h W2ᵀ). These make "trained vanilla Mixers acquire a
//! symmetry-breaking configuration" checkable on real checkpoints.

use candle_core::{DType, Result, Tensor};
use serde::Serialize;

use crate::models::AnyMlp;

#[derive(Clone, Debug, Serialize)]
pub struct SymmetryReport {
    pub module: String,
    pub cosine: f64,
    pub antisymmetric_ratio: f64,
}

fn frob(t: &Tensor) -> Result<f64> {
    t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()
}

/// (W_in (hidden, in), W_out (in, hidden)) of an MLP, in f64.
pub fn in_out_weights(mlp: &AnyMlp) -> Result<(Tensor, Tensor)> {
    let f = |t: &Tensor| t.to_dtype(DType::F64);
    Ok(match mlp {
        AnyMlp::Plain(m) => (f(m.fc1.weight.as_tensor())?, f(m.fc2.weight.as_tensor())?),
        AnyMlp::Sym(m) => (f(m.weight.as_tensor())?, f(m.weight.as_tensor())?.t()?),
        AnyMlp::Asym(m) => {
            let w1 = f(m.fc1.weight.as_tensor())?;
            let w_out = (w1.t()? + f(m.fc2.weight.as_tensor())?)?;
            (w1, w_out)
        }
        AnyMlp::Implicit(m) => (f(m.fc1.weight.as_tensor())?, f(m.fc2.weight.as_tensor())?),
    })
}

pub fn symmetry(module: &str, mlp: &AnyMlp) -> Result<SymmetryReport> {
    let (w_in, w_out) = in_out_weights(mlp)?;
    let b = w_in.t()?;
    let (na, nb) = (frob(&w_out)?, frob(&b)?);
    let cosine = (&w_out * &b)?.sum_all()?.to_scalar::<f64>()? / (na * nb).max(1e-300);
    let (a_hat, b_hat) = ((&w_out / na)?, (&b / nb)?);
    let ratio = frob(&(&a_hat - &b_hat)?)? / frob(&(&a_hat + &b_hat)?)?.max(1e-300);
    Ok(SymmetryReport {
        module: module.to_string(),
        cosine,
        antisymmetric_ratio: ratio,
    })
}
