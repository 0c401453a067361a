//! Model settings read off the tensor names and shapes of a state_dict that carries no
//! configuration (a timm or official-code checkpoint):
//!
//! | setting                  | from                                                        |
//! |--------------------------|-------------------------------------------------------------|
//! | family                   | which tensors a block has (`fc_sn1` → imixer, `norm1` of shape (N, D) → vanillamixer, …) |
//! | D, in_chans, patch       | `stem.proj.weight` (D, C, p, p)                             |
//! | depth                    | the number of `blocks.<i>`                                  |
//! | classes                  | `head.weight` (K, D)                                        |
//! | tokens N → img_size      | the token MLP's input width; img_size = p·√N                |
//! | mlp_ratio, hidden_ratio  | the hidden widths over D, and fc_sn1's over the token hidden width |
//!
//! What the weights cannot say: ParaMixer and AsymMixer have the same tensors (the flag
//! `--family` or a model name decides), and the iteration counts (`n_iter`) are not stored at
//! all; the caller takes them from flags, the file's training arguments ([`Hints`]) or the
//! defaults, and says which.

use std::collections::BTreeMap;

use super::error::{bail_settings as bail, CheckpointError, Result};

use super::shapes::block_count;
use crate::config::{Family, IMixerConfig, ModelConfig};

/// Model settings a file records beside its tensors (the official `train.py` saves its `args`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hints {
    /// `args.model` (or the top-level `arch`).
    pub model: Option<String>,
    pub num_classes: Option<usize>,
    pub img_size: Option<usize>,
    pub in_chans: Option<usize>,
    /// `args.h_ratio`.
    pub hidden_ratio: Option<f64>,
    /// `args.n_iter` (the iMLP's fixed-point steps, `n_repeat` in the official model code).
    pub n_iter: Option<usize>,
    pub n_power: Option<usize>,
}

impl Hints {
    /// The family a model name names: a registered name, or one that starts with a family name
    /// (`imixer_s16_224_cifar100`).
    pub fn family(&self) -> Option<Family> {
        let name = self.model.as_deref()?;
        if let Ok(cfg) = crate::registry::lookup(name) {
            return Some(cfg.family);
        }
        let head = name.split(['_', '-']).next()?;
        head.parse().ok()
    }
}

