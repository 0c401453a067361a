//! The MLPs of the family, each over the last axis of its input (the block transposes for token
//! mixing), each with one `forward(x, epilogue)` whose epilogue applies to the last product — a
//! block passes `Epilogue::Add(r)` to add its residual inside that matmul:
//!
//! - [`Mlp`]: fc2(GELU(fc1(x))) — timm's Mlp (biases) and paper 2's vMlp (no biases);
//! - [`SymMlp`]: y = GELU(x Wᵀ) W — one weight, stored as `fc2.weight` (hidden, in);
//! - [`AsymMlp`]: h = GELU(x W1ᵀ), y = h W1 + h W2ᵀ — symmetric part plus symmetry breaking;
//! - the iMLP ([`super::imlp::IMlp`]).
//!
//! The first three are fc2(GELU(fc1(x))) with different weights, so each is one call of
//! [`gelu_mlp()`], which picks its implementation (two linear ops, or one op under bf16).

use candle_core::{Result, Tensor, Var};

use super::imlp::IMlp;
use crate::layers::gelu_mlp::Input;
use crate::layers::linear::{BiasInit, MLP_BIAS_STD};
use crate::layers::{gelu_mlp, Epilogue, ForwardCtx, Linear};
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

    /// fc2(GELU(fc1(x))), then `epilogue` on fc2's product.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        gelu_mlp(
            x,
            Input::AsIs,
            fc1.weight.as_tensor(),
            fc1.bias.as_ref().map(Var::as_tensor),
            fc2.weight.as_tensor(),
            fc2.bias.as_ref().map(Var::as_tensor),
            epilogue,
        )
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

    /// GELU(x Wᵀ) W, then `epilogue`.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let w = self.weight.as_tensor();
        gelu_mlp(x, Input::AsIs, w, None, &w.t()?, None, epilogue)
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

    /// h W1 + h W2ᵀ with h = GELU(x W1ᵀ), then `epilogue`.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let w1 = self.fc1.weight.as_tensor();
        // h W1 + h W2ᵀ = h (W1 + W2ᵀ)ᵀ-applied: one matmul with the summed (in, hidden) weight.
        let w_out = (w1.t()? + self.fc2.weight.as_tensor())?;
        gelu_mlp(x, Input::AsIs, w1, None, &w_out, None, epilogue)
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
    /// The MLP over the last axis — the channel MLP on (B, N, D), the token MLP on LN(x)ᵀ
    /// (B, D, N) — then `epilogue` on its last product.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match self {
            AnyMlp::Plain(m) => m.forward(x, epilogue),
            AnyMlp::Sym(m) => m.forward(x, epilogue),
            AnyMlp::Asym(m) => m.forward(x, epilogue),
            AnyMlp::Implicit(m) => m.forward(x, epilogue, ctx),
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
