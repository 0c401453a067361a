//! y = x Wᵀ + b along one axis of a (B, N, D) activation.
//!
//! Token mixing transposes (B, N, D) → (B, D, N), applies a Linear over N and transposes back,
//! as the reference; whole MLPs along the token axis transpose once around the MLP (see
//! `models::mlp`), so this per-layer path is for single layers.

use candle_core::{Result, Tensor, Var};

use super::linear_epilogue::linear_epilogue;
use super::transpose::transpose12;

use crate::params::Scope;

/// Which axis of a (B, N, D) activation a linear map acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// The token axis N (dim 1): the token-mixing MLP.
    Tokens,
    /// The last axis D: the channel-mixing MLP, the head.
    Channels,
}

/// How a Linear's bias starts (timm: N(0, 1e-6) inside MLPs, 0 elsewhere).
#[derive(Clone, Copy, Debug)]
pub enum BiasInit {
    None,
    Zero,
    Normal(f64),
}

/// A Linear layer stored as the reference does: `weight` (out, in) and optional `bias` (out).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

/// timm's init of biases inside MLPs.
pub const MLP_BIAS_STD: f64 = 1e-6;

impl Linear {
    /// Xavier-uniform weight, bias as requested.
    pub fn new(scope: &Scope, fan_in: usize, fan_out: usize, bias: BiasInit) -> Result<Self> {
        let weight = scope.xavier_uniform("weight", &[fan_out, fan_in])?;
        let bias = match bias {
            BiasInit::None => None,
            BiasInit::Zero => Some(scope.zeros("bias", &[fan_out])?),
            BiasInit::Normal(std) => Some(scope.normal("bias", &[fan_out], std)?),
        };
        Ok(Self { weight, bias })
    }

    /// GELU(x Wᵀ + b) along the last axis: one op on the CPU, which keeps GELU′ for its backward
    /// ([`super::linear_epilogue::linear_gelu`]).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        super::linear_epilogue::linear_gelu(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
        )
    }

    /// x Wᵀ + b along the last axis, plus `residual` when given (fused into the matmul).
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        linear_epilogue(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
            residual,
        )
    }

    pub fn forward(&self, x: &Tensor, axis: Axis) -> Result<Tensor> {
        linear(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
            axis,
        )
    }
}

/// y = W·x + b along `axis` for W (out, in).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, axis: Axis) -> Result<Tensor> {
    match axis {
        Axis::Channels => linear_epilogue(x, w, b, None),
        Axis::Tokens => {
            let (_, n, _) = x.dims3()?;
            let in_f = w.dim(1)?;
            if n != in_f {
                candle_core::bail!(
                    "token linear: input {:?} has {n} tokens, weight expects {in_f}",
                    x.shape()
                );
            }
            // The reference's transpose → Linear over N → transpose: two copies, but every matmul
            // and its backward stays 2-D (a broadcast left factor would reduce its gradient over
            // the batch with candle's slow strided sum).
            let y = linear(&transpose12(x)?, w, b, Axis::Channels)?;
            transpose12(&y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device, IndexOp};

    /// Token-axis application == transpose, right-multiply, transpose back (the reference).
    #[test]
    fn token_axis_equals_transposed_linear() -> Result<()> {
        let dev = Device::Cpu;
        let normal = |seed, shape: &[usize]| seeded_normal(seed, shape, 1.0, DType::F64, &dev);
        let x = normal(1, &[2, 5, 3])?;
        let w = normal(2, &[4, 5])?;
        let b = normal(3, &[4])?;
        let ours = linear(&x, &w, Some(&b), Axis::Tokens)?;
        let xt = x.transpose(1, 2)?.contiguous()?;
        let reference = linear(&xt, &w, Some(&b), Axis::Channels)?.transpose(1, 2)?;
        let d = (ours - reference)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12);
        let _ = x.i(0)?;
        Ok(())
    }
}
