//! bfloat16 matmul inputs with f32 accumulation ([`crate::kernels::Precision::Bf16`]).
//!
//! On CUDA the operands are cast to bf16 and candle runs cuBLAS's bf16 GEMM (tensor cores), the
//! product cast back to f32. On the CPU there are two engines, computing the same products:
//!
//! - **oneDNN** (a CPU whose bf16 unit pays — AMX-BF16, or AVX512-BF16 on AMD — with oneDNN
//!   installed): the operands are converted to bf16 and oneDNN's kernels for that unit multiply
//!   them with f32 accumulation ([`super::onednn`]).
//! - **gemm** (every other CPU): the operands are rounded to the nearest bf16 (round to nearest
//!   even, PyTorch's and `half`'s rounding) and multiplied by the f32 gemm. The product of two
//!   bf16 values is exact in f32 (8 + 8 significant bits fit in 24), so this computes exactly
//!   what a bf16 unit with f32 accumulation computes, up to the order of the f32 additions.
//!
//! Why an Intel CPU with AVX512-BF16 but no AMX stays on gemm: [`onednn::unit_for`].

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::cpu::{contiguous, gemm_parallelism};
use super::dispatch::{fused, precision, Precision};
use super::onednn::{self, Key, Packed, PackedRef};
use super::rounding::round_slice;

/// The bf16 rounding of an f32 CPU tensor as one op. Its backward rounds the incoming gradient
/// (autocast's cast backward).
struct RoundToBf16;

impl CustomOp1 for RoundToBf16 {
    fn name(&self) -> &'static str {
        "imixer-round-to-bf16"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::F32(v) => Ok((
                CpuStorage::F32(round_slice(contiguous(v, l)?)),
                l.shape().clone(),
            )),
            _ => candle_core::bail!("{}: only f32 tensors", self.name()),
        }
    }

    /// The gradient of a cast to bf16 and back, as autocast's: the incoming gradient rounded.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&RoundToBf16)?))
    }
}

/// An f32 operand of a bf16 matmul computed in f32: `t` with bf16 values. On the fused path one
/// rounding pass ([`RoundToBf16`]); elsewhere candle's two casts. Either way the gradient is the
/// cast's: the incoming gradient rounded to bf16, as under autocast.
fn rounded_operand(t: &Tensor) -> Result<Tensor> {
    if fused(t) && t.dtype() == DType::F32 {
        return t.contiguous()?.apply_op1(RoundToBf16);
    }
    t.to_dtype(DType::BF16)?.to_dtype(t.dtype())
}

/// Whether matmuls on `t` take bf16 inputs now.
pub fn active_for(t: &Tensor) -> bool {
    precision() == Precision::Bf16 && t.dtype() == DType::F32
}

/// a · b at the current [`precision`]: f32 as candle computes it, or bf16 inputs with f32
/// accumulation (see the module doc), the result in `a`'s dtype.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !active_for(a) {
        return a.matmul(b);
    }
    if fused(a) && a.rank() == 2 && b.rank() == 2 {
        a.apply_op2(b, Bf16Product)
    } else if a.device().is_cpu() {
        rounded_operand(a)?.matmul(&rounded_operand(b)?)
    } else {
        a.to_dtype(DType::BF16)?
            .matmul(&b.to_dtype(DType::BF16)?)?
            .to_dtype(DType::F32)
    }
}

/// The one-line note printed when bf16 is first selected: what runs the matmuls on this CPU.
pub fn how_this_cpu_runs_it() -> String {
    if let Some(unit) = onednn::unit() {
        return format!(
            "precision bf16: matmuls run on this CPU's {} through oneDNN \
             (bf16 inputs, f32 accumulation)",
            unit.describe()
        );
    }
    let why = match onednn::unit_for_this_cpu() {
        Ok(unit) => format!(
            "its {} are unused: {}",
            unit.describe(),
            onednn::why_unavailable()
        ),
        Err(why) => why,
    };
    format!(
        "precision bf16: matmul inputs rounded to bfloat16, products accumulated in f32 by the \
         f32 gemm ({why})"
    )
}

