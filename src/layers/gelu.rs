//! Exact (erf) GELU as a candle custom op with an exact backward.
//!
//! Why a custom op: candle's built-in `gelu_erf` backward uses the truncated constant 0.398942 for
//! 1/√(2π) and builds six temporary tensors; ours is one pass forward and one pass backward, on
//! many threads, with GELU′(x) = Φ(x) + x·φ(x) evaluated exactly.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use crate::kernels::cpu::{dispatch, par_output, par_output_beside, Float, SliceKernel, PAR_CHUNK};
use crate::kernels::{fused, simd_kernel};

/// GELU(x) = x·Φ(x) with the exact error function (PyTorch `nn.GELU()`; docs/models.md "Common
/// skeleton").
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        // Devices without our kernel use candle's composition (same function, forward exact).
        x.gelu_erf()
    }
}

/// GELU′(x) = Φ(x) + x·φ(x) elementwise (a linearisation, e.g. for explicit Jacobian products).
pub fn gelu_derivative(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        let x = x.contiguous()?;
        x.apply_op2_no_bwd(&x.ones_like()?, &GeluBackward)
    } else {
        gelu_derivative_composed(x)
    }
}

/// The same from candle's ops, for devices without our kernel.
fn gelu_derivative_composed(x: &Tensor) -> Result<Tensor> {
    let phi = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
    let density = (x.sqr()? * -0.5)?.exp()? * 0.398_942_280_401_432_7;
    phi? + (x * density?)?
}

/// (GELU(x), GELU′(x)) = (x·Φ(x), Φ(x) + x·φ(x)) from one erf and one exponential:
/// erf(x/√2) and e^(−x²/2) = φ(x)·√(2π). The forward and backward kernels all evaluate GELU
/// through this one definition, so the value a forward writes and the derivative a fused op
/// keeps round exactly like the standalone ones (the unused half is dead code there).
#[inline(always)]
pub fn gelu_and_grad_scalar<T: Float>(x: T) -> (T, T) {
    let (erf, gauss) = (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf_and_gauss();
    let half = T::from_f64(0.5);
    (
        half * x * (T::one() + erf),
        half * (T::one() + erf) + x * T::from_f64(0.398_942_280_401_432_7) * gauss,
    )
}

/// Derivative of the exact GELU: Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_grad_scalar<T: Float>(x: T) -> T {
    gelu_and_grad_scalar(x).1
}

/// The exact GELU x·Φ(x).
#[inline(always)]
pub fn gelu_scalar<T: Float>(x: T) -> T {
    gelu_and_grad_scalar(x).0
}

/// GELU of every element of `v`, in place, in parallel `PAR_CHUNK` blocks (e.g. on a matmul
/// output that no backward will read).
pub(crate) fn gelu_in_place<T: Float>(v: &mut [T]) {
    v.par_chunks_mut(PAR_CHUNK).for_each(gelu_block_in_place);
}

simd_kernel! {
    fn gelu_block_in_place<T: Float>(v: &mut [T]) {
        for v in v {
            *v = gelu_scalar(*v);
        }
    }
}

simd_kernel! {
    fn gelu_block<T: Float>(x: &[T], y: &mut [T]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu_scalar(x);
        }
    }
}

simd_kernel! {
    /// v ← GELU(v), d ← GELU′(v).
    fn gelu_block_with_derivative<T: Float>(v: &mut [T], d: &mut [T]) {
        for (v, d) in v.iter_mut().zip(d) {
            (*v, *d) = gelu_and_grad_scalar(*v);
        }
    }
}

simd_kernel! {
    /// o = g · GELU′(x).
    fn gelu_backward_block<T: Float>(x: &[T], g: &[T], o: &mut [T]) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            *o = g * gelu_grad_scalar(x);
        }
    }
}

/// GELU of every element of `v` in place, returning GELU′ at the same points: the whole
/// backward factor of the activation, computed while erf(x/√2) and e^(−x²/2) are at hand, so
/// that the backward is one multiply per element instead of a second erf and exponential.
pub(crate) fn gelu_in_place_with_derivative<T: Float>(v: &mut [T]) -> Vec<T> {
    par_output_beside(v, PAR_CHUNK, gelu_block_with_derivative)
}

struct GeluOp;

impl SliceKernel for GeluOp {
    // Chunked plain loops, not a per-element rayon map: the inner loop must be a straight slice
    // loop for the compiler to vectorise erf/exp (per-element `par_iter().map` ran ≈ 2.5× slower).
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let x = i[0];
        par_output(x.len(), PAR_CHUNK, |start, y| {
            gelu_block(&x[start..start + y.len()], y)
        })
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "imixer-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self.name(), self, &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

/// (x, ∂L/∂y) ↦ ∂L/∂y · GELU′(x).
struct GeluBackward;

impl SliceKernel for GeluBackward {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, g) = (i[0], i[1]);
        par_output(x.len(), PAR_CHUNK, |start, o| {
            let end = start + o.len();
            gelu_backward_block(&x[start..end], &g[start..end], o)
        })
    }
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "imixer-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2)])?,
            l1.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_matches_candle_gelu_erf() -> Result<()> {
        let x = Tensor::arange(-60i64, 60, &Device::Cpu)?.to_dtype(candle_core::DType::F64)?;
        let x = (x * 0.1)?;
        let ours = gelu(&x)?;
        let theirs = x.gelu_erf()?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "max diff {diff}");
        Ok(())
    }

    #[test]
    fn derivative_kernel_matches_composition() -> Result<()> {
        let x =
            (Tensor::arange(-60i64, 60, &Device::Cpu)?.to_dtype(candle_core::DType::F64)? * 0.1)?;
        let d = (gelu_derivative(&x)? - gelu_derivative_composed(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(d < 1e-12, "{d}");
        Ok(())
    }

    #[test]
    fn backward_matches_finite_differences() -> Result<()> {
        let xs: Vec<f64> = (-40..40).map(|i| i as f64 * 0.13).collect();
        let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu)?;
        let grads = gelu(x.as_tensor())?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f64>()?;
        let h = 1e-6;
        for (i, &xi) in xs.iter().enumerate() {
            let fd = (gelu_scalar(xi + h) - gelu_scalar(xi - h)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-8, "x={xi}: fd {fd} vs {}", g[i]);
        }
        Ok(())
    }
}
