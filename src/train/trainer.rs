//! The training loop: data → steps → per-epoch evaluation → metrics, plots, checkpoints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::config::{SchedUnit, TrainConfig};
use super::device_batches::on_device;
use super::ema::ModelEma;
use super::error::{Result, TrainError};
use super::eval::{evaluate, rank, EvalReport};
use super::finetune;
use super::metrics::{
    append_history, plot_curves, read_history, record_solve, rewrite_history, EpochMetrics,
    SolverTotals,
};
use super::schedule::CosineSchedule;
use super::shards::Shards;
use super::state::{self, EpochProgress, RunState};
use super::step::{add_grads, forward_backward, Targets};
use crate::config::{Family, ModelConfig};
use crate::data::{self, Dataset, Loader, LoaderConfig, Mixup};
use crate::optim::{AdamW, AdamWConfig};
use crate::{registry, MixerNet};

/// What `imixer train --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub model: String,
    pub params: usize,
    pub epochs: usize,
    pub final_val_top1: f64,
    pub final_val_top5: f64,
    pub final_val_loss: f64,
    /// The model EMA's final metrics (`--model-ema` runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_val_top1_ema: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_val_top5_ema: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_val_loss_ema: Option<f64>,
    /// Best validation top-1: of the EMA in `--model-ema` runs (which picks `best`, as timm).
    pub best_val_top1: f64,
    pub best_epoch: Option<usize>,
    pub train_seconds: f64,
}

/// Options that do not change the result.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The compute device (`--device`); on a GPU the batch runs as one shard.
    pub device: crate::device::DeviceSpec,
    pub resume: bool,
    /// A fresh run may replace the files of an earlier run in `out` (`--overwrite`).
    pub overwrite: bool,
    pub progress: bool,
    /// Stop (as if killed) after this many optimizer steps in this process (tests of resume).
    pub stop_after_steps: Option<u64>,
    /// Set (by a Ctrl-C/SIGTERM handler) to end the run at the next step boundary: `last` is
    /// saved there and `train` returns an [`Interrupted`] error.
    pub stop: Option<Arc<AtomicBool>>,
}

pub use super::error::Interrupted;

/// The model configuration a training config asks for, adapted to the data set's classes.
pub fn resolve_model(cfg: &TrainConfig, num_classes: usize) -> Result<ModelConfig> {
    let mut m = match &cfg.model_config {
        Some(m) => m.clone(),
        None => registry::lookup(&cfg.model).map_err(TrainError::Config)?,
    };
    m.num_classes = num_classes;
    m.drop_path = cfg.drop_path;
    if let Some(solver) = &cfg.solver {
        // Only the iMixer has a fixed point to solve; ignoring the flag would hide a mistake.
        if m.family != Family::IMixer {
            return Err(TrainError::Config(format!(
                "--solver applies to iMixer models only, but {} is a {} model: add --model imixer_n4_28 \
                 (or another imixer_*) or drop --solver",
                cfg.model_config.as_ref().map_or(cfg.model.as_str(), |_| "the custom model"),
                m.family
            )));
        }
        m.imixer.solver = solver.clone();
    }
    if let Some(lambda) = cfg.lambda {
        // λ weighs the ‖W2‖² term of the paper-2 blocks; on other families it would be ignored.
        if !m.family.is_paper2() {
            return Err(TrainError::Config(format!(
                "--lambda applies to paper-2 models (vanillamixer, paramixer, symmixer, asymmixer), but {} is a {} model",
                cfg.model_config.as_ref().map_or(cfg.model.as_str(), |_| "the custom model"),
                m.family
            )));
        }
        m.lambda = lambda;
    }
    m.validate().map_err(TrainError::Config)?;
    Ok(m)
}

