//! Registered model names, identical to the reference entry points, plus laptop-sized variants.
//!
//! Paper sizes (224×224): S = 8 blocks, D 512; B = 12, D 768; L = 24, D 1024; patch 16 or 32.
//! `_ni{2,3,4}` repeats each paper-2 block with shared weights; `asymmixer_s16_224_l<code>` sets λ.
//!
//! Small-image variants (patch 4), the sizes of the benchmark configs:
//! - `<family>_t4_28`: 28×28×1 (Fashion-MNIST/MNIST), D 128, 4 blocks (49 tokens);
//! - `<family>_n4_28`: 28×28×1, D 64, 4 blocks — the quick default of `imixer train`;
//! - `<family>_s4_32`: 32×32×3 (CIFAR), D 256, 8 blocks (64 tokens).

use crate::config::{Family, ModelConfig};

/// λ codes of the reference AsymMixer sweep.
pub const ASYM_LAMBDAS: [(&str, f64); 9] = [
    ("l10", 1.0),
    ("l01", 0.1),
    ("l02", 1e-2),
    ("l03", 1e-3),
    ("l035", 5e-4),
    ("l04", 1e-4),
    ("l05", 1e-5),
    ("l06", 1e-6),
    ("l00", 0.0),
];

/// (suffix, img_size, in_chans, patch, D, depth)
const SIZES: [(&str, usize, usize, usize, usize, usize); 9] = [
    ("s16_224", 224, 3, 16, 512, 8),
    ("s32_224", 224, 3, 32, 512, 8),
    ("b16_224", 224, 3, 16, 768, 12),
    ("b32_224", 224, 3, 32, 768, 12),
    ("l16_224", 224, 3, 16, 1024, 24),
    ("l32_224", 224, 3, 32, 1024, 24),
    ("t4_28", 28, 1, 4, 128, 4),
    ("n4_28", 28, 1, 4, 64, 4),
    ("s4_32", 32, 3, 4, 256, 8),
];

fn base(family: Family, size: &(&str, usize, usize, usize, usize, usize)) -> ModelConfig {
    ModelConfig {
        family,
        img_size: size.1,
        in_chans: size.2,
        patch_size: size.3,
        embed_dim: size.4,
        depth: size.5,
        lambda: if family == Family::AsymMixer {
            0.1
        } else {
            0.0
        },
        ..ModelConfig::default()
    }
}

/// Every registered name with its configuration (10 classes), in a stable order.
pub fn all() -> Vec<(String, ModelConfig)> {
    let mut out = Vec::new();
    for family in Family::ALL {
        for size in &SIZES {
            let cfg = base(family, size);
            out.push((format!("{family}_{}", size.0), cfg.clone()));
            if family.is_paper2() && family != Family::AsymMixer {
                for ni in 2..=4 {
                    out.push((
                        format!("{family}_{}_ni{ni}", size.0),
                        ModelConfig {
                            n_iter: ni,
                            ..cfg.clone()
                        },
                    ));
                }
            }
        }
    }
    let s16 = base(Family::AsymMixer, &SIZES[0]);
    for (code, lambda) in ASYM_LAMBDAS {
        out.push((
            format!("asymmixer_s16_224_{code}"),
            ModelConfig {
                lambda,
                ..s16.clone()
            },
        ));
    }
    out
}

/// The configuration of a registered name, or an error listing similar names.
pub fn lookup(name: &str) -> Result<ModelConfig, String> {
    let all = all();
    if let Some((_, cfg)) = all.iter().find(|(n, _)| n == name) {
        return Ok(cfg.clone());
    }
    let prefix = name.split('_').next().unwrap_or(name);
    let similar: Vec<&str> = all
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with(prefix))
        .take(12)
        .collect();
    let hint = if similar.is_empty() {
        "run `imixer models` for the list".to_string()
    } else {
        format!(
            "similar: {} … (`imixer models` lists all)",
            similar.join(", ")
        )
    };
    Err(format!("unknown model name '{name}'; {hint}"))
}