/// dst (m × n, row-major) += lhs · rhs of packed bf16 operands: through oneDNN where it takes the
/// shape, else by [`gemm()`] on their f32 values (exact copies, so the products are the same).
pub fn accumulate_packed(lhs: PackedRef<'_>, rhs: PackedRef<'_>, dst: &mut [f32]) -> Result<()> {
    if onednn::accumulate_packed(lhs, rhs, dst)? {
        return Ok(());
    }
    gemm_packed(lhs, rhs, dst, true)
}

/// lhs · rhs of packed bf16 operands into a new row-major f32 matrix, as [`accumulate_packed`].
pub fn product_packed(lhs: PackedRef<'_>, rhs: PackedRef<'_>) -> Result<Vec<f32>> {
    if let Some(product) = onednn::product_packed(lhs, rhs)? {
        return Ok(product);
    }
    let mut dst = vec![0f32; lhs.rows() * rhs.cols()];
    gemm_packed(lhs, rhs, &mut dst, false)?;
    Ok(dst)
}

/// dst = [dst +] lhs · rhs of packed operands by [`gemm()`] on their f32 values: the fallback of
/// [`accumulate_packed`] and [`product_packed`].
fn gemm_packed(
    lhs: PackedRef<'_>,
    rhs: PackedRef<'_>,
    dst: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    if lhs.cols() != rhs.rows() {
        candle_core::bail!(
            "bf16 product: {}×{} · {}×{}",
            lhs.rows(),
            lhs.cols(),
            rhs.rows(),
            rhs.cols()
        );
    }
    let key = Key {
        m: lhs.rows(),
        n: rhs.cols(),
        k: lhs.cols(),
        lhs_strides: lhs.strides(),
        rhs_strides: rhs.strides(),
        accumulate,
    };
    gemm(key, dst, &lhs.to_f32(), &rhs.to_f32())
}

/// dst (m × n, row-major) = [dst +] bf16(lhs) · bf16(rhs), f32 accumulation, by gemm on
/// bf16-rounded copies of the operands: the engine of CPUs without the oneDNN path, and of shapes
/// that path does not take ([`onednn::product_packed`] computes the same products there). Operands
/// are given by `key`'s strides from their first element.
pub fn gemm(key: Key, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) -> Result<()> {
    let Key {
        m,
        n,
        k,
        lhs_strides: [lrs, lcs],
        rhs_strides: [rrs, rcs],
        accumulate,
    } = key;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if dst.len() < m * n || lhs.len() < key.lhs_span() || rhs.len() < key.rhs_span() {
        candle_core::bail!("bf16 gemm: buffers too small for {key:?}");
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    let (a, b) = (
        round_slice(&lhs[..key.lhs_span()]),
        round_slice(&rhs[..key.rhs_span()]),
    );
    // SAFETY: a and b hold the spans the strides reach (`Key::lhs_span`/`rhs_span`: every
    // lhs[r·lrs + c·lcs] with r < m, c < k and rhs[r·rrs + c·rcs] with r < k, c < n is inside),
    // dst holds m·n elements (checked above) written at r·n + c, and is a distinct buffer from
    // the fresh copies a and b. gemm returns when every worker is done with the pointers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            lcs as isize,
            lrs as isize,
            b.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        )
    };
    Ok(())
}

