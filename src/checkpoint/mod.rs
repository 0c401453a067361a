//! Checkpoints under the reference state_dict names.
//!
//! imixer writes safetensors: a file written here loads into the reference with
//! `load_state_dict` (same names, layouts and dtypes). Our files also carry the model
//! configuration (and, for training checkpoints, the run state) in the safetensors metadata.
//! Writes are atomic: a temporary file in the same directory, fsync, then rename — a crash never
//! leaves a half-written checkpoint behind.
//!
//! Reading takes any of imixer's files, timm's safetensors, and PyTorch `torch.save` files
//! ([`torch`]): [`open`] tells the format by content and picks the model or EMA weights,
//! [`infer`] reads the model settings off the tensor shapes when the file stores none,
//! [`shapes`] checks a configuration against every tensor, and [`load::load_model`] is the one
//! entry point every command loads a model through.

pub mod error;
pub mod infer;
pub mod load;
pub mod open;
pub mod shapes;
pub mod torch;
pub mod weights;

pub use error::CheckpointError;
pub use load::{load_model, Loaded, ModelSpec, Resolved};
pub use open::{Checkpoint, Format, Weights};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::files::FileError;
use error::{Doing, Result};

use crate::config::ModelConfig;
use crate::models::MixerNet;

/// Metadata key holding the JSON model configuration.
pub const CONFIG_KEY: &str = "imixer.model_config";

/// Prefix of the non-model tensors a training checkpoint carries (optimizer moments).
pub const TRAIN_STATE_PREFIX: &str = "optimizer.";

/// Prefix of the model-EMA weights a checkpoint of a `--model-ema` run carries, each under
/// `ema.` + its reference name (`ema.stem.proj.weight`); the plain names stay the raw weights,
/// so the file still loads as a model.
pub const EMA_PREFIX: &str = "ema.";

/// Whether a tensor of a checkpoint belongs to the model (not optimizer moments or EMA weights).
pub fn is_model_tensor(name: &str) -> bool {
    !name.starts_with(TRAIN_STATE_PREFIX) && !name.starts_with(EMA_PREFIX)
}

/// Tensors and string metadata of one safetensors file.
pub struct TensorFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads a safetensors file; a missing, truncated or corrupt file is an error naming it.
pub fn read(path: &Path, device: &Device) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| FileError::new("read checkpoint", path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(path, e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .doing(|| format!("cannot decode the tensors of {}", path.display()))?;
    Ok(TensorFile { tensors, metadata })
}

/// Writes tensors (+ metadata) atomically to `path`.
pub fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let map: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if map.len() != tensors.len() {
        return Err(CheckpointError::Settings(format!(
            "duplicate tensor names while writing {}",
            path.display()
        )));
    }
    let contiguous: Vec<(&str, Tensor)> = map
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    let data = safetensors::serialize(contiguous.iter().map(|(n, t)| (*n, t)), meta)
        .doing(|| format!("cannot serialise checkpoint {}", path.display()))?;
    Ok(crate::files::write_atomically(
        path,
        &with_sorted_header(data),
    )?)
}

/// Rewrites the JSON header with its keys sorted, so that the same tensors and metadata always
/// give the same bytes (same seed ⇒ byte-identical checkpoints, checkable with `sha256sum`).
///
/// Why: safetensors serialises the metadata from a `HashMap`, whose iteration order is random
/// per process. serde_json's `Value` map (no `preserve_order`) is a `BTreeMap`, and the compact
/// re-serialisation of the same content has the same length, so the header is padded with
/// spaces back to its original size and the tensor offsets stay valid. Readers (ours,
/// PyTorch's `safetensors`) locate tensors by their offsets, not by header order.
fn with_sorted_header(mut data: Vec<u8>) -> Vec<u8> {
    let Some(len) = data
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b) as usize)
    else {
        return data;
    };
    let Some(header) = data.get(8..8 + len) else {
        return data;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return data;
    };
    let Ok(mut sorted) = serde_json::to_vec(&value) else {
        return data;
    };
    if sorted.len() <= len {
        sorted.resize(len, b' ');
        data[8..8 + len].copy_from_slice(&sorted);
    }
    data
}

