//! Exact (1 − F)⁻¹: fixed-point solvers and implicit differentiation for the iMLP.
//!
//! The reference unrolls `n_iter` Picard steps and backpropagates through every one of them. In
//! `picard` / `anderson` mode the iMLP instead solves x* = y + F(x*) to a tolerance *without* a
//! graph, takes one differentiable step x = y + F(x*) at the solution, and routes the gradient
//! through an identity op whose backward solves the adjoint equation
//!
//! u = g + J_F(x*)ᵀ u        (g = ∂L/∂x),
//!
//! by the same solver, each iteration one vector–Jacobian product of F on a one-step graph
//! (deep-equilibrium style). Memory is one application of F, whatever the iteration count.
//! With Lip(F) < 1 both equations have unique solutions, and u = (1 − J_F)⁻ᵀ g is exactly the
//! gradient of L ∘ (1 − F)⁻¹.

use std::collections::VecDeque;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::Solver;
use crate::kernels::cpu::{dispatch, Float, SliceKernel, PAR_CHUNK};
use crate::kernels::{fused, simd_kernel};
use crate::layers::gelu::{gelu, gelu_derivative};
use crate::layers::linear::{linear, Epilogue};

/// F with fixed (detached) weights: F(x) = W2·GELU(W1·GELU(x) + b1) + b2 over the last axis.
#[derive(Clone, Debug)]
pub struct FixedMap {
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

impl FixedMap {
    pub fn detached(w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Self {
        Self {
            w1: w1.detach(),
            b1: b1.detach(),
            w2: w2.detach(),
            b2: b2.detach(),
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let h = linear(&gelu(x)?, &self.w1, Some(&self.b1), Epilogue::None)?;
        linear(&gelu(&h)?, &self.w2, Some(&self.b2), Epilogue::None)
    }

    /// J_F(x)ᵀ as a linear map: u ↦ GELU′(x) ⊙ W1ᵀ (GELU′(h) ⊙ W2ᵀ u), h = W1·GELU(x) + b1.
    pub fn transposed_jacobian_at(&self, x: &Tensor) -> Result<TransposedJacobian> {
        let h = linear(&gelu(x)?, &self.w1, Some(&self.b1), Epilogue::None)?;
        Ok(TransposedJacobian {
            slope_x: gelu_derivative(x)?,
            slope_h: gelu_derivative(&h)?,
            w1_t: self.w1.t()?.contiguous()?,
            w2_t: self.w2.t()?.contiguous()?,
        })
    }
}

/// J_F(x)ᵀ at a fixed x (see [`FixedMap::transposed_jacobian_at`]).
pub struct TransposedJacobian {
    slope_x: Tensor,
    slope_h: Tensor,
    w1_t: Tensor,
    w2_t: Tensor,
}

impl TransposedJacobian {
    pub fn apply(&self, u: &Tensor) -> Result<Tensor> {
        let t = (linear(u, &self.w2_t, None, Epilogue::None)? * &self.slope_h)?;
        linear(&t, &self.w1_t, None, Epilogue::None)? * &self.slope_x
    }
}

/// Outcome of one solve.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SolveInfo {
    pub iterations: usize,
    /// ‖g(x) − x‖ / (‖g(x)‖ + 1e-12) at the returned x.
    pub residual: f64,
    pub converged: bool,
}

/// ‖t‖₂ in f64 (shared with the fixed-point diagnostics).
pub fn norm(t: &Tensor) -> Result<f64> {
    Ok(dot(t, t)?.sqrt())
}

/// ⟨a, b⟩ accumulated in f64. On the CPU one pass of [`Dot`] over the f32/f64 data: the solvers
/// take several inner products of activation-sized tensors per iteration, and converting both
/// operands to f64 tensors first had made Anderson's bookkeeping cost more than F itself.
fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    if fused(a) && a.dtype() == b.dtype() && b.device().is_cpu() {
        let hi_lo = a
            .contiguous()?
            .apply_op2_no_bwd(&b.contiguous()?, &Dot)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        return Ok(hi_lo[0] + hi_lo[1]);
    }
    (a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
        .sum_all()?
        .to_scalar::<f64>()
}

/// Σ aᵢbᵢ in f64 over fixed-size chunks (partial sums added in chunk order: deterministic on any
/// thread count), returned as [hi, lo] in the input dtype so that hi + lo carries the f64 sum.
struct Dot;

impl SliceKernel for Dot {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let partials: Vec<f64> = i[0]
            .par_chunks(PAR_CHUNK)
            .zip(i[1].par_chunks(PAR_CHUNK))
            .map(|(a, b)| partial_dot(a, b))
            .collect();
        let sum: f64 = partials.iter().sum();
        let hi = T::from_f64(sum);
        vec![hi, T::from_f64(sum - hi.to_f64())]
    }
}

simd_kernel! {
    /// Σ aᵢbᵢ in f64 as 8 lanes (element i to lane i mod 8) added in lane order, then the tail.
    fn partial_dot<T: Float>(a: &[T], b: &[T]) -> f64 {
        let mut lanes = [0f64; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f64 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(x, y)| x.to_f64() * y.to_f64())
            .sum();
        for (ca, cb) in a8.zip(b8) {
            for k in 0..8 {
                lanes[k] += ca[k].to_f64() * cb[k].to_f64();
            }
        }
        lanes.iter().sum::<f64>() + tail
    }
}

impl CustomOp2 for Dot {
    fn name(&self) -> &'static str {
        "imixer-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape().elem_count() != l2.shape().elem_count() {
            candle_core::bail!("{}: {:?} vs {:?}", self.name(), l1.shape(), l2.shape());
        }
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2)])?,
            Shape::from(2),
        ))
    }
}

