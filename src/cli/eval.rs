//! `imixer eval`: top-1/top-5, loss, per-class accuracy and a confusion-matrix PNG.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use candle_core::Device;
use clap::Args;

use super::data_fit::{self, TrainedOn};
use super::exec_args::ExecArgs;
use super::model_args::{report, ModelArgs};
use super::output::outln;
use imixer::data::{self, DatasetKind, EvalTransform, Interpolation, Loader, LoaderConfig};
use imixer::train::eval::evaluate;
use imixer::train::state;
use imixer::MixerNet;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Checkpoint: last.safetensors / best.safetensors of a run, a timm safetensors file, or a
    /// PyTorch .pth / .pth.tar / .bin (zip or legacy torch.save format).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data set to evaluate on (default: the one the run trained on, from the checkpoint):
    /// fashion-mnist, mnist, cifar10, cifar100 (binary or python version), folder or food101.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Data directory (default: the run's, for the run's data set; else the standard location).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate on a data set whose images differ from the model's input (other channels or
    /// image size): convert them (grey copied into RGB, RGB averaged to grey, resized) instead
    /// of refusing.
    #[arg(long)]
    pub adapt_images: bool,
    /// Evaluate the training split instead of the held-out one.
    #[arg(long)]
    pub train_split: bool,
    /// Centre-crop fraction (default: the run's setting, else 1 for ≤ 32 px and 0.875 above).
    #[arg(long)]
    pub crop_pct: Option<f64>,
    /// Filter of the resize before the centre crop: bilinear or bicubic (default: the run's
    /// setting, else bilinear for ≤ 32 px and bicubic above, as timm evaluates these models).
    #[arg(long, value_name = "bilinear|bicubic")]
    pub interpolation: Option<Interpolation>,
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

/// A checkpoint loaded for inference, with what its run saved about how to use it.
pub struct ForInference {
    pub net: MixerNet,
    pub classes: Option<Vec<String>>,
    pub eval_transform: Option<EvalTransform>,
    /// The data set the run trained on (from its saved training config).
    pub trained_on: Option<TrainedOn>,
}

/// Loads a checkpoint (any format, [`imixer::checkpoint::load_model`]) with its class names, the
/// run's eval transform and data set (when stored), telling the user on stderr how the file was
/// read.
pub fn load_for_inference(
    path: &std::path::Path,
    model: &ModelArgs,
    dev: &Device,
) -> Result<ForInference> {
    let loaded = imixer::checkpoint::load_model(path, &model.spec()?, dev)?;
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
    let run = match metadata.get(state::TRAIN_CONFIG_KEY) {
        None => None,
        Some(t) => match toml::from_str::<imixer::train::TrainConfig>(t) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!(
                    "warning: {}: the stored training config is unreadable ({e}); its data set and eval transform are not used",
                    path.display()
                );
                None
            }
        },
    };
    let trained_on = run.as_ref().map(|c| TrainedOn {
        dataset: c.dataset,
        data_dir: c.data_dir.clone(),
    });
    let eval_tf = run.map(|c| c.eval_transform);
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
    Ok(ForInference {
        net,
        classes,
        eval_transform: eval_tf,
        trained_on,
    })
}

/// The eval transform for a model: the run's (resized to the model), else a sensible default
/// (native-size models: no resize margin, bilinear; larger ones: the papers' crop_pct 0.875 and
/// bicubic). The flags override either.
pub fn eval_transform(
    net: &MixerNet,
    saved: Option<EvalTransform>,
    crop_pct: Option<f64>,
    interpolation: Option<Interpolation>,
) -> EvalTransform {
    let (size, chans) = (net.config.img_size, net.config.in_chans);
    let native = size <= 32;
    let mut t = saved.unwrap_or_else(|| EvalTransform {
        crop_pct: if native { 1.0 } else { 0.875 },
        interpolation: if native {
            Interpolation::Bilinear
        } else {
            Interpolation::Bicubic
        },
        ..EvalTransform::spec(size, chans)
    });
    t.image_size = size;
    t.in_chans = chans;
    if let Some(c) = crop_pct {
        t.crop_pct = c;
    }
    if let Some(i) = interpolation {
        t.interpolation = i;
    }
    t
}

pub fn run(a: EvalArgs) -> Result<()> {
    imixer::threads::set_threads(a.threads);
    let loaded = load_for_inference(&a.checkpoint, &a.model, &a.exec.apply()?)?;
    let net = &loaded.net;
    let choice = data_fit::choose(
        a.dataset,
        a.data_dir.as_deref(),
        loaded.trained_on.as_ref(),
        &a.checkpoint,
    )?;
    let dir = choice.dir.clone();
    let ds = data::load_dataset(choice.kind, &dir)?;
    data_fit::check_images(&net.config, &ds, &choice, a.adapt_images, &a.checkpoint)?;
    let stored = loaded.classes.as_deref();
    data_fit::check_classes(&net.config, stored, &ds, &choice, &a.checkpoint)?;
    let classes = ds.classes.clone();
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
    let tf = eval_transform(
        net,
        loaded.eval_transform.clone(),
        a.crop_pct,
        a.interpolation,
    );
    let loader = Loader::new(Arc::new(split), tf, LoaderConfig::eval(a.batch_size))?;
    let shards = imixer::train::Shards::for_device(a.shards, a.threads, net.device())?;
    let report = evaluate(net, &shards, &loader, classes.len())?;
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
    let drawn = match imixer::plot::confusion_matrix(&png, &report.confusion, &classes) {
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
        v["dataset"] = serde_json::Value::String(choice.kind.name().to_string());
        v["data_dir"] = serde_json::Value::String(dir.display().to_string());
        v["confusion_png"] = if drawn {
            serde_json::Value::String(png.display().to_string())
        } else {
            serde_json::Value::Null
        };
        outln!("{v}")?;
    } else {
        outln!(
            "{} ({})  images {}  loss {:.4}  top-1 {:.4}  top-5 {:.4}",
            choice.kind,
            dir.display(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use imixer::config::ModelConfig;

    fn net(img_size: usize) -> MixerNet {
        let cfg = ModelConfig {
            img_size,
            patch_size: img_size / 2,
            embed_dim: 8,
            depth: 1,
            num_classes: 3,
            ..ModelConfig::default()
        };
        MixerNet::new(&cfg, 0, &Device::Cpu).unwrap()
    }

    #[test]
    fn unconfigured_checkpoints_get_timm_eval_interpolation_and_flags_override() {
        let small = eval_transform(&net(32), None, None, None);
        assert_eq!(
            (small.crop_pct, small.interpolation),
            (1.0, Interpolation::Bilinear)
        );
        let big = eval_transform(&net(64), None, None, None);
        assert_eq!(
            (big.crop_pct, big.interpolation),
            (0.875, Interpolation::Bicubic)
        );
        let forced = eval_transform(&net(64), None, Some(1.0), Some(Interpolation::Bilinear));
        assert_eq!(
            (forced.crop_pct, forced.interpolation),
            (1.0, Interpolation::Bilinear)
        );
        // A run's stored transform wins over the size-based default, the flag over both.
        let saved = EvalTransform {
            interpolation: Interpolation::Bilinear,
            ..EvalTransform::spec(224, 3)
        };
        let t = eval_transform(&net(64), Some(saved.clone()), None, None);
        assert_eq!(
            (t.image_size, t.interpolation),
            (64, Interpolation::Bilinear)
        );
        let t = eval_transform(&net(64), Some(saved), None, Some(Interpolation::Bicubic));
        assert_eq!(t.interpolation, Interpolation::Bicubic);
    }
}
