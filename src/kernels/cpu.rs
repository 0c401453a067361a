//! Small helpers shared by the CPU kernels of our custom ops: a float trait covering f32/f64 (the
//! models run in f32, the property tests in f64), contiguous-slice access and parallel output
//! buffers.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel work item. Fixed (not derived from the thread count) so that every
/// reduction is split the same way on any machine: same seed ⇒ same bits.
pub const PAR_CHUNK: usize = 16 * 1024;

/// The contiguous part of a CPU buffer described by `layout`; our kernels require contiguity
/// (their wrappers call `.contiguous()`, which is free when the tensor already is).
pub fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("imixer kernel: expected a contiguous tensor"),
    }
}

/// How gemm should split a matmul on this thread: over candle's thread count for it, or not at
/// all on a data-parallel shard's lane (one thread).
pub fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// `f` on the elements of a contiguous f32 CPU tensor (a gradient inside a backward pass,
/// where a kernel needs the slice rather than another op).
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => f(contiguous(v.as_slice(), layout)?),
        _ => candle_core::bail!("imixer kernel: expected an f32 CPU tensor"),
    }
}

/// A `len`-element output buffer written block by block in parallel: `fill(start, block)` gets
/// the block's first index and the block (`block_len` elements, the last one shorter).
///
/// Why not `vec![0; len]` then `par_chunks_mut`: that zeroes the whole buffer — and takes its
/// page faults — on the calling thread before any parallel work starts (≈ 2–3 ms for a 12 MiB
/// activation, while the other cores wait). Here each task zeroes its own block just before
/// writing it, so the zeroing is parallel and the block is still in cache when it is written.
pub fn par_output<T: Float>(
    len: usize,
    block_len: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    par_output_with(len, len, block_len, fill).0
}