/// Loads the data set of a config (subsets applied).
pub fn load_data(cfg: &TrainConfig) -> Result<Dataset> {
    let dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(|| data::default_data_dir(cfg.dataset));
    let mut ds = data::load_dataset(cfg.dataset, &dir)?;
    if let Some(n) = cfg.train_subset {
        ds.train = ds.train.subset(n, cfg.seed);
    }
    if let Some(n) = cfg.val_subset {
        ds.val = ds.val.subset(n, cfg.seed ^ 0x5eed);
    }
    // Every image of both splits decodes before the first epoch (cached across runs), so a bad
    // file stops the run here, not at the batch that needs it.
    data::image_check::check_images(&ds.train, "training")?;
    data::image_check::check_images(&ds.val, "validation")?;
    Ok(ds)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains `cfg` to completion (or until `opts.stop_after_steps`), writing the run directory.
///
/// Every random choice is a function of `cfg.seed` and the position in the run (epoch, batch,
/// step), and everything else that evolves is saved in `last.safetensors`, so a resumed run is
/// bit-identical to an uninterrupted one.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainSummary> {
    cfg.validate()
        .map_err(|e| TrainError::Config(format!("training config: {e}")))?;
    // Data, model, loaders and the initial checkpoint first: a bad path, model name or flag must
    // fail before the run directory is touched.
    let ds = load_data(cfg)?;
    let mcfg = resolve_model(cfg, ds.classes.len())?;
    let (train_loader, val_loader) = build_loaders(cfg, &ds, &mcfg)?;
    let device = opts.device.open()?;
    crate::kernels::set_precision(cfg.precision);
    let model = MixerNet::new(&mcfg, cfg.seed, &device)?;
    // A resumed run takes every weight from `last`; the initial checkpoint only seeds a fresh one.
    if let (Some(path), false) = (&cfg.initial_checkpoint, opts.resume) {
        let loaded = finetune::load_initial_weights(&model, path)?;
        eprintln!("{}", loaded.describe(path, mcfg.num_classes));
    }
    if cfg.lr.is_none() {
        eprintln!("{}", cfg.lr_origin());
    }
    let dir = RunDir::prepare(cfg, opts)?;
    let fresh = !opts.resume;
    let result = run(cfg, opts, &ds, model, train_loader, val_loader, &dir);
    if result.is_err() && fresh {
        dir.discard_if_unsaved();
    }
    result
}

