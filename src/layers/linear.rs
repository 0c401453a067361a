//! y = x Wᵀ + b over the last axis, followed by an optional fused [`Epilogue`].
//!
//! Every layer of the zoo acts on the last axis of its input, as timm's `nn.Linear` does; the
//! blocks bring the token axis last (one transpose, fused into LayerNorm where possible) before
//! a token-mixing MLP. What follows the product — nothing, a GELU, or a residual addend — is part
//! of the call rather than a second op, because on the CPU it runs inside the matmul's epilogue
//! (`linear_epilogue`): the graph then keeps neither the raw product nor the pre-activation.
//! Other devices compose the same function from candle's operations; the caller does not choose.

use candle_core::{Result, Tensor, Var};

use super::linear_epilogue::{linear_epilogue, linear_gelu};

use crate::params::Scope;

/// What a linear map applies to its product x Wᵀ + b before returning it.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// x Wᵀ + b.
    None,
    /// GELU(x Wᵀ + b): an MLP's hidden layer.
    Gelu,
    /// r + x Wᵀ + b: the last layer of a residual branch (`r` has the output's shape).
    Add(&'a Tensor),
}

impl<'a> Epilogue<'a> {
    /// `Add(r)` when a residual is given, else `None`.
    pub fn add(residual: Option<&'a Tensor>) -> Self {
        residual.map_or(Epilogue::None, Epilogue::Add)
    }
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

    /// x Wᵀ + b over the last axis of x, then `epilogue`.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        linear(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
            epilogue,
        )
    }
}

/// x Wᵀ + b over the last axis of x (…, in) for W (out, in), then `epilogue`: one op on the CPU
/// ([`linear_epilogue`], [`linear_gelu`]), candle's composition elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, epilogue: Epilogue) -> Result<Tensor> {
    match epilogue {
        Epilogue::None => linear_epilogue(x, w, b, None),
        Epilogue::Gelu => linear_gelu(x, w, b),
        Epilogue::Add(r) => linear_epilogue(x, w, b, Some(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gelu;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device};

    /// Each epilogue equals the product followed by the same operation as a separate op.
    #[test]
    fn epilogues_equal_their_composition() -> Result<()> {
        let dev = Device::Cpu;
        let normal = |seed, shape: &[usize]| seeded_normal(seed, shape, 1.0, DType::F64, &dev);
        let (x, w, b, r) = (
            normal(1, &[2, 5, 3])?,
            normal(2, &[4, 3])?,
            normal(3, &[4])?,
            normal(4, &[2, 5, 4])?,
        );
        let plain = x.matmul(&w.t()?.unsqueeze(0)?.broadcast_as((2, 3, 4))?)?;
        let plain = plain.broadcast_add(&b)?;
        let cases = [
            (linear(&x, &w, Some(&b), Epilogue::None)?, plain.clone()),
            (linear(&x, &w, Some(&b), Epilogue::Gelu)?, gelu(&plain)?),
            (linear(&x, &w, Some(&b), Epilogue::Add(&r))?, (&plain + &r)?),
        ];
        for (i, (ours, reference)) in cases.iter().enumerate() {
            let d = (ours - reference)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-12, "epilogue {i}: {d}");
        }
        Ok(())
    }

    #[test]
    fn add_wraps_an_optional_residual() {
        let r = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(Epilogue::add(None), Epilogue::None));
        assert!(matches!(Epilogue::add(Some(&r)), Epilogue::Add(_)));
    }
}
