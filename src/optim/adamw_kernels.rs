//! In-place CPU kernels for one AdamW step (candle `InplaceOpN`): the moments and the parameter
//! are updated in their own storage, one parallel pass each.
//!
//! Why: the composed step (`AdamW::step_composed`) allocates and writes ≈ 14 temporaries the size
//! of each parameter, plus three copies back into the `Var`s. For Mixer-S/16 (18 M parameters)
//! that is ≈ 2 GB of memory traffic per step; in place it is ≈ 10 reads and 3 writes per
//! element. Each kernel evaluates exactly the composed expression, op by op in the same order
//! and in the parameter's dtype (candle's `affine` rounds its scalars to that dtype too), so the
//! two paths agree bit for bit; `tests` checks that.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::kernels::cpu::{contiguous, Float, PAR_CHUNK};
use crate::kernels::simd_kernel;

/// m ← m·β + g·(1 − β) (first moment) or v ← v·β + g²·(1 − β) (second moment).
pub struct MomentUpdate {
    pub beta: f64,
    pub square: bool,
}

/// p ← p·(1 − lr·wd) − (m / (√v · (1/√bc₂) + eps)) · step_size; the decay factor is 1 (and
/// skipped) for parameters without weight decay.
pub struct ParamUpdate {
    pub decay_factor: Option<f64>,
    pub inv_bc2_sqrt: f64,
    pub eps: f64,
    pub step_size: f64,
}

/// Applies `op` to the contiguous `dst` storage with the contiguous sources, in f32 or f64.
fn run_in_place<const N: usize>(
    name: &str,
    dst: &mut CpuStorage,
    dst_l: &Layout,
    srcs: [(&CpuStorage, &Layout); N],
    f32_kernel: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
    f64_kernel: impl Fn(&mut [f64], [&[f64]; N]) + Sync,
) -> Result<()> {
    let Some((start, end)) = dst_l.contiguous_offsets() else {
        candle_core::bail!("{name}: the updated tensor must be contiguous");
    };
    let n = end - start;
    macro_rules! sources {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(N);
            for (s, l) in srcs {
                match s {
                    CpuStorage::$variant(v) => out.push(contiguous(v, l)?),
                    _ => candle_core::bail!("{name}: sources must have the parameter's dtype"),
                }
            }
            if out.iter().any(|s| s.len() != n) {
                candle_core::bail!("{name}: sources must have the parameter's shape");
            }
            <[_; N]>::try_from(out).expect("exactly N sources")
        }};
    }
    match dst {
        CpuStorage::F32(d) => f32_kernel(&mut d[start..end], sources!(F32)),
        CpuStorage::F64(d) => f64_kernel(&mut d[start..end], sources!(F64)),
        _ => candle_core::bail!("{name}: only f32 and f64 parameters"),
    }
    Ok(())
}

fn moment_kernel<T: Float>(op: &MomentUpdate, dst: &mut [T], [g]: [&[T]; 1]) {
    let (beta, one_minus) = (T::from_f64(op.beta), T::from_f64(1.0 - op.beta));
    dst.par_chunks_mut(PAR_CHUNK)
        .zip(g.par_chunks(PAR_CHUNK))
        .for_each(|(d, g)| moment_block(d, g, beta, one_minus, op.square));
}

simd_kernel! {
    /// d ← d·β + g·(1 − β), or with g² when `square`.
    fn moment_block<T: Float>(d: &mut [T], g: &[T], beta: T, one_minus: T, square: bool) {
        for (d, &g) in d.iter_mut().zip(g) {
            let g = if square { g * g } else { g };
            *d = *d * beta + g * one_minus;
        }
    }
}

simd_kernel! {
    /// p ← p·decay − (m / (√v · inv_bc2 + eps)) · step (no decay product when `decay` is None).
    fn param_block<T: Float>(p: &mut [T], m: &[T], v: &[T], decay: Option<T>, inv_bc2: T, eps: T, step: T) {
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            let decayed = match decay {
                Some(f) => *p * f,
                None => *p,
            };
            let denom = v.sqrt() * inv_bc2 + eps;
            *p = decayed - (m / denom) * step;
        }
    }
}

fn param_kernel<T: Float>(op: &ParamUpdate, dst: &mut [T], [m, v]: [&[T]; 2]) {
    let inv_bc2 = T::from_f64(op.inv_bc2_sqrt);
    let (eps, step) = (T::from_f64(op.eps), T::from_f64(op.step_size));
    let decay = op.decay_factor.map(T::from_f64);
    dst.par_chunks_mut(PAR_CHUNK)
        .zip(m.par_chunks(PAR_CHUNK).zip(v.par_chunks(PAR_CHUNK)))
        .for_each(|(p, (m, v))| param_block(p, m, v, decay, inv_bc2, eps, step));
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "imixer-adamw-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        run_in_place(
            self.name(),
            dst,
            l,
            [(g, gl)],
            |d, s| moment_kernel(self, d, s),
            |d, s| moment_kernel(self, d, s),
        )
    }
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "imixer-adamw-param"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        run_in_place(
            self.name(),
            dst,
            l,
            [(m, ml), (v, vl)],
            |d, s| param_kernel(self, d, s),
            |d, s| param_kernel(self, d, s),
        )
    }
}

/// Updates `m` (or `v`) in place from the gradient `g`.
pub fn update_moment(moment: &Tensor, g: &Tensor, op: &MomentUpdate) -> Result<()> {
    moment.inplace_op2(&g.contiguous()?, op)
}

/// Updates the parameter `p` in place from its moments.
pub fn update_param(p: &Tensor, m: &Tensor, v: &Tensor, op: &ParamUpdate) -> Result<()> {
    p.inplace_op3(m, v, op)
}