/// The run proper, once the run directory is locked and prepared.
fn run(
    cfg: &TrainConfig,
    opts: &RunOptions,
    ds: &Dataset,
    model: MixerNet,
    train_loader: Loader,
    val_loader: Loader,
    dir: &RunDir,
) -> Result<TrainSummary> {
    let device = model.device().clone();
    let lr = cfg.peak_lr();
    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    // The EMA starts at the run's initial weights (timm builds it after loading them); a resume
    // overwrites it with the saved average.
    let ema = if cfg.model_ema {
        Some(ModelEma::new(&model, cfg.model_ema_decay)?)
    } else {
        None
    };
    let st = if opts.resume {
        let st = state::restore(&dir.last, &model, &mut opt, ema.as_ref(), &device)?;
        eprintln!(
            "resuming {} at epoch {} batch {} (step {})",
            dir.out.display(),
            st.epoch,
            st.next_batch,
            st.step
        );
        st
    } else {
        if cfg.cooldown_epochs > 0 {
            // The image-folder recipe adds 10 cool-down epochs: say so, since `--epochs 1` then
            // runs 11 epochs.
            eprintln!(
                "schedule: {} cosine epochs ({} of warm-up), then {} cool-down epochs at min lr {:e}: {} epochs in all (--cooldown-epochs 0 drops them)",
                cfg.epochs,
                cfg.warmup_epochs,
                cfg.cooldown_epochs,
                cfg.min_lr,
                cfg.total_epochs()
            );
        }
        RunState::start()
    };
    // Metrics of epochs the checkpoint does not cover (an epoch finished after the last save)
    // are dropped: they will be recomputed, identically.
    let mut history = read_history(&dir.metrics)?;
    history.retain(|m| m.epoch < st.epoch);
    rewrite_history(&dir.metrics, &history)?;

    let mut run = Run {
        cfg,
        opts,
        sched: CosineSchedule {
            lr,
            min_lr: cfg.min_lr,
            warmup_lr: cfg.warmup_lr,
            warmup: cfg.warmup_epochs,
            t_initial: cfg.epochs as f64,
        },
        classes: ds.classes.clone(),
        model,
        ema,
        opt,
        st,
        shards: Shards::for_device(cfg.shards, cfg.threads, &device)?,
        train_loader,
        val_loader,
        dir,
        history,
        steps_this_process: 0,
    };
    let started = Instant::now();
    let mut last_report = None;
    while run.st.epoch < cfg.total_epochs() {
        let epoch_start = Instant::now();
        let trained = run.train_epoch()?;
        last_report = Some(run.finish_epoch(trained, epoch_start)?);
        // An interrupt during the evaluation stops here, with `last` just written.
        if run.stop_requested() && run.st.epoch < cfg.total_epochs() {
            return Err(run.interrupted());
        }
    }
    let (report, ema_report) = match last_report {
        Some(r) => r,
        None => run.evaluate()?,
    };
    Ok(TrainSummary {
        out: run.dir.out.clone(),
        model: cfg
            .model_config
            .as_ref()
            .map(|_| "custom".to_string())
            .unwrap_or_else(|| cfg.model.clone()),
        params: run.model.params.num_params(),
        epochs: cfg.total_epochs(),
        final_val_top1: report.top1,
        final_val_top5: report.top5,
        final_val_loss: report.loss,
        final_val_top1_ema: ema_report.as_ref().map(|r| r.top1),
        final_val_top5_ema: ema_report.as_ref().map(|r| r.top5),
        final_val_loss_ema: ema_report.as_ref().map(|r| r.loss),
        best_val_top1: run.st.best_top1,
        best_epoch: run.st.best_epoch,
        train_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The files a run writes in its directory (besides the lock file).
const RUN_FILES: [&str; 5] = [
    "last.safetensors",
    "best.safetensors",
    "metrics.jsonl",
    "config.toml",
    "curves.png",
];

/// Name of the lock file a run holds in its directory.
pub const LOCK_FILE: &str = ".imixer.lock";

/// The files of a run directory, locked by this process while it lives.
struct RunDir {
    out: PathBuf,
    last: PathBuf,
    best: PathBuf,
    metrics: PathBuf,
    /// The resolved training config, as saved in `config.toml` and in every checkpoint.
    config_toml: String,
    /// The open lock file: its OS advisory lock is the run's claim on the directory, released by
    /// the OS when the process ends in any way (a `kill -9` leaves no stale lock).
    _lock: std::fs::File,
}

impl RunDir {
    /// Creates and locks the run directory and saves the resolved config.
    ///
    /// - A second process cannot train into a directory another run holds.
    /// - A fresh run refuses a directory that holds another run's files (`--resume` continues
    ///   it; `--overwrite` replaces it).
    /// - A resumed run refuses a config that differs from the saved one (it would not be the
    ///   same run), except in the settings that do not change results.
    /// - Temporary files left by a killed run are removed.
    fn prepare(cfg: &TrainConfig, opts: &RunOptions) -> Result<Self> {
        let out = cfg.out.clone();
        std::fs::create_dir_all(&out)
            .map_err(|e| TrainError::io("create run directory", &out, e))?;
        let lock = lock_run_dir(&out)?;
        remove_stale_temps(&out);
        let dir = Self {
            last: out.join("last.safetensors"),
            best: out.join("best.safetensors"),
            metrics: out.join("metrics.jsonl"),
            config_toml: toml::to_string_pretty(cfg).map_err(|e| {
                TrainError::Config(format!("cannot serialise the training config: {e}"))
            })?,
            out,
            _lock: lock,
        };
        let saved_path = dir.out.join("config.toml");
        if !opts.resume {
            let existing: Vec<&str> = RUN_FILES
                .into_iter()
                .filter(|f| dir.out.join(f).exists())
                .collect();
            if !existing.is_empty() && !opts.overwrite {
                let what = if dir.last.exists() {
                    "a run (last.safetensors); pass --resume to continue it,".to_string()
                } else {
                    format!("files of another run ({});", existing.join(", "))
                };
                return Err(TrainError::OutputOccupied {
                    dir: dir.out.clone(),
                    what,
                });
            }
            for f in existing {
                let p = dir.out.join(f);
                std::fs::remove_file(&p)
                    .map_err(|e| TrainError::io("remove (--overwrite)", &p, e))?;
            }
        }
        if opts.resume {
            let saved = std::fs::read_to_string(&saved_path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TrainError::NothingToResume {
                    dir: dir.out.clone(),
                    missing: saved_path.clone(),
                },
                _ => TrainError::io("read", &saved_path, e),
            })?;
            let saved: TrainConfig = toml::from_str(&saved)
                .map_err(|e| TrainError::unusable(&saved_path, format!("cannot parse: {e}")))?;
            let differences = result_differences(&saved, cfg);
            if !differences.is_empty() {
                return Err(TrainError::ResumeMismatch {
                    saved: saved_path,
                    differences,
                });
            }
        }
        crate::files::write_atomically(&saved_path, dir.config_toml.as_bytes())?;
        Ok(dir)
    }

    /// After a fresh run failed before its first checkpoint: removes what it wrote (config,
    /// metrics, plot), its lock file and the directory when that is left empty, so that a failed
    /// start leaves nothing that looks like a run.
    fn discard_if_unsaved(&self) {
        if self.last.exists() {
            return;
        }
        for f in RUN_FILES {
            let _ = std::fs::remove_file(self.out.join(f));
        }
        let _ = std::fs::remove_file(self.out.join(LOCK_FILE));
        // Only succeeds when the directory is empty (nothing of anyone else's is removed).
        let _ = std::fs::remove_dir(&self.out);
    }
}

/// Takes the OS advisory lock of a run directory (`OUT/.imixer.lock`), or fails naming it.
fn lock_run_dir(out: &Path) -> Result<std::fs::File> {
    lock_dir(out, LOCK_FILE, "imixer train")
}

/// Takes the OS advisory lock file `name` in `dir` (released when the file is dropped or the
/// process dies), or fails naming the directory and the `holder` kind of process that has it.
pub fn lock_dir(dir: &Path, name: &str, holder: &str) -> Result<std::fs::File> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TrainError::io("open the lock file", &path, e))?;
    // An flock belongs to the open file, and a process that spawns a child (a sweep, a test
    // harness) shares its open files with the child between fork and exec, close-on-exec or
    // not. A lock just released by this process can therefore still look held for that moment,
    // so a busy lock is retried for a short grace period before it counts as another run's.
    let deadline = Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(TrainError::InUse {
                    dir: dir.to_path_buf(),
                    lock: path,
                    holder: holder.to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io("lock", &path, e)),
        }
    }
}