impl MixerNet {
    /// Every parameter and buffer under its reference name (the reference `state_dict`).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.var.as_tensor().clone()))
            .collect()
    }

    /// Copies tensors into the model by name. Every model tensor must be present with the right
    /// shape; with `allow_extra` unknown names are ignored (golden files hold more than weights).
    /// On mismatch nothing is changed and the error lists every problem.
    pub fn load_state(&self, tensors: &HashMap<String, Tensor>, allow_extra: bool) -> Result<()> {
        let mut problems = Vec::new();
        for e in self.params.entries() {
            match tensors.get(&e.name) {
                None => problems.push(format!("missing {} {:?}", e.name, e.var.dims())),
                Some(t) if t.dims() != e.var.dims() => problems.push(format!(
                    "{}: file has shape {:?}, model needs {:?}",
                    e.name,
                    t.dims(),
                    e.var.dims()
                )),
                Some(_) => {}
            }
        }
        if !allow_extra {
            let mut extra: Vec<&String> = tensors
                .keys()
                .filter(|k| self.params.get(k).is_none())
                .collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|k| format!("unexpected {k}")));
        }
        if !problems.is_empty() {
            return Err(CheckpointError::Misfit {
                file: "the checkpoint".into(),
                model: format!("model {}", self.config.family),
                problems,
            });
        }
        for e in self.params.entries() {
            let t = &tensors[&e.name];
            e.var
                .set(&t.to_dtype(e.var.dtype())?.to_device(e.var.device())?)?;
        }
        Ok(())
    }

    /// Saves the model (weights + configuration) atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert(CONFIG_KEY.to_string(), serde_json::to_string(&self.config)?);
        meta.insert("format".to_string(), "pt".to_string());
        write(path, &self.state_dict(), &meta)
    }

    /// Loads a model from any checkpoint ([`load_model`]): `config` when given, else the
    /// configuration the file stores, else the one its tensor shapes show.
    pub fn load(path: &Path, config: Option<&ModelConfig>, device: &Device) -> Result<Self> {
        Ok(Self::load_with_metadata(path, config, device)?.0)
    }

    /// [`MixerNet::load`], also returning the file's metadata.
    ///
    /// Nothing in the file is trusted before it is checked: the configuration is validated
    /// (limits included) and compared with every tensor shape of the file before the model is
    /// built or a tensor decoded, so a forged `embed_dim` or `depth` is an error, not an
    /// allocation. Weights holding NaN or ±∞ are refused.
    pub fn load_with_metadata(
        path: &Path,
        config: Option<&ModelConfig>,
        device: &Device,
    ) -> Result<(Self, HashMap<String, String>)> {
        let spec = ModelSpec {
            config: config.map(|c| ("the given configuration".to_string(), c.clone())),
            ..ModelSpec::default()
        };
        let loaded = load_model(path, &spec, device)?;
        Ok((loaded.net, loaded.metadata))
    }
}

fn not_safetensors(path: &Path, e: safetensors::SafeTensorError) -> CheckpointError {
    CheckpointError::unreadable(
        path,
        format!("is not a valid safetensors file ({e}); is it truncated or of another format?"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight metadata keys: an unsorted header would match by chance once in 8! writes.
    fn metadata() -> HashMap<String, String> {
        (0..8)
            .map(|i| (format!("imixer.key{i}"), format!("{{\"value\":{i}}}")))
            .collect()
    }

    #[test]
    fn the_same_content_writes_the_same_bytes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let tensors = vec![
            ("b.weight".to_string(), t.clone()),
            ("a.bias".to_string(), t.sum(1).unwrap()),
        ];
        let (p1, p2) = (
            dir.path().join("1.safetensors"),
            dir.path().join("2.safetensors"),
        );
        // Two maps built separately get different hashers, hence different iteration orders.
        write(&p1, &tensors, &metadata()).unwrap();
        write(&p2, &tensors, &metadata()).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());

        let back = read(&p1, &Device::Cpu).unwrap();
        assert_eq!(back.metadata, metadata());
        let w = back.tensors["b.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(w, t.to_vec2::<f32>().unwrap());
        assert_eq!(back.tensors["a.bias"].to_vec1::<f32>().unwrap(), [3., 12.]);
    }

    fn small_model() -> MixerNet {
        let cfg = crate::registry::lookup("mixer_n4_28").unwrap();
        MixerNet::new(&cfg, 0, &Device::Cpu).unwrap()
    }

    /// The model's tensors saved under a forged configuration.
    fn forge(path: &Path, model: &MixerNet, config: &ModelConfig) {
        let mut meta = HashMap::new();
        meta.insert(
            CONFIG_KEY.to_string(),
            serde_json::to_string(config).unwrap(),
        );
        write(path, &model.state_dict(), &meta).unwrap();
    }

    #[test]
    fn forged_configurations_are_refused_before_the_model_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("forged.safetensors");
        let model = small_model();
        model.save(&p).unwrap();
        MixerNet::load(&p, None, &Device::Cpu).unwrap();
        let base = model.config.clone();
        // Each of these would allocate gigabytes (or until the machine runs out) if the model
        // were built from the metadata before the checks.
        for (forged, says) in [
            (
                ModelConfig {
                    embed_dim: 100_000_000,
                    ..base.clone()
                },
                "embed_dim",
            ),
            (
                ModelConfig {
                    depth: 10_000_000,
                    ..base.clone()
                },
                "depth",
            ),
            (
                ModelConfig {
                    embed_dim: 4096,
                    ..base.clone()
                },
                "stem.proj.weight",
            ),
            (
                ModelConfig {
                    depth: 200,
                    ..base.clone()
                },
                "depth 200",
            ),
            (
                ModelConfig {
                    mlp_ratio: (40.0, 40.0),
                    ..base.clone()
                },
                "parameters",
            ),
        ] {
            forge(&p, &model, &forged);
            let err = format!("{:#}", MixerNet::load(&p, None, &Device::Cpu).unwrap_err());
            assert!(
                err.contains(says) && err.contains("forged.safetensors"),
                "{err}"
            );
        }
    }

    #[test]
    fn non_finite_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nan.safetensors");
        let model = small_model();
        let e = &model.params.entries()[0];
        let nan = (e.var.as_tensor() * f64::NAN).unwrap();
        e.var.set(&nan).unwrap();
        model.save(&p).unwrap();
        let err = format!("{:#}", MixerNet::load(&p, None, &Device::Cpu).unwrap_err());
        assert!(err.contains("non-finite") && err.contains(&e.name), "{err}");
    }
}
