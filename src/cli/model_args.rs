//! The flags every command that loads a checkpoint shares: which model the file holds (for files
//! that store no settings, or to override them) and which of its weights to use.

use anyhow::Result;
use clap::Args;

use imixer::checkpoint::{Loaded, ModelSpec, Weights};
use imixer::config::Family;

#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Registered model name (`imixer models`) the checkpoint holds; without it the settings
    /// come from the file (imixer's stored configuration, else the tensor shapes). The flags
    /// below override it.
    #[arg(long)]
    pub model: Option<String>,
    /// Model family, for a file whose weights do not tell (paramixer and asymmixer store the same
    /// tensors).
    #[arg(long, conflicts_with = "model")]
    pub family: Option<Family>,
    /// Number of classes of the head.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Input image size (pixels per side).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// iMixer fixed-point steps, or paper-2 block repeats. Not stored in weights: a file without
    /// settings uses its training arguments (`args.n_iter`) or the default, with a warning.
    #[arg(long)]
    pub n_iter: Option<usize>,
    /// iMixer: inner width of F relative to the token hidden width (the reference's --h_ratio).
    #[arg(long)]
    pub hidden_ratio: Option<f64>,
    /// Use the checkpoint's EMA weights (imixer's `ema.` tensors, timm's `state_dict_ema`).
    #[arg(long)]
    pub ema: bool,
}

impl ModelArgs {
    /// Whether any setting flag (besides --model and --ema) was given.
    pub fn has_settings(&self) -> bool {
        self.family.is_some()
            || self.num_classes.is_some()
            || self.img_size.is_some()
            || self.n_iter.is_some()
            || self.hidden_ratio.is_some()
    }

    pub fn spec(&self) -> Result<ModelSpec> {
        let mut spec = match &self.model {
            Some(name) => ModelSpec::named(name)?,
            None => ModelSpec::default(),
        };
        spec.family = self.family;
        spec.num_classes = self.num_classes;
        spec.img_size = self.img_size;
        spec.n_iter = self.n_iter;
        spec.hidden_ratio = self.hidden_ratio;
        spec.weights = if self.ema {
            Weights::Ema
        } else {
            Weights::Model
        };
        Ok(spec)
    }
}

/// Tells the user on stderr how the checkpoint was read: notes for what was read, renamed or
/// skipped, warnings for settings that were assumed.
pub fn report(loaded: &Loaded) {
    report_lines(
        &loaded.file_notes,
        &loaded.resolved.notes,
        &loaded.resolved.warnings,
    );
}

pub fn report_lines(file_notes: &[String], notes: &[String], warnings: &[String]) {
    for n in file_notes.iter().chain(notes) {
        eprintln!("note: {n}");
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
