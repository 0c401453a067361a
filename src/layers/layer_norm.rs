//! LayerNorm over the trailing `normalized` elements of every row, as one custom op with a
//! hand-written backward.
//!
//! The same op serves both LayerNorms of docs/models.md ("Common skeleton"): per token over D
//! (`mixer`, `imixer`, the final norm) and jointly over (N, D) with an (N, D) affine (paper-2 families) — the latter is simply a
//! row of N·D elements. Why not `candle_nn::LayerNorm`: on contiguous input it takes a fused path
//! with no backward, so gradients silently vanish.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var};

use rayon::prelude::*;

use super::transpose::{transpose12_no_grad, transposed_block, transposed_block_len};
use crate::kernels::cpu::{
    dispatch, par_output, par_output_with, sum_in_block_order, Float, SliceKernel, PAR_CHUNK,
};
use crate::kernels::{fused, simd_kernel};
use crate::params::Scope;

/// LayerNorm eps of every reference model.
pub const LN_EPS: f64 = 1e-6;

/// y = (x − mean) / sqrt(var + eps) · γ + β over the trailing dims given by `shape` (biased var).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
}

impl LayerNorm {
    /// Creates `<scope>.weight` = 1 and `<scope>.bias` = 0 with the given normalised shape.
    pub fn new(scope: &Scope, normalized_shape: &[usize]) -> Result<Self> {
        let weight = scope.ones("weight", normalized_shape)?;
        let bias = scope.zeros("bias", normalized_shape)?;
        Ok(Self {
            weight,
            bias,
            eps: LN_EPS,
        })
    }

    /// LN(x), emitted as `emit` says: a token-mixing branch takes LN(x)ᵀ, which the op writes
    /// straight into the transposed layout ([`layer_norm_transposed`]) instead of normalising and
    /// then copying.
    pub fn forward(&self, x: &Tensor, emit: Emit) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        match emit {
            Emit::AsIs => layer_norm(x, w, b, self.eps),
            Emit::Transposed => layer_norm_transposed(x, w, b, self.eps),
        }
    }
}

/// The layout a LayerNorm writes its (B, N, D) result in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// (B, N, D), as the input.
    AsIs,
    /// (B, D, N): the token axis last, for a token-mixing MLP.
    Transposed,
}

/// Functional LayerNorm over the trailing `weight.elem_count()` elements of `x`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let cols = weight.elem_count();
    if !x.elem_count().is_multiple_of(cols) || bias.elem_count() != cols {
        candle_core::bail!(
            "layer_norm: input {:?} cannot be normalised over weight {:?} / bias {:?}",
            x.shape(),
            weight.shape(),
            bias.shape()
        );
    }
    if fused(x) {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp {
                cols,
                eps,
                layout: OutputLayout::AsInput,
            },
        )
    } else {
        layer_norm_composed(x, weight, bias, eps)
    }
}

/// The same function from candle primitives (autograd through every op): the path for devices
/// without our kernel, and the reference our kernel is gradient-checked against.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let cols = weight.elem_count();
    let shape = x.shape().clone();
    let rows = x.elem_count() / cols;
    let x2 = x.reshape((rows, cols))?;
    let mean = x2.mean_keepdim(1)?;
    let xc = x2.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = xhat
        .broadcast_mul(&weight.reshape((1, cols))?)?
        .broadcast_add(&bias.reshape((1, cols))?)?;
    y.reshape(shape)
}

/// Where [`LayerNormOp`] writes its output.
#[derive(Clone, Copy)]
enum OutputLayout {
    /// LN(x), laid out like x.
    AsInput,
    /// LN(x)ᵀ of an x of shape (B, N, D): (B, D, N).
    Transposed { b: usize, n: usize, d: usize },
}

struct LayerNormOp {
    cols: usize,
    eps: f64,
    layout: OutputLayout,
}

/// Rows per parallel work item, fixed by the row length only (deterministic reductions).
fn rows_per_block(cols: usize) -> usize {
    (PAR_CHUNK / cols.max(1)).max(1)
}

