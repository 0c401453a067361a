//! Fine-tuning (`--initial-checkpoint`, timm's flag of the same name): a run starts from another
//! checkpoint's weights instead of a fresh initialisation, with a fresh optimizer and schedule.
//!
//! - The classifier head is re-initialised (timm's zero init, as in a fresh model) when the
//!   checkpoint's class count differs from the data set's, or when it has no head; the run says so.
//! - Everything else must fit exactly. A different token count is its own error: a Mixer's token
//!   MLPs are sized by (img_size / patch)², so no weights carry over to another image size.
//! - Spectral-norm buffers (u, v, σ̂) come along with their weights.

use std::collections::HashMap;
use std::path::Path;

use super::error::{Doing, Result, TrainError};
use candle_core::Tensor;

use crate::checkpoint::{self, Checkpoint, ModelSpec, Weights};
use crate::config::ModelConfig;
use crate::MixerNet;

/// The head tensors a class-count change re-initialises.
const HEAD: [&str; 2] = ["head.weight", "head.bias"];

/// What loading an initial checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// `Some(k)`: the head was re-initialised, the checkpoint's having `k` classes (0: no head).
    pub head_reset_from: Option<usize>,
}

impl Loaded {
    /// What the run tells its user about the start from `path` (for `num_classes` classes).
    pub fn describe(&self, path: &Path, num_classes: usize) -> String {
        let head = match self.head_reset_from {
            None => String::new(),
            Some(0) => format!(
                "; it has no classifier head: the head is initialised afresh for {num_classes} classes"
            ),
            Some(k) => format!(
                "; its head has {k} classes, the data set {num_classes}: the head is re-initialised"
            ),
        };
        format!(
            "fine-tuning from {} (weights only: fresh optimizer and schedule){head}",
            path.display()
        )
    }
}

/// The model configuration of an initial checkpoint of any format (`checkpoint::open`): the one
/// imixer stored, else the one its tensor shapes determine (a timm or PyTorch file); `None` when
/// neither is known, so that the run's own model is used.
pub fn stored_model_config(path: &Path) -> Result<Option<ModelConfig>> {
    let ckpt = Checkpoint::open(path, Weights::Model)
        .doing(|| format!("cannot read the initial checkpoint {}", path.display()))?;
    if let Some(cfg) = ckpt.stored_config()? {
        cfg.validate().map_err(|e| TrainError::unusable(path, e))?;
        return Ok(Some(cfg));
    }
    Ok(checkpoint::load::resolve(&ckpt, &ModelSpec::default())
        .ok()
        .map(|r| r.config))
}

