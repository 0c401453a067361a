//! The command-line interface: one subcommand per task, one file per subcommand.

mod bench;
mod data_fit;
mod dynamics;
mod energy_demo;
mod eval;
mod exec_args;
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

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    // IMIXER_KERNELS / IMIXER_ISA: a bad value is an error here, before any work.
    imixer::kernels::init_from_env().map_err(anyhow::Error::msg)?;
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
