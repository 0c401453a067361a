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
//! At bf16 precision the matmuls have two CPU engines with the same products ([`bf16`]): AMX
//! tiles through oneDNN where the CPU and the machine have them ([`onednn`]), gemm on
//! bf16-rounded operands everywhere else.

pub mod bf16;
pub mod cpu;
pub mod dispatch;
pub mod onednn;
mod simd;

pub(crate) use simd::simd_kernel;

pub use bf16::matmul;
pub use dispatch::{
    fused, fused_calls, init_from_env, isa, kernel_path, precision, set_isa, set_kernel_path,
    set_precision, Isa, KernelPath, Precision,
};
