//! `imixer bench`: the configurations of `scripts/torch_baseline.py`, timed the same way
//! (3 warm-up steps, median of ≥ 10 timed steps, peak RSS), one JSON line per run.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use thiserror::Error;

use crate::config::{Family, IMixerConfig, ModelConfig, Solver};
use crate::optim::{AdamW, AdamWConfig};
use crate::train::{train_step, Shards, Targets, TrainError};
use crate::MixerNet;

/// Why a benchmark could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("unknown bench config '{0}' (fmnist-tiny, cifar-s, s16-224)")]
    UnknownConfig(String),
    #[error("unknown bench mode '{0}' (train, infer)")]
    UnknownMode(String),
    /// The timed training step failed (a shard, a non-finite loss, the device).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Building the model or its inputs failed (out of memory, a device error).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Result alias of the benchmarks.
pub type Result<T> = std::result::Result<T, BenchError>;

/// (img, in_chans, patch, D, blocks, batch) of each benchmark configuration, with the iMixer's
/// iMLP knobs (solver, n_iter) as given.
pub fn bench_config(
    name: &str,
    family: Family,
    imixer: &IMixerConfig,
) -> Result<(ModelConfig, usize)> {
    let (img, c, p, d, depth, batch) = match name {
        "fmnist-tiny" => (28, 1, 4, 128, 4, 128),
        "cifar-s" => (32, 3, 4, 256, 8, 128),
        "s16-224" => (224, 3, 16, 512, 8, 16),
        other => return Err(BenchError::UnknownConfig(other.to_string())),
    };
    let cfg = ModelConfig {
        family,
        img_size: img,
        in_chans: c,
        patch_size: p,
        embed_dim: d,
        depth,
        num_classes: 10,
        lambda: if family == Family::AsymMixer {
            0.1
        } else {
            0.0
        },
        imixer: imixer.clone(),
        ..ModelConfig::default()
    };
    Ok((cfg, batch))
}

#[derive(Serialize, Debug)]
pub struct BenchResult {
    pub r#impl: &'static str,
    pub family: String,
    pub config: String,
    pub mode: String,
    pub threads: usize,
    /// Data-parallel shards per batch (`train::Shards`).
    pub shards: usize,
    pub batch: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub img_per_s: f64,
    pub peak_rss_mb: f64,
    /// Matmul FLOPs of one step ([`step_flops`]) and the rate achieved: FLOPs ÷ median time.
    pub gflop_per_step: f64,
    pub gflops: f64,
    /// How the step ran: the CPU, the vector ISA of the fused kernels, the kernel path.
    pub cpu: String,
    pub isa: &'static str,
    pub kernels: &'static str,
    pub precision: &'static str,
    /// What multiplied the matrices: `gemm` (f32, or bf16-rounded operands at bf16) or
    /// `onednn-amx` / `onednn-avx512-bf16` (bf16 on AMX tiles or AVX512-BF16 units,
    /// [`crate::kernels::onednn`]).
    pub matmul: &'static str,
    /// iMixer runs: the iMLP solver and its iteration count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_iter: Option<usize>,
}

/// Multiply-add FLOPs (2 per multiply-add) of the matmuls of one sample's forward: the stem,
/// every MLP of every block (× the block's `n_iter` repeats; the iMLP's fc1, its `n_iter`
/// fixed-point steps and fc2) and the head. Elementwise work, normalisation and the
/// spectral-norm power iterations are left out, as in the usual "model FLOPs" of a benchmark.
pub fn forward_flops_per_sample(cfg: &ModelConfig) -> f64 {
    let (n, d) = (cfg.num_tokens() as f64, cfg.embed_dim as f64);
    let (dt, dc) = (cfg.tokens_dim() as f64, cfg.channels_dim() as f64);
    let patch = (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f64;
    let token_mlp = match cfg.family {
        Family::IMixer => {
            let inner = cfg.imlp_inner_dim() as f64;
            d * (2.0 * n * dt + cfg.imixer.n_iter as f64 * 2.0 * dt * inner)
        }
        _ => d * 2.0 * n * dt,
    };
    let channel_mlp = n * 2.0 * d * dc;
    let blocks = cfg.depth as f64 * cfg.n_iter as f64 * (token_mlp + channel_mlp);
    2.0 * (n * patch * d + blocks + d * cfg.num_classes as f64)
}

/// The engine of this process's model matmuls at the current precision (see
/// [`BenchResult::matmul`]).
pub fn matmul_engine() -> &'static str {
    match crate::kernels::onednn::unit() {
        Some(unit) if crate::kernels::precision() == crate::kernels::Precision::Bf16 => {
            unit.engine_name()
        }
        _ => "gemm",
    }
}

