//! The learning rate from a base rate and the batch size (timm `train.py`, the recipe of paper 2):
//!
//! lr = lr_base · ratio, ratio = global batch / lr_base_size (`linear`) or its square root
//! (`sqrt`), global batch = batch size × gradient-accumulation steps.
//!
//! A recipe states its learning rate at a reference batch; a run at another batch keeps the
//! recipe only if the lr moves with it. An explicit `lr` is used as given.

use serde::{Deserialize, Serialize};

/// How the learning rate follows the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScale {
    /// lr ∝ batch (Goyal et al.; paper 2's 5e-4 · batch / 512).
    Linear,
    /// lr ∝ √batch.
    Sqrt,
}

impl LrScale {
    /// timm's default when `--lr-base-scale` is not given: `sqrt` for optimizers whose name
    /// holds "ada" or "lamb" (adaptive ones), else `linear`. imixer's optimizer is AdamW, so the
    /// default is `sqrt`.
    pub fn timm_default(optimizer: &str) -> Self {
        let name = optimizer.to_ascii_lowercase();
        if name.contains("ada") || name.contains("lamb") {
            LrScale::Sqrt
        } else {
            LrScale::Linear
        }
    }

    /// The learning rate for `global_batch` of a rule stated as `lr_base` at `base_size`
    /// (timm's arithmetic: the ratio first, then `** 0.5` for `sqrt`).
    pub fn lr(self, lr_base: f64, base_size: usize, global_batch: usize) -> f64 {
        let ratio = global_batch as f64 / base_size as f64;
        match self {
            LrScale::Linear => lr_base * ratio,
            LrScale::Sqrt => lr_base * ratio.powf(0.5),
        }
    }
}

impl std::fmt::Display for LrScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrScale::Linear => "linear",
            LrScale::Sqrt => "sqrt",
        })
    }
}

impl std::str::FromStr for LrScale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(LrScale::Linear),
            "sqrt" => Ok(LrScale::Sqrt),
            _ => Err(format!("lr base scale must be linear or sqrt, not {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_like_timm() {
        // Paper 2: 5e-4 at 512, linear; timm's own default base: 0.1 at 256.
        assert_eq!(LrScale::Linear.lr(5e-4, 512, 128), 1.25e-4);
        assert_eq!(LrScale::Linear.lr(5e-4, 512, 2048), 2e-3);
        assert_eq!(LrScale::Sqrt.lr(0.1, 256, 1024), 0.2);
        assert_eq!(LrScale::Sqrt.lr(1e-3, 128, 128), 1e-3);
        assert!((LrScale::Sqrt.lr(5e-3, 64, 32) - 5e-3 / 2f64.sqrt()).abs() < 1e-18);
        // AdamW is adaptive: timm picks sqrt for it, linear for SGD.
        assert_eq!(LrScale::timm_default("adamw"), LrScale::Sqrt);
        assert_eq!(LrScale::timm_default("lamb"), LrScale::Sqrt);
        assert_eq!(LrScale::timm_default("sgd"), LrScale::Linear);
        for s in [LrScale::Linear, LrScale::Sqrt] {
            assert_eq!(s.to_string().parse::<LrScale>(), Ok(s));
        }
        assert!("cubic".parse::<LrScale>().unwrap_err().contains("cubic"));
    }
}
