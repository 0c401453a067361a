//! The training loop: data → steps → per-epoch evaluation → metrics, plots, checkpoints.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::config::{SchedUnit, TrainConfig};
use super::eval::{evaluate, images_tensor, rank, EvalReport};
use super::schedule::CosineSchedule;
use super::state::{self, EpochProgress, RunState};
use crate::config::ModelConfig;
use crate::data::{self, Dataset, Loader, LoaderConfig, Mixup};
use crate::layers::ForwardCtx;
use crate::optim::{AdamW, AdamWConfig};
use crate::plot::{line_panels, Series};
use crate::{registry, MixerNet};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub seconds: f64,
    pub img_per_s: f64,
    /// iMLP fixed-point solves of this epoch (picard/anderson modes): mean iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_mean_iters: Option<f64>,
    /// … and the largest final residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_max_residual: Option<f64>,
    /// The same per iMLP block (picard/anderson modes), in block order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solver_blocks: Vec<BlockSolverStats>,
}

/// One iMLP block's fixed-point solves over an epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockSolverStats {
    pub module: String,
    pub solves: usize,
    pub mean_iterations: f64,
    pub max_residual: f64,
    /// Solves that hit the iteration cap.
    pub unconverged: usize,
}

/// The epoch's solves over all blocks, derived from the per-block statistics.
struct SolverTotals {
    solves: usize,
    mean_iterations: f64,
    max_residual: f64,
    unconverged: usize,
}

impl SolverTotals {
    fn of(blocks: &[BlockSolverStats]) -> Self {
        let solves: usize = blocks.iter().map(|b| b.solves).sum();
        let iterations: f64 = blocks
            .iter()
            .map(|b| b.mean_iterations * b.solves as f64)
            .sum();
        Self {
            solves,
            mean_iterations: iterations / solves.max(1) as f64,
            max_residual: blocks.iter().map(|b| b.max_residual).fold(0.0, f64::max),
            unconverged: blocks.iter().map(|b| b.unconverged).sum(),
        }
    }
}

/// Accumulates [`BlockSolverStats`] per module, keeping first-seen (block) order.
fn record_solve(blocks: &mut Vec<BlockSolverStats>, s: &crate::models::imlp::SolverStats) {
    let i = match blocks.iter().position(|b| b.module == s.module) {
        Some(i) => i,
        None => {
            blocks.push(BlockSolverStats {
                module: s.module.clone(),
                ..Default::default()
            });
            blocks.len() - 1
        }
    };
    let b = &mut blocks[i];
    // Running mean over this block's solves.
    b.mean_iterations += (s.iterations as f64 - b.mean_iterations) / (b.solves + 1) as f64;
    b.solves += 1;
    b.max_residual = b.max_residual.max(s.residual);
    b.unconverged += usize::from(!s.converged);
}

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
    pub best_val_top1: f64,
    pub best_epoch: Option<usize>,
    pub train_seconds: f64,
}

/// Options that do not change the result.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub resume: bool,
    pub progress: bool,
    /// Stop (as if killed) after this many optimizer steps in this process (tests of resume).
    pub stop_after_steps: Option<u64>,
}

