//! The token axis without copies in the autograd graph: a parallel tiled transpose of the two
//! trailing axes of (B, R, C), and the residual add of a transposed branch, x + tᵀ.
//!
//! Why: token mixing runs its MLP along N, i.e. on (B, D, N), and the reference writes the block
//! as `x + mlp(LN(x)ᵀ)ᵀ`. As candle ops that is LN → transpose copy → MLP → transpose copy →
//! add: two single-threaded strided copies per block, and both copies stay alive in the graph
//! until the backward has run (one (B, N, D) activation each). Here the output transpose is fused
//! into the residual add ([`add_transposed`]), the input transpose into the LayerNorm where the
//! block allows it (`layer_norm::layer_norm_transposed`), and what remains is one parallel pass
//! ([`transpose12`]). Every value is bit-identical to the composition: a transpose moves values,
//! and the add is the same single addition per element.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::kernels::cpu::{dispatch, par_output, Float, SliceKernel, PAR_CHUNK};
use crate::kernels::fused;

/// Output rows handled together: eight adjacent source columns, moved as 8 × 8 tiles
/// ([`Float::transpose_8x8`], eight AVX registers for f32).
const TILE: usize = 8;

/// (B, R, C) → (B, C, R), contiguous; gradient: the transpose back.
pub fn transpose12(x: &Tensor) -> Result<Tensor> {
    let (b, r, c) = x.dims3()?;
    if fused(x) {
        x.contiguous()?.apply_op1(Transpose12 { b, r, c })
    } else {
        x.transpose(1, 2)?.contiguous()
    }
}

/// [`transpose12`] of a tensor outside the graph (inside a backward pass).
pub fn transpose12_no_grad(x: &Tensor) -> Result<Tensor> {
    let (b, r, c) = x.dims3()?;
    x.contiguous()?.apply_op1_no_bwd(&Transpose12 { b, r, c })
}

/// x + tᵀ for x (B, N, D) and t (B, D, N): the residual add of a token-mixing branch that ran
/// on the transposed activation. Gradients: ∂x = g, ∂t = gᵀ.
pub fn add_transposed(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    if t.dims3()? != (b, d, n) {
        candle_core::bail!(
            "add_transposed: branch {:?} is not the transpose of {:?}",
            t.shape(),
            x.shape()
        );
    }
    if fused(x) {
        x.contiguous()?
            .apply_op2(&t.contiguous()?, AddTransposed { n, d })
    } else {
        x + t.transpose(1, 2)?
    }
}

/// Fills `out`, the block of the (B, C, R) transpose of `src` (B, R, C) that starts at flat
/// index `start` (a multiple of R), then calls `f(k, row, col, out_row)` on every output row
/// (R moved values): `k` the index of its first element in `out`, `row` the source row of that
/// element over the whole batch (b·R; element i came from row b·R + i), `col` the source
/// column. The caller's `f` turns the moved values into the output in place (nothing for a
/// plain transpose, a residual add, a LayerNorm).
///
/// Eight output rows at a time: the values move first, as 8 × 8 register tiles (a scalar
/// element-by-element move ran at 0.8–2.2 ns per element, five to twelve times a plain add),
/// then `f` runs along each output row while the eight are in L1 — contiguous slices the
/// compiler vectorises.
#[inline(always)]
pub fn transposed_block<T: Float>(
    src: &[T],
    (r, c): (usize, usize),
    start: usize,
    out: &mut [T],
    f: impl Fn(usize, usize, usize, &mut [T]),
) {
    let rows = out.len() / r;
    let first = start / r;
    let mut g = 0;
    while g < rows {
        let (b, col) = ((first + g) / c, (first + g) % c);
        let width = TILE.min(c - col).min(rows - g);
        let sample = &src[b * r * c..(b + 1) * r * c];
        let tile = &mut out[g * r..(g + width) * r];
        let mut rr = 0;
        if width == TILE {
            while rr + TILE <= r {
                T::transpose_8x8(&sample[rr * c + col..], c, &mut tile[rr..], r);
                rr += TILE;
            }
        }
        for rr in rr..r {
            for (i, &v) in sample[rr * c + col..rr * c + col + width]
                .iter()
                .enumerate()
            {
                tile[i * r + rr] = v;
            }
        }
        for (i, out_row) in tile.chunks_mut(r).enumerate() {
            f((g + i) * r, b * r, col + i, out_row);
        }
        g += width;
    }
}

/// Output elements per parallel block: whole output rows of length `r`, fixed by the shape only.
pub fn transposed_block_len(r: usize) -> usize {
    (PAR_CHUNK / r.max(1)).max(1) * r
}

struct Transpose12 {
    b: usize,
    r: usize,
    c: usize,
}

impl SliceKernel for Transpose12 {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (src, r, c) = (i[0], self.r, self.c);
        par_output(src.len(), transposed_block_len(r), |start, out| {
            transposed_block(src, (r, c), start, out, |_, _, _, _| {})
        })
    }
}

