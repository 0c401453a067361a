//! The iMLP: token mixing by the implicit map (1 − F)⁻¹ of a three-layer Hopfield network.
//!
//! ```text
//! y = fc1(z)                                  N → N1
//! x = y;  repeat n_iter: x = F(x) + y         F(x) = fc_sn2(GELU(fc_sn1(GELU(x))))
//! out = fc2(GELU(x))                          N1 → N
//! ```
//! fc_sn1/fc_sn2 carry soft spectral normalisation, re-run at every call as in the reference.

use candle_core::{Result, Tensor};
use serde::Serialize;

use super::implicit::{fixed_point, FixedMap, ImplicitGradient};
use crate::config::{IMixerConfig, Solver};
use crate::layers::linear::linear;
use crate::layers::linear::{BiasInit, MLP_BIAS_STD};
use crate::layers::linear_epilogue::{linear_epilogue, linear_gelu};
use crate::layers::{gelu, Axis, ForwardCtx, Linear, SoftSpectralNorm};
use crate::params::Scope;

/// What one fixed-point solve did (per iMLP call), for logs and `imixer inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct SolverStats {
    pub module: String,
    pub iterations: usize,
    /// Final relative residual ‖x_k − x_{k−1}‖ / ‖x_k‖.
    pub residual: f64,
    pub converged: bool,
}

#[derive(Clone, Debug)]
pub struct IMlp {
    pub name: String,
    pub fc1: Linear,
    pub fc_sn1: SoftSpectralNorm,
    pub fc_sn2: SoftSpectralNorm,
    pub fc2: Linear,
    pub n_iter: usize,
    pub solver: Solver,
}

impl IMlp {
    pub fn new(scope: &Scope, dim: usize, hidden: usize, cfg: &IMixerConfig) -> Result<Self> {
        let inner = (hidden as f64 * cfg.hidden_ratio) as usize;
        let b = BiasInit::Normal(MLP_BIAS_STD);
        Ok(Self {
            name: scope.prefix().to_string(),
            fc1: Linear::new(&scope.sub("fc1"), dim, hidden, b)?,
            fc_sn1: SoftSpectralNorm::new(
                &scope.sub("fc_sn1"),
                hidden,
                inner,
                cfg.coeff,
                cfg.n_power,
            )?,
            fc_sn2: SoftSpectralNorm::new(
                &scope.sub("fc_sn2"),
                inner,
                hidden,
                cfg.coeff,
                cfg.n_power,
            )?,
            fc2: Linear::new(&scope.sub("fc2"), hidden, dim, b)?,
            n_iter: cfg.n_iter,
            solver: cfg.solver.clone(),
        })
    }

    /// F(x) = fc_sn2(GELU(fc_sn1(GELU(x)))), one call of each SN layer.
    pub fn residual_map(&self, x: &Tensor, axis: Axis, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let h = self.fc_sn1.forward(&gelu(x)?, axis, ctx)?;
        self.fc_sn2.forward(&gelu(&h)?, axis, ctx)
    }

    /// One reference step x ← F(x) + y = (GELU(GELU(x) W̃₁ᵀ + b₁) W̃₂ᵀ + b₂) + y. Along the last
    /// axis fc_sn1's matmul, bias and GELU are one op (`linear_gelu`, which keeps GELU′ instead of
    /// the pre-activation) and fc_sn2's bias and the residual y sit in its
    /// matmul's epilogue (`linear_epilogue`), so the backward keeps neither fc_sn2's raw product
    /// nor F(x): two activations fewer per iteration than `residual_map(x) + y`.
    fn unrolled_step(
        &self,
        x: &Tensor,
        y: &Tensor,
        axis: Axis,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        if axis == Axis::Tokens {
            return self.residual_map(x, axis, ctx)? + y;
        }
        let w1 = self.fc_sn1.weight(ctx)?;
        let h = linear_gelu(&gelu(x)?, &w1, Some(self.fc_sn1.bias.as_tensor()))?;
        let w2 = self.fc_sn2.weight(ctx)?;
        linear_epilogue(&h, &w2, Some(self.fc_sn2.bias.as_tensor()), Some(y))
    }

