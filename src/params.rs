//! Named parameters and buffers, in the reference state_dict's naming, with timm's initialisers.
//!
//! Every tensor of a model lives in one [`ParamStore`] under its reference name
//! (`blocks.3.mlp_tokens.fc_sn1.weight_orig`), so checkpoints, the optimizer's parameter groups and
//! the golden tests all speak the same language. All random initial values come from one ChaCha8
//! stream seeded by the model seed, drawn in registration order.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Trainable parameter (optimised) or persistent buffer (saved, never optimised: SN's u, v, σ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Param,
    Buffer,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub var: Var,
    pub kind: Kind,
}

/// All named tensors of one model, in registration order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn params(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::Param)
    }

    pub fn buffers(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::Buffer)
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Number of trainable scalars (the "parameter count" papers report; buffers excluded).
    pub fn num_params(&self) -> usize {
        self.params().map(|e| e.var.elem_count()).sum()
    }

    fn push(&mut self, entry: Entry) -> Result<()> {
        if self.index.contains_key(&entry.name) {
            candle_core::bail!("duplicate parameter name {}", entry.name);
        }
        self.index.insert(entry.name.clone(), self.entries.len());
        self.entries.push(entry);
        Ok(())
    }
}

/// Collects the tensors of a model while it is being constructed.
pub struct Builder {
    store: RefCell<ParamStore>,
    rng: RefCell<ChaCha8Rng>,
    device: Device,
    dtype: DType,
}

impl Builder {
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            store: RefCell::new(ParamStore::default()),
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed)),
            device: device.clone(),
            dtype,
        }
    }

    pub fn root(&self) -> Scope<'_> {
        Scope {
            builder: self,
            prefix: String::new(),
        }
    }

    pub fn finish(self) -> ParamStore {
        self.store.into_inner()
    }
}

/// A name prefix inside a [`Builder`] (`blocks.0.mlp_tokens`), handing out initialised tensors.
pub struct Scope<'a> {
    builder: &'a Builder,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn sub(&self, name: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Scope {
            builder: self.builder,
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &Device {
        &self.builder.device
    }

    fn register(&self, name: &str, values: Vec<f64>, shape: &[usize], kind: Kind) -> Result<Var> {
        let t =
            Tensor::from_vec(values, shape, &self.builder.device)?.to_dtype(self.builder.dtype)?;
        let var = Var::from_tensor(&t)?;
        let entry = Entry {
            name: self.path(name),
            var: var.clone(),
            kind,
        };
        self.builder.store.borrow_mut().push(entry)?;
        Ok(var)
    }

    fn sample(&self, n: usize, mut f: impl FnMut(&mut ChaCha8Rng) -> f64) -> Vec<f64> {
        let mut rng = self.builder.rng.borrow_mut();
        (0..n).map(|_| f(&mut rng)).collect()
    }

    pub fn constant(&self, name: &str, shape: &[usize], value: f64, kind: Kind) -> Result<Var> {
        let n = shape.iter().product();
        self.register(name, vec![value; n], shape, kind)
    }

    pub fn ones(&self, name: &str, shape: &[usize]) -> Result<Var> {
        self.constant(name, shape, 1.0, Kind::Param)
    }

    pub fn zeros(&self, name: &str, shape: &[usize]) -> Result<Var> {
        self.constant(name, shape, 0.0, Kind::Param)
    }

    /// N(0, std²) — timm's MLP-bias init uses std 1e-6.
    pub fn normal(&self, name: &str, shape: &[usize], std: f64) -> Result<Var> {
        let v = self.sample(shape.iter().product(), |r| {
            std * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, r)
        });
        self.register(name, v, shape, Kind::Param)
    }

    /// Xavier/Glorot uniform for an (out, in, …) weight: U(±sqrt(6 / (fan_in + fan_out))).
    pub fn xavier_uniform(&self, name: &str, shape: &[usize]) -> Result<Var> {
        let receptive: usize = shape[2..].iter().product();
        let (fan_out, fan_in) = (shape[0] * receptive, shape[1] * receptive);
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let v = self.sample(shape.iter().product(), |r| r.gen_range(-bound..bound));
        self.register(name, v, shape, Kind::Param)
    }

    /// timm's `lecun_normal_` for the conv stem: truncated normal on ±2σ with
    /// σ = sqrt(1/fan_in) / 0.8796… (the std of a unit normal truncated at ±2).
    pub fn lecun_normal(&self, name: &str, shape: &[usize]) -> Result<Var> {
        let fan_in: usize = shape[1..].iter().product();
        let std = (1.0 / fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
        let v = self.sample(shape.iter().product(), |r| loop {
            let z: f64 = StandardNormal.sample(r);
            if z.abs() <= 2.0 {
                break z * std;
            }
        });
        self.register(name, v, shape, Kind::Param)
    }

    /// A unit vector normalize(randn(n)) — the initial power-iteration state of spectral norm.
    pub fn unit_vector_buffer(&self, name: &str, n: usize) -> Result<Var> {
        let v = self.sample(n, |r| StandardNormal.sample(r));
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        self.register(
            name,
            v.iter().map(|x| x / norm).collect(),
            &[n],
            Kind::Buffer,
        )
    }
}

/// A tensor of N(0, std²) draws from a ChaCha8 stream seeded by `seed`.
///
/// Why not `Tensor::randn`: candle's CPU generator is not seedable, so synthetic inputs (benchmarks,
/// `inspect` without data, tests) would differ from run to run.
pub fn seeded_normal(
    seed: u64,
    shape: &[usize],
    std: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| std * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}
