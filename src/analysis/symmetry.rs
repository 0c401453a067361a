//! Weight symmetry of an MLP x ↦ W_out·φ(W_in·x).
//!
//! Such an MLP is the gradient of an energy (−∇ of −Σ Φ(W_in x), paper 2) exactly when
//! W_out = W_inᵀ; up to a positive scale it still is. We report, per MLP,
//!
//! - `cosine` = ⟨W_out, W_inᵀ⟩ / (‖W_out‖‖W_in‖) ∈ [−1, 1]: 1 for SymMixer (tied weights),
//!   ≈ 0 for independent random weights, negative for an anti-aligned configuration;
//! - `antisymmetric_ratio` = ‖Â − B̂‖ / ‖Â + B̂‖ with Â = W_out/‖W_out‖, B̂ = W_inᵀ/‖W_in‖: the
//!   relative norm of the antisymmetric part of the normalised pair (0 symmetric, 1 orthogonal,
//!   ∞ anti-symmetric); it equals sqrt((1 − cos)/(1 + cos)).
//!
//! W_out is the map the block applies: `fc2.weight` for Mixer/vMlp, Wᵀ for SymMixer (so cos = 1),
//! W1ᵀ + W2 for AsymMixer (h W1 + h W2ᵀ). These make "trained vanilla Mixers acquire a
//! symmetry-breaking configuration" checkable on real checkpoints.

use candle_core::{DType, Result, Tensor};
use serde::Serialize;

use crate::models::AnyMlp;

#[derive(Clone, Debug, Serialize)]
pub struct SymmetryReport {
    pub module: String,
    pub cosine: f64,
    pub antisymmetric_ratio: f64,
}

fn frob(t: &Tensor) -> Result<f64> {
    t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()
}

/// (W_in (hidden, in), W_out (in, hidden)) of an MLP, in f64.
pub fn in_out_weights(mlp: &AnyMlp) -> Result<(Tensor, Tensor)> {
    let f = |t: &Tensor| t.to_dtype(DType::F64);
    Ok(match mlp {
        AnyMlp::Plain(m) => (f(m.fc1.weight.as_tensor())?, f(m.fc2.weight.as_tensor())?),
        AnyMlp::Sym(m) => (f(m.weight.as_tensor())?, f(m.weight.as_tensor())?.t()?),
        AnyMlp::Asym(m) => {
            let w1 = f(m.fc1.weight.as_tensor())?;
            let w_out = (w1.t()? + f(m.fc2.weight.as_tensor())?)?;
            (w1, w_out)
        }
        AnyMlp::Implicit(m) => (f(m.fc1.weight.as_tensor())?, f(m.fc2.weight.as_tensor())?),
    })
}

pub fn symmetry(module: &str, mlp: &AnyMlp) -> Result<SymmetryReport> {
    let (w_in, w_out) = in_out_weights(mlp)?;
    let b = w_in.t()?;
    let (na, nb) = (frob(&w_out)?, frob(&b)?);
    let cosine = (&w_out * &b)?.sum_all()?.to_scalar::<f64>()? / (na * nb).max(1e-300);
    let (a_hat, b_hat) = ((&w_out / na)?, (&b / nb)?);
    let ratio = frob(&(&a_hat - &b_hat)?)? / frob(&(&a_hat + &b_hat)?)?.max(1e-300);
    Ok(SymmetryReport {
        module: module.to_string(),
        cosine,
        antisymmetric_ratio: ratio,
    })
}

/// Block-averaged weight symmetry of a whole model: what `metrics.jsonl` records after every
/// epoch, so that a run shows how symmetry moves during training (paper 2 reports that vanilla
/// Mixers acquire a symmetry-breaking configuration; a sweep can test it at any size).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SymmetrySummary {
    /// Mean over blocks of the token MLPs' `cosine` (absent when no token MLP has a square
    /// W_out·W_in pairing, e.g. an iMLP with hidden_ratio ≠ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_cosine: Option<f64>,
    /// Mean over blocks of the channel MLPs' `cosine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_cosine: Option<f64>,
    /// AsymMixer: mean over every MLP of ‖W2‖_F / ‖W1‖_F, the size of the symmetry-breaking
    /// weight relative to the symmetric one (the quantity λ‖W2‖² pushes down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w2_w1_ratio: Option<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// [`SymmetrySummary`] of a model's blocks.
pub fn summary(net: &crate::models::MixerNet) -> Result<SymmetrySummary> {
    let (mut tok, mut ch, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for block in &net.blocks {
        let (t, c) = block.mlps();
        for (mlp, out) in [(t, &mut tok), (c, &mut ch)] {
            let (w_in, w_out) = in_out_weights(mlp)?;
            // The cosine needs W_out and W_inᵀ of one shape; an iMLP's inner width can differ.
            if w_out.dims() == w_in.t()?.dims() {
                out.push(symmetry("", mlp)?.cosine);
            }
            if let AnyMlp::Asym(m) = mlp {
                let w1 = frob(&m.fc1.weight.as_tensor().to_dtype(DType::F64)?)?;
                let w2 = frob(&m.fc2.weight.as_tensor().to_dtype(DType::F64)?)?;
                ratio.push(w2 / w1.max(1e-300));
            }
        }
    }
    Ok(SymmetrySummary {
        token_cosine: mean(&tok),
        channel_cosine: mean(&ch),
        w2_w1_ratio: mean(&ratio),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::{Family, ModelConfig};
    use crate::models::MixerNet;

    fn net(family: Family) -> MixerNet {
        let cfg = ModelConfig {
            family,
            img_size: 8,
            in_chans: 1,
            patch_size: 2,
            embed_dim: 16,
            depth: 2,
            lambda: if family == Family::AsymMixer {
                0.1
            } else {
                0.0
            },
            ..ModelConfig::default()
        };
        MixerNet::new(&cfg, 3, &Device::Cpu).unwrap()
    }

    #[test]
    fn tied_weights_are_symmetric_and_independent_ones_are_not() {
        let sym = summary(&net(Family::SymMixer)).unwrap();
        assert!((sym.token_cosine.unwrap() - 1.0).abs() < 1e-12, "{sym:?}");
        assert!((sym.channel_cosine.unwrap() - 1.0).abs() < 1e-12, "{sym:?}");
        assert_eq!(sym.w2_w1_ratio, None);
        // Independently initialised W_in and W_out: near 0, far from 1.
        let mixer = summary(&net(Family::Mixer)).unwrap();
        assert!(mixer.token_cosine.unwrap().abs() < 0.3, "{mixer:?}");
        assert!(mixer.channel_cosine.unwrap().abs() < 0.3, "{mixer:?}");
        // AsymMixer: W_out = W1ᵀ + W2, with W2 of about W1's size at initialisation.
        let asym = summary(&net(Family::AsymMixer)).unwrap();
        let r = asym.w2_w1_ratio.unwrap();
        assert!(r > 0.2 && r < 5.0, "{asym:?}");
        let c = asym.token_cosine.unwrap();
        assert!(c > 0.3 && c < 0.99, "{asym:?}");
    }
}