    /// F with this call's normalised weights, detached (what the solvers iterate).
    pub fn fixed_map(&self, axis: Axis, ctx: &mut ForwardCtx) -> Result<FixedMap> {
        let w1 = self.fc_sn1.weight(ctx)?;
        let w2 = self.fc_sn2.weight(ctx)?;
        let (b1, b2) = (self.fc_sn1.bias.as_tensor(), self.fc_sn2.bias.as_tensor());
        Ok(FixedMap::detached(&w1, b1, &w2, b2, axis))
    }

    pub fn forward(&self, z: &Tensor, axis: Axis, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if axis == Axis::Channels {
            return self.forward_last_axis(z, None, ctx);
        }
        let y = self.fc1.forward(z, axis)?;
        let x = self.solve(&y, axis, ctx)?;
        self.fc2.forward(&gelu(&x)?, axis)
    }

    /// The iMLP along the last axis, plus `residual` in fc2's epilogue when given.
    pub fn forward_last_axis(
        &self,
        z: &Tensor,
        residual: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let y = self.fc1.forward(z, Axis::Channels)?;
        let x = self.solve(&y, Axis::Channels, ctx)?;
        self.fc2.forward_residual(&gelu(&x)?, residual)
    }

    /// x ≈ (1 − F)⁻¹(y).
    fn solve(&self, y: &Tensor, axis: Axis, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match &self.solver {
            Solver::Unrolled => {
                let mut x = y.clone();
                for _ in 0..self.n_iter {
                    x = self.unrolled_step(&x, y, axis, ctx)?;
                }
                Ok(x)
            }
            solver => {
                // The SN weights of this forward (one power-iteration round per layer), kept in
                // the graph for the final differentiable step.
                let w1 = self.fc_sn1.weight(ctx)?;
                let w2 = self.fc_sn2.weight(ctx)?;
                let (b1, b2) = (self.fc_sn1.bias.as_tensor(), self.fc_sn2.bias.as_tensor());
                let fixed = FixedMap::detached(&w1, b1, &w2, b2, axis);
                let y_d = y.detach();
                let (x_star, info) = fixed_point(|x| fixed.apply(x)? + &y_d, y_d.clone(), solver)?;
                if let Some(o) = ctx.observe() {
                    o.solver_stats.push(SolverStats {
                        module: self.name.clone(),
                        iterations: info.iterations,
                        residual: info.residual,
                        converged: info.converged,
                    });
                }
                let x_star = x_star.detach();
                // x = y + F(x*) carries ∂/∂y and ∂/∂θ; the hook turns ∂L/∂x into the adjoint u.
                let h = linear(&gelu(&x_star)?, &w1, Some(b1), axis)?;
                let x = (linear(&gelu(&h)?, &w2, Some(b2), axis)? + y)?;
                if !ctx.is_train() {
                    return Ok(x);
                }
                x.apply_op1(ImplicitGradient {
                    x_star,
                    map: fixed,
                    solver: solver.clone(),
                    last_backward: Default::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{seeded_normal, Builder};
    use candle_core::{DType, Device};

    /// The fused unrolled step equals `residual_map(x) + y` (up to the rounding of its one
    /// reordered addition, (b₂ + y) + Σ), with the same gradients.
    #[test]
    fn unrolled_step_equals_residual_map_plus_y() -> Result<()> {
        let dev = Device::Cpu;
        let builder = Builder::new(3, DType::F64, &dev);
        let m = IMlp::new(&builder.root(), 6, 5, &IMixerConfig::default())?;
        // Biases of a trained size (timm initialises them at 1e-6).
        m.fc_sn1
            .bias
            .set(&seeded_normal(1, &[10], 0.5, DType::F64, &dev)?)?;
        m.fc_sn2
            .bias
            .set(&seeded_normal(2, &[5], 0.5, DType::F64, &dev)?)?;
        let x = seeded_normal(3, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let y = seeded_normal(4, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let probe = seeded_normal(5, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let mut ctx = ForwardCtx::eval();
        let fused = m.unrolled_step(&x, &y, Axis::Channels, &mut ctx)?;
        let composed = (m.residual_map(&x, Axis::Channels, &mut ctx)? + &y)?;
        let d = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-13, "forward {d}");
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (composed * &probe)?.sum_all()?.backward()?;
        for v in [
            &m.fc_sn1.weight_orig,
            &m.fc_sn1.bias,
            &m.fc_sn2.weight_orig,
            &m.fc_sn2.bias,
        ] {
            let d = (gf.get(v).unwrap() - gc.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(d < 1e-12, "gradient {d}");
        }
        Ok(())
    }
}
