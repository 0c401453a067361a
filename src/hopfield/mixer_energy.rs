//! SymMixer / AsymMixer blocks as Hopfield updates (paper 2).
//!
//! With g = LN(x) over the whole (S, C) state and the MLPs h = GELU(W g), the SymMixer update
//! M(g) = W_sᵀ GELU(W_s g) + GELU(g W_cᵀ) W_c is exactly −∇ of
//!
//! E_int(g) = −Σ Φ_GELU(W_s g) − Σ Φ_GELU(g W_cᵀ),
//!
//! so the block Jacobian is symmetric and the continuous dynamics dx/dt = M(LN x) − x descend
//! E(x) = x·g − L_LN(x) + E_int(g). AsymMixer adds h W2ᵀ (W2 ≠ 0): M is no longer a gradient and
//! descent is not guaranteed. [`ToyBlock`] is this block on one (S, C) state in f64 (the
//! `imixer dynamics` demo); [`block_interaction_energy`] evaluates E_int of a real model block.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::lagrangian::{gelu, phi_gelu, Lagrangian};
use super::ode::{rk45, OdeOptions};
use crate::models::{AnyMlp, Block};

/// Dense row-major matrix.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            v: vec![0.0; rows * cols],
        }
    }

    /// Entries N(0,1), rescaled so the Frobenius norm is `radius` (a point on the sphere).
    pub fn on_sphere(rows: usize, cols: usize, radius: f64, rng: &mut ChaCha8Rng) -> Self {
        let mut v: Vec<f64> = (0..rows * cols)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-300);
        v.iter_mut().for_each(|a| *a *= radius / n);
        Self { rows, cols, v }
    }

    fn at(&self, r: usize, c: usize) -> f64 {
        self.v[r * self.cols + c]
    }
}

/// One paper-2 block on an (S tokens × C channels) state: token MLP W_s (Ns × S), channel MLP
/// W_c (Nc × C), symmetry-breaking W2_s (S × Ns), W2_c (C × Nc) (zero for SymMixer).
#[derive(Clone, Debug)]
pub struct ToyBlock {
    pub s: usize,
    pub c: usize,
    pub w_s: Mat,
    pub w_c: Mat,
    pub w2_s: Mat,
    pub w2_c: Mat,
}

#[derive(Clone, Debug, Serialize)]
pub struct Trajectory {
    pub t: Vec<f64>,
    pub energy: Vec<f64>,
    /// Largest increase of E between consecutive samples (≤ ~0 for symmetric weights).
    pub max_increase: f64,
    pub final_speed: f64,
}

impl ToyBlock {
    /// Weights on spheres of radius `r_sym` (W_s, W_c) and `r_asym` (W2; 0 = SymMixer).
    pub fn random(
        s: usize,
        c: usize,
        ns: usize,
        nc: usize,
        r_sym: f64,
        r_asym: f64,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w_s = Mat::on_sphere(ns, s, r_sym, &mut rng);
        let w_c = Mat::on_sphere(nc, c, r_sym, &mut rng);
        let (w2_s, w2_c) = if r_asym > 0.0 {
            (
                Mat::on_sphere(s, ns, r_asym, &mut rng),
                Mat::on_sphere(c, nc, r_asym, &mut rng),
            )
        } else {
            (Mat::zeros(s, ns), Mat::zeros(c, nc))
        };
        let _ = rng.gen::<u8>();
        Self {
            s,
            c,
            w_s,
            w_c,
            w2_s,
            w2_c,
        }
    }

    /// Pre-activations (W_s g) (Ns × C) and (g W_cᵀ) (S × Nc) of a state g (S × C, row-major).
    fn preacts(&self, g: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (s, c, ns, nc) = (self.s, self.c, self.w_s.rows, self.w_c.rows);
        let mut a = vec![0.0; ns * c];
        for k in 0..ns {
            for j in 0..c {
                a[k * c + j] = (0..s).map(|i| self.w_s.at(k, i) * g[i * c + j]).sum();
            }
        }
        let mut b = vec![0.0; s * nc];
        for i in 0..s {
            for k in 0..nc {
                b[i * nc + k] = (0..c).map(|j| g[i * c + j] * self.w_c.at(k, j)).sum();
            }
        }
        (a, b)
    }

    /// E_int(g) = −Σ Φ(W_s g) − Σ Φ(g W_cᵀ) (symmetric part only).
    pub fn interaction_energy(&self, g: &[f64]) -> f64 {
        let (a, b) = self.preacts(g);
        -a.iter().map(|&v| phi_gelu(v)).sum::<f64>() - b.iter().map(|&v| phi_gelu(v)).sum::<f64>()
    }

