//! Gradient clipping by global L2 norm (torch `clip_grad_norm_`, as timm's `--clip-grad`).

use candle_core::backprop::GradStore;
use candle_core::Result;

use crate::params::ParamStore;

/// Scales every gradient by min(1, max_norm / (‖g‖₂ + 1e-6)).
pub fn clip_grad_norm(
    params: &ParamStore,
    mut grads: GradStore,
    max_norm: f64,
) -> Result<GradStore> {
    let mut total = 0f64;
    for e in params.params() {
        if let Some(g) = grads.get(e.var.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for e in params.params() {
            if let Some(g) = grads.remove(e.var.as_tensor()) {
                grads.insert(e.var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(grads)
}
