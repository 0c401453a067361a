//! The command-line interface: one subcommand per task, one file per subcommand.

mod bench;
mod data_fit;
mod dynamics;
mod energy_demo;
mod eval;
mod export;
mod inspect;
mod model_args;
mod models;
pub mod output;
mod predict;
mod sweep;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "imixer",
    // "0.1.0 (commit 9b3f529)", from build.rs.
    version = env!("IMIXER_VERSION"),
    about = "Train, evaluate and analyse iMixer, ParaMixer/SymMixer/AsymMixer and MLP-Mixer models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List every registered model name with its parameter count.
    Models(models::ModelsArgs),
    /// Train a model on real data (Fashion-MNIST by default) with the papers' recipe.
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint: top-1/top-5, loss, per-class accuracy, confusion matrix.
    Eval(eval::EvalArgs),
    /// Predict the top classes of image files.
    Predict(predict::PredictArgs),
    /// Convert a checkpoint (PyTorch .pth / .pth.tar / .bin, timm or imixer safetensors) into a
    /// model-only safetensors under the reference names, plus a config.json.
    Export(export::ExportArgs),
    /// Spectral norms, fixed-point convergence and weight symmetry of a trained model.
    Inspect(inspect::InspectArgs),
    /// AsymMixer continuous-time demo: energy descent (symmetric) vs. non-descent (asymmetric).
    Dynamics(dynamics::DynamicsArgs),
    /// Energy MetaFormer: a 3-layer Hopfield denoiser with monotone energy descent.
    EnergyDemo(energy_demo::EnergyDemoArgs),
    /// Train a grid of settings × seeds side by side (resumable) and summarise it as mean ± std.
    Sweep(sweep::SweepArgs),
    /// Time train/inference steps on the PyTorch-baseline configurations.
    Bench(bench::BenchArgs),
}

/// Sets the worker-thread count of candle's kernels, its matmuls and our own kernels (0: all
/// cores). Must run before the first tensor operation. Always pinned explicitly: when the
/// variables are unset, candle re-derives the core count (reading /proc) on every matmul.
///
/// candle runs its own elementwise ops on a second pool ("barrier pool") beside rayon's, whose
/// workers busy-wait 25 000 spins after every op by default. Those spins take the core from the
/// rayon workers (matmuls, our kernels) and the data-loader threads that run next, so we make
/// them park at once: Fashion-MNIST training throughput +15 % (`imixer_n4_28`, 355 → 405 img/s,
/// 2 cores, three alternated runs each), the standalone benchmarks unchanged within noise.
/// Values already set in the environment (`CANDLE_NUM_THREADS`,
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`) are kept, for experiments.
pub fn set_threads(n: usize) {
    let n = if n > 0 {
        n
    } else {
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    set_var_unless_set("CANDLE_NUM_THREADS", &n.to_string());
    set_var_unless_set("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

fn set_var_unless_set(key: &str, value: &str) {
    if std::env::var_os(key).is_none() {
        std::env::set_var(key, value);
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    // IMIXER_KERNELS / IMIXER_ISA: a bad value is an error here, before any work.
    crate::kernels::init_from_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Models(a) => models::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Export(a) => export::run(a),
        Command::Dynamics(a) => dynamics::run(a),
        Command::EnergyDemo(a) => energy_demo::run(a),
    }
}
