//! `imixer sweep`: train a grid of settings × seeds and summarise it with error bars.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::output::outln;
use imixer::sweep::{run_sweep, SweepOptions};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file: `[base]` training fields, `[grid]` field = [values], `[[runs]]`, `seeds`,
    /// `threads`, `parallel`, `[[plot]]` (docs/results.md shows complete examples).
    #[arg(long)]
    pub config: PathBuf,
    /// Sweep directory: one run directory per setting and seed, results.jsonl, summary.md and
    /// the plots. Running the same command again skips finished runs and resumes the others.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device of every run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SweepArgs) -> Result<()> {
    let signals = Arc::new(AtomicUsize::new(0));
    let handler = signals.clone();
    ctrlc::set_handler(move || {
        if handler.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("interrupt: the running runs save and stop; start no new ones (again to stop them at once)");
        }
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;
    let outcome = run_sweep(
        &a.config,
        &a.out,
        &SweepOptions {
            exe: std::env::current_exe().context("cannot find the imixer binary to run")?,
            device: a.device.clone(),
            progress: !a.json,
            signals: signals.clone(),
        },
    )?;
    if a.json {
        outln!("{}", serde_json::to_string(&outcome)?)?;
    } else {
        eprintln!(
            "sweep: {} runs, {} finished now, {} earlier, {} failed, {} interrupted; {}",
            outcome.planned,
            outcome.finished,
            outcome.skipped,
            outcome.failed.len(),
            outcome.interrupted.len(),
            outcome.summary.display()
        );
    }
    if signals.load(Ordering::SeqCst) > 0 || !outcome.interrupted.is_empty() {
        eprintln!(
            "interrupted: run the same `imixer sweep --config {} --out {}` again to continue",
            a.config.display(),
            a.out.display()
        );
        std::process::exit(super::train::INTERRUPTED_EXIT);
    }
    if !outcome.failed.is_empty() {
        anyhow::bail!(
            "{} of {} runs failed (listed in {}); fix the cause and run the sweep again: finished runs are kept",
            outcome.failed.len(),
            outcome.planned,
            outcome.summary.display()
        );
    }
    Ok(())
}