/// Loads the weights of `path` into `model` (freshly initialised from the run seed), keeping the
/// fresh head when the class count differs. On any error the model is unchanged.
pub fn load_initial_weights(model: &MixerNet, path: &Path) -> Result<Loaded> {
    let ckpt = Checkpoint::open(path, Weights::Model)
        .doing(|| format!("cannot load the initial checkpoint {}", path.display()))?;
    let stored = ckpt.stored_config()?;
    if let Some(s) = &stored {
        s.validate().map_err(|e| TrainError::unusable(path, e))?;
    }
    // The model weights only (no optimizer moments, no EMA), under reference names.
    let mut weights: HashMap<String, Tensor> = ckpt.decode(model.device())?.into_iter().collect();
    let cfg = &model.config;
    if let Some(s) = &stored {
        if s.family != cfg.family {
            return Err(TrainError::unusable(
                path,
                format!(
                    "holds a {} model but this run trains a {}: fine-tune the same family (drop --model to take the checkpoint's)",
                    s.family, cfg.family
                ),
            ));
        }
    }
    let shapes: HashMap<&str, &[usize]> = weights
        .iter()
        .map(|(k, t)| (k.as_str(), t.dims()))
        .collect();
    if let Some(file_tokens) = token_count(stored.as_ref(), &shapes, model) {
        if file_tokens != cfg.num_tokens() {
            let theirs = match &stored {
                Some(s) => format!(
                    " (img_size {} / patch {})²; fine-tune at that image size and patch",
                    s.img_size, s.patch_size
                ),
                None => "; fine-tune with a model of the checkpoint's img_size / patch".into(),
            };
            return Err(TrainError::unusable(
                path,
                format!(
                    "the checkpoint's token-mixing MLPs take {file_tokens} tokens{theirs}, or drop --model to take the checkpoint's model. This model has {} tokens (img_size {} / patch {})², and a Mixer's token MLPs are sized by the token count, so none of their weights carry over",
                    cfg.num_tokens(),
                    cfg.img_size,
                    cfg.patch_size
                ),
            ));
        }
    }
    // Another class count (or no head): the fresh head stays; a head of the right class count
    // but another width is reported by `load_state` below.
    let head_reset_from = match weights.get("head.weight").map(|w| w.dims()[0]) {
        None => Some(0),
        Some(k) if k != cfg.num_classes => Some(k),
        Some(_) => None,
    };
    if head_reset_from.is_some() {
        for n in HEAD {
            let fresh = model.params.get(n).expect("every model has a head");
            weights.insert(n.to_string(), fresh.var.as_tensor().copy()?);
        }
    }
    model
        .load_state(&weights, false)
        .doing(|| format!("{} does not fit the model to fine-tune", path.display()))?;
    if let Some(name) = model.first_non_finite()? {
        return Err(TrainError::unusable(
            path,
            format!(
                "holds non-finite weights ({name} contains NaN or ±∞): use an earlier checkpoint"
            ),
        ));
    }
    Ok(Loaded { head_reset_from })
}

