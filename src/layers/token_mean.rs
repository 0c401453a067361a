//! The global average pool before the head: the mean over the token axis, (B, N, D) → (B, D).
//!
//! Why a custom op: candle's `mean(1)` reduces a middle axis with its generic strided reducer
//! (an index computation per element, one thread): ≈ 0.7–0.9 % of a fmnist-tiny train step in
//! the profile. Here the forward and the backward are each one contiguous pass per sample. Rounding is candle's: a running sum over the tokens in order,
//! then one multiply by 1/N rounded to the dtype, so the values are the same bits.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::kernels::cpu::{dispatch, par_output, Float, SliceKernel};
use crate::kernels::fused;

/// Mean over dim 1 of (B, N, D).
pub fn mean_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    if fused(x) {
        x.contiguous()?.apply_op1(MeanTokens { b, n, d })
    } else {
        x.mean(1)
    }
}

struct MeanTokens {
    b: usize,
    n: usize,
    d: usize,
}

/// 1/N as candle's `mean` applies it (computed in f64, rounded to the dtype).
fn inverse_count<T: Float>(n: usize) -> T {
    T::from_f64(1.0 / n as f64)
}

impl SliceKernel for MeanTokens {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, n, d) = (i[0], self.n, self.d);
        let scale = inverse_count::<T>(n);
        // One output row per sample; a few samples per parallel block.
        par_output(self.b * d, 8 * d, |start, out| {
            for (s, row) in out.chunks_mut(d).enumerate() {
                let sample = start / d + s;
                for token in x[sample * n * d..(sample + 1) * n * d].chunks(d) {
                    for (o, &v) in row.iter_mut().zip(token) {
                        *o += v;
                    }
                }
                row.iter_mut().for_each(|o| *o = *o * scale);
            }
        })
    }
}

impl CustomOp1 for MeanTokens {
    fn name(&self) -> &'static str {
        "imixer-mean-tokens"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if l.dims() != [self.b, self.n, self.d] {
            candle_core::bail!("{}: input {:?} is not {:?}", self.name(), l.shape(), self);
        }
        Ok((
            dispatch(self.name(), self, &[(s, l)])?,
            Shape::from((self.b, self.d)),
        ))
    }

    /// ∂x[b, n, :] = ∂y[b, :] / N for every token n.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&SpreadTokens {
            b: self.b,
            n: self.n,
            d: self.d,
        })?))
    }
}

impl std::fmt::Debug for MeanTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}, {})", self.b, self.n, self.d)
    }
}

/// (B, D) ↦ (B, N, D): every token gets the sample's row times 1/N.
struct SpreadTokens {
    b: usize,
    n: usize,
    d: usize,
}

impl SliceKernel for SpreadTokens {
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (g, n, d) = (i[0], self.n, self.d);
        let scale = inverse_count::<T>(n);
        par_output(self.b * n * d, n * d, |start, out| {
            let sample = start / (n * d);
            let row = &g[sample * d..(sample + 1) * d];
            for token in out.chunks_mut(d) {
                for (o, &v) in token.iter_mut().zip(row) {
                    *o = v * scale;
                }
            }
        })
    }
}

impl CustomOp1 for SpreadTokens {
    fn name(&self) -> &'static str {
        "imixer-spread-tokens"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if l.dims() != [self.b, self.d] {
            candle_core::bail!("{}: gradient {:?}", self.name(), l.shape());
        }
        Ok((
            dispatch(self.name(), self, &[(s, l)])?,
            Shape::from((self.b, self.n, self.d)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device, Var};

    /// Values and gradient are candle's `mean(1)` bit for bit, in f32 and f64.
    #[test]
    fn equals_candle_mean_with_gradient() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            for (b, n, d) in [(3, 49, 128), (2, 1, 5), (9, 16, 7)] {
                let x = Var::from_tensor(&seeded_normal(1, &[b, n, d], 1.0, dtype, &Device::Cpu)?)?;
                let probe = seeded_normal(2, &[b, d], 1.0, dtype, &Device::Cpu)?;
                let ours = mean_tokens(&x)?;
                let theirs = x.mean(1)?;
                let bits = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
                assert_eq!(bits(&ours)?, bits(&theirs)?, "{dtype:?} {b}×{n}×{d}");
                let go = (ours * &probe)?.sum_all()?.backward()?;
                let gt = (theirs * &probe)?.sum_all()?.backward()?;
                assert_eq!(bits(go.get(&x).unwrap())?, bits(gt.get(&x).unwrap())?);
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_non_3d_input() -> Result<()> {
        let x = seeded_normal(3, &[4, 5], 1.0, DType::F32, &Device::Cpu)?;
        assert!(mean_tokens(&x).is_err());
        Ok(())
    }
}