/// The family the tensors of block 0 show; `None` for ParaMixer/AsymMixer (identical tensors).
fn family_from_names(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Option<Family>> {
    let has = |n: &str| shapes.contains_key(&format!("blocks.0.{n}"));
    Ok(Some(if has("mlp_tokens.fc_sn1.weight_orig") {
        Family::IMixer
    } else if has("norm1.weight") {
        match shapes["blocks.0.norm1.weight"].len() {
            2 => Family::VanillaMixer,
            _ => Family::Mixer,
        }
    } else if has("norm.weight") {
        if has("mlp_tokens.fc1.weight") {
            return Ok(None);
        }
        Family::SymMixer
    } else {
        bail!(
            "block 0 has none of the tensors of a known family (blocks.0.norm1.weight, blocks.0.norm.weight, blocks.0.mlp_tokens.fc_sn1.weight_orig)"
        )
    }))
}

/// r with int(r · base) = width: the ratio a config needs to rebuild exactly `width`.
fn ratio(width: usize, base: usize) -> f64 {
    if base == 0 {
        // A zero width; validation refuses the configuration.
        return 0.0;
    }
    let mut r = width as f64 / base as f64;
    while ((r * base as f64) as usize) < width {
        r = r.next_up();
    }
    r
}

/// The configuration the tensors show. `family` settles what the names cannot (see the module
/// doc); the iteration counts are the defaults.
pub fn infer(shapes: &BTreeMap<String, Vec<usize>>, family: Option<Family>) -> Result<ModelConfig> {
    let shape = |name: &str| -> Result<&[usize]> {
        shapes.get(name).map(|s| s.as_slice()).ok_or_else(|| {
            CheckpointError::Settings(format!(
                "cannot infer the model settings: {name} is missing"
            ))
        })
    };
    let dims2 = |name: &str| -> Result<(usize, usize)> {
        match shape(name)? {
            &[a, b] => Ok((a, b)),
            s => bail!(
                "cannot infer the model settings: {name} has shape {s:?}, expected 2 dimensions"
            ),
        }
    };
    let (d, in_chans, patch) = match shape("stem.proj.weight")? {
        &[d, c, p, q] if p == q => (d, c, p),
        s => bail!("cannot infer the model settings: stem.proj.weight has shape {s:?}, expected (D, C, p, p)"),
    };
    let (num_classes, head_d) = dims2("head.weight")?;
    if head_d != d {
        bail!("head.weight has width {head_d} but the stem makes {d} channels");
    }
    let depth = block_count(shapes.keys());
    if depth == 0 {
        bail!("cannot infer the model settings: the file holds no blocks.<i> tensors");
    }
    let family = match (family_from_names(shapes)?, family) {
        (_, Some(f)) => f,
        (Some(f), None) => f,
        (None, None) => bail!(
            "paramixer and asymmixer store the same tensors: pass --family paramixer or --family asymmixer (or --model NAME)"
        ),
    };
    // The token MLP maps N → N1 (SymMixer stores its one weight as fc2, shape (N1, N)).
    let (tok, ch) = if family == Family::SymMixer {
        (
            "blocks.0.mlp_tokens.fc2.weight",
            "blocks.0.mlp_channels.fc2.weight",
        )
    } else {
        (
            "blocks.0.mlp_tokens.fc1.weight",
            "blocks.0.mlp_channels.fc1.weight",
        )
    };
    let (tokens_dim, n) = dims2(tok)?;
    let (channels_dim, ch_d) = dims2(ch)?;
    if ch_d != d {
        bail!("{ch} has width {ch_d} but the stem makes {d} channels");
    }
    let side = (n as f64).sqrt().round() as usize;
    if side * side != n {
        bail!("the token MLP mixes {n} tokens, not a square patch grid: only square images are supported");
    }
    let mut imixer = IMixerConfig::default();
    if family == Family::IMixer {
        let (inner, _) = dims2("blocks.0.mlp_tokens.fc_sn1.weight_orig")?;
        imixer.hidden_ratio = ratio(inner, tokens_dim);
    }
    Ok(ModelConfig {
        family,
        img_size: side * patch,
        in_chans,
        patch_size: patch,
        embed_dim: d,
        depth,
        num_classes,
        mlp_ratio: (ratio(tokens_dim, d), ratio(channels_dim, d)),
        imixer,
        lambda: if family == Family::AsymMixer {
            0.1
        } else {
            0.0
        },
        ..ModelConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::shapes::expected;

    #[test]
    fn every_registered_shape_is_read_back() {
        for (name, cfg) in crate::registry::all() {
            let shapes: BTreeMap<String, Vec<usize>> = expected(&cfg).into_iter().collect();
            let back = infer(&shapes, Some(cfg.family)).unwrap();
            // Everything the weights determine (the iteration counts and λ are not stored).
            let want = ModelConfig {
                n_iter: 1,
                imixer: IMixerConfig {
                    hidden_ratio: back.imixer.hidden_ratio,
                    ..IMixerConfig::default()
                },
                lambda: back.lambda,
                ..cfg.clone()
            };
            assert_eq!(back, want, "{name}");
            assert_eq!(back.imlp_inner_dim(), cfg.imlp_inner_dim(), "{name}");
            if cfg.family != Family::AsymMixer && cfg.family != Family::ParaMixer {
                assert_eq!(infer(&shapes, None).unwrap().family, cfg.family, "{name}");
            }
        }
    }

    #[test]
    fn awkward_ratios_rebuild_their_widths() {
        for (width, base) in [(6, 4), (7, 3), (1000, 768), (1, 3)] {
            let r = ratio(width, base);
            assert_eq!((r * base as f64) as usize, width);
        }
    }

    #[test]
    fn what_the_weights_cannot_say_is_asked_for() {
        let para = crate::registry::lookup("paramixer_t4_28").unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = expected(&para).into_iter().collect();
        let err = infer(&shapes, None).unwrap_err().to_string();
        assert!(err.contains("--family"), "{err}");
        let mut broken = shapes.clone();
        broken.remove("stem.proj.weight");
        let err = infer(&broken, Some(Family::ParaMixer))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stem.proj.weight is missing"), "{err}");
    }

    #[test]
    fn model_names_name_families() {
        let hint = |m: &str| Hints {
            model: Some(m.into()),
            ..Hints::default()
        };
        assert_eq!(
            hint("asymmixer_s16_224_l01").family(),
            Some(Family::AsymMixer)
        );
        assert_eq!(hint("imixer_tiny_fixture").family(), Some(Family::IMixer));
        assert_eq!(hint("resnet50").family(), None);
    }
}
