//! PyTorch checkpoint files (`.pth`, `.pth.tar`, `.bin`) read without Python: the zip format
//! and the legacy format of `torch.save`, bare state_dicts and training dicts (the official
//! `train.py`'s `checkpoint-N.pth.tar` / `model_best.pth.tar`, with `state_dict`, `optimizer`,
//! `args`, `state_dict_ema`, …).
//!
//! - [`pickle`]: a bounded pickle machine that records, never runs, what the file would build;
//! - [`archive`]: the zip and legacy containers and their storages;
//! - [`tensor`]: tensor records → checked views → candle tensors;
//! - [`contents`]: which state_dict holds the weights, and notes on everything else.
//!
//! The files are untrusted: every size is checked against the bytes that are really there before
//! anything is allocated, unreadable objects are described and skipped, and any malformed input
//! is an error naming what is wrong — never a panic.

pub mod archive;
pub mod contents;
pub mod error;
pub mod pickle;
pub mod tensor;

use std::path::Path;

use candle_core::{Device, Tensor};
use error::{bail, Context, Result};

pub use archive::Kind;
pub use contents::{Contents, StateDict};
pub use error::TorchError;
pub use tensor::TensorRef;

/// An opened PyTorch file: what it holds, storages still on disk.
pub struct TorchFile {
    archive: archive::Archive,
    pub contents: Contents,
}

impl TorchFile {
    pub fn open(path: &Path, kind: Kind) -> Result<Self> {
        let archive = archive::Archive::open(path, kind)?;
        let contents = contents::read(&archive.pickle)?;
        Ok(Self { archive, contents })
    }

    pub fn kind(&self) -> Kind {
        self.archive.kind
    }

    /// Checks every view against its storage's real size (and the sum of the values against
    /// `budget`) without reading any storage: after this, decoding allocates no more than the
    /// file holds.
    pub fn check(&mut self, tensors: &[(String, TensorRef)], budget: u64) -> Result<()> {
        let mut total: u64 = 0;
        for (name, t) in tensors {
            let bytes = self.archive.storage_len(&t.storage.key)?;
            t.check(bytes / t.storage.elem.size() as u64)
                .with_context(|| format!("tensor {name}"))?;
            total = total.saturating_add(t.numel()?);
        }
        if total > budget {
            bail!("the tensors hold {total} values, more than the file's {budget} bytes could store: a forged file");
        }
        Ok(())
    }

    /// Reads the tensors (in the order given), each storage once.
    pub fn decode(
        &mut self,
        tensors: &[(String, TensorRef)],
        device: &Device,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by(|&a, &b| tensors[a].1.storage.key.cmp(&tensors[b].1.storage.key));
        let mut out: Vec<Option<Tensor>> = vec![None; tensors.len()];
        let mut current: Option<(String, Vec<u8>)> = None;
        for i in order {
            let (name, t) = &tensors[i];
            if current.as_ref().map(|c| &c.0) != Some(&t.storage.key) {
                let bytes = self
                    .archive
                    .storage(&t.storage.key)
                    .with_context(|| format!("tensor {name}"))?;
                current = Some((t.storage.key.clone(), bytes));
            }
            let bytes = current.as_ref().map_or(&[][..], |c| &c.1[..]);
            out[i] = Some(
                t.to_tensor(bytes, device)
                    .with_context(|| format!("tensor {name}"))?,
            );
        }
        Ok(tensors
            .iter()
            .zip(out)
            .filter_map(|((n, _), t)| Some((n.clone(), t?)))
            .collect())
    }
}
