//! The state a forward runs with, passed explicitly rather than kept in the modules: its mode and
//! random stream, the spectral-norm buffers it advances, and an optional observer.
//!
//! The reference toggles `model.train()` / `model.eval()` on modules and updates buffers in
//! place; here the mode travels with the call and the buffers come back in the context, so one
//! model can run both modes and several forwards side by side without hidden state, and every
//! random draw of a forward comes from the stream the caller seeded (determinism, exact resume).

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::sn_state::{SnCall, SnUpdates};
use crate::models::imlp::SolverStats;

/// Training or evaluation, as `model.train()` / `model.eval()` in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Power iterations run, drop-path is active, implicit layers attach their backward.
    Train,
    Eval,
}

pub struct ForwardCtx {
    pub mode: Mode,
    /// Drop-path draws.
    pub rng: ChaCha8Rng,
    /// The spectral-norm buffers this forward advanced; the model holds them only after
    /// [`SnUpdates::commit`].
    pub sn: SnUpdates,
    /// What the forward reports besides its output, when asked.
    pub observer: Option<Observer>,
}

/// Observations of one forward, for tests, diagnostics and training logs.
#[derive(Debug, Default)]
pub struct Observer {
    /// Every spectral-norm call, in call order.
    pub sn_calls: Vec<SnCall>,
    /// Fixed-point solver statistics per iMLP call (block name, iterations, final residual).
    pub solver_stats: Vec<SolverStats>,
    /// (name, activation) for the stem, every block and the final norm, when asked for: they
    /// outlive the forward, so they are off unless [`ForwardCtx::with_activations`] is used.
    pub activations: Option<Vec<(String, Tensor)>>,
}

impl ForwardCtx {
    pub fn eval() -> Self {
        Self::new(Mode::Eval, 0)
    }

    pub fn train(seed: u64) -> Self {
        Self::new(Mode::Train, seed)
    }

    pub fn new(mode: Mode, seed: u64) -> Self {
        Self {
            mode,
            rng: ChaCha8Rng::seed_from_u64(seed),
            sn: SnUpdates::default(),
            observer: None,
        }
    }

    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Records spectral-norm calls and solver statistics.
    pub fn observed(mut self) -> Self {
        self.observer.get_or_insert_with(Observer::default);
        self
    }

    /// Records activations too ([`Self::observed`] plus the block outputs).
    pub fn with_activations(mut self) -> Self {
        self.observer
            .get_or_insert_with(Observer::default)
            .activations = Some(Vec::new());
        self
    }

    /// The observer, if this forward has one.
    pub(crate) fn observe(&mut self) -> Option<&mut Observer> {
        self.observer.as_mut()
    }

    pub(crate) fn record(&mut self, name: impl Into<String>, t: &Tensor) {
        if let Some(a) = self.observe().and_then(|o| o.activations.as_mut()) {
            a.push((name.into(), t.clone()));
        }
    }
}
