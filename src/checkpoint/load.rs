//! The model a checkpoint holds: its settings resolved from what the user said, what the file
//! stores and what its tensors show, checked against every tensor before the model is built.
//!
//! Settings come from, highest first: the flags (`--num-classes --img-size --n-iter
//! --hidden-ratio --family`); a registered model name (`--model`); the configuration imixer stores
//! in its own files; otherwise the tensor shapes ([`super::infer`]) with the file's training
//! arguments for what shapes cannot tell. Any tensor that does not fit the result is an error
//! that lists every misfit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::error::{bail_settings as bail, CheckpointError, Doing, Result};
use super::infer;
use super::open::{Checkpoint, Format, Weights};
use super::shapes;
use crate::config::{Family, ModelConfig};
use crate::models::MixerNet;

/// What the user said about the model of a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct ModelSpec {
    /// A configuration to use instead of the file's (a registered name, with its label).
    pub config: Option<(String, ModelConfig)>,
    pub family: Option<Family>,
    pub num_classes: Option<usize>,
    pub img_size: Option<usize>,
    /// iMixer: fixed-point steps; paper-2 families: block repeats.
    pub n_iter: Option<usize>,
    /// iMixer: N2 / N1.
    pub hidden_ratio: Option<f64>,
    pub weights: Weights,
}

impl ModelSpec {
    /// The spec of a registered model name.
    pub fn named(name: &str) -> Result<Self> {
        let cfg = crate::registry::lookup(name).map_err(CheckpointError::Settings)?;
        Ok(Self {
            config: Some((format!("the registered model {name}"), cfg)),
            ..Self::default()
        })
    }
}

/// A configuration and how it was arrived at.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub config: ModelConfig,
    /// Where the settings came from (`the tensor shapes`, `model imixer_s16_224`, …).
    pub source: String,
    /// Settings that were read or assumed rather than given, one line each.
    pub notes: Vec<String>,
    /// Settings assumed without evidence (the user should check them).
    pub warnings: Vec<String>,
}

fn set_n_iter(cfg: &mut ModelConfig, n: usize) -> Result<()> {
    match cfg.family {
        Family::IMixer => cfg.imixer.n_iter = n,
        f if f.is_paper2() => cfg.n_iter = n,
        f => bail!("--n-iter does not apply to {f} (only imixer and the paper-2 families iterate)"),
    }
    Ok(())
}

