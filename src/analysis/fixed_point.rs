//! The iMLP's fixed-point iteration on real inputs: x_{k+1} = y + F(x_k) from x_0 = y, run for K
//! steps (beyond the trained n_iter) with the model's eval-mode weights, recording the relative
//! residual ‖x_{k+1} − x_k‖ / ‖x_{k+1}‖ and the contraction ratio r_{k+1}/r_k.

use candle_core::{Result, Tensor};
use serde::Serialize;

use crate::config::Solver;
use crate::layers::{Epilogue, ForwardCtx};
use crate::models::imlp::IMlp;
use crate::models::implicit::{fixed_point, norm};

#[derive(Clone, Debug, Serialize)]
pub struct FixedPointTrace {
    pub module: String,
    /// `residuals[k]` = ‖x_{k+1} − x_k‖ / ‖x_{k+1}‖ for k = 0..K−1.
    pub residuals: Vec<f64>,
    /// Geometric-mean contraction ratio over the trace (≈ Lip(F) along the path).
    pub contraction: f64,
    pub trained_n_iter: usize,
}

/// `z` is the iMLP input in the layout the model feeds it (token axis last: (B, D, N)).
pub fn trace(imlp: &IMlp, z: &Tensor, steps: usize) -> Result<FixedPointTrace> {
    let mut ctx = ForwardCtx::eval();
    let y = imlp.fc1.forward(z, Epilogue::None)?;
    let mut x = y.clone();
    let mut residuals = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next = imlp.f.forward(&x, Epilogue::Add(&y), &mut ctx)?;
        residuals.push(norm(&(&next - &x)?)? / norm(&next)?.max(1e-30));
        x = next;
    }
    let ratios: Vec<f64> = residuals
        .windows(2)
        .filter(|w| w[0] > 1e-14 && w[1] > 0.0)
        .map(|w| (w[1] / w[0]).ln())
        .collect();
    let contraction = if ratios.is_empty() {
        0.0
    } else {
        (ratios.iter().sum::<f64>() / ratios.len() as f64).exp()
    };
    Ok(FixedPointTrace {
        module: imlp.name.clone(),
        residuals,
        contraction,
        trained_n_iter: imlp.n_iter,
    })
}

/// Picard vs Anderson on the same fixed-point problem, solved to one tolerance.
#[derive(Clone, Debug, Serialize)]
pub struct SolverComparison {
    pub module: String,
    pub tol: f64,
    pub picard_iterations: usize,
    pub picard_converged: bool,
    pub anderson_m: usize,
    pub anderson_iterations: usize,
    pub anderson_converged: bool,
    /// ‖x*_picard − x*_anderson‖ / ‖x*_picard‖: both solvers must find the same point.
    pub relative_difference: f64,
}

/// Solves x = y + F(x) (eval-mode weights, `z` as for [`trace`]) with Picard and Anderson(m) to
/// each tolerance, capped at `max_iter` iterations.
pub fn compare_solvers(
    imlp: &IMlp,
    z: &Tensor,
    tols: &[f64],
    m: usize,
    max_iter: usize,
) -> Result<Vec<SolverComparison>> {
    for &tol in tols {
        Solver::Anderson { m, tol, max_iter }
            .validate()
            .map_err(candle_core::Error::Msg)?;
    }
    let mut ctx = ForwardCtx::eval();
    let y = imlp.fc1.forward(z, Epilogue::None)?;
    let map = imlp.f.detached(&mut ctx)?;
    let solve = |solver: Solver| fixed_point(|x| map.apply(x)? + &y, y.clone(), &solver);
    tols.iter()
        .map(|&tol| {
            let (x_p, p) = solve(Solver::Picard { tol, max_iter })?;
            let (x_a, a) = solve(Solver::Anderson { m, tol, max_iter })?;
            Ok(SolverComparison {
                module: imlp.name.clone(),
                tol,
                picard_iterations: p.iterations,
                picard_converged: p.converged,
                anderson_m: m,
                anderson_iterations: a.iterations,
                anderson_converged: a.converged,
                relative_difference: norm(&(&x_p - &x_a)?)? / norm(&x_p)?.max(1e-30),
            })
        })
        .collect()
}
