//! The command-line interface: one subcommand per task, one file per subcommand.

mod models;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "imixer", version, about = "Train, evaluate and analyse iMixer, ParaMixer/SymMixer/AsymMixer and MLP-Mixer models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List every registered model name with its parameter count.
    Models(models::ModelsArgs),
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Models(a) => models::run(a),
    }
}
