//! A hierarchical associative memory: layers with Lagrangians, dense synapses, energy, ∂E/∂g,
//! discrete updates and continuous-time dynamics.

use serde::{Deserialize, Serialize};

use super::lagrangian::Lagrangian;
use super::ode::{rk45, OdeOptions};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layer {
    pub size: usize,
    pub lagrangian: Lagrangian,
    /// Time constant τ of the continuous dynamics.
    pub tau: f64,
}

/// Couples layers `a` and `b` with ξ (size_b × size_a, row-major): energy −g_bᵀ ξ g_a.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Synapse {
    pub a: usize,
    pub b: usize,
    pub xi: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ham {
    pub layers: Vec<Layer>,
    pub synapses: Vec<Synapse>,
}

impl Ham {
    /// Checks synapse shapes and layer indices.
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.synapses.iter().enumerate() {
            let (na, nb) = match (self.layers.get(s.a), self.layers.get(s.b)) {
                (Some(a), Some(b)) => (a.size, b.size),
                _ => return Err(format!("synapse {i} connects a missing layer")),
            };
            if s.xi.len() != na * nb {
                return Err(format!(
                    "synapse {i}: ξ has {} entries, layers need {nb}×{na}",
                    s.xi.len()
                ));
            }
        }
        Ok(())
    }

    pub fn activations(&self, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        self.layers
            .iter()
            .zip(x)
            .map(|(l, x)| l.lagrangian.activation(x))
            .collect()
    }

    /// E = Σ_l [x_l·g_l − L_l(x_l)] − Σ_s g_bᵀ ξ g_a.
    pub fn energy(&self, x: &[Vec<f64>]) -> f64 {
        let g = self.activations(x);
        let mut e = 0.0;
        for ((l, x), g) in self.layers.iter().zip(x).zip(&g) {
            e += x.iter().zip(g).map(|(a, b)| a * b).sum::<f64>() - l.lagrangian.value(x);
        }
        for s in &self.synapses {
            let (ga, gb) = (&g[s.a], &g[s.b]);
            let na = ga.len();
            for (j, gbj) in gb.iter().enumerate() {
                let row = &s.xi[j * na..(j + 1) * na];
                e -= gbj * row.iter().zip(ga).map(|(w, v)| w * v).sum::<f64>();
            }
        }
        e
    }

    /// Input currents I_l = Σ_synapses (ξ g_a into b, ξᵀ g_b into a).
    pub fn currents(&self, g: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let mut cur: Vec<Vec<f64>> = self.layers.iter().map(|l| vec![0.0; l.size]).collect();
        for s in &self.synapses {
            let na = g[s.a].len();
            for j in 0..g[s.b].len() {
                let row = &s.xi[j * na..(j + 1) * na];
                cur[s.b][j] += row.iter().zip(&g[s.a]).map(|(w, v)| w * v).sum::<f64>();
                for (i, w) in row.iter().enumerate() {
                    cur[s.a][i] += w * g[s.b][j];
                }
            }
        }
        cur
    }

    /// ∂E/∂g_l = x_l − I_l.
    pub fn grad_g(&self, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cur = self.currents(&self.activations(x));
        x.iter()
            .zip(cur)
            .map(|(x, i)| x.iter().zip(i).map(|(a, b)| a - b).collect())
            .collect()
    }

    /// One discrete update x ← x − η ∂E/∂g on every layer.
    pub fn step(&self, x: &mut [Vec<f64>], eta: f64) {
        let g = self.grad_g(x);
        for (x, g) in x.iter_mut().zip(g) {
            for (a, b) in x.iter_mut().zip(g) {
                *a -= eta * b;
            }
        }
    }

    /// Integrates τ dx/dt = I − x from `x0` over [0, t_end], returning (t, state) samples.
    pub fn integrate(
        &self,
        x0: &[Vec<f64>],
        t_end: f64,
        opts: &OdeOptions,
    ) -> Vec<(f64, Vec<Vec<f64>>)> {
        let sizes: Vec<usize> = self.layers.iter().map(|l| l.size).collect();
        let split = |flat: &[f64]| -> Vec<Vec<f64>> {
            let mut out = Vec::with_capacity(sizes.len());
            let mut o = 0;
            for &n in &sizes {
                out.push(flat[o..o + n].to_vec());
                o += n;
            }
            out
        };
        let flat0: Vec<f64> = x0.iter().flatten().copied().collect();
        let rhs = |_t: f64, y: &[f64]| -> Vec<f64> {
            let x = split(y);
            let g = self.grad_g(&x);
            g.iter()
                .zip(&self.layers)
                .flat_map(|(g, l)| g.iter().map(move |v| -v / l.tau))
                .collect()
        };
        rk45(rhs, &flat0, t_end, opts)
            .into_iter()
            .map(|(t, y)| (t, split(&y)))
            .collect()
    }
}