/// Solves x = g(x) from `x0` with the given solver (`Unrolled` is not a solver here).
pub fn fixed_point(
    mut g: impl FnMut(&Tensor) -> Result<Tensor>,
    x0: Tensor,
    solver: &Solver,
) -> Result<(Tensor, SolveInfo)> {
    let (tol, max_iter, memory) = match solver {
        Solver::Picard { tol, max_iter } => (*tol, *max_iter, 0),
        Solver::Anderson { m, tol, max_iter } => (*tol, *max_iter, *m),
        Solver::Unrolled => {
            candle_core::bail!("fixed_point: `unrolled` is not an iterative solver")
        }
    };
    let mut x = x0;
    let mut hist = AndersonHistory::default();
    let mut residual = f64::INFINITY;
    for k in 1..=max_iter.max(1) {
        let gx = g(&x)?;
        let r = (&gx - &x)?;
        let r_sq = dot(&r, &r)?;
        residual = r_sq.sqrt() / (norm(&gx)? + 1e-12);
        if residual <= tol {
            return Ok((
                gx,
                SolveInfo {
                    iterations: k,
                    residual,
                    converged: true,
                },
            ));
        }
        if memory == 0 {
            x = gx;
            continue;
        }
        hist.push(gx, r, r_sq, memory)?;
        x = hist.mix()?;
    }
    Ok((
        x,
        SolveInfo {
            iterations: max_iter,
            residual,
            converged: false,
        },
    ))
}

/// The last m pairs (g(xᵢ), rᵢ = g(xᵢ) − xᵢ) and their residual Gram matrix, updated
/// incrementally: each iteration adds one row of dot products instead of recomputing all m².
#[derive(Default)]
struct AndersonHistory {
    entries: VecDeque<(Tensor, Tensor)>,
    /// gram[i][j] = ⟨rᵢ, rⱼ⟩ for the entries in order.
    gram: VecDeque<Vec<f64>>,
}

impl AndersonHistory {
    fn push(&mut self, gx: Tensor, r: Tensor, r_sq: f64, memory: usize) -> Result<()> {
        if self.entries.len() == memory {
            self.entries.pop_front();
            self.gram.pop_front();
            self.gram.iter_mut().for_each(|row| {
                row.remove(0);
            });
        }
        let mut row = Vec::with_capacity(self.entries.len() + 1);
        for ((_, ri), old_row) in self.entries.iter().zip(self.gram.iter_mut()) {
            let d = dot(ri, &r)?;
            old_row.push(d);
            row.push(d);
        }
        row.push(r_sq);
        self.gram.push_back(row);
        self.entries.push_back((gx, r));
        Ok(())
    }

    /// Type-II Anderson mixing (β = 1): x = Σ αᵢ g(xᵢ) with α minimising ‖Σ αᵢ rᵢ‖, Σ αᵢ = 1,
    /// from the small regularised normal equations (Tikhonov 1e-8·trace).
    fn mix(&self) -> Result<Tensor> {
        let n = self.entries.len();
        let mut h: Vec<Vec<f64>> = self.gram.iter().cloned().collect();
        let trace: f64 = (0..n).map(|i| h[i][i]).sum();
        for (i, row) in h.iter_mut().enumerate() {
            row[i] += 1e-8 * trace.max(1e-30);
        }
        // Solve H a = 1, then α = a / Σa.
        let a = solve_spd(h, vec![1.0; n]);
        let s: f64 = a.iter().sum();
        let alpha: Vec<f64> = if s.abs() > 1e-300 && a.iter().all(|v| v.is_finite()) {
            a.iter().map(|v| v / s).collect()
        } else {
            let mut e = vec![0.0; n];
            e[n - 1] = 1.0;
            e
        };
        let mut out: Option<Tensor> = None;
        for ((gx, _), a) in self.entries.iter().zip(alpha) {
            let term = (gx * a)?;
            out = Some(match out {
                Some(o) => (o + term)?,
                None => term,
            });
        }
        out.ok_or_else(|| candle_core::Error::Msg("anderson: empty history".into()))
    }
}

