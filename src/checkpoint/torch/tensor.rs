//! PyTorch tensors as pickled: `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! …)` records pointing at a storage (`('storage', torch.FloatStorage, key, location, numel)`),
//! read into [`TensorRef`]s and, once the storage bytes are at hand, into candle tensors.
//!
//! A view is checked against its storage before any value is copied (checked arithmetic, every
//! element inside the storage), and may be strided: PyTorch saves views as they are, e.g. a
//! transposed weight.

use super::error::{bail, err, Result};
use candle_core::{DType, Device, Tensor};

use super::pickle::{Id, Node, Pickle};

/// Most dimensions a tensor may have.
const MAX_RANK: usize = 8;

/// Element type of a PyTorch storage (its class name, `torch.FloatStorage`, says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    pub fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Elem::F32,
            "DoubleStorage" => Elem::F64,
            "HalfStorage" => Elem::F16,
            "BFloat16Storage" => Elem::BF16,
            "LongStorage" => Elem::I64,
            "IntStorage" => Elem::I32,
            "ShortStorage" => Elem::I16,
            "CharStorage" => Elem::I8,
            "ByteStorage" => Elem::U8,
            "BoolStorage" => Elem::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }
}

/// A storage named by a persistent id.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub elem: Elem,
}

/// A tensor as a view of a storage: `storage[offset + Σ index_i · stride_i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

/// The storage a persistent id names: `('storage', storage_class, key, location, numel[, view])`.
pub fn storage_ref(p: &Pickle, pid: Id) -> Result<StorageRef> {
    let Some(t) = p.tuple(pid) else {
        bail!("a persistent id that is not a tuple");
    };
    if t.len() < 5 || p.str(t[0]) != Some("storage") {
        bail!("a persistent id that is not a storage reference");
    }
    let elem = match p.node(t[1]) {
        Node::Global { name, .. } => {
            Elem::from_storage_class(name).ok_or_else(|| err!("unsupported storage type {name}"))?
        }
        _ => bail!("a storage reference without a storage class"),
    };
    if t.len() > 5 && !matches!(p.node(t[5]), Node::None) {
        bail!("a storage view (PyTorch < 0.4 legacy format): load and re-save it with a current PyTorch");
    }
    let key = p
        .str(t[2])
        .ok_or_else(|| err!("a storage reference without a key"))?;
    Ok(StorageRef {
        key: key.to_string(),
        elem,
    })
}

fn int_list(p: &Pickle, id: Id, what: &str) -> Result<Vec<u64>> {
    let Some(items) = p.tuple(id) else {
        bail!("the tensor's {what} is not a tuple");
    };
    if items.len() > MAX_RANK {
        bail!(
            "the tensor has {} dimensions (at most {MAX_RANK} supported)",
            items.len()
        );
    }
    items
        .iter()
        .map(|&i| match p.int(i) {
            Some(v) if v >= 0 => Ok(v as u64),
            _ => bail!("the tensor's {what} holds a value that is not a size"),
        })
        .collect()
}

