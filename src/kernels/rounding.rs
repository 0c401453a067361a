//! f32 → bfloat16 rounding (to nearest, ties to even), shared by both bf16 engines: the gemm
//! engine multiplies rounded f32 copies ([`super::bf16`]), the oneDNN engine packs the rounded
//! values' upper halves for oneDNN ([`super::onednn`]).

use rayon::prelude::*;

use super::cpu::PAR_CHUNK;
use super::simd_kernel;

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32. NaN stays a quiet NaN with its
/// sign, ±∞ stays ±∞, and values beyond bf16's largest finite value round to ±∞ — the same
/// results as `half::bf16::from_f32(x).to_f32()`.
#[inline(always)]
pub fn round_to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    let quiet_nan = (bits | 0x0040_0000) & 0xFFFF_0000;
    f32::from_bits(if x.is_nan() { quiet_nan } else { rounded })
}

/// The bf16 bits of `x` rounded to nearest even: the upper half of [`round_to_bf16`].
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    (round_to_bf16(x).to_bits() >> 16) as u16
}

/// The f32 value of bf16 `bits` (exact: the lower 16 bits of the f32 are zero).
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

simd_kernel! {
    /// out[i] = round_to_bf16(x[i]).
    fn round_block(x: &[f32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = round_to_bf16(x);
        }
    }
}

/// `x` rounded to bf16 values, in parallel blocks.
pub fn round_slice(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(o, x)| round_block(x, o));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Result, Tensor};

    #[test]
    fn rounding_equals_candles_bf16_cast() -> Result<()> {
        let mut xs: Vec<f32> = (0..20_000)
            .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 20 - 10))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-42,
            1.0 + f32::EPSILON,
            // Exactly halfway between two bf16 values: ties go to the even one.
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
        ]);
        let t = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu)?;
        let cast: Vec<f32> = t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.to_vec1()?;
        let ours = round_slice(&xs);
        for ((x, c), o) in xs.iter().zip(&cast).zip(&ours) {
            assert_eq!(c.to_bits(), o.to_bits(), "x = {x:e}");
        }
        assert!(round_to_bf16(f32::NAN).is_nan());
        Ok(())
    }
}
