//! GELU(y + b) of a (rows, C) matmul output as one custom op, and the parallel column sums that
//! reduce a bias gradient (also used by `linear_epilogue`).
//!
//! Why: candle's `broadcast_add` backward reduces the bias gradient with a generic strided sum
//! (one division per element, single-threaded); here the column sums run over fixed row blocks in
//! parallel, and GELU(y + b) is one pass forward and one backward instead of four. (After a
//! matmul, the models use `linear_epilogue::linear_gelu` instead: the bias, and the GELU with its
//! derivative, go into the matmul's output pass. This op is for a GELU(y + b) of any tensor.)

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gelu::{gelu, gelu_grad_scalar, gelu_scalar};
use crate::kernels::cpu::{
    dispatch, par_output, par_output_with, sum_in_block_order, Float, SliceKernel, PAR_CHUNK,
};
use crate::kernels::{fused, simd_kernel};

/// GELU(y + b) over the last axis.
pub fn bias_gelu(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(y) {
        y.contiguous()?.apply_op2(&b.contiguous()?, BiasGelu)
    } else {
        gelu(&y.broadcast_add(b)?)
    }
}

/// Σ over rows of a (rows, C) gradient, with a fixed split (deterministic on any thread count).
pub fn column_sums<T: Float>(g: &[T], cols: usize) -> Vec<T> {
    let rows_per_block = (PAR_CHUNK / cols.max(1)).max(1);
    let partials: Vec<Vec<f64>> = g
        .par_chunks(rows_per_block * cols)
        .map(|block| {
            let mut acc = vec![0f64; cols];
            add_rows(block, &mut acc);
            acc
        })
        .collect();
    sum_in_block_order(&partials, cols)
        .into_iter()
        .map(T::from_f64)
        .collect()
}

simd_kernel! {
    /// acc[j] += Σ_rows block[row·C + j] in f64, rows in order.
    fn add_rows<T: Float>(block: &[T], acc: &mut [f64]) {
        for row in block.chunks(acc.len()) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v.to_f64();
            }
        }
    }
}

simd_kernel! {
    /// o = GELU(y + b) row by row.
    fn bias_gelu_block<T: Float>(y: &[T], b: &[T], o: &mut [T]) {
        for (o, y) in o.chunks_mut(b.len()).zip(y.chunks(b.len())) {
            for ((o, &y), &b) in o.iter_mut().zip(y).zip(b) {
                *o = gelu_scalar(y + b);
            }
        }
    }
}

simd_kernel! {
    /// o = g ⊙ f.
    fn scale_block<T: Float>(g: &[T], f: &[T], o: &mut [T]) {
        for ((o, &g), &f) in o.iter_mut().zip(g).zip(f) {
            *o = g * f;
        }
    }
}

simd_kernel! {
    /// o = g ⊙ f, and acc[j] += Σ_rows o[row·C + j] in f64.
    fn scale_block_with_sums<T: Float>(g: &[T], f: &[T], o: &mut [T], acc: &mut [f64]) {
        let cols = acc.len();
        for ((o, g), f) in o.chunks_mut(cols).zip(g.chunks(cols)).zip(f.chunks(cols)) {
            for (((o, &g), &f), a) in o.iter_mut().zip(g).zip(f).zip(acc.iter_mut()) {
                *o = g * f;
                *a += o.to_f64();
            }
        }
    }
}

/// The bias must match the input's last axis.
fn check_bias(op: &str, y: &Layout, b: &Layout) -> Result<()> {
    let cols = b.shape().elem_count();
    if y.dims().last() != Some(&cols) {
        candle_core::bail!("{op}: bias of {cols} for input {:?}", y.shape());
    }
    Ok(())
}

struct BiasGelu;

impl SliceKernel for BiasGelu {
    /// inputs: y (…, C), b (C).
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (y, b) = (i[0], i[1]);
        let cols = b.len();
        let block = (PAR_CHUNK / cols).max(1) * cols;
        par_output(y.len(), block, |start, o| {
            bias_gelu_block(&y[start..start + o.len()], b, o)
        })
    }
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "imixer-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_bias(self.name(), l1, l2)?;
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2)])?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = y.apply_op3_no_bwd(&grad.contiguous()?, b, &BiasGeluBackward)?;
        let db = dy.apply_op1_no_bwd(&ColumnSums {
            cols: b.elem_count(),
        })?;
        Ok((Some(dy), Some(db)))
    }
}

