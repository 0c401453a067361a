//! Stochastic depth ("drop-path", timm `DropPath`): in training, each sample's residual branch is
//! kept with probability 1 − p and rescaled by 1/(1 − p); identity in eval.

use candle_core::{Result, Tensor};
use rand::Rng;

use super::context::ForwardCtx;

/// Applies drop-path to a (B, …) branch output.
pub fn drop_path(x: &Tensor, p: f64, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let b = x.dim(0)?;
    let mask: Vec<f64> = (0..b)
        .map(|_| {
            if ctx.rng.gen::<f64>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    let mask = Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn eval_is_identity_and_train_keeps_expectation() -> Result<()> {
        let x = Tensor::ones((4000, 3), candle_core::DType::F64, &Device::Cpu)?;
        let y = drop_path(&x, 0.3, &mut ForwardCtx::eval())?;
        assert_eq!(y.to_vec2::<f64>()?, x.to_vec2::<f64>()?);
        let y = drop_path(&x, 0.3, &mut ForwardCtx::train(7))?;
        let rows = y.to_vec2::<f64>()?;
        assert!(
            rows.iter().all(|r| r[0] == r[1] && r[1] == r[2]),
            "one draw per sample"
        );
        let mean = y.mean_all()?.to_scalar::<f64>()?;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let dropped = rows.iter().filter(|r| r[0] == 0.0).count() as f64 / 4000.0;
        assert!((dropped - 0.3).abs() < 0.03, "dropped fraction {dropped}");
        Ok(())
    }
}
