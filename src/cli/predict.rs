//! `imixer predict`: top-5 classes with probabilities for image files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Args;

use super::eval::{eval_transform, load_for_inference};
use super::exec_args::ExecArgs;
use super::model_args::ModelArgs;
use super::output::outln;
use imixer::data::RawImage;
use imixer::train::eval::rank;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Checkpoint of a run (class names come from it), a timm safetensors or a PyTorch .pth /
    /// .pth.tar / .bin file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Class names, comma-separated (when the checkpoint has none).
    #[arg(long)]
    pub classes: Option<String>,
    /// Filter of the resize before the centre crop: bilinear or bicubic (default: the run's
    /// setting, else bilinear for ≤ 32 px models and bicubic above).
    #[arg(long, value_name = "bilinear|bicubic")]
    pub interpolation: Option<imixer::data::Interpolation>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
    /// Image files (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let loaded = load_for_inference(&a.checkpoint, &a.model, &a.exec.apply()?)?;
    let (net, saved_classes, saved_tf) = (loaded.net, loaded.classes, loaded.eval_transform);
    let k = net.config.num_classes;
    let classes: Vec<String> = match (&a.classes, saved_classes) {
        (Some(c), _) => c.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(c)) => c,
        (None, None) => (0..k).map(|i| i.to_string()).collect(),
    };
    if classes.len() != k {
        anyhow::bail!(
            "{} class names given for a model with {k} classes",
            classes.len()
        );
    }
    let tf = eval_transform(&net, saved_tf, None, a.interpolation);
    for path in &a.images {
        let img =
            image::open(path).with_context(|| format!("cannot decode image {}", path.display()))?;
        let raw = if net.config.in_chans == 1 {
            let g = img.to_luma8();
            RawImage::new(g.width() as usize, g.height() as usize, 1, g.into_raw())?
        } else {
            let c = img.to_rgb8();
            RawImage::new(c.width() as usize, c.height() as usize, 3, c.into_raw())?
        };
        let x = tf.apply(&raw)?;
        let t = Tensor::from_vec(x.data, (1, x.c, x.h, x.w), net.device())?;
        let logits = net.infer(&t)?;
        let probs = candle_nn::ops::softmax(&logits, 1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let top: Vec<(String, f32)> = rank(&probs)
            .into_iter()
            .take(a.top)
            .map(|i| (classes[i].clone(), probs[i]))
            .collect();
        if a.json {
            let preds: Vec<_> = top
                .iter()
                .map(|(c, p)| serde_json::json!({"class": c, "probability": p}))
                .collect();
            outln!(
                "{}",
                serde_json::json!({"image": path.display().to_string(), "top": preds})
            )?;
        } else {
            outln!("{}", path.display())?;
            for (c, p) in top {
                outln!("  {p:7.4}  {c}")?;
            }
        }
    }
    Ok(())
}
