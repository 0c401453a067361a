//! `imixer bench`: time train or inference steps on the PyTorch-baseline configurations.

use anyhow::Result;
use clap::Args;

use super::exec_args::ExecArgs;
use super::output::outln;

use imixer::config::{Family, IMixerConfig, Solver};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub exec: ExecArgs,
    /// fmnist-tiny (28²×1, D 128, 4 blocks, batch 128), cifar-s (32²×3, D 256, 8 blocks, batch 128)
    /// or s16-224 (the paper's S/16, batch 16); comma list or `all`.
    #[arg(long, default_value = "fmnist-tiny")]
    pub config: String,
    /// Model family (comma list or `all`).
    #[arg(long, default_value = "mixer")]
    pub family: String,
    /// train (forward + loss + backward + AdamW) or infer (eval forward); comma list or `all`.
    #[arg(long, default_value = "train")]
    pub mode: String,
    /// Worker threads (matmul and kernels).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Data-parallel shards per batch, as `imixer train --shards` (1: every op split over the
    /// threads instead).
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps (median reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Stop timing after this many seconds (at least one step is always timed).
    #[arg(long, default_value_t = 60.0)]
    pub budget: f64,
    /// iMixer only: iMLP solver — unrolled (backprop through --n-iter steps) or picard/anderson
    /// (implicit gradient). Benchmarks run the solvers for exactly --n-iter iterations (tolerance
    /// 0, cap --n-iter, forward and adjoint), so time and memory are compared at equal work.
    #[arg(long, default_value = "unrolled")]
    pub solver: String,
    /// iMixer only: fixed-point iterations (default: the paper's n_iter 2).
    #[arg(long)]
    pub n_iter: Option<usize>,
    /// iMixer only: Anderson memory m.
    #[arg(long, default_value_t = 5)]
    pub anderson_m: usize,
    /// One JSON line per run instead of a table row.
    #[arg(long)]
    pub json: bool,
}

fn list(arg: &str, all: &[&str]) -> Vec<String> {
    if arg == "all" {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        arg.split(',').map(|s| s.trim().to_string()).collect()
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    imixer::threads::set_threads(a.threads);
    let n_iter = a.n_iter.unwrap_or(IMixerConfig::default().n_iter);
    let solver = Solver::from_name(&a.solver, 0.0, n_iter, a.anderson_m)
        .map_err(|e| anyhow::anyhow!("--solver: {e}"))?;
    let imixer = IMixerConfig {
        n_iter,
        solver,
        ..IMixerConfig::default()
    };
    let timing = imixer::bench::Timing {
        device: a.exec.apply()?,
        threads: a.threads,
        shards: a.shards,
        warmup: a.warmup,
        steps: a.steps,
        budget_s: a.budget,
    };
    let families: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
    if !a.json {
        outln!(
            "{}; fused kernels: {}, kernel path: {}, precision: {}, matmuls: {}",
            imixer::bench::cpu_model(),
            imixer::kernels::isa().name(),
            imixer::kernels::kernel_path().name(),
            imixer::kernels::precision().name(),
            imixer::bench::matmul_engine()
        )?;
    }
    for config in list(&a.config, &["fmnist-tiny", "cifar-s", "s16-224"]) {
        for family in list(&a.family, &families) {
            let family: Family = family.parse().map_err(anyhow::Error::msg)?;
            for mode in list(&a.mode, &["train", "infer"]) {
                let r = imixer::bench::run(&config, family, &imixer, &mode, &timing)?;
                if a.json {
                    outln!("{}", serde_json::to_string(&r)?)?;
                } else {
                    outln!(
                        "{:<12} {:<13} {:<6} threads {} shards {}  median {:8.1} ms  {:8.1} img/s  {:6.1} GFLOP/s  peak RSS {:7.1} MiB",
                        r.config, r.family, r.mode, r.threads, r.shards, r.median_ms, r.img_per_s, r.gflops, r.peak_rss_mb
                    )?;
                }
            }
        }
    }
    Ok(())
}
