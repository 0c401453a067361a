//! Stochastic depth ("drop-path", timm `DropPath`): in training, each sample's residual branch is
//! kept with probability 1 − p and rescaled by 1/(1 − p); identity in eval.

use candle_core::{Result, Tensor};
use rand::Rng;

use super::context::ForwardCtx;
use super::linear::Epilogue;

/// Whether drop-path at rate `p` leaves a branch unchanged in this forward (eval, or p = 0).
pub fn is_identity(p: f64, ctx: &ForwardCtx) -> bool {
    !ctx.is_train() || p <= 0.0
}

/// x + drop_path(branch), where `branch(epilogue)` applies `epilogue` to its last product.
///
/// Why: when drop-path is the identity the residual goes into the branch, whose last matmul adds
/// it in its epilogue (`Epilogue::Add`) — one pass fewer, and the branch output is never kept
/// for the backward. Otherwise the branch runs alone and its masked output is added, drawing the
/// mask after the branch as before.
pub fn add_residual_branch(
    x: &Tensor,
    p: f64,
    ctx: &mut ForwardCtx,
    branch: impl FnOnce(Epilogue, &mut ForwardCtx) -> Result<Tensor>,
) -> Result<Tensor> {
    if is_identity(p, ctx) {
        return branch(Epilogue::Add(x), ctx);
    }
    let c = branch(Epilogue::None, ctx)?;
    x + drop_path(&c, p, ctx)?
}

/// Applies drop-path to a (B, …) branch output.
pub fn drop_path(x: &Tensor, p: f64, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if is_identity(p, ctx) {
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

    /// With drop-path off the residual goes into the branch; with it on, the branch's masked
    /// output is added, drawing the same masks as `drop_path`.
    #[test]
    fn residual_branch_fuses_only_when_drop_path_is_identity() -> Result<()> {
        let x = Tensor::arange(0f64, 12.0, &Device::Cpu)?.reshape((4, 3))?;
        let branch = |e: Epilogue, _: &mut ForwardCtx| -> Result<Tensor> {
            let c = (Tensor::ones((4, 3), candle_core::DType::F64, &Device::Cpu)? * 10.0)?;
            match e {
                Epilogue::Add(r) => c + r,
                _ => Ok(c),
            }
        };
        let fused = add_residual_branch(&x, 0.0, &mut ForwardCtx::train(3), branch)?;
        assert_eq!(fused.to_vec2::<f64>()?, (&x + 10.0)?.to_vec2::<f64>()?);
        let mut ctx = ForwardCtx::train(3);
        let dropped = add_residual_branch(&x, 0.5, &mut ctx, branch)?;
        let mut reference_ctx = ForwardCtx::train(3);
        let c = branch(Epilogue::None, &mut reference_ctx)?;
        let reference = (&x + drop_path(&c, 0.5, &mut reference_ctx)?)?;
        assert_eq!(dropped.to_vec2::<f64>()?, reference.to_vec2::<f64>()?);
        Ok(())
    }

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
