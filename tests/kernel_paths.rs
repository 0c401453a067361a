//! The implementations behind one forward agree: for every family, one training pass (forward,
//! loss, backward) on
//! - the fused CPU kernels compiled for AVX2 and for AVX-512 gives the same bits (where the CPU
//!   has AVX-512; elsewhere that half is skipped and says so);
//! - the portable candle composition (what CUDA runs, `IMIXER_KERNELS=portable`) stays within
//!   float rounding of the fused kernels, and no layer picks a fused kernel while it is selected.
//!
//! The kernel path and the ISA are process-wide settings, so this file holds a single test.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use imixer::config::{Family, ModelConfig};
use imixer::kernels::{self, Isa, KernelPath, Precision};
use imixer::train::{forward_backward, Shards, Targets};
use imixer::MixerNet;

mod common;
use common::{seeded_normal, tiny_model};

/// Loss, logits and every parameter gradient (in the model's parameter order) of one pass of a
/// freshly built model (a training forward advances the spectral-norm buffers, so each pass
/// starts from the same initial state).
fn pass(cfg: &ModelConfig, images: &Tensor, labels: &Tensor) -> Result<Vec<(String, Vec<f32>)>> {
    let model = &MixerNet::new(cfg, 0, &Device::Cpu)?;
    // timm starts the head at zero, which would make the logits and every gradient below the
    // head zero on any implementation: a random head makes the whole pass count.
    for (i, e) in model.params.entries().iter().enumerate() {
        if e.name.starts_with("head.") {
            let value = seeded_normal(100 + i as u64, e.var.dims(), 0.1)?.to_dtype(DType::F32)?;
            e.var.set(&value)?;
        }
    }
    let shards = Shards::new(1, 2)?;
    let out = forward_backward(model, &shards, images, Targets::Hard(labels), 7, 1)?;
    let mut all = vec![
        ("loss".to_string(), vec![out.loss as f32]),
        ("logits".to_string(), out.logits.flatten_all()?.to_vec1()?),
    ];
    for e in model.params.entries() {
        if let Some(g) = out.grads.get(e.var.as_tensor()) {
            all.push((format!("grad {}", e.name), g.flatten_all()?.to_vec1()?));
        }
    }
    Ok(all)
}

/// bf16 keeps 8 significant bits: one rounding is ≤ 2⁻⁹ ≈ 0.2 % relative, and a tiny model's
/// gradients pass through a few dozen rounded matmuls (the worst seen: 1.4e-2, a LayerNorm bias).
const BF16_TOLERANCE: f32 = 3e-2;

/// max |a − b|, NaN when either side has a NaN where the other does not match it (`f32::max`
/// would skip NaNs and report agreement).
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() || d > m {
            d
        } else {
            m
        }
    })
}

#[test]
fn every_implementation_of_a_training_pass_agrees() -> Result<()> {
    let dev = Device::Cpu;
    let images = seeded_normal(3, &[6, 1, 28, 28], 1.0)?.to_dtype(DType::F32)?;
    let labels = Tensor::from_vec(vec![0u32, 3, 9, 1, 4, 7], 6, &dev)?;
    let wide = Isa::detect() == Isa::Avx512;
    if !wide {
        eprintln!(
            "this CPU has no AVX-512: only the AVX2 kernels and the portable path are compared"
        );
    }
    for family in Family::ALL {
        let mut cfg = tiny_model(family, 28, 1, 4);
        if family == Family::AsymMixer {
            cfg.lambda = 0.1;
        }

        kernels::set_kernel_path(KernelPath::Fused);
        kernels::set_isa(Isa::Baseline);
        let narrow = pass(&cfg, &images, &labels)?;
        if wide {
            kernels::set_isa(Isa::Avx512);
            let wide = pass(&cfg, &images, &labels)?;
            for ((name, a), (_, b)) in narrow.iter().zip(&wide) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                ensure!(
                    same,
                    "{family:?}: {name} differs between the AVX2 and AVX-512 kernels"
                );
            }
        }

        kernels::set_kernel_path(KernelPath::Portable);
        let before = kernels::fused_calls();
        let portable = pass(&cfg, &images, &labels)?;
        ensure!(
            kernels::fused_calls() == before,
            "{family:?}: a layer chose a fused kernel on the portable path"
        );
        kernels::set_kernel_path(KernelPath::Fused);
        kernels::set_precision(Precision::Bf16);
        let onednn_calls = kernels::onednn::calls();
        let bf16 = pass(&cfg, &images, &labels)?;
        if kernels::onednn::available() {
            // The oneDNN path ran, and the gemm path on rounded operands stays close to it: the
            // same products summed in another order — a last-bit difference can flip a later
            // bf16 rounding (2⁻⁸ relative) — except in the GELU MLPs, which on oneDNN run as one
            // op that keeps GELU′ in bf16 (`layers::gelu_mlp`; the iMLP's residual map rounds
            // two GELU′ per step), and on gemm as two linear layers with GELU′ in f32. So the
            // bound is the bf16-against-fp32 one.
            ensure!(
                kernels::onednn::calls() > onednn_calls,
                "{family:?}: bf16 did not run on oneDNN"
            );
            kernels::onednn::set_enabled(false);
            let gemm_bf16 = pass(&cfg, &images, &labels)?;
            kernels::onednn::set_enabled(true);
            for ((name, a), (_, b)) in bf16.iter().zip(&gemm_bf16) {
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-4);
                let diff = max_difference(a, b);
                ensure!(
                    diff <= BF16_TOLERANCE * scale,
                    "{family:?}: {name} differs by {diff:e} (scale {scale:e}) between bf16 on oneDNN and on gemm"
                );
            }
        } else if family == Family::Mixer {
            eprintln!(
                "bf16 oneDNN path not available ({}): only the gemm bf16 path is compared",
                kernels::onednn::why_unavailable()
            );
        }
        kernels::set_precision(Precision::Fp32);
        for ((name, a), (_, b)) in narrow.iter().zip(&bf16) {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-4);
            let diff = max_difference(a, b);
            ensure!(
                diff <= BF16_TOLERANCE * scale,
                "{family:?}: {name} differs by {diff:e} (scale {scale:e}) between bf16 and fp32"
            );
        }
        let names = |v: &[(String, Vec<f32>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        ensure!(
            names(&portable) == names(&narrow),
            "{family:?}: gradients of {:?} on the portable path, {:?} fused",
            names(&portable),
            names(&narrow)
        );
        for ((name, a), (_, b)) in narrow.iter().zip(&portable) {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-4);
            let diff = max_difference(a, b);
            ensure!(
                diff <= 1e-4 * scale,
                "{family:?}: {name} differs by {diff:e} (scale {scale:e}) between fused and portable"
            );
        }
    }
    Ok(())
}