/// The configuration of `ckpt` under `spec`, checked against every tensor of the file.
pub fn resolve(ckpt: &Checkpoint, spec: &ModelSpec) -> Result<Resolved> {
    let path = ckpt.path.display();
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let hints = &ckpt.hints;
    let stored = ckpt.stored_config()?;
    let (mut cfg, source, inferred) = match (&spec.config, stored) {
        (Some((label, c)), _) => (c.clone(), label.clone(), false),
        (None, Some(c)) => (c, "the file's stored configuration".to_string(), false),
        (None, None) => {
            let family = spec.family.or_else(|| hints.family());
            let c = infer::infer(&ckpt.shapes, family).doing(|| format!("{path}"))?;
            (c, "the tensor shapes".to_string(), true)
        }
    };
    if let Some(f) = spec.family {
        if f != cfg.family {
            bail!(
                "{path}: --family {f} contradicts {source} (family {})",
                cfg.family
            );
        }
    }
    if inferred {
        let mut repeats_known = false;
        // What the shapes cannot tell, from the file's training arguments or the defaults.
        if let Some(name) = &hints.model {
            match crate::registry::lookup(name) {
                Ok(reg) if reg.family == cfg.family && cfg.family.is_paper2() => {
                    cfg.n_iter = reg.n_iter;
                    cfg.lambda = reg.lambda;
                    repeats_known = true;
                    notes.push(format!(
                        "block repeats n_iter = {} from the model name {name:?}",
                        reg.n_iter
                    ));
                }
                _ => {}
            }
        }
        if let Some(n) = hints.n_power {
            cfg.imixer.n_power = n;
        }
        match (cfg.family, spec.n_iter, hints.n_iter) {
            (_, Some(_), _) => {}
            (Family::IMixer, None, Some(n)) => {
                cfg.imixer.n_iter = n;
                notes.push(format!("n_iter = {n} from the file's training arguments"));
            }
            (Family::IMixer, None, None) => warnings.push(format!(
                "{path}: n_iter cannot be read from the weights; assuming {} (the paper's recipe): pass --n-iter N if the model was trained with another",
                cfg.imixer.n_iter
            )),
            (f, None, _) if f.is_paper2() && !repeats_known => warnings.push(format!(
                "{path}: the block repeats (n_iter) cannot be read from the weights; assuming {}: pass --n-iter N if the model was trained with repeats",
                cfg.n_iter
            )),
            _ => {}
        }
        let disagree = |what: &str, file: String, weights: String| {
            format!("the file's training arguments say {what} = {file} but its weights have {weights}: using the weights")
        };
        if let Some(r) = hints.hidden_ratio {
            let inner = (cfg.tokens_dim() as f64 * r) as usize;
            if cfg.family == Family::IMixer && inner != cfg.imlp_inner_dim() {
                notes.push(disagree(
                    "h_ratio",
                    r.to_string(),
                    cfg.imixer.hidden_ratio.to_string(),
                ));
            }
        }
        for (what, file, weights) in [
            ("num_classes", hints.num_classes, cfg.num_classes),
            ("img_size", hints.img_size, cfg.img_size),
            ("in_chans", hints.in_chans, cfg.in_chans),
        ] {
            if let Some(v) = file.filter(|&v| v != weights) {
                notes.push(disagree(what, v.to_string(), weights.to_string()));
            }
        }
    }
    let mut overridden = Vec::new();
    if let Some(k) = spec.num_classes {
        cfg.num_classes = k;
        overridden.push("--num-classes");
    }
    if let Some(s) = spec.img_size {
        cfg.img_size = s;
        overridden.push("--img-size");
    }
    if let Some(n) = spec.n_iter {
        set_n_iter(&mut cfg, n).doing(|| format!("{path}"))?;
        overridden.push("--n-iter");
    }
    if let Some(r) = spec.hidden_ratio {
        if cfg.family != Family::IMixer {
            bail!(
                "{path}: --hidden-ratio applies to imixer only, not {}",
                cfg.family
            );
        }
        cfg.imixer.hidden_ratio = r;
        overridden.push("--hidden-ratio");
    }
    cfg.validate()
        .map_err(|e| CheckpointError::Settings(format!("{path}: {e}")))?;
    let problems = shapes::mismatches(&cfg, &ckpt.shapes);
    if !problems.is_empty() {
        let with = if overridden.is_empty() {
            String::new()
        } else {
            format!(" with {}", overridden.join(" "))
        };
        return Err(CheckpointError::Misfit {
            file: path.to_string(),
            model: format!("the {} model from {source}{with}", cfg.family),
            problems,
        });
    }
    Ok(Resolved {
        config: cfg,
        source,
        notes,
        warnings,
    })
}

/// A model loaded from a checkpoint.
pub struct Loaded {
    pub net: MixerNet,
    pub format: Format,
    /// The safetensors metadata (class names, training config); empty for PyTorch files.
    pub metadata: HashMap<String, String>,
    pub resolved: Resolved,
    /// What the reader did with the file (renames, skipped entries).
    pub file_notes: Vec<String>,
}

/// Loads the model of any checkpoint (imixer or timm safetensors, PyTorch `.pth` / `.pth.tar` /
/// `.bin`): settings resolved and checked against every tensor before the model is built;
/// weights holding NaN or ±∞ are refused.
pub fn load_model(path: &Path, spec: &ModelSpec, device: &Device) -> Result<Loaded> {
    let ckpt = Checkpoint::open(path, spec.weights)?;
    let resolved = resolve(&ckpt, spec)?;
    let format = ckpt.format;
    let metadata = ckpt.metadata.clone();
    let file_notes = ckpt.notes.clone();
    let tensors: HashMap<String, Tensor> = ckpt.decode(device)?.into_iter().collect();
    let net = MixerNet::new(&resolved.config, 0, device)?;
    net.load_state(&tensors, false)
        .doing(|| format!("while loading {}", path.display()))?;
    if let Some(tensor) = net.first_non_finite()? {
        return Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            tensor,
        });
    }
    Ok(Loaded {
        net,
        format,
        metadata,
        resolved,
        file_notes,
    })
}