/// How long a busy directory lock is retried before [`TrainError::InUse`] (see [`lock_dir`]).
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Removes the temporary files (`.NAME.PID.tmp`) that a killed run's atomic writes left behind.
/// Called with the directory's lock held, so no live run is writing them.
fn remove_stale_temps(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_atomic_temp(name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `.NAME.PID.tmp`, as `files::write_atomically` names its temporary files.
fn is_atomic_temp(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    stem.rsplit_once('.').is_some_and(|(file, pid)| {
        !file.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The settings in which two configurations differ in a way that changes the result (paths are
/// compared canonically; `out`, threads and loader workers do not count).
pub fn result_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    config_differences(&comparable(saved), &comparable(now))
}

/// The settings of a config that make a run what it is: the compute and loader threads do not
/// change results, the run directory is the one being resumed however it is spelled, the peak
/// lr counts however it was reached (given, or from `lr_base`: a run saved before `lr_base`
/// existed holds it as `lr`), and the EMA decay only with the EMA on.
fn comparable(c: &TrainConfig) -> TrainConfig {
    let canonical = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
    };
    let defaults = TrainConfig::default();
    TrainConfig {
        out: PathBuf::new(),
        threads: 0,
        workers: 1,
        data_dir: canonical(&c.data_dir),
        initial_checkpoint: canonical(&c.initial_checkpoint),
        lr: Some(c.peak_lr()),
        lr_base: defaults.lr_base,
        lr_base_size: defaults.lr_base_size,
        lr_base_scale: defaults.lr_base_scale,
        model_ema_decay: if c.model_ema {
            c.model_ema_decay
        } else {
            defaults.model_ema_decay
        },
        ..c.clone()
    }
}

/// The top-level settings in which `now` differs from `saved`, as "key: saved A, now B" (runs
/// started before a knob existed saved its old meaning, e.g. `shards` 1).
fn config_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let table = |c: &TrainConfig| toml::Table::try_from(c).unwrap_or_default();
    let (a, b) = (table(saved), table(now));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: saved {}, now {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// The training and validation loaders of a config: the recipe's transforms at the model's image
/// size, and Mixup/CutMix (or label smoothing alone) on the training batches.
fn build_loaders(cfg: &TrainConfig, ds: &Dataset, mcfg: &ModelConfig) -> Result<(Loader, Loader)> {
    let mut train_tf = cfg.train_transform.clone();
    train_tf.image_size = mcfg.img_size;
    train_tf.in_chans = mcfg.in_chans;
    let mut eval_tf = cfg.eval_transform.clone();
    eval_tf.image_size = mcfg.img_size;
    eval_tf.in_chans = mcfg.in_chans;
    let mixing =
        cfg.mixup.prob > 0.0 && (cfg.mixup.mixup_alpha > 0.0 || cfg.mixup.cutmix_alpha > 0.0);
    let mix_cfg = data::MixupConfig {
        num_classes: ds.classes.len(),
        prob: if mixing { cfg.mixup.prob } else { 0.0 },
        ..cfg.mixup.clone()
    };
    let train_loader = Loader::new(
        Arc::new(ds.train.clone()),
        train_tf,
        LoaderConfig {
            workers: cfg.workers,
            ..LoaderConfig::train(cfg.batch_size, cfg.seed)
        },
    )?
    .with_mixup(Mixup::new(mix_cfg)?)?;
    if train_loader.is_empty() {
        return Err(TrainError::Config(format!(
            "the training split has {} images, fewer than one batch of {}",
            ds.train.len(),
            cfg.batch_size
        )));
    }
    if ds.val.is_empty() {
        return Err(TrainError::Config(
            "the validation split is empty: nothing to evaluate or pick the best checkpoint by (check the data directory, or give --val-subset ≥ 1)".into(),
        ));
    }
    let val_loader = Loader::new(
        Arc::new(ds.val.clone()),
        eval_tf,
        LoaderConfig {
            workers: cfg.workers,
            ..LoaderConfig::eval(cfg.eval_batch_size)
        },
    )?;
    Ok((train_loader, val_loader))
}

/// A run in progress: everything the epoch loop reads and updates.
struct Run<'a> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    sched: CosineSchedule,
    classes: Vec<String>,
    model: MixerNet,
    /// The model EMA (`--model-ema`).
    ema: Option<ModelEma>,
    opt: AdamW,
    st: RunState,
    shards: Shards,
    train_loader: Loader,
    val_loader: Loader,
    dir: &'a RunDir,
    history: Vec<EpochMetrics>,
    steps_this_process: u64,
}

/// What one epoch's training pass leaves for its evaluation.
struct EpochTrained {
    progress: EpochProgress,
    /// The learning rate of the epoch's last batch.
    lr: f64,
    train_secs: f64,
}

impl Run<'_> {
    /// Trains the rest of the current epoch, from `st.next_batch` (mid-epoch after a resume).
    fn train_epoch(&mut self) -> Result<EpochTrained> {
        let (cfg, epoch) = (self.cfg, self.st.epoch);
        let epoch_start = Instant::now();
        let steps_per_epoch = self.train_loader.len();
        let k = self.classes.len();
        let accum = cfg.grad_accum;
        let bar = progress_bar(
            self.opts.progress,
            steps_per_epoch,
            epoch,
            cfg.total_epochs(),
        );
        bar.set_position(self.st.next_batch as u64);
        // A mid-epoch resume starts from the sums saved with the checkpoint.
        let mut progress = std::mem::take(&mut self.st.partial);
        let mut grads: Option<GradStore> = None;
        let mut lr = 0.0;
        let batches = on_device(
            self.train_loader
                .iter_from(epoch as u64, self.st.next_batch),
            k,
            self.model.device(),
        );
        for batch in batches {
            let batch = batch?;
            let kb = batch.batch_index;
            let t = match cfg.sched_on {
                SchedUnit::Epoch => epoch as f64,
                SchedUnit::Step => epoch as f64 + kb as f64 / steps_per_epoch as f64,
            };
            lr = self.sched.lr_at(t);
            let b = batch.labels.len();
            let x = batch.images;
            let targets = batch.soft_targets.ok_or_else(|| {
                TrainError::Config("the training loader produced no targets".into())
            })?;
            let seed = splitmix(
                cfg.seed ^ splitmix(self.st.step.wrapping_mul(31).wrapping_add(kb as u64)),
            );
            let pass = forward_backward(
                &self.model,
                &self.shards,
                &x,
                Targets::Soft(&targets),
                seed,
                accum,
            )?;
            for s in &pass.solver_stats {
                record_solve(&mut progress.solver_blocks, s);
                // Warn for the first few cap hits of the epoch; the rest are counted.
                if !s.converged && SolverTotals::of(&progress.solver_blocks).unconverged <= 3 {
                    bar.suspend(|| {
                        eprintln!(
                            "warning: {} did not converge at epoch {epoch} batch {kb}: residual {:.2e} after {} iterations",
                            s.module, s.residual, s.iterations
                        )
                    });
                }
            }
            let loss_value = pass.loss;
            if !loss_value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    quantity: "loss".into(),
                    value: loss_value.to_string(),
                    when: format!("at epoch {epoch}, batch {kb} (step {})", self.st.step),
                    step: Some(self.st.step),
                    last: Some(self.dir.last.clone()),
                });
            }
            add_grads(&mut grads, pass.grads, &self.model)?;
            let logits = pass.logits;
            let rows = logits.to_vec2::<f32>()?;
            progress.correct += rows
                .iter()
                .zip(&batch.labels)
                .filter(|(r, &l)| rank(r)[0] == l)
                .count();
            progress.loss_sum += loss_value * b as f64;
            progress.seen += b;
            if (kb + 1) % accum == 0 || kb + 1 == steps_per_epoch {
                let g = grads.take().expect("accumulated gradients");
                self.optimizer_step(g, lr, kb, &progress, &bar)?;
            }
            let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} lr {:.2e} {:.0} img/s",
                progress.loss_sum / progress.seen as f64,
                progress.correct as f64 / progress.seen as f64,
                lr,
                progress.seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(EpochTrained {
            progress,
            lr,
            train_secs: epoch_start.elapsed().as_secs_f64(),
        })
    }

    /// One AdamW step on the accumulated gradients after batch `kb`, then the mid-epoch saves
    /// (`--save-every-steps`, `--stop-after-steps`).
    fn optimizer_step(
        &mut self,
        g: GradStore,
        lr: f64,
        kb: usize,
        progress: &EpochProgress,
        bar: &ProgressBar,
    ) -> Result<()> {
        let g = match self.cfg.clip_grad {
            Some(c) => crate::optim::clip::clip_grad_norm(&self.model.params, g, c)?,
            None => g,
        };
        self.opt.set_lr(lr);
        self.opt.step(&g)?;
        if let Some(ema) = &self.ema {
            ema.update(&self.model)?;
        }
        self.st.step += 1;
        self.steps_this_process += 1;
        self.st.next_batch = kb + 1;
        self.st.partial = progress.clone();
        let periodic = self
            .cfg
            .save_every_steps
            .is_some_and(|n| self.st.step.is_multiple_of(n as u64));
        if periodic && self.st.next_batch < self.train_loader.len() {
            self.save_last()?;
        }
        if self.stop_requested() {
            bar.abandon();
            self.save_last()?;
            return Err(self.interrupted());
        }
        if self
            .opts
            .stop_after_steps
            .is_some_and(|n| self.steps_this_process >= n)
        {
            bar.abandon();
            self.save_last()?;
            return Err(TrainError::StoppedAfterSteps {
                steps: self.steps_this_process,
            });
        }
        Ok(())
    }

    /// Evaluates the model, and its EMA when there is one, on the validation split.
    fn evaluate(&self) -> Result<(EvalReport, Option<EvalReport>)> {
        let k = self.classes.len();
        let raw = evaluate(&self.model, &self.shards, &self.val_loader, k)?;
        let ema = match &self.ema {
            Some(e) => Some(evaluate(&e.model, &self.shards, &self.val_loader, k)?),
            None => None,
        };
        Ok((raw, ema))
    }

    /// Evaluates the epoch just trained, records its metrics and writes the checkpoints.
    ///
    /// With `--model-ema`, `best` is picked by the EMA's top-1, as timm does (its
    /// `ema_eval_metrics` replace the raw ones for checkpoint saving).
    fn finish_epoch(
        &mut self,
        trained: EpochTrained,
        epoch_start: Instant,
    ) -> Result<(EvalReport, Option<EvalReport>)> {
        let epoch = self.st.epoch;
        let (report, ema_report) = self.evaluate()?;
        // The loss check in `train_epoch` sees each batch *before* its update, so the epoch's last
        // step can still have broken the weights: check them (and the validation loss they give)
        // before anything of this epoch is written.
        self.ensure_finite()?;
        for r in std::iter::once(&report).chain(&ema_report) {
            if !r.loss.is_finite() {
                return Err(TrainError::NonFinite {
                    quantity: "validation loss".into(),
                    value: r.loss.to_string(),
                    when: format!("after epoch {epoch} (step {})", self.st.step),
                    step: Some(self.st.step),
                    last: Some(self.dir.last.clone()),
                });
            }
        }
        let EpochTrained {
            progress,
            lr,
            train_secs,
        } = trained;
        let totals = SolverTotals::of(&progress.solver_blocks);
        let seen = progress.seen.max(1) as f64;
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: progress.loss_sum / seen,
            train_acc: progress.correct as f64 / seen,
            val_loss: report.loss,
            val_top1: report.top1,
            val_top5: report.top5,
            val_loss_ema: ema_report.as_ref().map(|r| r.loss),
            val_top1_ema: ema_report.as_ref().map(|r| r.top1),
            val_top5_ema: ema_report.as_ref().map(|r| r.top5),
            seconds: epoch_start.elapsed().as_secs_f64(),
            img_per_s: progress.seen as f64 / train_secs.max(1e-9),
            solver_mean_iters: (totals.solves > 0).then_some(totals.mean_iterations),
            solver_max_residual: (totals.solves > 0).then_some(totals.max_residual),
            solver_blocks: progress.solver_blocks,
            weight_symmetry: Some(crate::analysis::symmetry::summary(&self.model)?),
        };
        if totals.unconverged > 0 {
            eprintln!(
                "warning: epoch {epoch}: {} of {} iMLP solves hit the iteration cap (max residual {:.2e})",
                totals.unconverged, totals.solves, totals.max_residual
            );
        }
        if self.opts.progress {
            let ema = ema_report
                .as_ref()
                .map(|r| format!(" | EMA top-1 {:.4} top-5 {:.4}", r.top1, r.top5))
                .unwrap_or_default();
            eprintln!(
                "epoch {epoch:>3}/{}: train loss {:.4} acc {:.4} | val loss {:.4} top-1 {:.4} top-5 {:.4}{ema} | lr {:.2e} | {:.0} s, {:.0} img/s",
                self.cfg.total_epochs(), m.train_loss, m.train_acc, m.val_loss, m.val_top1, m.val_top5, m.lr, m.seconds, m.img_per_s
            );
        }
        append_history(&self.dir.metrics, &m)?;
        self.history.push(m);
        self.st.epoch += 1;
        self.st.next_batch = 0;
        self.st.partial = EpochProgress::default();
        let picked = ema_report.as_ref().unwrap_or(&report).top1;
        if picked > self.st.best_top1 {
            self.st.best_top1 = picked;
            self.st.best_epoch = Some(epoch);
            // best before last: a crash between the two then replays this epoch on resume and
            // rewrites best (the other order could leave a stale best.safetensors that last's
            // best_top1 says is already saved).
            state::save(
                &self.dir.best,
                &self.model,
                None,
                self.ema.as_ref(),
                &self.st,
                &self.dir.config_toml,
                &self.classes,
            )?;
        }
        self.write_last()?;
        plot_curves(&self.dir.out.join("curves.png"), &self.history)?;
        Ok((report, ema_report))
    }

    fn stop_requested(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    fn interrupted(&self) -> TrainError {
        TrainError::Interrupted(Interrupted {
            out: self.dir.out.clone(),
            last: self.dir.last.clone(),
            epoch: self.st.epoch,
            batch: self.st.next_batch,
            step: self.st.step,
        })
    }

    /// Writes `last.safetensors` mid-epoch, refusing non-finite weights (at the end of an epoch
    /// `finish_epoch` has checked them before writing anything).
    fn save_last(&self) -> Result<()> {
        self.ensure_finite()?;
        self.write_last()
    }

    /// [`ensure_finite_weights`] of the model and of its EMA.
    fn ensure_finite(&self) -> Result<()> {
        let (epoch, step, last) = (self.st.epoch, self.st.step, &self.dir.last);
        ensure_finite_weights(&self.model, epoch, step, last)?;
        match &self.ema {
            Some(e) => ensure_finite_weights(&e.model, epoch, step, last),
            None => Ok(()),
        }
    }

    /// Writes `last.safetensors`: model, optimizer, EMA and run state.
    fn write_last(&self) -> Result<()> {
        state::save(
            &self.dir.last,
            &self.model,
            Some(&self.opt),
            self.ema.as_ref(),
            &self.st,
            &self.dir.config_toml,
            &self.classes,
        )
    }
}