/// [`par_output`] that also collects one value per block, in block order (e.g. partial sums
/// for a deterministic reduction), and reserves `capacity ≥ len` so that a caller can append a
/// tail without reallocating.
pub fn par_output_with<T: Float, R: Send>(
    len: usize,
    capacity: usize,
    block_len: usize,
    fill: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>) {
    let block_len = block_len.max(1);
    let mut out: Vec<T> = Vec::with_capacity(capacity.max(len));
    let per_block: Vec<R> = out.spare_capacity_mut()[..len]
        .par_chunks_mut(block_len)
        .enumerate()
        .map(|(b, block)| {
            block.fill(MaybeUninit::new(T::zero()));
            // SAFETY: every element of `block` was initialised by the `fill` on the line above,
            // and `MaybeUninit<T>` has the same size, alignment and layout as `T`, so viewing
            // the initialised block as `&mut [T]` is sound. The reference does not outlive it.
            let block = unsafe { &mut *(block as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(b * block_len, block)
        })
        .collect();
    // SAFETY: the blocks partition `0..len` exactly (par_chunks_mut over the first `len` spare
    // slots), every block was fully initialised above, and `collect` returns only after all
    // tasks finished; `len ≤ capacity` by construction.
    unsafe { out.set_len(len) };
    (out, per_block)
}

/// A `src.len()`-element output buffer written in parallel blocks alongside `src`:
/// `fill(src_block, out_block)` gets the same `block_len` range of both (e.g. an activation
/// rewritten in place while a second result of the same shape is produced). Zeroed per block
/// just before the call, as in [`par_output`].
pub fn par_output_beside<T: Float>(
    src: &mut [T],
    block_len: usize,
    fill: impl Fn(&mut [T], &mut [T]) + Sync + Send,
) -> Vec<T> {
    let (len, block_len) = (src.len(), block_len.max(1));
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(block_len)
        .zip(src.par_chunks_mut(block_len))
        .for_each(|(block, src)| {
            block.fill(MaybeUninit::new(T::zero()));
            // SAFETY: as in `par_output_with`: the block was initialised on the line above and
            // `MaybeUninit<T>` has `T`'s layout; the reference does not outlive the call.
            let block = unsafe { &mut *(block as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(src, block)
        });
    // SAFETY: the blocks partition `0..len` (par_chunks_mut over the first `len` spare slots),
    // each was initialised above, and `for_each` returns after every task finished.
    unsafe { out.set_len(len) };
    out
}

/// The element-wise sum of per-block partial sums, added in block order: with the fixed block
/// split of [`PAR_CHUNK`] this makes a parallel reduction the same bits on any thread count.
pub fn sum_in_block_order(partials: &[Vec<f64>], len: usize) -> Vec<f64> {
    let mut total = vec![0f64; len];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// A CPU kernel written once for f32 and f64 over contiguous inputs of one dtype.
pub trait SliceKernel {
    fn run<T: Float>(&self, inputs: &[&[T]]) -> Vec<T>;
}

/// Checks that an op got one input per entry of `lens`, each with that many elements: its
/// kernel indexes with these sizes, so a mismatch must be an error, not a wild read. `what`
/// describes the sizes the op was built for.
pub fn check_input_lens(
    name: &str,
    inputs: &[(&CpuStorage, &Layout)],
    lens: &[usize],
    what: impl std::fmt::Display,
) -> Result<()> {
    let shapes: Vec<_> = inputs.iter().map(|(_, l)| l.shape().clone()).collect();
    if shapes.len() != lens.len() || shapes.iter().zip(lens).any(|(s, &n)| s.elem_count() != n) {
        candle_core::bail!("{name}: inputs {shapes:?} do not match {what}");
    }
    Ok(())
}

/// The contiguous f32 elements of every input, or `None` when one is not a contiguous f32
/// buffer.
pub fn f32_slices<'a>(inputs: &[(&'a CpuStorage, &Layout)]) -> Option<Vec<&'a [f32]>> {
    inputs
        .iter()
        .map(|(s, l)| match s {
            CpuStorage::F32(v) => contiguous(v, l).ok(),
            _ => None,
        })
        .collect()
}

/// Runs `kernel` on CPU storages that are all f32 or all f64 (each read through its layout).
pub fn dispatch(
    name: &str,
    kernel: &impl SliceKernel,
    inputs: &[(&CpuStorage, &Layout)],
) -> Result<CpuStorage> {
    if let Some(v) = f32_slices(inputs) {
        return Ok(CpuStorage::F32(kernel.run(&v)));
    }
    let f64s: Option<Vec<&[f64]>> = inputs
        .iter()
        .map(|(s, l)| match s {
            CpuStorage::F64(v) => contiguous(v, l).ok(),
            _ => None,
        })
        .collect();
    match f64s {
        Some(v) => Ok(CpuStorage::F64(kernel.run(&v))),
        None => candle_core::bail!("{name}: inputs must be contiguous and all f32 or all f64"),
    }
}

/// The float operations our kernels need, for f32 and f64.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    fn zero() -> Self;
    fn one() -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn erf(self) -> Self;
    /// (erf(x), e^(−x²)): one exponential for both where the erf formula allows it.
    #[inline(always)]
    fn erf_and_gauss(self) -> (Self, Self) {
        (self.erf(), (-(self * self)).exp())
    }
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    /// dst[j·dst_stride + i] = src[i·src_stride + j] for i, j < 8: one 8 × 8 tile of a
    /// transpose (both slices start at the tile's first element).
    #[inline(always)]
    fn transpose_8x8(src: &[Self], src_stride: usize, dst: &mut [Self], dst_stride: usize) {
        for i in 0..8 {
            let row = &src[i * src_stride..i * src_stride + 8];
            for (j, &v) in row.iter().enumerate() {
                dst[j * dst_stride + i] = v;
            }
        }
    }
    /// `v` as candle CPU storage of this dtype (a kernel's side result kept for a backward).
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// The elements of `s` when it holds this dtype.
    fn slice_of(s: &CpuStorage) -> Option<&[Self]>;
}

