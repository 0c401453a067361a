//! The two containers `torch.save` writes, each holding one pickle plus raw storages:
//!
//! - **zip** (PyTorch ≥ 1.6, the default): `<root>/data.pkl` and one uncompressed entry
//!   `<root>/data/<key>` per storage (read with the `zip` crate, whose CRC check catches
//!   corruption);
//! - **legacy** (`_use_new_zipfile_serialization=False`, and every file before 1.6): five pickles
//!   in a row — magic number, protocol version, system info, the object, the sorted storage keys
//!   — then each storage as an 8-byte little-endian element count and its raw bytes.
//!
//! Opening a file reads only the pickle; storages are read when a tensor is decoded, so the
//! optimizer state of a training checkpoint is never loaded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::error::{bail, err, Context, Result};

use super::pickle::{self, Node, Pickle};
use super::tensor::{storage_ref, Elem};

/// Largest pickle read (the `data.pkl` of an L/16 training checkpoint is well under 1 MiB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Which container a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zip,
    Legacy,
}

/// An opened container: its pickle and a way to read each storage.
pub struct Archive {
    pub kind: Kind,
    pub pickle: Pickle,
    storages: Storages,
}

enum Storages {
    Zip {
        zip: Box<zip::ZipArchive<BufReader<File>>>,
        root: String,
    },
    Legacy {
        file: BufReader<File>,
        /// key → (offset of the first byte, length in bytes)
        spans: HashMap<String, (u64, u64)>,
    },
}

impl Archive {
    pub fn open(path: &Path, kind: Kind) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        match kind {
            Kind::Zip => open_zip(file),
            Kind::Legacy => open_legacy(file),
        }
    }

    /// Size in bytes of storage `key`, without reading it.
    pub fn storage_len(&mut self, key: &str) -> Result<u64> {
        match &mut self.storages {
            Storages::Zip { zip, root } => {
                let name = format!("{root}data/{key}");
                let entry = zip
                    .by_name(&name)
                    .with_context(|| format!("storage {name} is missing from the archive"))?;
                Ok(entry.size())
            }
            Storages::Legacy { spans, .. } => spans
                .get(key)
                .map(|s| s.1)
                .ok_or_else(|| err!("storage {key} is missing from the file")),
        }
    }

    /// Reads storage `key` whole.
    pub fn storage(&mut self, key: &str) -> Result<Vec<u8>> {
        match &mut self.storages {
            Storages::Zip { zip, root } => {
                let name = format!("{root}data/{key}");
                let mut entry = zip
                    .by_name(&name)
                    .with_context(|| format!("storage {name} is missing from the archive"))?;
                if entry.compression() != zip::CompressionMethod::Stored {
                    bail!(
                        "storage {name} is compressed ({}); PyTorch writes uncompressed archives",
                        entry.compression()
                    );
                }
                let mut v = Vec::new();
                entry
                    .read_to_end(&mut v)
                    .with_context(|| format!("storage {name} is unreadable (corrupt archive?)"))?;
                Ok(v)
            }
            Storages::Legacy { file, spans } => {
                let &(offset, len) = spans
                    .get(key)
                    .ok_or_else(|| err!("storage {key} is missing from the file"))?;
                file.seek(SeekFrom::Start(offset))?;
                let mut v = Vec::new();
                file.by_ref().take(len).read_to_end(&mut v)?;
                if (v.len() as u64) < len {
                    bail!("storage {key} is truncated");
                }
                Ok(v)
            }
        }
    }
}