simd_kernel! {
    /// y = LN(x) row by row (rows of γ's length).
    fn normalise_rows<T: Float>(x: &[T], w: &[T], b: &[T], eps: f64, y: &mut [T]) {
        for (y, x) in y.chunks_mut(w.len()).zip(x.chunks(w.len())) {
            let stats = row_stats(x, eps);
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                *y = normalise(x, stats, w, b);
            }
        }
    }
}

simd_kernel! {
    /// [`row_stats`] of every `cols`-long row of `rows`.
    fn block_stats<T: Float>(rows: &[T], cols: usize, eps: f64) -> Vec<(f64, f64)> {
        rows.chunks(cols).map(|r| row_stats(r, eps)).collect()
    }
}

/// Mean and 1/sqrt(var + eps) of one row, accumulated in f64.
#[inline(always)]
fn row_stats<T: Float>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = lane_sum(row, |v| v.to_f64()) / n;
    let var = lane_sum(row, |v| {
        let d = v.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Independent partial sums per row in [`lane_sum`].
const LANES: usize = 8;

/// Σ f(v) over `xs` in f64, as [`LANES`] partial sums (element i goes to lane i mod LANES)
/// added up in lane order, then the tail.
///
/// Why: one running sum is one dependent f64 add per element — latency-bound at ≈ 3 cycles
/// each, and the LayerNorms' row statistics were ≈ 10 % of an inference step that way. Eight
/// independent lanes vectorise and overlap. The order is still fixed by the row length alone,
/// so the result is the same on any machine and thread count.
#[inline(always)]
fn lane_sum<T: Float>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// One output value: x̂ (rounded to T) · γ + β — the same arithmetic in both layouts.
#[inline(always)]
fn normalise<T: Float>(v: T, (mean, rstd): (f64, f64), w: T, b: T) -> T {
    T::from_f64((v.to_f64() - mean) * rstd) * w + b
}

impl SliceKernel for LayerNormOp {
    /// inputs: x, γ, β.
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, b, cols, eps) = (i[0], i[1], i[2], self.cols, self.eps);
        let OutputLayout::Transposed { n, d, .. } = self.layout else {
            return par_output(x.len(), rows_per_block(cols) * cols, |start, y| {
                normalise_rows(&x[start..start + y.len()], w, b, eps, y)
            });
        };
        // Transposed: row statistics first (a few KiB), then one transposing pass that
        // normalises each value as it moves it.
        let stats: Vec<(f64, f64)> = x
            .par_chunks(rows_per_block(cols) * cols)
            .flat_map_iter(|rows| block_stats(rows, cols, eps))
            .collect();
        par_output(x.len(), transposed_block_len(n), |start, out| {
            if cols == d {
                // Per-token LN: the statistics row is the token, γ/β indexed by the channel.
                transposed_block(x, (n, d), start, out, |_, row, col, out_row| {
                    let stats = &stats[row..row + out_row.len()];
                    for (v, &s) in out_row.iter_mut().zip(stats) {
                        *v = normalise(*v, s, w[col], b[col]);
                    }
                })
            } else {
                // Joint (N, D) LN: one statistics row per sample, γ/β indexed by (token, channel).
                // An output row is one sample's channel `col` over its N tokens: γ/β step by D.
                transposed_block(x, (n, d), start, out, |_, row, col, out_row| {
                    let s = stats[row / n];
                    for (token, v) in out_row.iter_mut().enumerate() {
                        let j = token * d + col;
                        *v = normalise(*v, s, w[j], b[j]);
                    }
                })
            }
        })
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        match self.layout {
            OutputLayout::AsInput => "imixer-layer-norm",
            OutputLayout::Transposed { .. } => "imixer-layer-norm-transposed",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = match self.layout {
            OutputLayout::AsInput => l1.shape().clone(),
            OutputLayout::Transposed { b, n, d } => Shape::from((b, d, n)),
        };
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2), (s3, l3)])?,
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // ∂L/∂y in x's layout (a transposed output's gradient is transposed back in one
        // parallel pass). One backward pass computes dx, dγ and dβ; a custom op has one output,
        // so they come back packed in one flat buffer [dx | dγ | dβ] and are split by narrowing.
        let grad = match self.layout {
            OutputLayout::AsInput => grad.contiguous()?,
            OutputLayout::Transposed { .. } => transpose12_no_grad(grad)?,
        };
        let cols = self.cols;
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad,
            &LayerNormBackward {
                cols,
                eps: self.eps,
            },
        )?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, cols)?.reshape(weight.shape())?;
        let db = packed.narrow(0, n + cols, cols)?.reshape(weight.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LN(x)ᵀ for x (B, N, D): the LayerNorm of a token-mixing branch written straight into the
/// (B, D, N) layout the token MLP runs on, so neither the (B, N, D) output nor a transposed copy
/// of it is made or kept for the backward (see `layers::transpose`). Values are bit-identical
/// to `layer_norm(x)` transposed. Either LayerNorm kind: γ, β of shape (D) or (N, D).
pub fn layer_norm_transposed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let cols = weight.elem_count();
    if (cols != d && cols != n * d) || bias.elem_count() != cols {
        candle_core::bail!(
            "layer_norm_transposed: input {:?} cannot be normalised over weight {:?} / bias {:?}",
            x.shape(),
            weight.shape(),
            bias.shape()
        );
    }
    if fused(x) {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp {
                cols,
                eps,
                layout: OutputLayout::Transposed { b, n, d },
            },
        )
    } else {
        layer_norm_composed(x, weight, bias, eps)?
            .transpose(1, 2)?
            .contiguous()
    }
}