/// Fails, naming the tensor, when any weight or buffer of `model` holds a NaN or ±∞.
///
/// Called before every checkpoint write of a run: a step whose own loss was finite can still
/// produce non-finite weights (an overflowing update), and saving them would replace the last
/// good checkpoint with garbage.
fn ensure_finite_weights(model: &MixerNet, epoch: usize, step: u64, last: &Path) -> Result<()> {
    if let Some(name) = model.first_non_finite()? {
        return Err(TrainError::NonFinite {
            quantity: "the weights".into(),
            value: format!("non-finite ({name})"),
            when: format!("at epoch {epoch} (step {step})"),
            step: Some(step),
            last: Some(last.to_path_buf()),
        });
    }
    Ok(())
}

fn progress_bar(enabled: bool, len: usize, epoch: usize, total: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{total}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn a_solver_on_a_model_without_a_fixed_point_is_an_error() {
        let solver = crate::config::Solver::from_name("anderson", 1e-4, 30, 5).unwrap();
        let mut cfg = TrainConfig {
            model: "paramixer_n4_28".into(),
            solver: Some(solver),
            ..TrainConfig::default()
        };
        let err = resolve_model(&cfg, 10).unwrap_err().to_string();
        assert!(
            err.contains("--solver") && err.contains("paramixer_n4_28"),
            "{err}"
        );
        cfg.model = "imixer_n4_28".into();
        let m = resolve_model(&cfg, 10).unwrap();
        assert_eq!(Some(&m.imixer.solver), cfg.solver.as_ref());
    }

    #[test]
    fn first_non_finite_names_the_broken_tensor() {
        let cfg = registry::lookup("mixer_n4_28").unwrap();
        let model = MixerNet::new(&cfg, 0, &Device::Cpu).unwrap();
        assert_eq!(model.first_non_finite().unwrap(), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = &model.params.entries()[3];
            let mut values = e.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let good = values.clone();
            let mid = values.len() / 2;
            values[mid] = bad;
            let broken = Tensor::from_vec(values, e.var.shape(), &Device::Cpu).unwrap();
            e.var.set(&broken).unwrap();
            assert_eq!(model.first_non_finite().unwrap(), Some(e.name.clone()));
            let err = ensure_finite_weights(&model, 4, 17, Path::new("run/last.safetensors"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&e.name) && err.contains("epoch 4 (step 17)"),
                "{err}"
            );
            e.var
                .set(&Tensor::from_vec(good, e.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            assert_eq!(model.first_non_finite().unwrap(), None);
        }
    }

    #[test]
    fn a_config_saved_without_shards_means_one_and_differences_are_named() {
        let now = TrainConfig::default();
        let mut table = toml::Table::try_from(&now).unwrap();
        table.remove("shards");
        let saved: TrainConfig = toml::from_str(&table.to_string()).unwrap();
        assert_eq!((saved.shards, now.shards), (1, 2));
        assert_eq!(
            config_differences(&saved, &now),
            vec!["shards: saved 1, now 2".to_string()]
        );
        assert!(config_differences(&now, &now).is_empty());
    }

    #[test]
    fn a_run_saved_with_its_lr_given_resumes_under_the_derived_default() {
        // A folder run saved before lr_base existed: the lr computed from the default batch.
        let now = TrainConfig::defaults_for(crate::data::DatasetKind::Folder);
        let mut table = toml::Table::try_from(&now).unwrap();
        for k in [
            "lr_base",
            "lr_base_size",
            "lr_base_scale",
            "model_ema",
            "model_ema_decay",
        ] {
            table.remove(k);
        }
        table.insert("lr".into(), toml::Value::Float(5e-4 * 128.0 / 512.0));
        let saved: TrainConfig = toml::from_str(&table.to_string()).unwrap();
        assert_ne!(saved, now);
        assert!(config_differences(&comparable(&saved), &comparable(&now)).is_empty());
        // Another batch is another lr, and both differences are named.
        let bigger = TrainConfig {
            batch_size: 256,
            ..now
        };
        let diff = config_differences(&comparable(&saved), &comparable(&bigger));
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff[0].starts_with("batch_size") && diff[1].starts_with("lr:"),
            "{diff:?}"
        );
    }

    fn in_dir(out: &Path) -> TrainConfig {
        TrainConfig {
            out: out.to_path_buf(),
            ..TrainConfig::default()
        }
    }

    fn fresh() -> RunOptions {
        RunOptions::default()
    }

    #[test]
    fn a_second_run_cannot_take_a_locked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = in_dir(&dir.path().join("run"));
        let first = RunDir::prepare(&cfg, &fresh()).unwrap();
        let resume = RunOptions {
            resume: true,
            ..fresh()
        };
        for opts in [fresh(), resume.clone()] {
            let err = RunDir::prepare(&cfg, &opts).err().unwrap().to_string();
            assert!(err.contains("in use by another imixer train"), "{err}");
        }
        // The OS drops the lock with its holder (a killed process included): the directory is
        // free again, and holds a run to resume.
        drop(first);
        RunDir::prepare(&cfg, &resume).unwrap();
    }

    #[test]
    fn another_runs_files_are_kept_unless_overwrite_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        // An earlier run whose last.safetensors is gone still owns best and metrics.
        std::fs::write(out.join("best.safetensors"), "earlier").unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let err = RunDir::prepare(&in_dir(&out), &fresh())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("best.safetensors") && err.contains("--overwrite"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(out.join("best.safetensors")).unwrap(),
            b"earlier"
        );
        let overwrite = RunOptions {
            overwrite: true,
            ..fresh()
        };
        let d = RunDir::prepare(&in_dir(&out), &overwrite).unwrap();
        assert!(!out.join("best.safetensors").exists() && !out.join("metrics.jsonl").exists());
        assert!(out.join("config.toml").exists());
        // A fresh run that fails before its first checkpoint leaves nothing behind.
        d.discard_if_unsaved();
        assert!(
            !out.exists(),
            "{:?}",
            std::fs::read_dir(&out).map(|d| d.count())
        );
    }

    #[test]
    fn temporaries_of_killed_writes_are_removed_on_start() {
        for (name, temp) in [
            (".last.safetensors.12345.tmp", true),
            (".metrics.jsonl.7.tmp", true),
            (".last.safetensors.tmp", false),
            ("last.safetensors", false),
            (".notes.txt", false),
            (".x.12a.tmp", false),
        ] {
            assert_eq!(is_atomic_temp(name), temp, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(".last.safetensors.999999.tmp"), "torn").unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let _d = RunDir::prepare(&in_dir(&out), &fresh()).unwrap();
        assert!(!out.join(".last.safetensors.999999.tmp").exists());
        assert!(out.join("notes.txt").exists());
    }

    #[test]
    fn resume_ignores_settings_that_do_not_change_results() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let saved = in_dir(&out);
        drop(RunDir::prepare(&saved, &fresh()).unwrap());
        let resume = RunOptions {
            resume: true,
            ..fresh()
        };
        let now = TrainConfig {
            threads: 7,
            workers: 3,
            out: std::fs::canonicalize(&out).unwrap(),
            ..saved.clone()
        };
        drop(RunDir::prepare(&now, &resume).unwrap());
        let other = TrainConfig { seed: 5, ..saved };
        let err = RunDir::prepare(&other, &resume).err().unwrap().to_string();
        assert!(err.contains("seed: saved 0, now 5"), "{err}");
    }
}