/// The token count a checkpoint's weights were made for: from its stored configuration, else
/// read off the first token-MLP tensor whose shape differs from the model's, at a dimension that
/// is the model's token count (None when nothing tells).
fn token_count(
    stored: Option<&ModelConfig>,
    shapes: &HashMap<&str, &[usize]>,
    model: &MixerNet,
) -> Option<usize> {
    if let Some(s) = stored {
        return Some(s.num_tokens());
    }
    let n = model.config.num_tokens();
    model
        .params
        .entries()
        .iter()
        .filter(|e| e.name.contains(".mlp_tokens."))
        .find_map(|e| {
            let theirs = shapes.get(e.name.as_str())?;
            let ours = e.var.dims();
            if theirs.len() != ours.len() {
                return None;
            }
            ours.iter()
                .zip(theirs.iter())
                .find(|(o, t)| **o == n && **t != n)
                .map(|(_, t)| *t)
        })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::Family;

    /// A PyTorch training checkpoint (`torch.save`, DDP prefix, `args`) starts a fine-tune too:
    /// its settings come from the shapes and arguments, its weights load under reference names.
    #[test]
    fn a_pytorch_training_checkpoint_is_an_initial_checkpoint() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pytorch/imixer_train.pth.tar");
        let cfg = stored_model_config(&path)
            .unwrap()
            .expect("settings from the file");
        assert_eq!(
            (
                cfg.family,
                cfg.img_size,
                cfg.patch_size,
                cfg.embed_dim,
                cfg.depth
            ),
            (Family::IMixer, 8, 4, 8, 2)
        );
        assert_eq!((cfg.num_classes, cfg.imixer.n_iter), (5, 4));
        // Onto a data set of 7 classes: everything but the head carries over.
        let target = ModelConfig {
            num_classes: 7,
            ..cfg.clone()
        };
        let net = MixerNet::new(&target, 1, &Device::Cpu).unwrap();
        let loaded = load_initial_weights(&net, &path).unwrap();
        assert_eq!(loaded.head_reset_from, Some(5));
    }

    fn model(family: Family, img: usize, patch: usize, classes: usize, seed: u64) -> MixerNet {
        let cfg = ModelConfig {
            family,
            img_size: img,
            in_chans: 1,
            patch_size: patch,
            embed_dim: 16,
            depth: 2,
            num_classes: classes,
            ..ModelConfig::default()
        };
        MixerNet::new(&cfg, seed, &Device::Cpu).unwrap()
    }

    fn values(m: &MixerNet, name: &str) -> Vec<f32> {
        let e = m.params.get(name).unwrap();
        e.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A trained-looking source: every tensor moved off its init, the head non-zero.
    fn source(family: Family, img: usize, patch: usize, classes: usize) -> MixerNet {
        let m = model(family, img, patch, classes, 1);
        for e in m.params.entries() {
            let t = (e.var.as_tensor() + 0.5).unwrap();
            e.var.set(&t).unwrap();
        }
        m
    }

    #[test]
    fn weights_carry_over_and_a_new_class_count_resets_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.safetensors");
        for family in [Family::IMixer, Family::Mixer] {
            let src = source(family, 28, 7, 10);
            src.save(&p).unwrap();
            // Same classes: every tensor, spectral-norm buffers included.
            let same = model(family, 28, 7, 10, 2);
            let loaded = load_initial_weights(&same, &p).unwrap();
            assert_eq!(loaded.head_reset_from, None);
            for e in src.params.entries() {
                assert_eq!(values(&same, &e.name), values(&src, &e.name), "{}", e.name);
            }
            if family == Family::IMixer {
                assert!(same.params.buffers().count() > 0);
            }
            // 3 classes: the head stays the fresh one (zeros), the rest comes over.
            let new = model(family, 28, 7, 3, 2);
            let fresh = model(family, 28, 7, 3, 2);
            let loaded = load_initial_weights(&new, &p).unwrap();
            assert_eq!(loaded.head_reset_from, Some(10));
            for n in HEAD {
                assert_eq!(values(&new, n), values(&fresh, n), "{n}");
                assert!(
                    values(&new, n).iter().all(|v| *v == 0.0),
                    "timm zero-inits {n}"
                );
            }
            assert_eq!(
                values(&new, "stem.proj.weight"),
                values(&src, "stem.proj.weight")
            );
            // A reference file (no configuration) loads the same way.
            let mut tensors = src.state_dict();
            tensors.retain(|(n, _)| !n.starts_with("head."));
            checkpoint::write(&p, &tensors, &HashMap::new()).unwrap();
            let headless = model(family, 28, 7, 10, 2);
            let loaded = load_initial_weights(&headless, &p).unwrap();
            assert_eq!(loaded.head_reset_from, Some(0));
        }
    }

    #[test]
    fn another_token_count_or_family_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.safetensors");
        let src = source(Family::Mixer, 28, 7, 10);
        src.save(&p).unwrap();
        let target = model(Family::Mixer, 28, 4, 10, 2);
        let before = values(&target, "stem.proj.weight");
        let err = load_initial_weights(&target, &p).unwrap_err().to_string();
        for needle in [
            "16 tokens",
            "49 tokens",
            "img_size 28 / patch 7",
            "src.safetensors",
        ] {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
        assert_eq!(
            values(&target, "stem.proj.weight"),
            before,
            "model unchanged"
        );
        // Without a stored configuration the count is read off the token-MLP shapes.
        checkpoint::write(&p, &src.state_dict(), &HashMap::new()).unwrap();
        let err = load_initial_weights(&target, &p).unwrap_err().to_string();
        assert!(
            err.contains("16 tokens") && err.contains("49 tokens"),
            "{err}"
        );
        src.save(&p).unwrap();
        let err = load_initial_weights(&model(Family::ParaMixer, 28, 7, 10, 2), &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixer") && err.contains("paramixer"), "{err}");
        let err = load_initial_weights(&target, &dir.path().join("none.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.safetensors"), "{err}");
    }
}
