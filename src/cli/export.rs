//! `imixer export`: any checkpoint → a model-only safetensors under the reference names (which
//! PyTorch loads with `load_state_dict(strict=True)`), plus a `config.json` with the model
//! settings when they are known.
//!
//! Without `--model` only names and format change: the chosen weights (model or `--ema`) are
//! written as they are, DDP prefix stripped, optimizer state and everything else dropped. With
//! `--model` (and the setting flags) they must also fit that model exactly, or the error lists
//! every tensor that does not.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;

use super::model_args::{report_lines, ModelArgs};
use super::output::outln;
use imixer::checkpoint::{self, Checkpoint, CONFIG_KEY};

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint to convert: PyTorch .pth / .pth.tar / .bin (zip or legacy torch.save format,
    /// bare state_dict or training dict), timm or imixer safetensors.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the model settings (default: config.json beside --out). Written only when
    /// the settings are known: stored in the file, given by --model, or read off the shapes.
    #[arg(long)]
    pub config_out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let spec = a.model.spec()?;
    let ckpt = Checkpoint::open(&a.checkpoint, spec.weights)?;
    let validate = spec.config.is_some();
    let resolved = match checkpoint::load::resolve(&ckpt, &spec) {
        Ok(r) => Some(r),
        // With --model (or a setting flag) the file must fit; otherwise a file whose settings
        // cannot be worked out is still converted, tensors as they are.
        Err(e) if validate || a.model.has_settings() => return Err(e.into()),
        Err(e) => {
            eprintln!("warning: the model settings are unknown ({e:#}); writing the tensors without a config.json");
            None
        }
    };
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    if let Some(r) = &resolved {
        notes.clone_from(&r.notes);
        warnings.clone_from(&r.warnings);
    }
    report_lines(&ckpt.notes, &notes, &warnings);
    let (format, weights) = (ckpt.format, ckpt.weights);
    let tensors = ckpt.decode(&Device::Cpu)?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if let Some(r) = &resolved {
        meta.insert(CONFIG_KEY.to_string(), serde_json::to_string(&r.config)?);
    }
    checkpoint::write(&a.out, &tensors, &meta)?;
    outln!(
        "wrote {}: {} tensors ({} weights of the {format} file {})",
        a.out.display(),
        tensors.len(),
        match weights {
            checkpoint::Weights::Model => "model",
            checkpoint::Weights::Ema => "EMA",
        },
        a.checkpoint.display()
    )?;
    if let Some(r) = &resolved {
        let path = a.config_out.clone().unwrap_or_else(|| {
            a.out
                .parent()
                .map_or_else(|| PathBuf::from("config.json"), |d| d.join("config.json"))
        });
        let json = serde_json::to_string_pretty(&r.config)? + "\n";
        imixer::files::write_atomically(&path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!(
            "wrote {}: {} model (settings from {})",
            path.display(),
            r.config.family,
            r.source
        )?;
    }
    Ok(())
}
