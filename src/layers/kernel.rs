//! Small helpers shared by the CPU kernels of our custom ops: a float trait covering f32/f64 (the
//! models run in f32, the property tests in f64) and contiguous-slice access.

use candle_core::{Layout, Result};

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
        let a = self.abs();
        let t = 1.0 / P.mul_add(a, 1.0);
        let r = A5
            .mul_add(t, A4)
            .mul_add(t, A3)
            .mul_add(t, A2)
            .mul_add(t, A1);
        let y = 1.0 - r * t * (-a * a).exp();
        y.copysign(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
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
