//! Per-forward state: train vs eval, the drop-path random stream, and optional recorders.
//!
//! The reference toggles `model.train()` / `model.eval()` on modules; here the mode travels with
//! the call, so one model can run both without hidden state, and every random draw of a forward
//! comes from the stream the caller seeded (determinism and exact resume).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use std::collections::BTreeMap;

use super::spectral_norm::{SnBuffers, SnCall};

pub struct ForwardCtx {
    /// Training mode: power iterations run, drop-path is active.
    pub train: bool,
    /// Drop-path draws.
    pub rng: ChaCha8Rng,
    /// When set, every spectral-norm call appends its (u, v, σ, factor) here.
    pub sn_trace: Option<Vec<SnCall>>,
    /// When set, the network appends (name, activation) for stem, every block and the final norm.
    pub activations: Option<Vec<(String, candle_core::Tensor)>>,
    /// Fixed-point solver statistics per iMLP call (block name, iterations, final residual).
    pub solver_stats: Vec<crate::models::imlp::SolverStats>,
    /// When set, the spectral-norm buffers (u, v, σ) advance here, keyed by module name, instead
    /// of in the model's variables; [`crate::MixerNet::commit_sn`] writes them back. Lets
    /// several forwards run concurrently from the same starting buffers (data-parallel shards):
    /// each replays the same power iterations, so every shard ends with the same buffers.
    pub deferred_sn: Option<BTreeMap<String, SnBuffers>>,
}

impl ForwardCtx {
    pub fn eval() -> Self {
        Self::new(false, 0)
    }

    pub fn train(seed: u64) -> Self {
        Self::new(true, seed)
    }

    pub fn new(train: bool, seed: u64) -> Self {
        Self {
            train,
            rng: ChaCha8Rng::seed_from_u64(seed),
            sn_trace: None,
            activations: None,
            solver_stats: Vec::new(),
            deferred_sn: None,
        }
    }

    pub fn with_deferred_sn(mut self) -> Self {
        self.deferred_sn = Some(BTreeMap::new());
        self
    }

    pub fn with_sn_trace(mut self) -> Self {
        self.sn_trace = Some(Vec::new());
        self
    }

    pub fn with_activations(mut self) -> Self {
        self.activations = Some(Vec::new());
        self
    }

    pub(crate) fn record(&mut self, name: impl Into<String>, t: &candle_core::Tensor) {
        if let Some(a) = self.activations.as_mut() {
            a.push((name.into(), t.clone()));
        }
    }
}
