//! One way into every checkpoint format: imixer's and timm's safetensors, PyTorch's zip and
//! legacy `torch.save` files (`.pth`, `.pth.tar`, `.bin`). The format is told by content, not
//! by file name — zip magic `PK`, pickle protocol byte 0x80, or a safetensors JSON header — and
//! the file is opened in two steps: [`Checkpoint::open`] reads only names and shapes (so a file
//! can be checked against a model before anything is allocated for it), [`Checkpoint::decode`]
//! reads the values.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::error::{CheckpointError, Doing, Result};
use super::infer::Hints;
use super::torch::{self, TensorRef, TorchFile};
pub use super::weights::Weights;
use super::{CONFIG_KEY, EMA_PREFIX, TRAIN_STATE_PREFIX};
use crate::config::ModelConfig;
use crate::files::FileError;

/// The prefix `torch.nn.parallel.DistributedDataParallel` adds to every name.
pub const DDP_PREFIX: &str = "module.";

/// A checkpoint's container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save`'s zip format (PyTorch ≥ 1.6).
    TorchZip,
    /// `torch.save(…, _use_new_zipfile_serialization=False)` and older files.
    TorchLegacy,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::TorchZip => "PyTorch zip",
            Format::TorchLegacy => "PyTorch legacy",
        })
    }
}

/// A checkpoint opened, names and shapes known, values not yet read.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub weights: Weights,
    /// The chosen weights under their reference names (DDP prefix stripped).
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// The safetensors string metadata (imixer's configuration, run state, classes); empty for
    /// PyTorch files.
    pub metadata: HashMap<String, String>,
    /// Model settings the file records beside its tensors.
    pub hints: Hints,
    /// What was read, renamed and skipped, one line each (for the user).
    pub notes: Vec<String>,
    data: Data,
}

enum Data {
    Safetensors {
        bytes: Vec<u8>,
        /// reference name → name in the file
        names: BTreeMap<String, String>,
    },
    Torch {
        file: Box<TorchFile>,
        tensors: Vec<(String, TensorRef)>,
    },
}

/// Tells the format from the first bytes of the file.
pub fn sniff(path: &Path) -> Result<Format> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(9).read_to_end(&mut head))
        .map_err(|e| FileError::new("read checkpoint", path, e))?;
    Ok(match head.as_slice() {
        [] => return Err(CheckpointError::unreadable(path, "is empty: not a checkpoint (an interrupted download or copy?)")),
        [b'P', b'K', ..] => Format::TorchZip,
        [0x80, proto, ..] if *proto <= 5 => Format::TorchLegacy,
        [_, _, _, _, _, _, _, _, b'{'] => Format::Safetensors,
        _ => return Err(CheckpointError::unreadable(
            path,
            "is neither a safetensors file nor a PyTorch checkpoint (zip or legacy torch.save format); is it truncated or of another format?",
        )),
    })
}

