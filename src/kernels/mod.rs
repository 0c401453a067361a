//! Where every op's implementation is chosen, and the CPU kernels' shared machinery.
//!
//! A layer calls one function (`layers::gelu`, `layers::LayerNorm::forward`, …); the layer, not
//! the model, asks [`dispatch`] which implementation runs:
//!
//! - **fused**: our CPU custom ops with hand-written backward passes (f32/f64 CPU tensors only);
//! - **portable**: the same function composed from candle's ops, which every candle device runs
//!   (CUDA takes this path). `IMIXER_KERNELS=portable` forces it on the CPU too, so the golden
//!   suite checks the exact code a GPU runs.
//!
//! Inside the fused path, [`dispatch::Isa`] picks the vector width at run time: the build targets
//! x86-64-v3 (AVX2 + FMA), and on CPUs with AVX-512 the hot loops run a second compilation of the
//! same source with 16-lane registers (`simd_kernel!`). Both compilations evaluate the same
//! floating-point operations in the same order, so they give the same bits.
//!
//! A fused op's forward sometimes computes something only its backward reads (GELU′ beside a
//! GELU, the packed bf16 copy of x that ∂W reads again). candle's custom ops return one tensor,
//! so such a by-product is kept in the op value itself, in a `OnceLock` written by the one
//! forward and read by the backward: an op value is built per call and never reused, so there
//! is no state shared between forwards, and nothing is locked on the hot path. The alternative —
//! returning the by-product as part of a larger output and narrowing it off — would make every
//! consumer of the result copy it.
//!
//! At bf16 precision the matmuls have two CPU engines with the same products ([`bf16`]): the
//! CPU's bf16 unit (AMX tiles, or AVX512-BF16 on AMD) through oneDNN where the CPU and the
//! machine have them ([`onednn`]), gemm on bf16-rounded operands everywhere else.

pub mod bf16;
pub mod cpu;
pub mod dispatch;
pub mod onednn;
pub mod rounding;
mod simd;

pub(crate) use simd::simd_kernel;

pub use bf16::matmul;
pub use dispatch::{
    fused, fused_calls, init_from_env, isa, kernel_path, precision, set_isa, set_kernel_path,
    with_precision, Isa, KernelPath, Precision,
};

/// Sets the matmul precision of every following op in the process. The first switch to bf16
/// says once how this CPU runs it ([`bf16::how_this_cpu_runs_it`]).
pub fn set_precision(p: Precision) {
    let before = dispatch::swap_precision(p);
    if p == Precision::Bf16 && before == Precision::Fp32 {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("{}", bf16::how_this_cpu_runs_it()));
    }
}
