//! The training configuration: every recipe knob, serialisable to TOML. Resolution order:
//! per-dataset defaults → `--config FILE.toml` → command-line flags; the resolved configuration
//! is saved as `OUT/config.toml` and inside every checkpoint.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lr_scale::LrScale;
use crate::config::ModelConfig;
use crate::data::{DatasetKind, EvalTransform, Interpolation, MixupConfig, TrainTransform};

/// The optimizer `lr_base_scale` defaults for (timm picks the rule by optimizer name).
pub const OPTIMIZER: &str = "adamw";

/// When the learning-rate schedule advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedUnit {
    /// Once per epoch (timm default, the papers).
    Epoch,
    /// Every optimizer step (smooth warm-up for short runs).
    Step,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Registered model name (`imixer models`); ignored when `model_config` is given.
    pub model: String,
    /// A full model configuration instead of a registered name (any knob).
    pub model_config: Option<ModelConfig>,
    /// Drop-path rate (same in every block).
    pub drop_path: f64,
    /// iMixer only: override the iMLP solver (`unrolled` = reference; `picard`/`anderson` solve
    /// the fixed point to a tolerance with implicit gradients).
    pub solver: Option<crate::config::Solver>,
    /// Paper-2 models only: override the model's λ, the weight of the symmetry-breaking term
    /// λ·Σ‖W2‖² (the registry sets 0.1 for `asymmixer_*`; sweeps vary it at any size).
    pub lambda: Option<f64>,
    pub dataset: DatasetKind,
    /// Data directory (default: the dataset's standard location).
    pub data_dir: Option<PathBuf>,
    /// Run directory: checkpoints, metrics, plots.
    pub out: PathBuf,
    /// Epochs of the cosine schedule (warm-up included).
    pub epochs: usize,
    /// Extra epochs at `min_lr` after the cosine.
    pub cooldown_epochs: usize,
    pub warmup_epochs: f64,
    pub batch_size: usize,
    /// Peak learning rate. Unset: derived from `lr_base` at the run's global batch
    /// ([`TrainConfig::peak_lr`]), so a changed batch size rescales it.
    pub lr: Option<f64>,
    /// Learning rate at a global batch of `lr_base_size` (timm `--lr-base`), used when `lr` is
    /// unset.
    pub lr_base: f64,
    pub lr_base_size: usize,
    /// How the derived lr follows the batch; unset: timm's rule for AdamW (`sqrt`).
    pub lr_base_scale: Option<LrScale>,
    pub min_lr: f64,
    pub warmup_lr: f64,
    pub weight_decay: f64,
    pub sched_on: SchedUnit,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient L2 norm (off when absent).
    pub clip_grad: Option<f64>,
    pub seed: u64,
    /// Loader threads (decoding and augmentation).
    pub workers: usize,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Data-parallel shards per batch: the batch splits into this many row slices that run side
    /// by side, each on its own share of the threads, gradients summed in shard order
    /// (`train::shards`). Results depend on the shard count, never on `threads`. A config
    /// written before this knob existed meant one shard.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Matmul precision: `fp32` (golden-exact) or `bf16` (bfloat16 matmul inputs, f32
    /// accumulation, f32 weights and optimizer state: `kernels::Precision`). Part of the result.
    pub precision: crate::kernels::Precision,
    pub train_transform: TrainTransform,
    pub eval_transform: EvalTransform,
    /// Mixup/CutMix and label smoothing (`prob = 0` or both alphas 0: smoothing only).
    pub mixup: MixupConfig,
    /// Train on a random subset of this many images (quick runs, tests).
    pub train_subset: Option<usize>,
    /// Evaluate on a subset of this many images.
    pub val_subset: Option<usize>,
    /// Also checkpoint `last` every this many optimizer steps inside an epoch.
    pub save_every_steps: Option<usize>,
    pub eval_batch_size: usize,
    /// Fine-tuning: start from this checkpoint's weights (an imixer checkpoint or a reference
    /// state_dict file), with a fresh optimizer and schedule. A head of another class count is
    /// re-initialised (`train::finetune`).
    pub initial_checkpoint: Option<PathBuf>,
    /// Keep an exponential moving average of the weights (timm `--model-ema`, ModelEmaV2),
    /// evaluate it every epoch and pick `best` by its top-1 (`train::ema`).
    pub model_ema: bool,
    /// EMA decay per optimizer step: ema = decay · ema + (1 − decay) · weights.
    pub model_ema_decay: f64,
}