/// Strips timm's `module.` (DDP) prefix, as timm's `clean_state_dict` does.
fn strip_ddp<T>(named: Vec<(String, T)>, notes: &mut Vec<String>) -> Result<Vec<(String, T)>> {
    let stripped = named
        .iter()
        .filter(|(n, _)| n.starts_with(DDP_PREFIX))
        .count();
    if stripped == 0 {
        return Ok(named);
    }
    let out: Vec<(String, T)> = named
        .into_iter()
        .map(|(n, t)| match n.strip_prefix(DDP_PREFIX) {
            Some(rest) => (rest.to_string(), t),
            None => (n, t),
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = out.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(CheckpointError::Settings(format!(
            "{dup} appears both with and without the DDP prefix `module.`"
        )));
    }
    notes.push(format!(
        "stripped the DDP prefix `module.` from {stripped} names"
    ));
    Ok(out)
}

impl Checkpoint {
    /// Opens `path` (any format) and picks its model or EMA weights.
    pub fn open(path: &Path, weights: Weights) -> Result<Self> {
        let format = sniff(path)?;
        let result = match format {
            Format::Safetensors => Self::open_safetensors(path, weights),
            Format::TorchZip => Self::open_torch(path, torch::Kind::Zip, weights),
            Format::TorchLegacy => Self::open_torch(path, torch::Kind::Legacy, weights),
        };
        let ckpt = result.doing(|| format!("while reading {} ({format})", path.display()))?;
        if ckpt.shapes.is_empty() {
            return Err(CheckpointError::unreadable(path, "holds no model weights"));
        }
        Ok(ckpt)
    }

    fn open_safetensors(path: &Path, weights: Weights) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| FileError::new("read checkpoint", path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| super::not_safetensors(path, e))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut chosen: Vec<(String, (String, Vec<usize>))> = Vec::new();
        for (name, info) in header.tensors() {
            let reference = match weights {
                Weights::Model
                    if name.starts_with(TRAIN_STATE_PREFIX) || name.starts_with(EMA_PREFIX) =>
                {
                    continue
                }
                Weights::Model => name.clone(),
                Weights::Ema => match name.strip_prefix(EMA_PREFIX) {
                    Some(rest) => rest.to_string(),
                    None => continue,
                },
            };
            chosen.push((reference, (name, info.shape.clone())));
        }
        if weights == Weights::Ema && chosen.is_empty() {
            return Err(CheckpointError::NoWeights {
                path: path.to_path_buf(),
                weights,
                detail: format!("no tensors named {EMA_PREFIX}…"),
                fix: "train with EMA on, or drop --ema".into(),
            });
        }
        let mut notes = Vec::new();
        let chosen = strip_ddp(chosen, &mut notes)?;
        let shapes = chosen
            .iter()
            .map(|(r, (_, s))| (r.clone(), s.clone()))
            .collect();
        let names = chosen.into_iter().map(|(r, (n, _))| (r, n)).collect();
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            weights,
            shapes,
            metadata,
            hints: Hints::default(),
            notes,
            data: Data::Safetensors { bytes, names },
        })
    }

    fn open_torch(path: &Path, kind: torch::Kind, weights: Weights) -> Result<Self> {
        let mut file = TorchFile::open(path, kind)?;
        let contents = std::mem::take(&mut file.contents);
        let mut notes = Vec::new();
        let (chosen, other) = match weights {
            Weights::Model => (contents.model, contents.ema),
            Weights::Ema => (contents.ema, contents.model),
        };
        let Some(sd) = chosen else {
            let keys = torch::contents::EMA_KEYS.join(" / ");
            let (detail, fix) = match weights {
                Weights::Ema => (format!("no {keys} entry"), "drop --ema"),
                Weights::Model => (format!("only EMA weights, under {keys}"), "pass --ema"),
            };
            return Err(CheckpointError::NoWeights {
                path: path.to_path_buf(),
                weights,
                detail,
                fix: fix.into(),
            });
        };
        notes.push(format!(
            "read {} tensors from {}",
            sd.tensors.len(),
            sd.source
        ));
        if !sd.skipped.is_empty() {
            notes.push(format!(
                "skipped in {} (not tensors): {}",
                sd.source,
                sd.skipped.join(", ")
            ));
        }
        if let (Some(o), Weights::Model) = (&other, weights) {
            notes.push(format!(
                "the file also holds EMA weights ({}): pass --ema to use them",
                o.source
            ));
        }
        notes.extend(contents.notes);
        let tensors = strip_ddp(sd.tensors, &mut notes)?;
        let file_len = std::fs::metadata(path)
            .map_err(|e| FileError::new("read checkpoint", path, e))?
            .len();
        file.check(&tensors, file_len)?;
        let shapes = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            format: match kind {
                torch::Kind::Zip => Format::TorchZip,
                torch::Kind::Legacy => Format::TorchLegacy,
            },
            weights,
            shapes,
            metadata: HashMap::new(),
            hints: contents.hints,
            notes,
            data: Data::Torch {
                file: Box::new(file),
                tensors,
            },
        })
    }

    /// The model configuration imixer stored in the file, if any.
    pub fn stored_config(&self) -> Result<Option<ModelConfig>> {
        self.metadata
            .get(CONFIG_KEY)
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    CheckpointError::unreadable(
                        &self.path,
                        format!("has an unreadable model configuration ({e})"),
                    )
                })
            })
            .transpose()
    }

    /// Reads the chosen weights, under their reference names (sorted by name).
    pub fn decode(self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        let path = self.path;
        let result = match self.data {
            Data::Safetensors { bytes, names } => (|| {
                let st = safetensors::SafeTensors::deserialize(&bytes)?;
                names
                    .into_iter()
                    .map(|(reference, name)| {
                        let t = candle_core::safetensors::Load::load(&st.tensor(&name)?, device)?;
                        Ok((reference, t))
                    })
                    .collect::<Result<Vec<_>>>()
            })(),
            Data::Torch { mut file, tensors } => {
                let mut out = file.decode(&tensors, device).map_err(CheckpointError::from);
                if let Ok(v) = &mut out {
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out
            }
        };
        result.doing(|| format!("cannot decode the tensors of {}", path.display()))
    }
}
