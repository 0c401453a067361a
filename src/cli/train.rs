//! `imixer train`: train a model on real data with the papers' recipe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::output::outln;
use imixer::data::transforms::SpatialAug;
use imixer::data::{DatasetKind, Interpolation, TrainInterpolation};
use imixer::train::config::SchedUnit;
use imixer::train::lr_scale::LrScale;
use imixer::train::TrainError;
use imixer::train::{train, RunOptions, TrainConfig};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Compute device: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Registered model name (see `imixer models`); default per data set (paramixer_n4_28 for
    /// Fashion-MNIST/MNIST, imixer_s4_32 for CIFAR, imixer_s16_224 for folders and Food-101).
    #[arg(long)]
    pub model: Option<String>,
    /// fashion-mnist (default), mnist, cifar10, cifar100 (binary or python version, detected
    /// from the files), folder or food101 (its own images/ + meta/ layout).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Data directory (default: /usr/share/datasets/fashion-mnist for Fashion-MNIST, data/ for
    /// CIFAR and Food-101, which may hold the extracted folder, data/images for folders).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML file with any training-config field (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory for checkpoints, metrics.jsonl and curves.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from last.safetensors (bit-identical to an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh in an --out that holds an earlier run's files, replacing them.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Epochs of the cosine schedule.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs at min-lr after the cosine (timm cool-down).
    #[arg(long)]
    pub cooldown_epochs: Option<usize>,
    /// Linear warm-up length in epochs.
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Images per batch (per micro-batch with --grad-accum); an lr not given is rescaled to it.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate, used as given (default: derived from the data set's --lr-base at the
    /// run's global batch).
    #[arg(long, conflicts_with_all = ["lr_base", "lr_base_size", "lr_base_scale"])]
    pub lr: Option<f64>,
    /// Base learning rate at a global batch of --lr-base-size (timm): lr = lr_base · ratio,
    /// ratio = batch·grad_accum / lr_base_size, or its square root with --lr-base-scale sqrt.
    /// Default per data set: 5e-3 at 64 (Fashion-MNIST/MNIST), 1e-3 at 128 (CIFAR), 5e-4 at 512
    /// linear (image folders, paper 2). Any --lr-base* flag replaces an lr of --config.
    #[arg(long)]
    pub lr_base: Option<f64>,
    /// The global batch at which --lr-base holds.
    #[arg(long)]
    pub lr_base_size: Option<usize>,
    /// linear or sqrt (default: timm's rule, sqrt for AdamW; linear for image folders).
    #[arg(long)]
    pub lr_base_scale: Option<LrScale>,
    /// Final learning rate of the cosine.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Learning rate at the start of warm-up.
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    /// Decoupled AdamW weight decay (not applied to 1-D tensors and biases).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Advance the schedule per `epoch` (papers) or per `step`.
    #[arg(long, value_parser = parse_sched)]
    pub sched_on: Option<SchedUnit>,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Seed of every random choice (init, order, augmentation, mixing, drop-path).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Drop-path rate, same in every block.
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// iMixer: iMLP solver — unrolled (reference, n_iter steps), picard or anderson (solve to
    /// --solver-tol with implicit gradients).
    #[arg(long)]
    pub solver: Option<String>,
    /// Paper-2 models: weight λ of the symmetry-breaking term λ·Σ‖W2‖² (overrides the model's;
    /// `asymmixer_*` names default to 0.1).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Relative residual tolerance of the picard/anderson solver.
    #[arg(long, default_value_t = 1e-4)]
    pub solver_tol: f64,
    /// Iteration cap of the picard/anderson solver (a warning names blocks that hit it).
    #[arg(long, default_value_t = 30)]
    pub solver_max_iter: usize,
    /// Anderson memory m.
    #[arg(long, default_value_t = 5)]
    pub anderson_m: usize,
    /// Geometric augmentation: RandomCrop with this many pixels of zero padding (0 = none;
    /// replaces the data set's default, e.g. RandomResizedCrop for image folders).
    #[arg(long)]
    pub crop_padding: Option<usize>,
    /// Horizontal-flip probability.
    #[arg(long)]
    pub hflip: Option<f64>,
    /// RandAugment policy in timm syntax (e.g. rand-m9-mstd0.5-inc1), or `none`.
    #[arg(long)]
    pub randaugment: Option<String>,
    /// Random-erasing probability (pixel mode).
    #[arg(long)]
    pub reprob: Option<f64>,
    /// Filter of the training resize and of RandAugment's rotate/shear/translate: bilinear,
    /// bicubic, or random (timm: a uniform draw between the two at every use). Default: random
    /// for image folders and Food-101, bilinear for the native-size 28/32-px data sets.
    #[arg(long, value_name = "bilinear|bicubic|random")]
    pub train_interpolation: Option<TrainInterpolation>,
    /// Mixup alpha (0 disables).
    #[arg(long)]
    pub mixup: Option<f64>,
    /// CutMix alpha (0 disables).
    #[arg(long)]
    pub cutmix: Option<f64>,
    /// Probability of mixing a batch.
    #[arg(long)]
    pub mixup_prob: Option<f64>,
    /// Probability of CutMix instead of Mixup when both are on.
    #[arg(long)]
    pub mixup_switch_prob: Option<f64>,
    /// Label smoothing.
    #[arg(long)]
    pub smoothing: Option<f64>,
    /// Evaluation centre-crop fraction (timm crop_pct; 1 = no resize margin).
    #[arg(long)]
    pub crop_pct: Option<f64>,
    /// Filter of the evaluation resize: bilinear or bicubic. Default: bicubic for image folders
    /// and Food-101 (timm's eval of these models), bilinear for the native-size data sets.
    #[arg(long, value_name = "bilinear|bicubic")]
    pub interpolation: Option<Interpolation>,
    /// Train on a random subset of this many images.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Evaluate on a random subset of this many images.
    #[arg(long)]
    pub val_subset: Option<usize>,
    /// Also save last.safetensors every N optimizer steps within an epoch.
    #[arg(long)]
    pub save_every_steps: Option<usize>,
    /// Loader threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-parallel shards per batch (default 2): the batch splits into this many slices that
    /// run side by side, each on its own share of the threads, gradients summed in shard order.
    /// Faster than splitting every op over the cores for small models; the result depends on
    /// the shard count, never on --threads.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Matmul precision: fp32 (default, golden-exact) or bf16 (bfloat16 matmul inputs with f32
    /// accumulation; weights, optimizer state, LayerNorm, loss and spectral norms stay f32).
    #[arg(long)]
    pub precision: Option<imixer::kernels::Precision>,
    /// Fine-tune: start from this checkpoint's weights (an imixer run's, or a reference
    /// state_dict file) with a fresh optimizer and schedule. The head is re-initialised when its
    /// class count differs from the data set's; without --model (or a model in --config) the
    /// checkpoint's own model configuration is used.
    #[arg(long)]
    pub initial_checkpoint: Option<PathBuf>,
    /// Keep an exponential moving average of the weights (timm ModelEmaV2), updated every
    /// optimizer step, evaluated every epoch (val_*_ema in metrics.jsonl), saved in the
    /// checkpoints as ema.* tensors; best.safetensors is then picked by the EMA's top-1.
    #[arg(long)]
    pub model_ema: bool,
    /// EMA decay per optimizer step (default 0.9998, timm's).
    #[arg(long)]
    pub model_ema_decay: Option<f64>,
    /// Print the final metrics as one JSON object on stdout (no progress bars).
    #[arg(long)]
    pub json: bool,
    /// Stop after N optimizer steps, saving last.safetensors (for testing --resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
}

fn parse_sched(s: &str) -> Result<SchedUnit, String> {
    match s {
        "epoch" => Ok(SchedUnit::Epoch),
        "step" => Ok(SchedUnit::Step),
        _ => Err(format!("--sched-on must be epoch or step, not {s}")),
    }
}

/// defaults(dataset) → TOML file → flags.
pub fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
    let file: toml::Table = match &a.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?,
        )
        .with_context(|| format!("{} is not valid TOML", p.display()))?,
        None => toml::Table::new(),
    };
    // Whether anything chose the model: else a fine-tune takes the checkpoint's.
    let model_chosen =
        a.model.is_some() || file.contains_key("model") || file.contains_key("model_config");
    let mut c = TrainConfig::from_table(a.dataset, file).with_context(|| {
        format!(
            "{}: unknown or mistyped field (see `imixer train --help`)",
            a.config
                .as_ref()
                .map_or("the training config".into(), |p| p.display().to_string())
        )
    })?;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { c.$field = v; } )* };
    }
    macro_rules! set_opt {
        ($($field:ident),*) => { $( if a.$field.is_some() { c.$field = a.$field.clone(); } )* };
    }
    set!(
        epochs,
        cooldown_epochs,
        warmup_epochs,
        batch_size,
        min_lr,
        warmup_lr,
        weight_decay,
        sched_on,
        grad_accum,
        seed,
        drop_path,
        workers,
        threads,
        shards,
        precision
    );
    set_opt!(
        data_dir,
        save_every_steps,
        train_subset,
        val_subset,
        initial_checkpoint,
        lambda
    );
    // The lr is resolved from the final batch (`TrainConfig::peak_lr`): a given --lr is used as
    // is, and any --lr-base* flag means "derive it", over an lr of the config file.
    if a.lr.is_some() {
        c.lr = a.lr;
    }
    if a.lr_base.is_some() || a.lr_base_size.is_some() || a.lr_base_scale.is_some() {
        c.lr = None;
    }
    set!(lr_base, lr_base_size, model_ema_decay);
    if a.lr_base_scale.is_some() {
        c.lr_base_scale = a.lr_base_scale;
    }
    if a.model_ema {
        c.model_ema = true;
    }
    if let Some(m) = &a.model {
        c.model = m.clone();
        c.model_config = None;
    }
    if let Some(o) = &a.out {
        c.out = o.clone();
    }
    if a.clip_grad.is_some() {
        c.clip_grad = a.clip_grad;
    }
    if let Some(s) = &a.solver {
        c.solver = Some(
            imixer::config::Solver::from_name(s, a.solver_tol, a.solver_max_iter, a.anderson_m)
                .map_err(|e| anyhow::anyhow!("--solver: {e}"))?,
        );
    }
    if let Some(p) = a.crop_padding {
        c.train_transform.spatial = SpatialAug::random_crop(p);
    }
    if let Some(v) = a.hflip {
        c.train_transform.hflip = v;
    }
    if let Some(r) = &a.randaugment {
        c.train_transform.rand_augment = if r == "none" {
            None
        } else {
            Some(imixer::data::transforms::RandAugment::parse(r)?)
        };
    }
    if let Some(v) = a.reprob {
        c.train_transform.random_erase = v;
    }
    if let Some(v) = a.mixup {
        c.mixup.mixup_alpha = v;
        if v > 0.0 && c.mixup.prob == 0.0 {
            c.mixup.prob = 1.0;
        }
    }
    if let Some(v) = a.cutmix {
        c.mixup.cutmix_alpha = v;
        if v > 0.0 && c.mixup.prob == 0.0 {
            c.mixup.prob = 1.0;
        }
    }
    if let Some(v) = a.mixup_prob {
        c.mixup.prob = v;
    }
    if let Some(v) = a.mixup_switch_prob {
        c.mixup.switch_prob = v;
    }
    if let Some(v) = a.smoothing {
        c.mixup.label_smoothing = v;
    }
    if let Some(v) = a.crop_pct {
        c.eval_transform.crop_pct = v;
    }
    if let Some(v) = a.train_interpolation {
        c.train_transform.interpolation = v;
    }
    if let Some(v) = a.interpolation {
        c.eval_transform.interpolation = v;
    }
    if let (Some(path), false) = (&c.initial_checkpoint, model_chosen) {
        if let Some(m) = imixer::train::finetune::stored_model_config(path)? {
            eprintln!(
                "fine-tuning the model stored in {} ({}, {}×{}×{} images, patch {}, D {}, depth {})",
                path.display(),
                m.family,
                m.img_size,
                m.img_size,
                m.in_chans,
                m.patch_size,
                m.embed_dim,
                m.depth
            );
            c.model_config = Some(m);
        }
    }
    Ok(c)
}

/// Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Ctrl-C and SIGTERM set the returned flag (the run stops at the next step boundary after
/// saving `last`); a second one ends the process at once.
fn stop_on_signal() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: stopping now; resume from the last saved checkpoint");
            std::process::exit(INTERRUPTED_EXIT);
        }
        eprintln!(
            "interrupt: saving last.safetensors at the next step boundary (again to stop now)"
        );
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;
    Ok(flag)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = resolve(&a)?;
    imixer::threads::set_threads(cfg.threads);
    let result = train(
        &cfg,
        &RunOptions {
            device: a.device.parse()?,
            resume: a.resume,
            overwrite: a.overwrite,
            progress: !a.json,
            stop_after_steps: a.stop_after_steps,
            stop: Some(stop_on_signal()?),
        },
    );
    let summary = match result {
        Ok(s) => s,
        Err(e @ TrainError::Interrupted(_)) => {
            eprintln!("{e}");
            std::process::exit(INTERRUPTED_EXIT);
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else {
        // With --model-ema the EMA's top-1 picks best (as in timm).
        let (ema, best) = match summary.final_val_top1_ema {
            Some(t) => (format!(", EMA top-1 {t:.4}"), "best EMA"),
            None => (String::new(), "best"),
        };
        eprintln!(
            "done: {} ({} params) val top-1 {:.4} top-5 {:.4}{ema} ({best} {:.4} at epoch {:?}) in {:.0} s; run in {}",
            summary.model,
            summary.params,
            summary.final_val_top1,
            summary.final_val_top5,
            summary.best_val_top1,
            summary.best_epoch,
            summary.train_seconds,
            summary.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn resolved(args: &[&str]) -> TrainConfig {
        let cli = Cli::try_parse_from(std::iter::once("imixer-train").chain(args.iter().copied()))
            .expect("valid flags");
        resolve(&cli.train).expect("resolvable flags")
    }

    #[test]
    fn crop_padding_sets_the_geometric_augmentation() {
        let none = resolved(&["--crop-padding", "0"]).train_transform.spatial;
        assert_eq!(none, SpatialAug::None);
        let crop = resolved(&["--crop-padding", "3"]).train_transform.spatial;
        assert_eq!(crop, SpatialAug::RandomCrop { padding: 3 });
        // It replaces the image-folder default (RandomResizedCrop) too.
        let folder = ["--dataset", "folder", "--crop-padding", "4"];
        let spatial = resolved(&folder).train_transform.spatial;
        assert_eq!(spatial, SpatialAug::RandomCrop { padding: 4 });
    }

    #[test]
    fn interpolation_defaults_per_data_set_and_flags() {
        let folder = resolved(&["--dataset", "folder"]);
        assert_eq!(
            folder.train_transform.interpolation,
            TrainInterpolation::Random
        );
        assert_eq!(folder.eval_transform.interpolation, Interpolation::Bicubic);
        let fmnist = resolved(&[]);
        assert_eq!(
            fmnist.train_transform.interpolation,
            TrainInterpolation::Bilinear
        );
        assert_eq!(fmnist.eval_transform.interpolation, Interpolation::Bilinear);
        let c = resolved(&[
            "--dataset",
            "folder",
            "--train-interpolation",
            "bicubic",
            "--interpolation",
            "bilinear",
        ]);
        assert_eq!(c.train_transform.interpolation, TrainInterpolation::Bicubic);
        assert_eq!(c.eval_transform.interpolation, Interpolation::Bilinear);
        let cli = Cli::try_parse_from(["imixer-train", "--interpolation", "random"]);
        let e = cli
            .err()
            .expect("random is a train-only choice")
            .to_string();
        assert!(e.contains("random") && e.contains("bicubic"), "{e}");
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "epochs = 3\n[train_transform]\nhflip = 0.25\n").unwrap();
        let file = file.to_str().unwrap();
        let c = resolved(&["--config", file]);
        assert_eq!((c.epochs, c.train_transform.hflip), (3, 0.25));
        // Fields the file leaves out keep the data set's defaults.
        let defaults = TrainConfig::defaults_for(DatasetKind::FashionMnist);
        assert_eq!(c.train_transform.spatial, defaults.train_transform.spatial);
        let c = resolved(&["--config", file, "--epochs", "5", "--hflip", "0"]);
        assert_eq!((c.epochs, c.train_transform.hflip), (5, 0.0));
    }

    #[test]
    fn the_lr_is_resolved_after_every_flag() {
        // The image-folder default follows --batch-size (paper 2: 5e-4 · batch / 512).
        let folder = resolved(&["--dataset", "folder"]);
        assert_eq!((folder.lr, folder.peak_lr()), (None, 1.25e-4));
        let c = resolved(&["--dataset", "folder", "--batch-size", "256"]);
        assert_eq!(c.peak_lr(), 2.5e-4);
        let c = resolved(&[
            "--dataset",
            "folder",
            "--batch-size",
            "64",
            "--grad-accum",
            "8",
        ]);
        assert_eq!(c.peak_lr(), 5e-4);
        // An explicit --lr wins over any batch.
        let c = resolved(&["--dataset", "folder", "--batch-size", "256", "--lr", "1e-3"]);
        assert_eq!(c.peak_lr(), 1e-3);
        // The timm flags.
        let c = resolved(&[
            "--lr-base",
            "0.1",
            "--lr-base-size",
            "256",
            "--batch-size",
            "1024",
        ]);
        assert_eq!((c.lr_scale(), c.peak_lr()), (LrScale::Sqrt, 0.2));
        let args = [
            "--lr-base-scale",
            "linear",
            "--lr-base",
            "0.1",
            "--lr-base-size",
            "256",
        ];
        let c = resolved(&[&args[..], &["--batch-size", "1024"]].concat());
        assert_eq!(c.peak_lr(), 0.4);
        // --lr and --lr-base* contradict each other.
        let both = ["imixer-train", "--lr", "1e-3", "--lr-base", "0.1"];
        assert!(Cli::try_parse_from(both).is_err());
        // An lr in the config file wins over the default rule; a --lr-base* flag over the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "lr = 0.003\n").unwrap();
        let file = file.to_str().unwrap();
        let c = resolved(&["--config", file, "--batch-size", "256"]);
        assert_eq!(c.peak_lr(), 0.003);
        let c = resolved(&["--config", file, "--lr-base-size", "128"]);
        assert_eq!((c.lr, c.peak_lr()), (None, 5e-3 * 0.5f64.powf(0.5)));
    }

    #[test]
    fn ema_and_fine_tuning_flags_reach_the_config() {
        let c = resolved(&["--model-ema", "--model-ema-decay", "0.99"]);
        assert!(c.model_ema);
        assert_eq!(c.model_ema_decay, 0.99);
        let c = resolved(&[]);
        assert!(!c.model_ema && c.initial_checkpoint.is_none());
        // Fine-tuning without --model takes the checkpoint's model configuration.
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("src.safetensors");
        let mut cfg = imixer::registry::lookup("mixer_n4_28").unwrap();
        cfg.num_classes = 7;
        imixer::MixerNet::new(&cfg, 0, &candle_core::Device::Cpu)
            .unwrap()
            .save(&ckpt)
            .unwrap();
        let path = ckpt.to_str().unwrap();
        let c = resolved(&["--initial-checkpoint", path]);
        assert_eq!(c.initial_checkpoint.as_deref(), Some(ckpt.as_path()));
        assert_eq!(c.model_config, Some(cfg));
        // A chosen model stays.
        let c = resolved(&["--initial-checkpoint", path, "--model", "imixer_n4_28"]);
        assert_eq!((c.model.as_str(), c.model_config), ("imixer_n4_28", None));
        let cli = Cli::try_parse_from(["t", "--initial-checkpoint", "/nonexistent/x.safetensors"])
            .unwrap();
        let err = format!("{:#}", resolve(&cli.train).unwrap_err());
        assert!(err.contains("/nonexistent/x.safetensors"), "{err}");
    }

    #[test]
    fn typos_inside_nested_tables_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        for (toml, key) in [
            ("[train_transform]\nhflp = 0.25\n", "hflp"),
            ("[eval_transform]\ncrop_pt = 0.9\n", "crop_pt"),
            ("[mixup]\nmixup_alfa = 0.2\n", "mixup_alfa"),
            (
                "[model_config]\nfamily = \"mixer\"\nembed_dimm = 64\n",
                "embed_dimm",
            ),
            ("[model_config.imixer]\nn_iterr = 2\n", "n_iterr"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let cli =
                Cli::try_parse_from(["imixer-train", "--config", file.to_str().unwrap()]).unwrap();
            let err = format!("{:#}", resolve(&cli.train).unwrap_err());
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