/// Gaussian elimination with partial pivoting for the tiny Anderson system.
fn solve_spd(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| {
                a[i][c]
                    .abs()
                    .partial_cmp(&a[j][c].abs())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        let d = a[c][c];
        if d.abs() < 1e-300 {
            continue;
        }
        for r in c + 1..n {
            let f = a[r][c] / d;
            let (upper, lower) = a.split_at_mut(r);
            for (dst, src) in lower[0][c..n].iter_mut().zip(&upper[c][c..n]) {
                *dst -= f * src;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0f64; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = if a[r][r].abs() < 1e-300 {
            0.0
        } else {
            (b[r] - s) / a[r][r]
        };
    }
    x
}

/// The forward kernel of [`ImplicitGradient`]: a copy.
struct Identity;

impl SliceKernel for Identity {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        i[0].to_vec()
    }
}

/// Identity in the forward pass; its backward replaces the incoming gradient g by the solution
/// u of u = g + J_F(x*)ᵀ u (the implicit-function-theorem gradient of the fixed point).
pub struct ImplicitGradient {
    pub x_star: Tensor,
    pub map: FixedMap,
    pub solver: Solver,
}

impl CustomOp1 for ImplicitGradient {
    fn name(&self) -> &'static str {
        "imixer-implicit-gradient"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            dispatch(self.name(), &Identity, &[(s, l)])?,
            l.shape().clone(),
        ))
    }

    /// The identity on a GPU: a device copy. Unlike the other custom ops this one is not a fused
    /// alternative to a portable composition — the implicit backward has no composition — so
    /// every device needs its forward.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((s.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // J_F(x*)ᵀ is linearised once at x*; every adjoint iteration is then two matmuls and two
        // products (no autograd graph per iteration).
        let jt = self.map.transposed_jacobian_at(&self.x_star)?;
        let g = grad.detach();
        let vjp_step = |u: &Tensor| -> Result<Tensor> { &g + jt.apply(u)? };
        let (u, _) = fixed_point(vjp_step, g.clone(), &self.solver)?;
        Ok(Some(u.detach()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The f64-accumulating dot kernel equals the f64 composition, for f32 and f64 inputs.
    #[test]
    fn dot_kernel_matches_f64_composition() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            // Length not a multiple of 8 or of the parallel chunk: exercises both remainders.
            let a = crate::params::seeded_normal(1, &[3, 40_001], 1.0, dtype, &dev)?;
            let b = crate::params::seeded_normal(2, &[3, 40_001], 1.0, dtype, &dev)?;
            let exact = (a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
                .sum_all()?
                .to_scalar::<f64>()?;
            let d = (dot(&a, &b)? - exact).abs();
            assert!(d < 1e-9 * exact.abs().max(1.0), "{dtype:?}: {d}");
        }
        Ok(())
    }

    /// A slow contraction: W̃2·W̃1 = c²·I with both GELUs in their near-linear region, so Picard's
    /// rate is ≈ c² = 0.98 while Anderson, which extrapolates the nearly linear map, converges in a
    /// few dozen steps. This is the regime (c → 1) where acceleration matters.
    #[test]
    fn anderson_needs_far_fewer_iterations_than_picard_on_a_slow_contraction() -> Result<()> {
        let dev = Device::Cpu;
        let (c, d) = (0.99f64, 8usize);
        let eye = Tensor::eye(d, DType::F64, &dev)?;
        // Spectral norm of [I; I] is √2: scale both layers to σ = c, as soft SN would.
        let w1 = (Tensor::cat(&[&eye, &eye], 0)? * (c / 2f64.sqrt()))?;
        let w2 = (Tensor::cat(&[&eye, &eye], 1)? * (c / 2f64.sqrt()))?;
        let map = FixedMap {
            w1,
            b1: Tensor::full(3f64, 2 * d, &dev)?,
            w2,
            b2: Tensor::zeros(d, DType::F64, &dev)?,
        };
        let y = crate::params::seeded_normal(1, &[2, 5, d], 0.5, DType::F64, &dev)?
            .broadcast_add(&Tensor::new(2f64, &dev)?)?;
        let solve = |solver: Solver| fixed_point(|x| map.apply(x)? + &y, y.clone(), &solver);
        let (x_p, picard) = solve(Solver::Picard {
            tol: 1e-10,
            max_iter: 5000,
        })?;
        let (x_a, anderson) = solve(Solver::Anderson {
            m: 5,
            tol: 1e-10,
            max_iter: 5000,
        })?;
        assert!(picard.converged && anderson.converged);
        eprintln!(
            "iterations to 1e-10 at L ≈ c² = {:.4}: picard {}, anderson(m=5) {}",
            c * c,
            picard.iterations,
            anderson.iterations
        );
        assert!(
            anderson.iterations * 10 < picard.iterations,
            "anderson {} vs picard {}",
            anderson.iterations,
            picard.iterations
        );
        // A relative residual ε bounds the error by ε·‖x‖/(1 − L): compare within that bound.
        let bound = 10.0 * 1e-10 * norm(&x_p)? / (1.0 - c * c);
        let d = norm(&(x_p - x_a)?)?;
        assert!(d < bound, "fixed points differ by {d} (bound {bound})");
        Ok(())
    }
}