/// (y, g, b) ↦ g · GELU′(y + b).
struct BiasGeluBackward;

impl SliceKernel for BiasGeluBackward {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (y, g, b) = (i[0], i[1], i[2]);
        let cols = b.len();
        let block = (PAR_CHUNK / cols).max(1) * cols;
        par_output(y.len(), block, |start, o| {
            let (y, g) = (&y[start..start + o.len()], &g[start..start + o.len()]);
            for ((o, y), g) in o.chunks_mut(cols).zip(y.chunks(cols)).zip(g.chunks(cols)) {
                for (((o, &y), &g), &b) in o.iter_mut().zip(y).zip(g).zip(b) {
                    *o = g * gelu_grad_scalar(y + b);
                }
            }
        })
    }
}

impl CustomOp3 for BiasGeluBackward {
    fn name(&self) -> &'static str {
        "imixer-bias-gelu-backward"
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
        Ok((
            dispatch(self.name(), self, &[(s1, l1), (s2, l2), (s3, l3)])?,
            l1.shape().clone(),
        ))
    }
}

/// g ↦ g ⊙ factor for (rows, cols) tensors, keeping Σ_rows of the result when `sums` is given
/// (in f64, over the same fixed row blocks and in the same order as
/// [`column_sums`]: the same bits).
pub(crate) struct ScaleWithColumnSums<'a> {
    pub factor: &'a CpuStorage,
    pub cols: usize,
    /// Written once by the forward (see `kernels`: by-products of a fused op).
    pub sums: Option<OnceLock<Vec<f64>>>,
}

impl SliceKernel for ScaleWithColumnSums<'_> {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (g, cols) = (i[0], self.cols);
        let Some(factor) = T::slice_of(self.factor) else {
            return Vec::new(); // `cpu_fwd` checked the dtype; unreachable
        };
        let Some(sums) = &self.sums else {
            return par_output(g.len(), PAR_CHUNK, |start, o| {
                let end = start + o.len();
                scale_block(&g[start..end], &factor[start..end], o)
            });
        };
        let block = (PAR_CHUNK / cols.max(1)).max(1) * cols;
        let (out, partials) = par_output_with(g.len(), g.len(), block, |start, o| {
            let end = start + o.len();
            let mut acc = vec![0f64; cols];
            scale_block_with_sums(&g[start..end], &factor[start..end], o, &mut acc);
            acc
        });
        // The op runs once per value (the caller builds it per call), so the set cannot fail;
        // a second run would keep the first, identical, sums.
        let _ = sums.set(sum_in_block_order(&partials, cols));
        out
    }
}

impl CustomOp1 for ScaleWithColumnSums<'_> {
    fn name(&self) -> &'static str {
        "imixer-scale-with-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let factor_len = match self.factor {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            _ => usize::MAX,
        };
        if self.factor.dtype() != s.dtype()
            || factor_len != l.shape().elem_count()
            || l.dims().last() != Some(&self.cols)
        {
            candle_core::bail!(
                "{}: gradient {:?} ({:?}) does not match the kept factor",
                self.name(),
                l.shape(),
                s.dtype()
            );
        }
        Ok((dispatch(self.name(), self, &[(s, l)])?, l.shape().clone()))
    }
}

/// (…, C) ↦ (C): sums over every leading index.
pub(crate) struct ColumnSums {
    pub cols: usize,
}

impl SliceKernel for ColumnSums {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        column_sums(i[0], self.cols)
    }
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "imixer-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            dispatch(self.name(), self, &[(s, l)])?,
            Shape::from(self.cols),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device, Var};

    #[test]
    fn bias_gelu_matches_composition_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let y = Var::from_tensor(&seeded_normal(1, &[7, 3, 5], 1.5, DType::F64, &dev)?)?;
        let b = Var::from_tensor(&seeded_normal(2, &[5], 1.0, DType::F64, &dev)?)?;
        let probe = seeded_normal(3, &[7, 3, 5], 1.0, DType::F64, &dev)?;
        let fused = bias_gelu(&y, &b)?;
        let composed = y.broadcast_add(&b)?.gelu_erf()?;
        let d = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "forward {d}");
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (composed * &probe)?.sum_all()?.backward()?;
        for v in [&y, &b] {
            let d = (gf.get(v).unwrap() - gc.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            // candle's gelu_erf backward truncates 1/√(2π) to 0.398942: ~1e-6 relative.
            assert!(d < 1e-5, "gradient {d}");
        }
        Ok(())
    }
}