/// Matmul FLOPs of one step of `batch` samples: the forward, and for training the backward's two
/// matmuls per forward matmul (input and weight gradients), i.e. 3× the forward.
pub fn step_flops(cfg: &ModelConfig, batch: usize, mode: &str) -> f64 {
    let passes = if mode == "train" { 3.0 } else { 1.0 };
    passes * batch as f64 * forward_flops_per_sample(cfg)
}

/// The CPU's model name (`/proc/cpuinfo`), or "unknown CPU".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// How a benchmark run is timed and threaded.
#[derive(Clone, Debug)]
pub struct Timing {
    /// The device the step runs on.
    pub device: Device,
    pub threads: usize,
    /// Data-parallel shards per batch (`train::Shards`).
    pub shards: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Timed steps (at least one is always timed).
    pub steps: usize,
    /// Stop timing after this many seconds.
    pub budget_s: f64,
}

/// Times `mode` on one of the PyTorch-baseline configurations (`bench_config`).
pub fn run(
    config: &str,
    family: Family,
    imixer: &IMixerConfig,
    mode: &str,
    timing: &Timing,
) -> Result<BenchResult> {
    let (cfg, batch) = bench_config(config, family, imixer)?;
    run_model(config, &cfg, batch, mode, timing)
}

/// Times `mode` (train: forward + loss + backward + AdamW; infer: the eval forward) on any model
/// configuration at batch `batch`, with random inputs; `label` names the configuration in the
/// result.
pub fn run_model(
    label: &str,
    cfg: &ModelConfig,
    batch: usize,
    mode: &str,
    timing: &Timing,
) -> Result<BenchResult> {
    let dev = timing.device.clone();
    let model = MixerNet::new(cfg, 0, &dev)?;
    let x = crate::params::seeded_normal(
        0,
        &[batch, cfg.in_chans, cfg.img_size, cfg.img_size],
        1.0,
        DType::F32,
        &dev,
    )?;
    let classes = cfg.num_classes as u32;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes).collect();
    let labels = Tensor::new(labels.as_slice(), &dev)?;
    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            lr: 5e-4,
            ..AdamWConfig::default()
        },
    )?;
    let shards = Shards::for_device(timing.shards, timing.threads, &dev)?;
    let mut times = Vec::new();
    let start = Instant::now();
    for i in 0..timing.warmup + timing.steps.max(1) {
        let t0 = Instant::now();
        match mode {
            "train" => {
                let targets = Targets::Hard(&labels);
                train_step(&model, &mut opt, &shards, &x, targets, i as u64, None)?;
            }
            "infer" => {
                let logits = shards.infer(&model, &x)?;
                logits.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            }
            other => return Err(BenchError::UnknownMode(other.to_string())),
        }
        if i >= timing.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if start.elapsed().as_secs_f64() > timing.budget_s {
                break;
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let imixer = (cfg.family == Family::IMixer).then_some(&cfg.imixer);
    Ok(BenchResult {
        r#impl: "imixer",
        family: cfg.family.to_string(),
        config: label.to_string(),
        mode: mode.to_string(),
        threads: timing.threads,
        shards: shards.count(),
        batch,
        median_ms: median,
        min_ms: times[0],
        img_per_s: batch as f64 / (median / 1e3),
        peak_rss_mb: peak_rss_mb(),
        gflop_per_step: step_flops(cfg, batch, mode) / 1e9,
        gflops: step_flops(cfg, batch, mode) / 1e9 / (median / 1e3),
        cpu: cpu_model(),
        isa: crate::kernels::isa().name(),
        kernels: crate::kernels::kernel_path().name(),
        precision: crate::kernels::precision().name(),
        matmul: matmul_engine(),
        solver: imixer.map(|m| match &m.solver {
            Solver::Unrolled => "unrolled".to_string(),
            Solver::Picard { .. } => "picard".to_string(),
            Solver::Anderson { m, .. } => format!("anderson(m={m})"),
        }),
        n_iter: imixer.map(|m| m.n_iter),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_typed_errors() {
        let imixer = IMixerConfig::default();
        assert!(matches!(
            bench_config("cifar-xl", Family::Mixer, &imixer),
            Err(BenchError::UnknownConfig(n)) if n == "cifar-xl"
        ));
        let (cfg, _) = bench_config("fmnist-tiny", Family::Mixer, &imixer).unwrap();
        let timing = Timing {
            device: Device::Cpu,
            threads: 1,
            shards: 1,
            warmup: 0,
            steps: 1,
            budget_s: 1.0,
        };
        assert!(matches!(
            run_model("t", &cfg, 2, "fit", &timing),
            Err(BenchError::UnknownMode(m)) if m == "fit"
        ));
    }
}