    /// M(g) = W_sᵀ h_s + W2_s h_s + h_c W_c + h_c W2_cᵀ with h = GELU(pre-activations).
    pub fn update(&self, g: &[f64]) -> Vec<f64> {
        let (s, c, ns, nc) = (self.s, self.c, self.w_s.rows, self.w_c.rows);
        let (a, b) = self.preacts(g);
        let ha: Vec<f64> = a.iter().map(|&v| gelu(v)).collect();
        let hb: Vec<f64> = b.iter().map(|&v| gelu(v)).collect();
        let mut m = vec![0.0; s * c];
        for i in 0..s {
            for j in 0..c {
                let tok: f64 = (0..ns)
                    .map(|k| (self.w_s.at(k, i) + self.w2_s.at(i, k)) * ha[k * c + j])
                    .sum();
                let ch: f64 = (0..nc)
                    .map(|k| hb[i * nc + k] * (self.w_c.at(k, j) + self.w2_c.at(j, k)))
                    .sum();
                m[i * c + j] = tok + ch;
            }
        }
        m
    }

    fn ln() -> Lagrangian {
        Lagrangian::LayerNorm {
            gamma: 1.0,
            delta: 0.0,
            eps: 1e-6,
        }
    }

    /// E(x) = x·g − L_LN(x) + E_int(g), g = LN(x).
    pub fn energy(&self, x: &[f64]) -> f64 {
        let ln = Self::ln();
        let g = ln.activation(x);
        x.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>() - ln.value(x)
            + self.interaction_energy(&g)
    }

    /// dx/dt = M(LN x) − x.
    pub fn velocity(&self, x: &[f64]) -> Vec<f64> {
        let g = Self::ln().activation(x);
        self.update(&g).iter().zip(x).map(|(m, x)| m - x).collect()
    }

    /// Integrates from `x0` over [0, t_end] and records the energy.
    pub fn trajectory(&self, x0: &[f64], t_end: f64) -> Trajectory {
        let sol = rk45(
            |_, x| self.velocity(x),
            x0,
            t_end,
            &OdeOptions {
                rtol: 1e-8,
                atol: 1e-10,
                ..OdeOptions::default()
            },
        );
        let t: Vec<f64> = sol.iter().map(|(t, _)| *t).collect();
        let energy: Vec<f64> = sol.iter().map(|(_, x)| self.energy(x)).collect();
        let max_increase = energy
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(f64::NEG_INFINITY, f64::max);
        let last = &sol.last().expect("non-empty").1;
        let final_speed = self
            .velocity(last)
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        Trajectory {
            t,
            energy,
            max_increase,
            final_speed,
        }
    }
}

/// E_int(g) of a real paper-2 block (symmetric part: the tied / first-layer weights), summed over
/// the batch, as a differentiable candle scalar. g: (B, N, D) = the block's LayerNorm output.
pub fn block_interaction_energy(block: &Block, g: &Tensor) -> Result<Tensor> {
    let (tok, ch) = block.mlps();
    let w = |m: &AnyMlp| -> Result<Tensor> {
        Ok(match m {
            AnyMlp::Sym(s) => s.weight.as_tensor().clone(),
            AnyMlp::Asym(a) => a.fc1.weight.as_tensor().clone(),
            AnyMlp::Plain(p) => p.fc1.weight.as_tensor().clone(),
            AnyMlp::Implicit(_) => candle_core::bail!("E_int is defined for paper-2 blocks"),
        })
    };
    let (ws, wc) = (w(tok)?, w(ch)?);
    let a = ws.broadcast_matmul(g)?; // (B, Ns, D)
    let b = g.broadcast_matmul(&wc.t()?)?; // (B, N, Nc)
    (phi(&a)?.sum_all()? + phi(&b)?.sum_all()?)?.neg()
}

/// Φ_GELU elementwise from candle ops (differentiable).
pub fn phi(x: &Tensor) -> Result<Tensor> {
    let x2 = x.sqr()?;
    let erf = (x / std::f64::consts::SQRT_2)?.erf()?;
    let gauss = ((&x2 * -0.5)?.exp()? * (2.0 / std::f64::consts::PI).sqrt())?;
    ((&x2 + ((&x2 - 1.0)? * erf)?)? + (x * gauss)?)? * 0.25
}