/// The model configuration a training config asks for, adapted to the data set's classes.
pub fn resolve_model(cfg: &TrainConfig, num_classes: usize) -> Result<ModelConfig> {
    let mut m = match &cfg.model_config {
        Some(m) => m.clone(),
        None => registry::lookup(&cfg.model).map_err(anyhow::Error::msg)?,
    };
    m.num_classes = num_classes;
    m.drop_path = cfg.drop_path;
    if let Some(solver) = &cfg.solver {
        m.imixer.solver = solver.clone();
    }
    m.validate().map_err(anyhow::Error::msg)?;
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
    Ok(ds)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Adds `new` into `acc` for every parameter (gradient accumulation).
fn accumulate(acc: &mut Option<GradStore>, new: GradStore, model: &MixerNet) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(acc) => {
            for e in model.params.params() {
                if let Some(g) = new.get(e.var.as_tensor()) {
                    let sum = match acc.get(e.var.as_tensor()) {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    };
                    acc.insert(e.var.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainSummary> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("training config: {e}"))?;
    let device = Device::Cpu;
    let out = cfg.out.clone();
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let last_path = out.join("last.safetensors");
    let config_toml =
        toml::to_string_pretty(cfg).context("cannot serialise the training config")?;
    if !opts.resume && last_path.exists() {
        bail!(
            "{} already holds a run (last.safetensors); pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    if opts.resume {
        // The resolved config must not change under a resumed run, or it would not be the same run.
        let saved_path = out.join("config.toml");
        let saved = std::fs::read_to_string(&saved_path).with_context(|| {
            format!(
                "--resume: no run to resume in {} ({} missing)",
                out.display(),
                saved_path.display()
            )
        })?;
        let saved: TrainConfig = toml::from_str(&saved)
            .with_context(|| format!("cannot parse {}", saved_path.display()))?;
        if &saved != cfg {
            bail!("--resume: the configuration differs from the one saved in {}; resume with the same settings", saved_path.display());
        }
    }
    crate::checkpoint::write_atomically(&out.join("config.toml"), config_toml.as_bytes())?;

    let ds = load_data(cfg)?;
    let classes = ds.classes.clone();
    let k = classes.len();
    let mcfg = resolve_model(cfg, k)?;
    let mut train_tf = cfg.train_transform.clone();
    train_tf.image_size = mcfg.img_size;
    train_tf.in_chans = mcfg.in_chans;
    let mut eval_tf = cfg.eval_transform.clone();
    eval_tf.image_size = mcfg.img_size;
    eval_tf.in_chans = mcfg.in_chans;
    let train_loader_cfg = LoaderConfig {
        workers: cfg.workers,
        ..LoaderConfig::train(cfg.batch_size, cfg.seed)
    };
    let mut train_loader = Loader::new(Arc::new(ds.train.clone()), train_tf, train_loader_cfg)?;
    let mixing =
        cfg.mixup.prob > 0.0 && (cfg.mixup.mixup_alpha > 0.0 || cfg.mixup.cutmix_alpha > 0.0);
    let smoothing_only = data::MixupConfig {
        prob: 0.0,
        ..cfg.mixup.clone()
    };
    let mix_cfg = data::MixupConfig {
        num_classes: k,
        ..if mixing {
            cfg.mixup.clone()
        } else {
            smoothing_only
        }
    };
    train_loader = train_loader.with_mixup(Mixup::new(mix_cfg)?)?;
    let val_loader = Loader::new(
        Arc::new(ds.val.clone()),
        eval_tf,
        LoaderConfig {
            workers: cfg.workers,
            ..LoaderConfig::eval(cfg.eval_batch_size)
        },
    )?;
    let steps_per_epoch = train_loader.len();
    if steps_per_epoch == 0 {
        bail!(
            "the training split has {} images, fewer than one batch of {}",
            ds.train.len(),
            cfg.batch_size
        );
    }

    let model = MixerNet::new(&mcfg, cfg.seed, &device)?;
    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let sched = CosineSchedule {
        lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_lr: cfg.warmup_lr,
        warmup: cfg.warmup_epochs,
        t_initial: cfg.epochs as f64,
    };
    let mut st = RunState {
        epoch: 0,
        next_batch: 0,
        step: 0,
        best_top1: f64::NEG_INFINITY,
        best_epoch: None,
        partial: EpochProgress::default(),
    };
    if opts.resume {
        st = state::restore(&last_path, &model, &mut opt, &device)?;
        eprintln!(
            "resuming {} at epoch {} batch {} (step {})",
            out.display(),
            st.epoch,
            st.next_batch,
            st.step
        );
    }
    let metrics_path = out.join("metrics.jsonl");
    let mut history = read_history(&metrics_path)?;
    history.retain(|m| m.epoch < st.epoch);
    rewrite_history(&metrics_path, &history)?;

    let total_epochs = cfg.total_epochs();
    let started = Instant::now();
    let mut steps_this_process = 0u64;
    let mut last_report: Option<EvalReport> = None;
    let accum = cfg.grad_accum;
    while st.epoch < total_epochs {
        let epoch = st.epoch;
        let epoch_start = Instant::now();
        let bar = progress_bar(opts.progress, steps_per_epoch, epoch, total_epochs);
        bar.set_position(st.next_batch as u64);
        // A mid-epoch resume starts from the sums saved with the checkpoint.
        let EpochProgress {
            mut loss_sum,
            mut correct,
            mut seen,
            mut solver_blocks,
        } = std::mem::take(&mut st.partial);
        let mut grads: Option<GradStore> = None;
        let mut lr = 0.0;
        for batch in train_loader.iter_from(epoch as u64, st.next_batch) {
            let batch = batch?;
            let kb = batch.batch_index;
            let t = match cfg.sched_on {
                SchedUnit::Epoch => epoch as f64,
                SchedUnit::Step => epoch as f64 + kb as f64 / steps_per_epoch as f64,
            };
            lr = sched.lr_at(t);
            let b = batch.labels.len();
            let x = images_tensor(batch.images, batch.shape, &device)?;
            let targets = Tensor::from_vec(
                batch.soft_targets.context("loader produced no targets")?,
                (b, k),
                &device,
            )?;
            let seed =
                splitmix(cfg.seed ^ splitmix(st.step.wrapping_mul(31).wrapping_add(kb as u64)));
            let mut ctx = ForwardCtx::train(seed);
            let logits = model.forward(&x, &mut ctx)?;
            for s in &ctx.solver_stats {
                record_solve(&mut solver_blocks, s);
                if !s.converged {
                    // Warn for the first few cap hits of the epoch; the rest are counted.
                    if SolverTotals::of(&solver_blocks).unconverged <= 3 {
                        bar.suspend(|| {
                            eprintln!(
                                "warning: {} did not converge at epoch {epoch} batch {kb}: residual {:.2e} after {} iterations",
                                s.module, s.residual, s.iterations
                            )
                        });
                    }
                }
            }
            let (loss, _, _) = model.soft_loss(&logits, &targets)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bar.abandon();
                bail!(
                    "loss became {loss_value} at epoch {epoch}, batch {kb} (step {}); the last good checkpoint {} is untouched — lower --lr or enable --clip-grad",
                    st.step,
                    last_path.display()
                );
            }
            let g = if accum > 1 {
                (loss / accum as f64)?.backward()?
            } else {
                loss.backward()?
            };
            accumulate(&mut grads, g, &model)?;
            let rows = logits.to_vec2::<f32>()?;
            correct += rows
                .iter()
                .zip(&batch.labels)
                .filter(|(r, &l)| rank(r)[0] == l)
                .count();
            loss_sum += loss_value * b as f64;
            seen += b;
            let is_step = (kb + 1) % accum == 0 || kb + 1 == steps_per_epoch;
            if is_step {
                let g = grads.take().expect("accumulated gradients");
                let g = match cfg.clip_grad {
                    Some(c) => crate::optim::clip::clip_grad_norm(&model.params, g, c)?,
                    None => g,
                };
                opt.set_lr(lr);
                opt.step(&g)?;
                st.step += 1;
                steps_this_process += 1;
                st.next_batch = kb + 1;
                st.partial = EpochProgress {
                    loss_sum,
                    correct,
                    seen,
                    solver_blocks: solver_blocks.clone(),
                };
                if cfg
                    .save_every_steps
                    .is_some_and(|n| st.step.is_multiple_of(n as u64))
                    && st.next_batch < steps_per_epoch
                {
                    ensure_finite_weights(&model, epoch, st.step, &last_path)?;
                    state::save(&last_path, &model, Some(&opt), &st, &config_toml, &classes)?;
                }
                if opts
                    .stop_after_steps
                    .is_some_and(|n| steps_this_process >= n)
                {
                    bar.abandon();
                    ensure_finite_weights(&model, epoch, st.step, &last_path)?;
                    state::save(&last_path, &model, Some(&opt), &st, &config_toml, &classes)?;
                    bail!("stopped after {steps_this_process} steps as requested (--stop-after-steps); resume with --resume");
                }
            }
            let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} lr {:.2e} {:.0} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                lr,
                seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = epoch_start.elapsed().as_secs_f64();
        let report = evaluate(&model, &val_loader, k)?;
        // The loss check above sees each batch *before* its update, so the epoch's last step can
        // still have broken the weights: check them (and the validation loss they give) before
        // anything of this epoch is written.
        ensure_finite_weights(&model, epoch, st.step, &last_path)?;
        if !report.loss.is_finite() {
            bail!(
                "validation loss became {} after epoch {epoch} (step {}); the last good checkpoint {} is untouched — lower --lr or enable --clip-grad",
                report.loss,
                st.step,
                last_path.display()
            );
        }
        let totals = SolverTotals::of(&solver_blocks);
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: report.loss,
            val_top1: report.top1,
            val_top5: report.top5,
            seconds: epoch_start.elapsed().as_secs_f64(),
            img_per_s: seen as f64 / train_secs.max(1e-9),
            solver_mean_iters: (totals.solves > 0).then_some(totals.mean_iterations),
            solver_max_residual: (totals.solves > 0).then_some(totals.max_residual),
            solver_blocks,
        };
        if totals.unconverged > 0 {
            eprintln!(
                "warning: epoch {epoch}: {} of {} iMLP solves hit the iteration cap (max residual {:.2e})",
                totals.unconverged, totals.solves, totals.max_residual
            );
        }
        if opts.progress {
            eprintln!(
                "epoch {epoch:>3}/{total_epochs}: train loss {:.4} acc {:.4} | val loss {:.4} top-1 {:.4} top-5 {:.4} | lr {:.2e} | {:.0} s, {:.0} img/s",
                m.train_loss, m.train_acc, m.val_loss, m.val_top1, m.val_top5, m.lr, m.seconds, m.img_per_s
            );
        }
        history.push(m.clone());
        append_history(&metrics_path, &m)?;
        st.epoch += 1;
        st.next_batch = 0;
        st.partial = EpochProgress::default();
        let improved = report.top1 > st.best_top1;
        if improved {
            st.best_top1 = report.top1;
            st.best_epoch = Some(epoch);
        }
        // best before last: a crash between the two then replays this epoch on resume and
        // rewrites best (the other order could leave a stale best.safetensors that last's
        // best_top1 says is already saved).
        if improved {
            state::save(
                &out.join("best.safetensors"),
                &model,
                None,
                &st,
                &config_toml,
                &classes,
            )?;
        }
        state::save(&last_path, &model, Some(&opt), &st, &config_toml, &classes)?;
        plot_curves(&out.join("curves.png"), &history)?;
        last_report = Some(report);
    }
    let report = match last_report {
        Some(r) => r,
        None => evaluate(&model, &val_loader, k)?,
    };
    Ok(TrainSummary {
        out,
        model: cfg
            .model_config
            .as_ref()
            .map(|_| "custom".to_string())
            .unwrap_or_else(|| cfg.model.clone()),
        params: model.params.num_params(),
        epochs: total_epochs,
        final_val_top1: report.top1,
        final_val_top5: report.top5,
        final_val_loss: report.loss,
        best_val_top1: st.best_top1,
        best_epoch: st.best_epoch,
        train_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fails, naming the tensor, when any weight or buffer of `model` holds a NaN or ±∞.
///
/// Called before every checkpoint write of a run: a step whose own loss was finite can still
/// produce non-finite weights (an overflowing update), and saving them would replace the last
/// good checkpoint with garbage.
fn ensure_finite_weights(model: &MixerNet, epoch: usize, step: u64, last: &Path) -> Result<()> {
    if let Some(name) = first_non_finite(model)? {
        bail!(
            "the weights became non-finite ({name}) at epoch {epoch} (step {step}); the last good checkpoint {} is untouched — lower --lr or enable --clip-grad",
            last.display()
        );
    }
    Ok(())
}

/// The name of the first tensor of `model` holding a NaN or ±∞, if any.
pub fn first_non_finite(model: &MixerNet) -> Result<Option<String>> {
    for e in model.params.entries() {
        let values = e
            .var
            .as_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Ok(Some(e.name.clone()));
        }
    }
    Ok(None)
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

pub fn read_history(path: &Path) -> Result<Vec<EpochMetrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l}", path.display()))
        })
        .collect()
}

fn rewrite_history(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    crate::checkpoint::write_atomically(path, text.as_bytes())
}

fn append_history(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?)?;
    Ok(())
}

