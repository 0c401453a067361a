//! The MLPs of the family, each applied along one axis of (B, N, D):
//!
//! - [`Mlp`]: fc2(GELU(fc1(x))) — timm's Mlp (biases) and paper 2's vMlp (no biases);
//! - [`SymMlp`]: y = GELU(x Wᵀ) W — one weight, stored as `fc2.weight` (hidden, in);
//! - [`AsymMlp`]: h = GELU(x W1ᵀ), y = h W1 + h W2ᵀ — symmetric part plus symmetry breaking;
//! - the iMLP ([`super::imlp::IMlp`]).

use candle_core::{Result, Tensor, Var};

use super::imlp::IMlp;
use crate::layers::linear::{BiasInit, MLP_BIAS_STD};
use crate::layers::linear_epilogue::{linear_epilogue, linear_gelu};
use crate::layers::{transpose12, Axis, ForwardCtx, Linear};
use crate::params::Scope;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(scope: &Scope, dim: usize, hidden: usize, bias: bool) -> Result<Self> {
        let b = if bias {
            BiasInit::Normal(MLP_BIAS_STD)
        } else {
            BiasInit::None
        };
        Ok(Self {
            fc1: Linear::new(&scope.sub("fc1"), dim, hidden, b)?,
            fc2: Linear::new(&scope.sub("fc2"), hidden, dim, b)?,
        })
    }

    /// fc2(GELU(fc1(x))) along the last axis, plus `residual` in fc2's epilogue when given.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let h = self.fc1.forward_gelu(x)?;
        self.fc2.forward_residual(&h, residual)
    }
}

#[derive(Clone, Debug)]
pub struct SymMlp {
    /// W (hidden, in), named `fc2.weight` "for compatibility" in the reference.
    pub weight: Var,
}

impl SymMlp {
    pub fn new(scope: &Scope, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            weight: scope.sub("fc2").xavier_uniform("weight", &[hidden, dim])?,
        })
    }

    /// GELU(x Wᵀ) W along the last axis, plus `residual` when given.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let w = self.weight.as_tensor();
        let h = linear_gelu(x, w, None)?;
        linear_epilogue(&h, &w.t()?, None, residual)
    }
}

#[derive(Clone, Debug)]
pub struct AsymMlp {
    /// W1 (hidden, in).
    pub fc1: Linear,
    /// W2 (in, hidden): the symmetry-breaking weight, penalised by λ‖W2‖².
    pub fc2: Linear,
}

impl AsymMlp {
    pub fn new(scope: &Scope, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&scope.sub("fc1"), dim, hidden, BiasInit::None)?,
            fc2: Linear::new(&scope.sub("fc2"), hidden, dim, BiasInit::None)?,
        })
    }

    /// h W1 + h W2ᵀ with h = GELU(x W1ᵀ) along the last axis, plus `residual` when given.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let w1 = self.fc1.weight.as_tensor();
        let h = linear_gelu(x, w1, None)?;
        // h W1 + h W2ᵀ = h (W1 + W2ᵀ)ᵀ-applied: one matmul with the summed (in, hidden) weight.
        let w_out = (w1.t()? + self.fc2.weight.as_tensor())?;
        linear_epilogue(&h, &w_out, None, residual)
    }
}

/// Any token/channel MLP of the zoo.
#[derive(Clone, Debug)]
pub enum AnyMlp {
    Plain(Mlp),
    Sym(SymMlp),
    Asym(AsymMlp),
    /// Boxed: the iMLP is much larger than the other variants.
    Implicit(Box<IMlp>),
}

impl AnyMlp {
    /// Applies the MLP along `axis` of a (B, N, D) activation. Along the token axis the input is
    /// transposed once to (B, D, N), the whole MLP runs along the last axis (2-D matmuls, fused
    /// bias epilogues), and the output is transposed back — the reference's `mlp(xᵀ)ᵀ`. The
    /// blocks avoid both transposes (`forward_last_axis` between fused LayerNorm/residual ops).
    pub fn forward(&self, x: &Tensor, axis: Axis, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match axis {
            Axis::Channels => self.forward_last_axis(x, None, ctx),
            Axis::Tokens => {
                let y = self.forward_last_axis(&transpose12(x)?, None, ctx)?;
                transpose12(&y)
            }
        }
    }

    /// The MLP along the last axis: the channel MLP on (B, N, D), or the token MLP on an
    /// already transposed activation xᵀ (B, D, N). A `residual` (same shape as the output) is
    /// added inside the last matmul's epilogue: `r + mlp(x)` without keeping `mlp(x)` alive.
    pub fn forward_last_axis(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        match self {
            AnyMlp::Plain(m) => m.forward(x, residual),
            AnyMlp::Sym(m) => m.forward(x, residual),
            AnyMlp::Asym(m) => m.forward(x, residual),
            AnyMlp::Implicit(m) => m.forward_last_axis(x, residual, ctx),
        }
    }

    /// The weight penalised by AsymMixer's λ term (`fc2.weight`), where the MLP has one.
    pub fn fc2_weight(&self) -> Option<&Var> {
        match self {
            AnyMlp::Plain(m) => Some(&m.fc2.weight),
            AnyMlp::Sym(m) => Some(&m.weight),
            AnyMlp::Asym(m) => Some(&m.fc2.weight),
            AnyMlp::Implicit(m) => Some(&m.fc2.weight),
        }
    }
}