/// a · b for 2-D f32 CPU tensors with bf16 inputs and f32 accumulation ([`gemm`]); its backward
/// multiplies the same way: ∂a = bf16(g) · bf16(b)ᵀ, ∂b = bf16(a)ᵀ · bf16(g), as under autocast.
struct Bf16Product;

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "imixer-bf16-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("{}: only f32 tensors", self.name());
        };
        let ((m, k), (k2, n)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 {
            candle_core::bail!("{}: {:?} · {:?}", self.name(), l1.shape(), l2.shape());
        }
        let strides = |l: &Layout| [l.stride()[0], l.stride()[1]];
        let key = Key {
            m,
            n,
            k,
            lhs_strides: strides(l1),
            rhs_strides: strides(l2),
            accumulate: false,
        };
        let (a, b) = (&a[l1.start_offset()..], &b[l2.start_offset()..]);
        let shape = Shape::from((m, n));
        if onednn::available() {
            let pa = Packed::new(a, m, k, key.lhs_strides)?;
            let pb = Packed::new(b, k, n, key.rhs_strides)?;
            if let Some(dst) = onednn::product_packed(pa.as_ref(), pb.as_ref())? {
                return Ok((CpuStorage::F32(dst), shape));
            }
        }
        let mut dst = vec![0f32; m * n];
        gemm(key, &mut dst, a, b)?;
        Ok((CpuStorage::F32(dst), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(product_no_grad(grad, &b.t()?)?),
            Some(product_no_grad(&a.t()?, grad)?),
        ))
    }
}

/// a · b with bf16 inputs and f32 accumulation, outside any recorded graph: the matmuls of a
/// backward pass under bf16 precision (2-D f32 CPU tensors, any strides).
pub fn product_no_grad(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &Bf16Product)
}

#[cfg(test)]
mod linear_tests {
    use super::*;
    use crate::kernels::with_precision;
    use crate::layers::linear_epilogue::linear_epilogue;
    use crate::params::seeded_normal;
    use candle_core::Device;

    /// The gemm fallback of the packed products, on row-major and transposed (column-major)
    /// views, with and without accumulation, equals the f64 product of the rounded operands.
    #[test]
    fn gemm_fallback_of_packed_products_matches_f64() -> Result<()> {
        let (m, k, n) = (9, 17, 6);
        let value = |i: usize, seed: f32| (i as f32 * 0.37 + seed).sin() * 2.0;
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i, 2.0)).collect();
        let (ra, rb) = (round_slice(&a), round_slice(&b));
        let pa = Packed::new(&a, m, k, [k, 1])?;
        // bᵀ stored row-major (n × k), read back through its transposed view as k × n.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let pbt = Packed::new(&bt, n, k, [k, 1])?;
        let start: Vec<f32> = (0..m * n).map(|i| value(i, 3.0)).collect();
        for accumulate in [false, true] {
            let mut dst = if accumulate {
                start.clone()
            } else {
                vec![f32::NAN; m * n]
            };
            gemm_packed(pa.as_ref(), pbt.t(), &mut dst, accumulate)?;
            for i in 0..m {
                for j in 0..n {
                    let mut want: f64 = (0..k)
                        .map(|p| f64::from(ra[i * k + p]) * f64::from(rb[p * n + j]))
                        .sum();
                    if accumulate {
                        want += f64::from(start[i * n + j]);
                    }
                    let got = f64::from(dst[i * n + j]);
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{accumulate} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        assert!(gemm_packed(pa.as_ref(), pa.as_ref(), &mut [0.0; 81], false).is_err());
        Ok(())
    }

    /// Under bf16 a linear layer equals the f32 product of the bf16-rounded operands, and differs
    /// from the f32 layer.
    #[test]
    fn bf16_linear_multiplies_rounded_operands() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded_normal(1, &[7, 33], 1.0, DType::F32, &dev)?;
        let w = seeded_normal(2, &[5, 33], 1.0, DType::F32, &dev)?;
        let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let want = round(&x)?.matmul(&round(&w)?.t()?)?;
        let fp32 = x.matmul(&w.t()?)?;
        let got = with_precision(Precision::Bf16, || linear_epilogue(&x, &w, None, None))?;
        let d = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar() };
        assert!(d(&got, &want)? < 1e-5, "{}", d(&got, &want)?);
        assert!(d(&got, &fp32)? > 1e-4, "bf16 did not change the product");
        Ok(())
    }
}