fn open_zip(file: File) -> Result<Archive> {
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .context("not a readable zip archive (truncated or corrupt?)")?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .context("the archive's file names are unreadable")?;
    let pickles: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pkl = match pickles.as_slice() {
        [one] => (*one).clone(),
        [] if names.iter().any(|n| n.ends_with("constants.pkl")) => bail!(
            "a TorchScript archive (torch.jit.save): save the model's state_dict() with torch.save instead"
        ),
        [] => bail!("a zip archive without data.pkl: not a PyTorch checkpoint"),
        _ => bail!("a zip archive with {} data.pkl entries: not a PyTorch checkpoint", pickles.len()),
    };
    let root = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = zip.by_name(&format!("{root}byteorder")) {
        let mut s = String::new();
        order.by_ref().take(16).read_to_string(&mut s).ok();
        if s.trim() != "little" {
            bail!(
                "the archive stores big-endian tensors ({s:?}); only little-endian files are read"
            );
        }
    }
    let pickle = {
        let entry = zip.by_name(&pkl).context("unreadable data.pkl")?;
        if entry.size() > MAX_PICKLE_BYTES {
            bail!(
                "data.pkl is {} bytes (more than {MAX_PICKLE_BYTES}): not a model checkpoint",
                entry.size()
            );
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .context("data.pkl is unreadable (corrupt archive?)")?;
        pickle::read(&mut std::io::Cursor::new(bytes)).context("data.pkl")?
    };
    Ok(Archive {
        kind: Kind::Zip,
        pickle,
        storages: Storages::Zip {
            zip: Box::new(zip),
            root,
        },
    })
}

fn next_pickle(r: &mut BufReader<File>, what: &str) -> Result<Pickle> {
    let mut limited = r.by_ref().take(MAX_PICKLE_BYTES);
    pickle::read(&mut limited).with_context(|| format!("the {what} pickle"))
}

fn open_legacy(file: File) -> Result<Archive> {
    let file_len = file.metadata()?.len();
    let mut r = BufReader::new(file);
    let magic = next_pickle(&mut r, "first")?;
    if !matches!(magic.node(magic.root), Node::BigInt(b) if b[..] == LEGACY_MAGIC) {
        bail!("a pickle, but not a PyTorch file (no torch.save magic number)");
    }
    let protocol = next_pickle(&mut r, "protocol-version")?;
    if protocol.int(protocol.root) != Some(LEGACY_PROTOCOL) {
        bail!("an unknown legacy PyTorch format version (expected {LEGACY_PROTOCOL})");
    }
    let sys = next_pickle(&mut r, "system-info")?;
    let little = sys.get(sys.root, "little_endian").and_then(|v| sys.int(v));
    if little != Some(1) {
        bail!("the file was written on a big-endian machine; only little-endian files are read");
    }
    let pickle = next_pickle(&mut r, "object")?;
    let keys = next_pickle(&mut r, "storage-key")?;
    let Some(key_ids) = keys.tuple(keys.root) else {
        bail!("the storage-key pickle is not a list");
    };
    let key_list: Vec<String> = key_ids
        .iter()
        .map(|&k| {
            keys.str(k)
                .map(str::to_string)
                .ok_or_else(|| err!("a storage key that is not a string"))
        })
        .collect::<Result<_>>()?;
    // Element sizes per key, from the storage references of the object pickle.
    let mut elems: HashMap<String, Elem> = HashMap::new();
    for node in &pickle.nodes {
        if let Node::PersistentId(pid) = node {
            let s = storage_ref(&pickle, *pid)?;
            elems.insert(s.key, s.elem);
        }
    }
    let mut spans = HashMap::new();
    for key in key_list {
        let mut count = [0u8; 8];
        r.read_exact(&mut count)
            .with_context(|| format!("storage {key} is truncated"))?;
        let numel = u64::from_le_bytes(count);
        let es = elems.get(&key).map_or(1, |e| e.size()) as u64;
        let start = r.stream_position()?;
        let len = numel
            .checked_mul(es)
            .filter(|&l| l <= file_len.saturating_sub(start))
            .ok_or_else(|| {
                err!("storage {key} claims {numel} elements: the file is truncated or corrupt")
            })?;
        spans.insert(key, (start, len));
        r.seek_relative(len as i64)?;
    }
    Ok(Archive {
        kind: Kind::Legacy,
        pickle,
        storages: Storages::Legacy { file: r, spans },
    })
}
