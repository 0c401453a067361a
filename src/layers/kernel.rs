//! Small helpers shared by the CPU kernels of our custom ops: a float trait covering f32/f64 (the
//! models run in f32, the property tests in f64) and contiguous-slice access.

use candle_core::{CpuStorage, Layout, Result};

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

/// A CPU kernel written once for f32 and f64 over contiguous inputs of one dtype.
pub trait SliceKernel {
    fn run<T: Float>(&self, inputs: &[&[T]]) -> Vec<T>;
}

/// Runs `kernel` on CPU storages that are all f32 or all f64 (each read through its layout).
pub fn dispatch(
    name: &str,
    kernel: &impl SliceKernel,
    inputs: &[(&CpuStorage, &Layout)],
) -> Result<CpuStorage> {
    let f32s: Option<Vec<&[f32]>> = inputs
        .iter()
        .map(|(s, l)| match s {
            CpuStorage::F32(v) => contiguous(v, l).ok(),
            _ => None,
        })
        .collect();
    if let Some(v) = f32s {
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
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
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
        const P: f32 = 0.327_591_1;
        const A1: f32 = 0.254_829_6;
        const A2: f32 = -0.284_496_74;
        const A3: f32 = 1.421_413_8;
        const A4: f32 = -1.453_152_1;
        const A5: f32 = 1.061_405_4;
        // Plain mul/add, not `mul_add`: without a target FMA feature `mul_add` is a libm call.
        let a = self.abs();
        let t = 1.0 / (P * a + 1.0);
        let r = (((A5 * t + A4) * t + A3) * t + A2) * t + A1;
        let y = 1.0 - r * t * fast_exp(-a * a);
        y.copysign(self)
    }
    fn exp(self) -> Self {
        fast_exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
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
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn fast_erf_is_within_the_reference_formula_error() {
        for i in -600..600 {
            let x = i as f32 * 0.01;
            let d = (Float::erf(x) as f64 - libm::erf(x as f64)).abs();
            assert!(d < 3e-7, "erf({x}) off by {d}");
        }
    }
}