fn one_shard() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::defaults_for(DatasetKind::FashionMnist)
    }
}

impl TrainConfig {
    /// Defaults chosen per data set so that a plain `imixer train` does the right thing.
    ///
    /// Every data set states its learning rate as `lr_base` at its default batch, so a run at
    /// another `--batch-size` (or `--grad-accum`) rescales it ([`TrainConfig::peak_lr`]):
    /// linearly for image folders (paper 2's rule), by √ for the others (timm's rule for AdamW).
    ///
    /// - Fashion-MNIST / MNIST (28×28×1): the small ParaMixer `paramixer_n4_28` (D 64, 4 blocks),
    ///   flip (Fashion-MNIST only: flipped digits are other digits), no crop, random erasing 0.25,
    ///   label smoothing 0.1, no RandAugment/Mixup, AdamW lr 5e-3 at batch 64, 16 epochs, per-step
    ///   cosine with 0.2 epochs of warm-up, 2 data-parallel shards. Why: the default run should end
    ///   well inside half an hour on two cores. ParaMixer learns at least as much per epoch as the
    ///   iMixer at a lower cost per epoch, so the time holds more of its epochs; random erasing is
    ///   what lets the extra epochs pay instead of overfitting; a random crop slowed learning more
    ///   than it regularised at this length; lr and batch come from a short sweep. The
    ///   measurements behind each choice: docs/results.md, "How the Fashion-MNIST default was
    ///   chosen".
    /// - CIFAR-10/100 (32×32×3): `imixer_s4_32` with the papers' regularisation at native size
    ///   (RandomCrop pad 4, flip, RandAugment m9, erasing 0.25, Mixup/CutMix, smoothing 0.1,
    ///   drop-path 0.1), 100 epochs, lr 1e-3 at batch 128, 5 warm-up epochs.
    /// - Image folders and Food-101: the papers' full recipe at 224 (docs/models.md "Training
    ///   recipe": RandomResizedCrop with timm's random bilinear/bicubic, crop_pct 0.875 with
    ///   bicubic), 300 epochs, 20 warm-up, 10 cool-down, lr 5e-4·batch/512, `imixer_s16_224`.
    ///
    /// The 28- and 32-pixel data sets keep bilinear in both pipelines: at native size neither
    /// resizes anything (RandomCrop pads, the eval crop_pct is 1), so only CIFAR's RandAugment
    /// warps see the filter, and bilinear is what the measured results in docs/results.md ran
    /// with; `--train-interpolation random` gives timm's CIFAR behaviour.
    pub fn defaults_for(dataset: DatasetKind) -> Self {
        let mut c = TrainConfig {
            model: "paramixer_n4_28".into(),
            model_config: None,
            drop_path: 0.0,
            solver: None,
            lambda: None,
            dataset,
            data_dir: None,
            out: PathBuf::from("runs/latest"),
            epochs: 16,
            cooldown_epochs: 0,
            warmup_epochs: 0.2,
            batch_size: 64,
            lr: None,
            lr_base: 5e-3,
            lr_base_size: 64,
            lr_base_scale: None,
            min_lr: 1e-5,
            warmup_lr: 1e-6,
            weight_decay: 0.05,
            sched_on: SchedUnit::Step,
            grad_accum: 1,
            clip_grad: None,
            seed: 0,
            workers: 1,
            threads: 0,
            shards: 2,
            precision: crate::kernels::Precision::Fp32,
            train_transform: TrainTransform {
                random_erase: 0.25,
                ..TrainTransform::small(28, 1, 0)
            },
            eval_transform: EvalTransform {
                crop_pct: 1.0,
                interpolation: Interpolation::Bilinear,
                ..EvalTransform::spec(28, 1)
            },
            mixup: MixupConfig {
                prob: 0.0,
                ..MixupConfig::smoothing_only(10, 0.1)
            },
            train_subset: None,
            val_subset: None,
            save_every_steps: None,
            eval_batch_size: 256,
            initial_checkpoint: None,
            model_ema: false,
            model_ema_decay: 0.9998,
        };
        match dataset {
            DatasetKind::FashionMnist => {}
            DatasetKind::Mnist => c.train_transform.hflip = 0.0,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
                let classes = if dataset == DatasetKind::Cifar10 {
                    10
                } else {
                    100
                };
                c.model = "imixer_s4_32".into();
                c.epochs = 100;
                c.batch_size = 128;
                c.warmup_epochs = 5.0;
                c.lr_base = 1e-3;
                c.lr_base_size = 128;
                c.drop_path = 0.1;
                c.sched_on = SchedUnit::Epoch;
                c.train_transform = TrainTransform {
                    random_erase: 0.25,
                    rand_augment: TrainTransform::spec(32, 3).rand_augment,
                    ..TrainTransform::small(32, 3, 4)
                };
                c.eval_transform = EvalTransform {
                    crop_pct: 1.0,
                    interpolation: Interpolation::Bilinear,
                    ..EvalTransform::spec(32, 3)
                };
                c.mixup = MixupConfig::spec(classes);
            }
            DatasetKind::Folder | DatasetKind::Food101 => {
                c.model = "imixer_s16_224".into();
                c.epochs = 300;
                c.batch_size = 128;
                c.cooldown_epochs = 10;
                c.warmup_epochs = 20.0;
                // Paper 2's rule, 5e-4 · batch / 512, applied at the run's batch.
                c.lr_base = 5e-4;
                c.lr_base_size = 512;
                c.lr_base_scale = Some(LrScale::Linear);
                c.min_lr = 1e-6;
                c.drop_path = 0.1;
                c.sched_on = SchedUnit::Epoch;
                c.train_transform = TrainTransform::spec(224, 3);
                c.eval_transform = EvalTransform::spec(224, 3);
                c.mixup = MixupConfig::spec(0);
            }
        }
        c
    }

    /// A configuration from a TOML table of any of its fields (an `imixer train --config` file,
    /// one run of a sweep): the defaults of `dataset` — else of the data set the table names,
    /// else Fashion-MNIST — deep-merged with the table. A misspelt or mistyped field is an error
    /// naming it.
    pub fn from_table(
        dataset: Option<DatasetKind>,
        table: toml::Table,
    ) -> Result<Self, super::TrainError> {
        use super::TrainError::Config;
        let named = match table.get("dataset") {
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| Config(format!("dataset must be a string, not {v}")))?
                    .parse::<DatasetKind>()?,
            ),
            None => None,
        };
        let dataset = dataset.or(named).unwrap_or(DatasetKind::FashionMnist);
        let mut base = toml::Table::try_from(TrainConfig::defaults_for(dataset))
            .map_err(|e| Config(format!("cannot represent the defaults as TOML: {e}")))?;
        for (k, v) in table {
            merge_toml(&mut base, k, v);
        }
        let mut c: TrainConfig = toml::Value::Table(base)
            .try_into()
            .map_err(|e| Config(format!("{e}")))?;
        c.dataset = dataset;
        Ok(c)
    }

    /// Images per optimizer step: the batch times the micro-batches accumulated.
    pub fn global_batch(&self) -> usize {
        // Saturating: a config read from a file may hold any numbers, and validation computes
        // the lr before it could refuse them.
        self.batch_size.saturating_mul(self.grad_accum)
    }

    /// The rule that derives the lr from `lr_base` (timm's default when `lr_base_scale` is unset).
    pub fn lr_scale(&self) -> LrScale {
        self.lr_base_scale
            .unwrap_or_else(|| LrScale::timm_default(OPTIMIZER))
    }

    /// The peak learning rate of the run: `lr` when given, else `lr_base` scaled from
    /// `lr_base_size` to the global batch (timm `train.py`).
    pub fn peak_lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| {
            self.lr_scale()
                .lr(self.lr_base, self.lr_base_size, self.global_batch())
        })
    }

    /// How the peak lr came about, for the run's log.
    pub fn lr_origin(&self) -> String {
        match self.lr {
            Some(lr) => format!("lr {lr:.4e} (given)"),
            None => format!(
                "lr {:.4e} from lr_base {:e} at batch {} scaled to the global batch {} ({})",
                self.peak_lr(),
                self.lr_base,
                self.lr_base_size,
                self.global_batch(),
                self.lr_scale()
            ),
        }
    }

    /// Total epochs run (cosine + cool-down).
    pub fn total_epochs(&self) -> usize {
        self.epochs + self.cooldown_epochs
    }

    /// Sanity checks with messages that name the knob.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("epochs must be ≥ 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err("batch sizes must be ≥ 1".into());
        }
        if self.grad_accum == 0 {
            return Err("grad_accum must be ≥ 1".into());
        }
        if self.shards == 0 {
            return Err("shards must be ≥ 1".into());
        }
        if self.lr_base_size == 0 {
            return Err("lr_base_size must be ≥ 1".into());
        }
        for (name, v) in [
            ("lr_base", self.lr_base),
            ("lr", self.peak_lr()),
            ("min_lr", self.min_lr),
            ("warmup_lr", self.warmup_lr),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} = {v} must be finite and ≥ 0"));
            }
        }
        if self.lambda.is_some_and(|l| !l.is_finite() || l < 0.0) {
            return Err(format!(
                "lambda = {} must be finite and ≥ 0",
                self.lambda.unwrap_or_default()
            ));
        }
        if !(0.0..=1.0).contains(&self.model_ema_decay) {
            return Err(format!(
                "model_ema_decay = {} must be in [0, 1] (timm's default is 0.9998)",
                self.model_ema_decay
            ));
        }
        if self.clip_grad.is_some_and(|c| !c.is_finite() || c <= 0.0) {
            return Err("clip_grad must be finite and > 0".into());
        }
        if !self.warmup_epochs.is_finite() || self.warmup_epochs < 0.0 {
            return Err(format!(
                "warmup_epochs = {} must be finite and ≥ 0",
                self.warmup_epochs
            ));
        }
        if self.warmup_epochs > 0.0 && self.warmup_epochs >= self.epochs as f64 {
            return Err(format!(
                "warmup_epochs = {} is not shorter than epochs = {}: the learning rate would never reach its peak; lower --warmup-epochs or raise --epochs (the {} cool-down epochs come on top)",
                self.warmup_epochs, self.epochs, self.cooldown_epochs
            ));
        }
        if !self.drop_path.is_finite() || !(0.0..1.0).contains(&self.drop_path) {
            return Err(format!("drop_path = {} must be in [0, 1)", self.drop_path));
        }
        if self.save_every_steps == Some(0) {
            return Err(
                "save_every_steps must be ≥ 1 (leave it unset to save once per epoch)".into(),
            );
        }
        for (name, n) in [
            ("train_subset", self.train_subset),
            ("val_subset", self.val_subset),
        ] {
            if n == Some(0) {
                return Err(format!(
                    "{name} must be ≥ 1 (leave it unset for the whole split)"
                ));
            }
        }
        if self.out.as_os_str().is_empty() {
            return Err("out (the run directory) must not be empty".into());
        }
        if let Some(s) = &self.solver {
            s.validate()?;
        }
        if let Some(m) = &self.model_config {
            // The data set's class count and drop_path are set later; check the rest now.
            m.validate().map_err(|e| format!("model_config: {e}"))?;
        }
        Ok(())
    }
}

