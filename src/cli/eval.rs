//! `imixer eval`: top-1/top-5, loss, per-class accuracy and a confusion-matrix PNG.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use candle_core::Device;
use clap::Args;

use super::model_args::{report, ModelArgs};
use super::output::outln;
use crate::data::{self, DatasetKind, EvalTransform, Loader, LoaderConfig};
use crate::train::eval::evaluate;
use crate::train::state;
use crate::MixerNet;

#[derive(Args)]
pub struct EvalArgs {
    /// Matmul precision: fp32 (default) or bf16 (bfloat16 matmul inputs, f32 accumulation).
    #[arg(long, default_value = "fp32")]
    pub precision: crate::kernels::Precision,
    /// Compute device: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Checkpoint: last.safetensors / best.safetensors of a run, a timm safetensors file, or a
    /// PyTorch .pth / .pth.tar / .bin (zip or legacy torch.save format).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate the training split instead of the held-out one.
    #[arg(long)]
    pub train_split: bool,
    /// Centre-crop fraction (default: the run's setting, else 1 for ≤ 32 px and 0.875 above).
    #[arg(long)]
    pub crop_pct: Option<f64>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Where to write the confusion-matrix PNG (default: next to the checkpoint).
    #[arg(long)]
    pub confusion_png: Option<PathBuf>,
    /// Compute threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Data-parallel shards per batch, each on its own share of the threads (as `imixer train
    /// --shards`).
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Loads a checkpoint (any format, [`crate::checkpoint::load_model`]) with its class names and
/// the run's eval transform (when stored), telling the user on stderr how the file was read.
pub fn load_for_inference(
    path: &std::path::Path,
    model: &ModelArgs,
    dev: &Device,
) -> Result<(MixerNet, Option<Vec<String>>, Option<EvalTransform>)> {
    let loaded = crate::checkpoint::load_model(path, &model.spec()?, dev)?;
    report(&loaded);
    let (net, metadata) = (loaded.net, loaded.metadata);
    let classes = state::classes(&metadata);
    if let Some(c) = &classes {
        anyhow::ensure!(
            c.len() == net.config.num_classes,
            "{}: {} class names stored for a model of {} classes",
            path.display(),
            c.len(),
            net.config.num_classes
        );
    }
    let eval_tf = metadata
        .get(state::TRAIN_CONFIG_KEY)
        .and_then(|t| toml::from_str::<crate::train::TrainConfig>(t).ok())
        .map(|c| c.eval_transform);
    if let Some(t) = &eval_tf {
        // The stored transform is checked at the model's size, as it will be used.
        let mut t = t.clone();
        t.image_size = net.config.img_size;
        t.in_chans = net.config.in_chans;
        t.validate().map_err(|e| {
            anyhow::anyhow!(
                "{}: the stored training config has an unusable eval transform: {e}",
                path.display()
            )
        })?;
    }
    Ok((net, classes, eval_tf))
}

/// The eval transform for a model: the run's (resized to the model), else a sensible default.
pub fn eval_transform(
    net: &MixerNet,
    saved: Option<EvalTransform>,
    crop_pct: Option<f64>,
) -> EvalTransform {
    let (size, chans) = (net.config.img_size, net.config.in_chans);
    let mut t = saved.unwrap_or_else(|| EvalTransform {
        crop_pct: if size <= 32 { 1.0 } else { 0.875 },
        ..EvalTransform::spec(size, chans)
    });
    t.image_size = size;
    t.in_chans = chans;
    if let Some(c) = crop_pct {
        t.crop_pct = c;
    }
    t
}

pub fn run(a: EvalArgs) -> Result<()> {
    crate::kernels::set_precision(a.precision);
    super::set_threads(a.threads);
    let (net, saved_classes, saved_tf) =
        load_for_inference(&a.checkpoint, &a.model, &crate::device::open(&a.device)?)?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| data::default_data_dir(a.dataset));
    let ds = data::load_dataset(a.dataset, &dir)?;
    let classes = saved_classes.unwrap_or_else(|| ds.classes.clone());
    if classes.len() != net.config.num_classes {
        anyhow::bail!(
            "the model has {} classes but the data set has {}",
            net.config.num_classes,
            classes.len()
        );
    }
    let split = if a.train_split { ds.train } else { ds.val };
    anyhow::ensure!(
        !split.is_empty(),
        "the {} split of {} is empty: nothing to evaluate",
        if a.train_split {
            "training"
        } else {
            "held-out"
        },
        dir.display()
    );
    let tf = eval_transform(&net, saved_tf, a.crop_pct);
    let loader = Loader::new(Arc::new(split), tf, LoaderConfig::eval(a.batch_size))?;
    let shards = crate::train::Shards::for_device(a.shards, a.threads, net.device())?;
    let report = evaluate(&net, &shards, &loader, classes.len())?;
    let png = a.confusion_png.clone().unwrap_or_else(|| {
        a.checkpoint.with_file_name(format!(
            "{}.confusion.png",
            a.checkpoint
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("eval")
        ))
    });
    // The results come first: a confusion PNG that cannot be written (a read-only checkpoint
    // folder) is a warning, not a reason to withhold them.
    let drawn = match crate::plot::confusion_matrix(&png, &report.confusion, &classes) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "warning: cannot draw the confusion matrix at {} ({e:#}); pass --confusion-png PATH to write it elsewhere",
                png.display()
            );
            false
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["classes"] = serde_json::to_value(&classes)?;
        v["confusion_png"] = if drawn {
            serde_json::Value::String(png.display().to_string())
        } else {
            serde_json::Value::Null
        };
        outln!("{v}")?;
    } else {
        outln!(
            "images {}  loss {:.4}  top-1 {:.4}  top-5 {:.4}",
            report.images,
            report.loss,
            report.top1,
            report.top5
        )?;
        for (c, acc) in classes.iter().zip(&report.per_class_accuracy) {
            outln!("  {c:<20} {acc:.4}")?;
        }
        if drawn {
            outln!("confusion matrix: {}", png.display())?;
        }
    }
    Ok(())
}