impl CustomOp1 for Transpose12 {
    fn name(&self) -> &'static str {
        "imixer-transpose12"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch(self.name(), self, &[(s, l)])?;
        Ok((out, Shape::from((self.b, self.c, self.r))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(transpose12_no_grad(grad)?))
    }
}

struct AddTransposed {
    n: usize,
    d: usize,
}

impl SliceKernel for AddTransposed {
    /// inputs: x (B, N, D), t (B, D, N).
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, t, n, d) = (i[0], i[1], self.n, self.d);
        // The output (B, N, D) is the transpose of t (source rows D, columns N) plus x.
        par_output(x.len(), transposed_block_len(d), |start, out| {
            let x = &x[start..start + out.len()];
            transposed_block(t, (d, n), start, out, |k, _, _, out_row| {
                let x = &x[k..k + out_row.len()];
                for (o, &x) in out_row.iter_mut().zip(x) {
                    *o = x + *o;
                }
            })
        })
    }
}

impl CustomOp2 for AddTransposed {
    fn name(&self) -> &'static str {
        "imixer-add-transposed"
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

    fn bwd(
        &self,
        _x: &Tensor,
        _t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let gt = transpose12_no_grad(&g)?;
        Ok((Some(g), Some(gt)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device, Var};

    fn normal(seed: u64, shape: &[usize]) -> Result<Tensor> {
        seeded_normal(seed, shape, 1.0, DType::F64, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f64>()
    }

    /// Shapes with partial tiles, blocks that cross samples, and R = 1 / C = 1 edge cases.
    const SHAPES: [(usize, usize, usize); 5] =
        [(3, 7, 5), (2, 49, 37), (4, 1, 19), (2, 33, 1), (5, 64, 130)];

    /// Values bit-identical to candle's transpose + copy; gradient is the transpose back.
    #[test]
    fn transpose12_equals_candle_transpose() -> Result<()> {
        for (b, r, c) in SHAPES {
            let x = Var::from_tensor(&normal(1, &[b, r, c])?)?;
            let ours = transpose12(&x)?;
            let theirs = x.transpose(1, 2)?.contiguous()?;
            assert_eq!(ours.dims(), &[b, c, r]);
            assert_eq!(max_diff(&ours, &theirs)?, 0.0);
            let probe = normal(2, &[b, c, r])?;
            let g = (ours * &probe)?.sum_all()?.backward()?;
            let gx = g.get(x.as_tensor()).unwrap();
            assert_eq!(max_diff(gx, &probe.transpose(1, 2)?)?, 0.0);
        }
        Ok(())
    }

    /// x + tᵀ bit-identical to the composition, both gradients exact.
    #[test]
    fn add_transposed_equals_composition() -> Result<()> {
        for (b, n, d) in SHAPES {
            let x = Var::from_tensor(&normal(3, &[b, n, d])?)?;
            let t = Var::from_tensor(&normal(4, &[b, d, n])?)?;
            let ours = add_transposed(&x, &t)?;
            let theirs = (x.as_tensor() + t.transpose(1, 2)?.contiguous()?)?;
            assert_eq!(max_diff(&ours, &theirs)?, 0.0);
            let probe = normal(5, &[b, n, d])?;
            let g = (ours * &probe)?.sum_all()?.backward()?;
            assert_eq!(max_diff(g.get(x.as_tensor()).unwrap(), &probe)?, 0.0);
            let gt = g.get(t.as_tensor()).unwrap();
            assert_eq!(max_diff(gt, &probe.transpose(1, 2)?)?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn add_transposed_rejects_mismatched_branch() -> Result<()> {
        let x = normal(6, &[2, 3, 4])?;
        let err = add_transposed(&x, &normal(7, &[2, 3, 4])?).unwrap_err();
        assert!(err.to_string().contains("not the transpose"), "{err}");
        Ok(())
    }

    /// f32 path (the models' dtype, 8 × 8 register tiles) moves the same bits, with full and
    /// partial tiles and the model shapes (N 49, D 128).
    #[test]
    fn f32_transpose_moves_bits() -> Result<()> {
        for (b, r, c) in [
            (3, 20, 17),
            (2, 49, 128),
            (2, 128, 49),
            (1, 8, 8),
            (2, 16, 7),
        ] {
            let x = normal(8, &[b, r, c])?.to_dtype(DType::F32)?;
            let ours = transpose12(&x)?.to_vec3::<f32>()?;
            let theirs = x.transpose(1, 2)?.contiguous()?.to_vec3::<f32>()?;
            assert_eq!(ours, theirs, "{b}×{r}×{c}");
            let y = normal(9, &[b, c, r])?.to_dtype(DType::F32)?;
            let ours = add_transposed(&y, &x)?.to_vec3::<f32>()?;
            let theirs = (&y + x.transpose(1, 2)?)?.to_vec3::<f32>()?;
            assert_eq!(ours, theirs, "add {b}×{r}×{c}");
        }
        Ok(())
    }
}