/// Deep-merges a TOML value into a table (nested tables merge key by key).
pub fn merge_toml(base: &mut toml::Table, key: String, value: toml::Value) {
    match (base.get_mut(&key), value) {
        (Some(toml::Value::Table(b)), toml::Value::Table(v)) => {
            for (k, v) in v {
                merge_toml(b, k, v);
            }
        }
        (_, v) => {
            base.insert(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(c: TrainConfig) -> String {
        c.validate().unwrap_err()
    }

    #[test]
    fn the_lr_follows_the_batch_unless_given() {
        // The historic defaults, bit for bit, at each data set's default batch.
        let folder = TrainConfig::defaults_for(DatasetKind::Folder);
        assert_eq!(folder.peak_lr(), 5e-4 * 128.0 / 512.0);
        assert_eq!(TrainConfig::default().peak_lr(), 5e-3);
        assert_eq!(
            TrainConfig::defaults_for(DatasetKind::Cifar10).peak_lr(),
            1e-3
        );
        // Paper 2's linear rule at another batch, and through gradient accumulation.
        let at = |batch_size, grad_accum| {
            TrainConfig {
                batch_size,
                grad_accum,
                ..folder.clone()
            }
            .peak_lr()
        };
        assert_eq!(at(256, 1), 2.5e-4);
        assert_eq!(at(64, 4), 2.5e-4);
        assert_eq!(at(512, 4), 2e-3);
        // Fashion-MNIST: timm's default rule for AdamW, sqrt.
        let fmnist = TrainConfig {
            batch_size: 256,
            ..TrainConfig::default()
        };
        assert_eq!(fmnist.lr_scale(), LrScale::Sqrt);
        assert_eq!(fmnist.peak_lr(), 1e-2);
        // A given lr is used as it is.
        let given = TrainConfig {
            lr: Some(3e-4),
            ..fmnist.clone()
        };
        assert_eq!(given.peak_lr(), 3e-4);
        assert!(given.lr_origin().contains("given"), "{}", given.lr_origin());
        let derived = fmnist.lr_origin();
        assert!(
            derived.contains("lr_base 5e-3") && derived.contains("256") && derived.contains("sqrt"),
            "{derived}"
        );
        // A config written before lr_base existed (lr given) reads back unchanged.
        let old: TrainConfig = toml::from_str("lr = 0.002\nbatch_size = 16\n").unwrap();
        assert_eq!(old.peak_lr(), 0.002);
        for bad in [
            TrainConfig {
                lr_base_size: 0,
                ..fmnist.clone()
            },
            TrainConfig {
                lr_base: f64::NAN,
                ..fmnist.clone()
            },
        ] {
            assert!(err(bad).contains("lr_base"));
        }
        let e = err(TrainConfig {
            model_ema_decay: 1.5,
            ..fmnist
        });
        assert!(e.contains("model_ema_decay"), "{e}");
    }

    #[test]
    fn numbers_are_checked_before_a_run_starts() {
        let ok = TrainConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        for w in [f64::NAN, f64::INFINITY, -1.0] {
            let e = err(TrainConfig {
                warmup_epochs: w,
                ..ok.clone()
            });
            assert!(e.contains("warmup_epochs"), "{e}");
        }
        // A warm-up as long as the run never reaches the peak learning rate.
        let folder = TrainConfig {
            epochs: 1,
            ..TrainConfig::defaults_for(DatasetKind::Folder)
        };
        let e = err(folder);
        assert!(
            e.contains("--warmup-epochs") && e.contains("cool-down"),
            "{e}"
        );
        let e = err(TrainConfig {
            save_every_steps: Some(0),
            ..ok.clone()
        });
        assert!(e.contains("save_every_steps"), "{e}");
        let e = err(TrainConfig {
            out: PathBuf::new(),
            ..ok.clone()
        });
        assert!(e.contains("out"), "{e}");
        let e = err(TrainConfig {
            val_subset: Some(0),
            ..ok.clone()
        });
        assert!(e.contains("val_subset"), "{e}");
        let e = err(TrainConfig {
            solver: Some(crate::config::Solver::Picard {
                tol: f64::NAN,
                max_iter: 30,
            }),
            ..ok.clone()
        });
        assert!(e.contains("--solver-tol"), "{e}");
        let e = err(TrainConfig {
            clip_grad: Some(f64::INFINITY),
            ..ok.clone()
        });
        assert!(e.contains("clip_grad"), "{e}");
    }
}
