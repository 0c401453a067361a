//! The iMLP: token mixing by the implicit map (1 − F)⁻¹ of a three-layer Hopfield network.
//!
//! ```text
//! y = fc1(z)                                  N → N1
//! x = y;  repeat n_iter: x = F(x) + y         F: the residual map (`super::residual_map`)
//! out = fc2(GELU(x))                          N1 → N
//! ```
//! Like every layer, it acts on the last axis: the block hands it LN(x)ᵀ (B, D, N).

use candle_core::{Result, Tensor};

use super::implicit::{fixed_point, FixedMap, ImplicitGradient};
use super::residual_map::ResidualMap;
use crate::config::{IMixerConfig, Solver};
use crate::layers::linear::{linear, BiasInit, MLP_BIAS_STD};
use crate::layers::{gelu, Epilogue, ForwardCtx, Linear, SolverStats};
use crate::params::Scope;

#[derive(Clone, Debug)]
pub struct IMlp {
    pub name: String,
    pub fc1: Linear,
    /// F, whose fixed point x = F(x) + y the iMLP solves for.
    pub f: ResidualMap,
    pub fc2: Linear,
    pub n_iter: usize,
    pub solver: Solver,
}

impl IMlp {
    pub fn new(scope: &Scope, dim: usize, hidden: usize, cfg: &IMixerConfig) -> Result<Self> {
        let inner = (hidden as f64 * cfg.hidden_ratio) as usize;
        let b = BiasInit::Normal(MLP_BIAS_STD);
        // Creation order is the reference's parameter order (and the order of the init draws).
        Ok(Self {
            name: scope.prefix().to_string(),
            fc1: Linear::new(&scope.sub("fc1"), dim, hidden, b)?,
            f: ResidualMap::new(scope, hidden, inner, cfg.coeff, cfg.n_power)?,
            fc2: Linear::new(&scope.sub("fc2"), hidden, dim, b)?,
            n_iter: cfg.n_iter,
            solver: cfg.solver.clone(),
        })
    }

    /// fc2(GELU((1 − F)⁻¹(fc1(z)))) over the last axis, then `epilogue` on fc2's product.
    pub fn forward(&self, z: &Tensor, epilogue: Epilogue, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = self.fc1.forward(z, Epilogue::None)?;
        let x = self.solve(&y, ctx)?;
        self.fc2.forward(&gelu(&x)?, epilogue)
    }

    /// x ≈ (1 − F)⁻¹(y).
    fn solve(&self, y: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match &self.solver {
            Solver::Unrolled => {
                let mut x = y.clone();
                for _ in 0..self.n_iter {
                    x = self.f.forward(&x, Epilogue::Add(y), ctx)?;
                }
                Ok(x)
            }
            solver => {
                // This forward's SN weights (one power-iteration round per layer): the solver
                // iterates F with them detached, the final step keeps them in the graph.
                let (sn1, sn2) = (&self.f.fc_sn1, &self.f.fc_sn2);
                let (w1, w2) = (sn1.weight(ctx)?, sn2.weight(ctx)?);
                let (b1, b2) = (sn1.bias.as_tensor(), sn2.bias.as_tensor());
                let fixed = FixedMap::detached(&w1, b1, &w2, b2);
                let y_d = y.detach();
                let (x_star, info) = fixed_point(|x| fixed.apply(x)? + &y_d, y_d.clone(), solver)?;
                if let Some(stats) = ctx.observer.solver_stats.as_mut() {
                    stats.push(SolverStats {
                        module: self.name.clone(),
                        iterations: info.iterations,
                        residual: info.residual,
                        converged: info.converged,
                    });
                }
                let x_star = x_star.detach();
                // x = y + F(x*) carries ∂/∂y and ∂/∂θ; the hook turns ∂L/∂x into the adjoint u.
                let h = linear(&gelu(&x_star)?, &w1, Some(b1), Epilogue::None)?;
                let x = (linear(&gelu(&h)?, &w2, Some(b2), Epilogue::None)? + y)?;
                if !ctx.is_train() {
                    return Ok(x);
                }
                x.contiguous()?.apply_op1(ImplicitGradient {
                    x_star,
                    map: fixed,
                    solver: solver.clone(),
                })
            }
        }
    }
}