/// The tensor a node rebuilds; `Ok(None)` when the node is not a tensor at all, an error when it
/// is one that cannot be read (a quantised or sparse tensor, a malformed record).
pub fn tensor_ref(p: &Pickle, id: Id) -> Result<Option<TensorRef>> {
    let mut id = id;
    // `_rebuild_parameter(data, …)` and `_rebuild_from_type_v2(func, type, args, state)` wrap
    // the tensor record; at most two wrappers in files PyTorch writes.
    for _ in 0..4 {
        let Node::Object { callable, args, .. } = p.node(id) else {
            return Ok(None);
        };
        let Node::Global { module, name } = p.node(*callable) else {
            return Ok(None);
        };
        let args = p.tuple(*args).unwrap_or(&[]);
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                return rebuild(p, args).map(Some)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                id = *args
                    .first()
                    .ok_or_else(|| err!("_rebuild_parameter without its tensor"))?;
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let (Some(&func), Some(&inner)) = (args.first(), args.get(2)) else {
                    bail!("_rebuild_from_type_v2 without its arguments");
                };
                let (Some(name), Some(_)) = (p.class_name(func), p.tuple(inner)) else {
                    bail!("_rebuild_from_type_v2 with malformed arguments");
                };
                if !name.ends_with("_rebuild_tensor_v2") {
                    bail!("an unsupported tensor kind ({name})");
                }
                return rebuild(p, p.tuple(inner).unwrap_or(&[])).map(Some);
            }
            ("torch._utils", other) if other.starts_with("_rebuild") => {
                bail!("an unsupported tensor kind (torch._utils.{other}): only dense tensors can be read")
            }
            _ => return Ok(None),
        }
    }
    bail!("a tensor record nested too deeply")
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])`.
fn rebuild(p: &Pickle, args: &[Id]) -> Result<TensorRef> {
    if args.len() < 4 {
        bail!("a tensor record with {} arguments (needs 4)", args.len());
    }
    let Node::PersistentId(pid) = p.node(args[0]) else {
        bail!("a tensor record without a storage");
    };
    let storage = storage_ref(p, *pid)?;
    let offset = match p.int(args[1]) {
        Some(v) if v >= 0 => v as u64,
        _ => bail!("a tensor record with a bad storage offset"),
    };
    let shape = int_list(p, args[2], "size")?;
    let stride = int_list(p, args[3], "stride")?;
    if shape.len() != stride.len() {
        bail!(
            "a tensor with {} sizes but {} strides",
            shape.len(),
            stride.len()
        );
    }
    let shape = shape
        .into_iter()
        .map(|s| usize::try_from(s).map_err(|_| err!("a tensor size overflows")))
        .collect::<Result<_>>()?;
    Ok(TensorRef {
        storage,
        offset,
        shape,
        stride,
    })
}

impl TensorRef {
    /// Element count (checked: a forged shape cannot overflow it).
    pub fn numel(&self) -> Result<u64> {
        self.shape.iter().try_fold(1u64, |n, &s| {
            n.checked_mul(s as u64)
                .ok_or_else(|| err!("the tensor's element count overflows"))
        })
    }

    /// Elements of the storage the view reaches: offset + Σ (size_i − 1) · stride_i + 1 (0 for an
    /// empty tensor).
    pub fn extent(&self) -> Result<u64> {
        if self.numel()? == 0 {
            return Ok(0);
        }
        let overflow = || err!("the tensor's strides overflow");
        self.shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&size, &stride)| {
                (size as u64 - 1)
                    .checked_mul(stride)
                    .and_then(|d| acc.checked_add(d))
                    .ok_or_else(overflow)
            })?
            .checked_add(1)
            .ok_or_else(overflow)
    }

    /// Checks the view against a storage of `storage_elems` elements.
    pub fn check(&self, storage_elems: u64) -> Result<()> {
        let extent = self.extent()?;
        if extent > storage_elems {
            bail!(
                "the tensor reaches element {extent} of a storage of {storage_elems} (truncated or corrupt file)"
            );
        }
        if self.numel()? > storage_elems {
            bail!(
                "the tensor has {} elements but its storage only {storage_elems} (a broadcast view)",
                self.numel()?
            );
        }
        Ok(())
    }

    /// The candle tensor the view holds, from its storage's little-endian bytes.
    pub fn to_tensor(&self, storage: &[u8], device: &Device) -> Result<Tensor> {
        let es = self.storage.elem.size();
        self.check((storage.len() / es) as u64)?;
        let n = self.numel()? as usize;
        if n == 0 {
            return Ok(Tensor::zeros(self.shape.as_slice(), self.dtype(), device)?);
        }
        let contiguous = self.is_contiguous();
        let bytes: std::borrow::Cow<[u8]> = if contiguous {
            let start = self.offset as usize * es;
            std::borrow::Cow::Borrowed(&storage[start..start + n * es])
        } else {
            std::borrow::Cow::Owned(self.gather(storage, es, n))
        };
        let bytes = match self.storage.elem {
            Elem::Bool => std::borrow::Cow::Owned(bytes.iter().map(|&b| (b != 0) as u8).collect()),
            // candle has no i8: widened to i16.
            Elem::I8 => std::borrow::Cow::Owned(
                bytes
                    .iter()
                    .flat_map(|&b| (b as i8 as i16).to_le_bytes())
                    .collect(),
            ),
            _ => bytes,
        };
        Ok(Tensor::from_raw_buffer(
            &bytes,
            self.dtype(),
            &self.shape,
            device,
        )?)
    }

    /// The candle dtype the tensor decodes to (i8 is widened to i16, bool stored as u8).
    pub fn dtype(&self) -> DType {
        match self.storage.elem {
            Elem::F32 => DType::F32,
            Elem::F64 => DType::F64,
            Elem::F16 => DType::F16,
            Elem::BF16 => DType::BF16,
            Elem::I64 => DType::I64,
            Elem::I32 => DType::I32,
            Elem::I16 | Elem::I8 => DType::I16,
            Elem::U8 | Elem::Bool => DType::U8,
        }
    }

    /// Row-major with the natural strides (what `.contiguous()` gives in PyTorch).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1u64;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size as u64;
        }
        true
    }

    /// Copies a strided view into row-major order (bounds checked by [`TensorRef::check`]).
    fn gather(&self, storage: &[u8], es: usize, n: usize) -> Vec<u8> {
        let rank = self.shape.len();
        let mut out = Vec::with_capacity(n * es);
        let mut index = vec![0usize; rank];
        for _ in 0..n {
            let at = self.offset as usize
                + index
                    .iter()
                    .zip(&self.stride)
                    .map(|(&i, &s)| i * s as usize)
                    .sum::<usize>();
            out.extend_from_slice(&storage[at * es..(at + 1) * es]);
            for d in (0..rank).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(offset: u64, shape: &[usize], stride: &[u64]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                elem: Elem::F32,
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn strided_views_read_as_pytorch_does() {
        let storage = bytes(&[0., 1., 2., 3., 4., 5., 6.]);
        // A (2, 3) tensor at offset 1, then its transpose (3, 2) with strides (1, 3).
        let t = view(1, &[2, 3], &[3, 1])
            .to_tensor(&storage, &Device::Cpu)
            .unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 2., 3.], [4., 5., 6.]]);
        let tt = view(1, &[3, 2], &[1, 3])
            .to_tensor(&storage, &Device::Cpu)
            .unwrap();
        assert_eq!(tt.to_vec2::<f32>().unwrap(), [[1., 4.], [2., 5.], [3., 6.]]);
    }

    #[test]
    fn views_outside_their_storage_are_errors() {
        let storage = bytes(&[0.; 6]);
        for (v, says) in [
            (view(1, &[2, 3], &[3, 1]), "reaches element 7"),
            (view(0, &[1000, 1000], &[0, 0]), "broadcast"),
            (view(u64::MAX, &[2], &[1]), "overflow"),
            (view(0, &[usize::MAX, 3], &[u64::MAX, 1]), "overflow"),
        ] {
            let err = v.to_tensor(&storage, &Device::Cpu).unwrap_err().to_string();
            assert!(err.contains(says), "{says:?}: {err}");
        }
        // An empty tensor needs no storage.
        let e = view(0, &[0, 4], &[4, 1])
            .to_tensor(&[], &Device::Cpu)
            .unwrap();
        assert_eq!(e.dims(), [0, 4]);
    }
}