fn plot_curves(path: &Path, h: &[EpochMetrics]) -> Result<()> {
    let pts =
        |f: fn(&EpochMetrics) -> f64| h.iter().map(|m| (m.epoch as f64, f(m))).collect::<Vec<_>>();
    line_panels(
        path,
        &[
            (
                "loss",
                "epoch",
                "cross-entropy",
                vec![
                    Series {
                        name: "train",
                        points: pts(|m| m.train_loss),
                    },
                    Series {
                        name: "val",
                        points: pts(|m| m.val_loss),
                    },
                ],
            ),
            (
                "accuracy",
                "epoch",
                "accuracy",
                vec![
                    Series {
                        name: "train",
                        points: pts(|m| m.train_acc),
                    },
                    Series {
                        name: "val top-1",
                        points: pts(|m| m.val_top1),
                    },
                    Series {
                        name: "val top-5",
                        points: pts(|m| m.val_top5),
                    },
                ],
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_names_the_broken_tensor() {
        let cfg = registry::lookup("mixer_n4_28").unwrap();
        let model = MixerNet::new(&cfg, 0, &Device::Cpu).unwrap();
        assert_eq!(first_non_finite(&model).unwrap(), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = &model.params.entries()[3];
            let mut values = e.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let good = values.clone();
            let mid = values.len() / 2;
            values[mid] = bad;
            let broken = Tensor::from_vec(values, e.var.shape(), &Device::Cpu).unwrap();
            e.var.set(&broken).unwrap();
            assert_eq!(first_non_finite(&model).unwrap(), Some(e.name.clone()));
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
            assert_eq!(first_non_finite(&model).unwrap(), None);
        }
    }
}