impl Float for f32 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    /// Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7), the formula PyTorch's vectorised CPU
    /// `erf` uses for float — so our f32 GELU rounds like the reference's. Branch-free and
    /// auto-vectorisable, unlike libm's `erff` (which dominated the GELU kernels).
    #[inline(always)]
    fn erf(self) -> Self {
        self.erf_and_gauss().0
    }
    /// The A–S formula needs e^(−x²) anyway; returning it saves GELU′ its second exponential.
    #[inline(always)]
    fn erf_and_gauss(self) -> (Self, Self) {
        const P: f32 = 0.327_591_1;
        const A1: f32 = 0.254_829_6;
        const A2: f32 = -0.284_496_74;
        const A3: f32 = 1.421_413_8;
        const A4: f32 = -1.453_152_1;
        const A5: f32 = 1.061_405_4;
        let a = self.abs();
        let t = 1.0 / mul_add(P, a, 1.0);
        let r = mul_add(mul_add(mul_add(mul_add(A5, t, A4), t, A3), t, A2), t, A1);
        let gauss = fast_exp(-a * a);
        let y = mul_add(-(r * t), gauss, 1.0);
        (y.copysign(self), gauss)
    }
    fn exp(self) -> Self {
        fast_exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    /// Eight rows in eight AVX registers, transposed by [`transpose_8x8_avx`].
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    #[inline(always)]
    fn transpose_8x8(src: &[Self], src_stride: usize, dst: &mut [Self], dst_stride: usize) {
        // SAFETY: the function's only requirement is AVX, and this code is compiled only when
        // the whole build targets AVX (the cfg above), so every CPU that runs it has AVX.
        unsafe { transpose_8x8_avx(src, src_stride, dst, dst_stride) }
    }
    fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Float for f64 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// [`Float::transpose_8x8`] for f32 in AVX registers: the classic unpack / shuffle /
/// 128-bit-permute network, 24 register shuffles instead of 64 scalar stores to 8 strided rows.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[target_feature(enable = "avx")]
fn transpose_8x8_avx(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    use std::arch::x86_64::*;
    let load = |i: usize| {
        let row = &src[i * src_stride..i * src_stride + 8];
        // SAFETY: `row` is a bounds-checked slice of 8 f32, exactly the 32 bytes the unaligned
        // load reads.
        unsafe { _mm256_loadu_ps(row.as_ptr()) }
    };
    let r = [
        load(0),
        load(1),
        load(2),
        load(3),
        load(4),
        load(5),
        load(6),
        load(7),
    ];
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for j in 0..4 {
        let halves = [
            (j, _mm256_permute2f128_ps::<0x20>(s[j], s[j + 4])),
            (j + 4, _mm256_permute2f128_ps::<0x31>(s[j], s[j + 4])),
        ];
        for (row, v) in halves {
            let out = &mut dst[row * dst_stride..row * dst_stride + 8];
            // SAFETY: `out` is a bounds-checked slice of 8 f32, exactly the 32 bytes the
            // unaligned store writes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        }
    }
}

/// a·b + c: one fused multiply-add instruction where the build enables x86's `fma` target
/// feature (this project's x86-64-v3 default, `.cargo/config.toml`), so the polynomial kernels
/// take half the instructions; on other builds plain mul then add, because `f32::mul_add`
/// without the target feature can be a libm call per element. The two round differently (by ≤ 1 ulp per step), but one build always
/// rounds the same way: same seed, same machine, same binary ⇒ same bits.
#[inline(always)]
pub fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// e^x for f32, branch-free so loops over it vectorise (glibc's `expf` is a call per element).
/// Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6 Taylor polynomial
/// (truncation < 2e-8 relative) and the exponent bits of 2ⁿ: within 2 ulp of the true value on
/// [-87, 88]; inputs beyond are clamped (e^-87 ≈ 1.6e-38 underflows to ~0 as in libm).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer (no SSE4.1 `round`).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // `shifted` holds n in its low mantissa bits: its bit pattern is 0x4B40_0000 + n.
    let shifted = mul_add(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add(n, -LN2_LO, mul_add(n, -LN2_HI, x));
    // Horner, highest degree first: 1 + r + r²/2 + … + r⁶/720.
    let p = mul_add(1.0 / 720.0, r, 1.0 / 120.0);
    let p = mul_add(p, r, 1.0 / 24.0);
    let p = mul_add(p, r, 1.0 / 6.0);
    let p = mul_add(p, r, 0.5);
    let p = mul_add(p, r, 1.0);
    let p = mul_add(p, r, 1.0);
    // 2ⁿ from the bits of `shifted` ((n + 127) << 23, n ∈ [−126, 127] after the clamp): integer
    // lane ops, where `n as i32` (a saturating cast) would be scalarised by the compiler.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrong input count or a wrong element count is an error naming the op, every input's
    /// shape and what the op was built for; the right ones pass.
    #[test]
    fn input_lengths_are_checked() {
        let (a, b) = (CpuStorage::F32(vec![0.0; 6]), CpuStorage::F32(vec![0.0; 4]));
        let (la, lb) = (Layout::contiguous((2, 3)), Layout::contiguous(4));
        let inputs = [(&a, &la), (&b, &lb)];
        assert!(check_input_lens("op", &inputs, &[6, 4], "x").is_ok());
        for lens in [&[6, 5][..], &[6], &[6, 4, 1]] {
            let e = check_input_lens("op", &inputs, lens, "2 rows")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("op: inputs [[2, 3], [4]] do not match 2 rows"),
                "{e}"
            );
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((fast_exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(-200.0) < 1e-37 && fast_exp(-200.0) >= 0.0);
    }

    #[test]
    fn fast_exp_scale_bits_equal_the_integer_cast() {
        // The exponent trick must give exactly 2ⁿ for every n the clamp allows.
        const ROUND: f32 = 12_582_912.0;
        for n in -126i32..=127 {
            let shifted = n as f32 + ROUND;
            let trick = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
            assert_eq!(trick, 2f32.powi(n), "n = {n}");
        }
    }

    #[test]
    fn fast_erf_is_within_the_reference_formula_error() {
        for i in -600..600 {
            let x = i as f32 * 0.01;
            let d = (Float::erf(x) as f64 - libm::erf(x as f64)).abs();
            assert!(d < 3e-7, "erf({x}) off by {d}");
            let (erf, gauss) = x.erf_and_gauss();
            assert_eq!(erf, Float::erf(x));
            // Against e^(−x²) of the f32-rounded square (the rounding of x² itself is not exp's).
            let want = (-((x * x) as f64)).exp();
            assert!((gauss as f64 - want).abs() <= 1e-6 * want, "e^-x² at {x}");
        }
    }

    #[test]
    fn par_output_fills_every_block_in_order() {
        for (len, block) in [(0, 4), (1, 4), (10, 4), (12, 4), (100_003, PAR_CHUNK)] {
            let (out, starts) = par_output_with::<f32, usize>(len, len + 3, block, |start, b| {
                for (i, v) in b.iter_mut().enumerate() {
                    *v = (start + i) as f32;
                }
                start
            });
            assert_eq!(out.len(), len);
            assert!(out.capacity() >= len + 3);
            assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
            let expected: Vec<usize> = (0..len.div_ceil(block)).map(|b| b * block).collect();
            assert_eq!(starts, expected);
            let plain = par_output::<f64>(len, block, |start, b| b.fill(start as f64));
            assert!(plain
                .iter()
                .enumerate()
                .all(|(i, &v)| v == (i / block * block) as f64));
        }
    }
}
