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
use serde::Serialize;

use super::sn_state::{SnCall, SnUpdates};

/// What one fixed-point solve did (per iMLP call; recorded here, where the
/// observer is, so that `layers` does not depend on `models`), for logs and `imixer inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct SolverStats {
    pub module: String,
    pub iterations: usize,
    /// Final relative residual ‖x_k − x_{k−1}‖ / ‖x_k‖.
    pub residual: f64,
    pub converged: bool,
}

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
    /// What the forward reports besides its output: nothing unless asked ([`Self::observing`]).
    pub observer: Observer,
}

/// One kind of observation a forward can record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observe {
    /// Every spectral-norm call: σ̂, the clamp factor and the power-iteration vectors.
    SnCalls,
    /// Fixed-point solver statistics per iMLP call (what training logs).
    SolverStats,
    /// The stem's, every block's and the final norm's output. They outlive the forward (and
    /// keep its graph alive), so only tests and `imixer inspect` ask for them.
    Activations,
}

/// Observations of one forward. Each list is `None` unless its [`Observe`] kind was asked for,
/// so a training step that wants solver statistics does not also clone every SN call.
#[derive(Debug, Default)]
pub struct Observer {
    /// Every spectral-norm call, in call order.
    pub sn_calls: Option<Vec<SnCall>>,
    /// Fixed-point solver statistics per iMLP call (block name, iterations, final residual).
    pub solver_stats: Option<Vec<SolverStats>>,
    /// (name, activation) for the stem, every block and the final norm.
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
            observer: Observer::default(),
        }
    }

    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }

    /// Records the given kinds of observation (in addition to any already on).
    pub fn observing(mut self, kinds: &[Observe]) -> Self {
        for kind in kinds {
            let o = &mut self.observer;
            match kind {
                Observe::SnCalls => o.sn_calls = o.sn_calls.take().or_else(|| Some(Vec::new())),
                Observe::SolverStats => {
                    o.solver_stats = o.solver_stats.take().or_else(|| Some(Vec::new()))
                }
                Observe::Activations => {
                    o.activations = o.activations.take().or_else(|| Some(Vec::new()))
                }
            }
        }
        self
    }

    /// Records `t` under `name` when activations are observed.
    pub(crate) fn record(&mut self, name: impl Into<String>, t: &Tensor) {
        if let Some(a) = self.observer.activations.as_mut() {
            a.push((name.into(), t.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_requested_observations_are_recorded() {
        let ctx = ForwardCtx::eval();
        assert!(ctx.observer.sn_calls.is_none() && ctx.observer.solver_stats.is_none());
        let ctx = ForwardCtx::train(1).observing(&[Observe::SolverStats]);
        let o = &ctx.observer;
        assert!(o.solver_stats.is_some() && o.sn_calls.is_none() && o.activations.is_none());
        let mut ctx = ctx.observing(&[Observe::Activations]);
        let t = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        ctx.record("stem", &t);
        assert_eq!(ctx.observer.activations.as_ref().map(Vec::len), Some(1));
        assert!(ctx.observer.solver_stats.is_some());
    }
}
