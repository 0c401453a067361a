//! Lagrangians L and activations g = ∇L (docs/models.md "Lagrangians and activations").

use serde::{Deserialize, Serialize};

/// exact erf (libm) for the f64 identities.
fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// Φ_GELU(x) = ¼(x² + (x² − 1)·erf(x/√2) + x·√(2/π)·e^{−x²/2}), with Φ′ = GELU.
pub fn phi_gelu(x: f64) -> f64 {
    0.25 * (x * x
        + (x * x - 1.0) * erf(x / std::f64::consts::SQRT_2)
        + x * (2.0 / std::f64::consts::PI).sqrt() * (-0.5 * x * x).exp())
}

/// GELU(x) = x·Φ(x) (exact erf form).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The Lagrangians of docs/models.md. Each acts on a whole layer state x ∈ ℝⁿ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Lagrangian {
    /// L = ½‖x‖², g = x.
    Identity,
    /// L = ½Σ max(x, 0)², g = ReLU(x).
    Relu,
    /// L = Σ Φ_GELU(x), g = GELU(x).
    Gelu,
    /// L = (1/β)·logsumexp(βx), g = softmax(βx).
    Softmax { beta: f64 },
    /// L = n·γ·sqrt(mean((x − x̄)²) + ε) + Σ δ·x, g = γ(x − x̄)/sqrt(var + ε) + δ: LayerNorm as
    /// a gradient. Per token it acts on D entries; the paper-2 joint norm on all N·D entries.
    LayerNorm { gamma: f64, delta: f64, eps: f64 },
}

impl Lagrangian {
    pub fn value(&self, x: &[f64]) -> f64 {
        match self {
            Lagrangian::Identity => 0.5 * x.iter().map(|v| v * v).sum::<f64>(),
            Lagrangian::Relu => 0.5 * x.iter().map(|v| v.max(0.0).powi(2)).sum::<f64>(),
            Lagrangian::Gelu => x.iter().map(|&v| phi_gelu(v)).sum(),
            Lagrangian::Softmax { beta } => {
                let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let s: f64 = x.iter().map(|&v| (beta * (v - m)).exp()).sum();
                m + s.ln() / beta
            }
            Lagrangian::LayerNorm { gamma, delta, eps } => {
                let n = x.len() as f64;
                let mean = x.iter().sum::<f64>() / n;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                n * gamma * (var + eps).sqrt() + delta * x.iter().sum::<f64>()
            }
        }
    }

    /// g = ∇L(x).
    pub fn activation(&self, x: &[f64]) -> Vec<f64> {
        match self {
            Lagrangian::Identity => x.to_vec(),
            Lagrangian::Relu => x.iter().map(|v| v.max(0.0)).collect(),
            Lagrangian::Gelu => x.iter().map(|&v| gelu(v)).collect(),
            Lagrangian::Softmax { beta } => {
                let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = x.iter().map(|&v| (beta * (v - m)).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|v| v / s).collect()
            }
            Lagrangian::LayerNorm { gamma, delta, eps } => {
                let n = x.len() as f64;
                let mean = x.iter().sum::<f64>() / n;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let r = 1.0 / (var + eps).sqrt();
                x.iter().map(|v| gamma * (v - mean) * r + delta).collect()
            }
        }
    }

    /// Hessian–vector product ∇²L(x)·v by central differences of the activation (the dynamics'
    /// energy-rate diagnostics only).
    pub fn hessian_vec(&self, x: &[f64], v: &[f64]) -> Vec<f64> {
        let h = 1e-6;
        let p: Vec<f64> = x.iter().zip(v).map(|(a, b)| a + h * b).collect();
        let m: Vec<f64> = x.iter().zip(v).map(|(a, b)| a - h * b).collect();
        self.activation(&p)
            .iter()
            .zip(self.activation(&m))
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect()
    }
}
