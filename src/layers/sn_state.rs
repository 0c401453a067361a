//! The spectral-norm state a forward advances, kept apart from the model until one commit.
//!
//! A soft spectral-norm layer refines its power-iteration vectors u, v at every training call
//! and records σ̂ at every call. A forward never writes those buffers into the model: each call
//! reads the buffers its layer left earlier in the same forward (an iMLP calls its layers
//! n_iter times), else the model's, and leaves its result in [`SnUpdates`]. Whoever owns the
//! step commits them once ([`SnUpdates::commit`]): the training step commits the first shard's,
//! whether the batch runs as one shard or several (every shard starts from the same buffers
//! and replays the same iterations, so all agree), and inference commits its forward's σ̂.
//! One path, so a sharded step and an unsharded one leave the same buffers.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};

/// One call of a spectral-norm layer, for traces and diagnostics.
#[derive(Clone, Debug)]
pub struct SnCall {
    pub module: String,
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: f64,
    pub factor: f64,
}

/// A layer's spectral-norm buffers after a call: the power-iteration vectors and σ = uᵀ W v.
#[derive(Clone, Debug)]
pub struct SnBuffers {
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: Tensor,
    /// Whether the call ran the power iteration (train mode), i.e. whether u and v moved.
    pub iterated: bool,
}

/// The model variables of one spectral-norm layer (`weight_u`, `weight_v`, `weight_sigma`),
/// sharing storage with the model's parameter store.
#[derive(Clone, Debug)]
pub struct SnVars {
    pub u: Var,
    pub v: Var,
    pub sigma: Var,
}

impl SnVars {
    /// Writes a call's buffers into the variables: u and v only after a power iteration (the
    /// reference's eval mode leaves them alone), σ always.
    pub fn commit(&self, b: &SnBuffers) -> Result<()> {
        if b.iterated {
            self.u.set(&b.u)?;
            self.v.set(&b.v)?;
        }
        self.sigma.set(&b.sigma)
    }
}

/// The buffers a forward advanced, by layer name, each with the variables it commits into.
#[derive(Clone, Debug, Default)]
pub struct SnUpdates {
    layers: BTreeMap<String, (SnVars, SnBuffers)>,
}

impl SnUpdates {
    /// The buffers layer `name` left earlier in this forward.
    pub fn get(&self, name: &str) -> Option<&SnBuffers> {
        self.layers.get(name).map(|(_, b)| b)
    }

    /// Records layer `name`'s latest call, replacing its earlier one.
    pub fn record(&mut self, name: &str, vars: &SnVars, buffers: SnBuffers) {
        self.layers
            .insert(name.to_string(), (vars.clone(), buffers));
    }

    /// Writes every layer's latest buffers into the model's variables.
    pub fn commit(&self) -> Result<()> {
        self.layers
            .values()
            .try_for_each(|(vars, b)| vars.commit(b))
    }
}