/// (x, γ, ∂L/∂y) ↦ [∂L/∂x | ∂L/∂γ | ∂L/∂β].
/// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = γ·∂L/∂y; dγ = Σ_rows ∂L/∂y·x̂; dβ = Σ_rows ∂L/∂y.
struct LayerNormBackward {
    cols: usize,
    eps: f64,
}

impl SliceKernel for LayerNormBackward {
    /// inputs: x, γ, ∂L/∂y.
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, g, cols, eps) = (i[0], i[1], i[2], self.cols, self.eps);
        let n = x.len();
        // dx in parallel blocks, with per-block partial sums of dγ, dβ (f64) reduced below in
        // block order; room for the [dγ | dβ] tail is reserved up front.
        let block = rows_per_block(cols) * cols;
        let (mut out, partials) = par_output_with(n, n + 2 * cols, block, |start, dx: &mut [T]| {
            let end = start + dx.len();
            backward_rows(&x[start..end], &g[start..end], w, eps, dx)
        });
        let total = sum_in_block_order(&partials, 2 * cols);
        out.extend(total.into_iter().map(T::from_f64));
        out
    }
}

simd_kernel! {
    /// dx of every row of the block, returning the block's [Σ ∂L/∂y·x̂ | Σ ∂L/∂y] per column.
    fn backward_rows<T: Float>(x: &[T], g: &[T], w: &[T], eps: f64, dx: &mut [T]) -> Vec<f64> {
            let cols = w.len();
            let mut acc = vec![0f64; 2 * cols];
            let mut xhat = vec![0f64; cols];
            // ĝ = γ·∂L/∂y and ĝ·x̂ per column, summed with `lane_sum` (not a running sum).
            let (mut gh, mut ghx) = (vec![0f64; cols], vec![0f64; cols]);
            for ((dx, x), g) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(g.chunks(cols)) {
                let (mean, rstd) = row_stats(x, eps);
                let (acc_w, acc_b) = acc.split_at_mut(cols);
                let columns = xhat.iter_mut().zip(&mut gh).zip(&mut ghx);
                let inputs = x.iter().zip(g).zip(w);
                let sums = acc_w.iter_mut().zip(acc_b.iter_mut());
                for ((((xh, gh), ghx), ((&x, &g), &w)), (a_w, a_b)) in columns.zip(inputs).zip(sums)
                {
                    *xh = (x.to_f64() - mean) * rstd;
                    let g = g.to_f64();
                    *gh = g * w.to_f64();
                    *ghx = *gh * *xh;
                    *a_w += g * *xh;
                    *a_b += g;
                }
                let m_gh = lane_sum(&gh, |v| v) / cols as f64;
                let m_ghx = lane_sum(&ghx, |v| v) / cols as f64;
                for ((dx, &gh), &xh) in dx.iter_mut().zip(&gh).zip(&xhat) {
                    *dx = T::from_f64(rstd * (gh - m_gh - xh * m_ghx));
                }
            }
            acc
    }
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "imixer-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch(self.name(), self, &[(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * self.cols)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn seeded(shape: &[usize], seed: u64) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Fused op == composition, values and all three gradients, in f64, for both LN kinds.
    #[test]
    fn fused_matches_composed_with_gradients() -> Result<()> {
        for (xshape, wshape) in [(vec![3, 5, 7], vec![7]), (vec![2, 5, 7], vec![5, 7])] {
            let x = Var::from_tensor(&seeded(&xshape, 1)?)?;
            let w = Var::from_tensor(&(seeded(&wshape, 2)? + 1.0)?)?;
            let b = Var::from_tensor(&seeded(&wshape, 3)?)?;
            let probe = seeded(&xshape, 4)?;
            let f = layer_norm(&x, &w, &b, LN_EPS)?;
            let c = layer_norm_composed(&x, &w, &b, LN_EPS)?;
            let d = (&f - &c)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-12, "forward diff {d}");
            let gf = (f * &probe)?.sum_all()?.backward()?;
            let gc = (c * &probe)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let a = gf.get(v.as_tensor()).unwrap();
                let e = gc.get(v.as_tensor()).unwrap();
                let d = (a - e)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-10, "gradient diff {d}");
            }
        }
        Ok(())
    }

    /// LN(x)ᵀ written directly == LN(x) then transposed: values bit for bit, gradients to
    /// rounding (the backward reads the transposed ∂L/∂y), for both LN kinds and in f32.
    #[test]
    fn transposed_output_matches_layer_norm_then_transpose() -> Result<()> {
        for (xshape, wshape) in [
            (vec![3, 5, 7], vec![7]),
            (vec![2, 5, 7], vec![5, 7]),
            (vec![2, 49, 37], vec![37]),
            (vec![3, 17, 20], vec![17, 20]),
        ] {
            let x = Var::from_tensor(&seeded(&xshape, 1)?)?;
            let w = Var::from_tensor(&(seeded(&wshape, 2)? + 1.0)?)?;
            let b = Var::from_tensor(&seeded(&wshape, 3)?)?;
            let (bs, n, d) = x.dims3()?;
            let probe = seeded(&[bs, d, n], 4)?;
            let t = layer_norm_transposed(&x, &w, &b, LN_EPS)?;
            let c = layer_norm(&x, &w, &b, LN_EPS)?.transpose(1, 2)?;
            assert_eq!(t.dims(), &[bs, d, n]);
            assert_eq!((&t - &c)?.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
            let gt = (t * &probe)?.sum_all()?.backward()?;
            let gc = (c * &probe)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let a = gt.get(v.as_tensor()).unwrap();
                let e = gc.get(v.as_tensor()).unwrap();
                let d = (a - e)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "gradient diff {d}");
            }
            let (x32, w32, b32) = (
                x.to_dtype(DType::F32)?,
                w.to_dtype(DType::F32)?,
                b.to_dtype(DType::F32)?,
            );
            let t32 = layer_norm_transposed(&x32, &w32, &b32, LN_EPS)?.to_vec3::<f32>()?;
            let c32 = layer_norm(&x32, &w32, &b32, LN_EPS)?
                .transpose(1, 2)?
                .contiguous()?
                .to_vec3::<f32>()?;
            assert_eq!(t32, c32);
        }
        let x = seeded(&[2, 3, 4], 5)?;
        let w = seeded(&[3], 6)?;
        let err = layer_norm_transposed(&x, &w, &w, LN_EPS).unwrap_err();
        assert!(err.to_string().contains("cannot be normalised"), "{err}");
        Ok(())
    }

    #[test]
    fn f32_output_is_normalised() -> Result<()> {
        let x = seeded(&[4, 16], 9)?.to_dtype(DType::F32)?;
        let w = Tensor::ones(16, DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros(16, DType::F32, &Device::Cpu)?;
        let y = layer_norm(&x, &w, &b, LN_EPS)?;
        let mean = y.mean_keepdim(1)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(mean < 1e-6);
        Ok(())
    }
}
