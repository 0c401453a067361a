//! The model configuration: every architectural knob of docs/models.md, serialisable (TOML/JSON)
//! so a run directory or checkpoint fully describes its model, and settable without a registry
//! name.

use serde::{Deserialize, Serialize};

/// The six model families (docs/models.md "Blocks per family").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// timm MLP-Mixer: per-token LayerNorm(D), MLPs with biases.
    Mixer,
    /// Paper-2 baseline: serial Mixer with joint (N, D) LayerNorm and bias-free MLPs.
    VanillaMixer,
    /// iMixer: the token MLP is the implicit iMLP (1 − F)⁻¹.
    IMixer,
    /// One joint LayerNorm, token and channel mixing in parallel.
    ParaMixer,
    /// ParaMixer with tied MLP weights (one Hopfield update = −∇E).
    SymMixer,
    /// SymMixer plus a symmetry-breaking W2 penalised by λ‖W2‖².
    AsymMixer,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Mixer,
        Family::VanillaMixer,
        Family::IMixer,
        Family::ParaMixer,
        Family::SymMixer,
        Family::AsymMixer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Mixer => "mixer",
            Family::VanillaMixer => "vanillamixer",
            Family::IMixer => "imixer",
            Family::ParaMixer => "paramixer",
            Family::SymMixer => "symmixer",
            Family::AsymMixer => "asymmixer",
        }
    }

    /// Paper-2 families (joint (N, D) LayerNorm, no MLP biases, `n_iter` block repeats, λ term).
    pub fn is_paper2(self) -> bool {
        matches!(
            self,
            Family::VanillaMixer | Family::ParaMixer | Family::SymMixer | Family::AsymMixer
        )
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown model family '{s}' (expected one of: {})",
                    all.join(", ")
                )
            })
    }
}

/// How the iMLP approximates its fixed point x = y + F(x).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Solver {
    /// The reference: exactly `n_iter` Picard steps, backpropagated through (golden-exact).
    #[default]
    Unrolled,
    /// Picard iteration to `tol` (relative residual), at most `max_iter` steps; implicit gradient.
    Picard { tol: f64, max_iter: usize },
    /// Anderson acceleration with memory `m`; implicit gradient.
    Anderson { m: usize, tol: f64, max_iter: usize },
}

impl Solver {
    /// The solver named on a command line (`unrolled`, `picard`, `anderson`) with its knobs.
    pub fn from_name(name: &str, tol: f64, max_iter: usize, m: usize) -> Result<Self, String> {
        match name {
            "unrolled" => Ok(Solver::Unrolled),
            "picard" => Ok(Solver::Picard { tol, max_iter }),
            "anderson" => Ok(Solver::Anderson { m, tol, max_iter }),
            other => Err(format!(
                "unknown solver '{other}': use unrolled, picard or anderson"
            )),
        }
    }
}

/// iMixer's iMLP knobs (reference flags `--h_ratio --n_power --n_iter`, coefficient c).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IMixerConfig {
    /// Inner width of F relative to the token hidden width: N2 = int(N1 · hidden_ratio).
    pub hidden_ratio: f64,
    /// Fixed-point steps (the reference's `n_repeat`).
    pub n_iter: usize,
    /// Power-iteration steps per spectral-norm call in training.
    pub n_power: usize,
    /// Soft spectral-norm bound c.
    pub coeff: f64,
    pub solver: Solver,
}

impl Default for IMixerConfig {
    /// The paper recipe: hidden_ratio 2, n_power 8, n_iter 2, c = 0.9.
    fn default() -> Self {
        Self {
            hidden_ratio: 2.0,
            n_iter: 2,
            n_power: 8,
            coeff: 0.9,
            solver: Solver::Unrolled,
        }
    }
}

/// A complete model description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub family: Family,
    pub img_size: usize,
    pub in_chans: usize,
    pub patch_size: usize,
    /// D, the channel width of the tokens.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    pub num_classes: usize,
    /// (token, channel) MLP ratios: hidden widths int(r·D).
    pub mlp_ratio: (f64, f64),
    /// Drop-path rate, the same in every block.
    pub drop_path: f64,
    /// iMixer only.
    pub imixer: IMixerConfig,
    /// Paper-2 only: repeats of each block with shared weights.
    pub n_iter: usize,
    /// AsymMixer's λ (paper-2 families only; 0 disables the term).
    pub lambda: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            family: Family::Mixer,
            img_size: 224,
            in_chans: 3,
            patch_size: 16,
            embed_dim: 512,
            depth: 8,
            num_classes: 10,
            mlp_ratio: (0.5, 4.0),
            drop_path: 0.0,
            imixer: IMixerConfig::default(),
            n_iter: 1,
            lambda: 0.0,
        }
    }
}

impl ModelConfig {
    pub fn num_tokens(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Token-MLP hidden width int(r_t · D) (N1 of the iMLP).
    pub fn tokens_dim(&self) -> usize {
        (self.mlp_ratio.0 * self.embed_dim as f64) as usize
    }

    /// Channel-MLP hidden width int(r_c · D).
    pub fn channels_dim(&self) -> usize {
        (self.mlp_ratio.1 * self.embed_dim as f64) as usize
    }

    /// iMLP inner width N2 = int(N1 · hidden_ratio).
    pub fn imlp_inner_dim(&self) -> usize {
        (self.tokens_dim() as f64 * self.imixer.hidden_ratio) as usize
    }

    /// Checks every knob; the message says which one is wrong and what is allowed.
    ///
    /// Besides the structural rules every size has a ceiling ([`limits`]) and the whole model a
    /// parameter budget ([`limits::max_params`]), so that a configuration read from a file (a
    /// checkpoint's metadata, a TOML config) can never make the model builder allocate without
    /// bound.
    pub fn validate(&self) -> Result<(), String> {
        self.check_limits()?;
        let pos = [
            ("img_size", self.img_size),
            ("in_chans", self.in_chans),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_classes", self.num_classes),
            ("n_iter", self.n_iter),
        ];
        for (name, v) in pos {
            if v == 0 {
                return Err(format!("model config: {name} must be positive"));
            }
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "model config: patch_size {} does not divide img_size {}",
                self.patch_size, self.img_size
            ));
        }
        if self.tokens_dim() == 0 || self.channels_dim() == 0 {
            return Err(format!(
                "model config: mlp_ratio {:?} gives an empty hidden layer",
                self.mlp_ratio
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(format!(
                "model config: drop_path {} must be in [0, 1)",
                self.drop_path
            ));
        }
        if self.lambda != 0.0 && !self.family.is_paper2() {
            return Err(format!(
                "model config: lambda applies to paper-2 families only, not {}",
                self.family
            ));
        }
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return Err(format!(
                "model config: lambda {} must be finite and ≥ 0",
                self.lambda
            ));
        }
        if self.n_iter != 1 && !self.family.is_paper2() {
            return Err("model config: n_iter (block repeats) applies to paper-2 families; for imixer set imixer.n_iter".into());
        }
        if self.family == Family::IMixer {
            let c = &self.imixer;
            if c.n_iter == 0 || c.hidden_ratio <= 0.0 || self.imlp_inner_dim() == 0 {
                return Err("model config: imixer needs n_iter ≥ 1 and hidden_ratio > 0".into());
            }
            if !c.coeff.is_finite() || c.coeff <= 0.0 {
                return Err(format!(
                    "model config: imixer.coeff {} must be finite and > 0",
                    c.coeff
                ));
            }
            c.solver.validate()?;
        }
        let params = self.num_params();
        let budget = limits::max_params()?;
        if params > budget {
            return Err(format!(
                "model config: {params} parameters exceed the budget of {budget} (set {}=N to raise it)",
                limits::MAX_PARAMS_ENV
            ));
        }
        Ok(())
    }

    /// Trainable parameter count of a configuration, without allocating the model (L/16 has
    /// 232 M). Cross-checked against built models in the tests. Here, not in `models`, so that
    /// [`Self::validate`] can bound it without the configuration depending on the model code.
    pub fn num_params(&self) -> usize {
        use Family::*;
        let cfg = self;
        let (n, d, k) = (cfg.num_tokens(), cfg.embed_dim, cfg.num_classes);
        let (dt, dc, p) = (cfg.tokens_dim(), cfg.channels_dim(), cfg.patch_size);
        let mlp = |dim: usize, hidden: usize, bias: bool| {
            2 * dim * hidden + if bias { hidden + dim } else { 0 }
        };
        let block = match cfg.family {
            Mixer => 4 * d + mlp(n, dt, true) + mlp(d, dc, true),
            IMixer => {
                let dh = cfg.imlp_inner_dim();
                4 * d + mlp(n, dt, true) + mlp(dt, dh, true) + mlp(d, dc, true)
            }
            VanillaMixer => 4 * n * d + mlp(n, dt, false) + mlp(d, dc, false),
            ParaMixer | AsymMixer => 2 * n * d + mlp(n, dt, false) + mlp(d, dc, false),
            SymMixer => 2 * n * d + n * dt + d * dc,
        };
        d * cfg.in_chans * p * p + d + cfg.depth * block + 2 * d + d * k + k
    }

    /// The per-knob ceilings of [`limits`]: every size finite and small enough that the
    /// parameter count cannot overflow.
    fn check_limits(&self) -> Result<(), String> {
        use limits::*;
        let caps = [
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("in_chans", self.in_chans, MAX_IN_CHANS),
            ("patch_size", self.patch_size, MAX_IMG_SIZE),
            ("embed_dim", self.embed_dim, MAX_EMBED_DIM),
            ("depth", self.depth, MAX_DEPTH),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("n_iter", self.n_iter, MAX_ITER),
            ("imixer.n_iter", self.imixer.n_iter, MAX_ITER),
            ("imixer.n_power", self.imixer.n_power, MAX_ITER),
        ];
        for (name, v, cap) in caps {
            if v > cap {
                return Err(format!(
                    "model config: {name} = {v} exceeds the limit {cap} (docs/guarantees.md)"
                ));
            }
        }
        let ratios = [
            ("mlp_ratio.0", self.mlp_ratio.0),
            ("mlp_ratio.1", self.mlp_ratio.1),
            ("imixer.hidden_ratio", self.imixer.hidden_ratio),
        ];
        for (name, r) in ratios {
            if !r.is_finite() || r <= 0.0 || r > MAX_RATIO {
                return Err(format!(
                    "model config: {name} = {r} must be in (0, {MAX_RATIO}]"
                ));
            }
        }
        if !self.drop_path.is_finite() {
            return Err(format!(
                "model config: drop_path {} must be in [0, 1)",
                self.drop_path
            ));
        }
        Ok(())
    }
}

impl Solver {
    /// Picard/Anderson knobs: a finite positive tolerance, at least one iteration and (Anderson)
    /// a memory of at least one step.
    pub fn validate(&self) -> Result<(), String> {
        let (tol, max_iter) = match *self {
            Solver::Unrolled => return Ok(()),
            Solver::Picard { tol, max_iter } => (tol, max_iter),
            Solver::Anderson { m, tol, max_iter } => {
                if m == 0 || m > limits::MAX_ANDERSON_M {
                    return Err(format!(
                        "solver: anderson memory m = {m} must be in 1..={} (--anderson-m)",
                        limits::MAX_ANDERSON_M
                    ));
                }
                (tol, max_iter)
            }
        };
        if !tol.is_finite() || tol <= 0.0 {
            return Err(format!(
                "solver: tolerance {tol} must be finite and > 0 (--solver-tol)"
            ));
        }
        if max_iter == 0 || max_iter > limits::MAX_SOLVER_ITER {
            return Err(format!(
                "solver: max_iter = {max_iter} must be in 1..={} (--solver-max-iter)",
                limits::MAX_SOLVER_ITER
            ));
        }
        Ok(())
    }
}

/// Ceilings on the model configuration (docs/guarantees.md). The per-knob caps are far above any
/// registered model (the largest, L/16, has D 1024 and 24 blocks) and keep the size arithmetic
/// exact; the parameter budget is what binds in practice and can be raised.
pub mod limits {
    pub const MAX_IMG_SIZE: usize = 4096;
    pub const MAX_IN_CHANS: usize = 64;
    pub const MAX_EMBED_DIM: usize = 65536;
    pub const MAX_DEPTH: usize = 1024;
    pub const MAX_CLASSES: usize = 1 << 20;
    /// Block repeats, fixed-point steps and power iterations.
    pub const MAX_ITER: usize = 1000;
    /// MLP and iMLP width ratios.
    pub const MAX_RATIO: f64 = 64.0;
    pub const MAX_ANDERSON_M: usize = 100;
    pub const MAX_SOLVER_ITER: usize = 100_000;
    /// Default parameter budget: 2³¹ (8 GiB of f32 weights, 4× the largest registered model
    /// with its optimizer moments still fitting a large machine).
    pub const DEFAULT_MAX_PARAMS: usize = 1 << 31;
    /// Environment variable that raises (or lowers) the parameter budget.
    pub const MAX_PARAMS_ENV: &str = "IMIXER_MAX_PARAMS";

    /// The parameter budget: `IMIXER_MAX_PARAMS` when set, else [`DEFAULT_MAX_PARAMS`].
    pub fn max_params() -> Result<usize, String> {
        match std::env::var(MAX_PARAMS_ENV) {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("{MAX_PARAMS_ENV}={v:?} is not a whole number of parameters")),
            Err(_) => Ok(DEFAULT_MAX_PARAMS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
            img_size: 28,
            in_chans: 1,
            patch_size: 7,
            embed_dim: 32,
            depth: 2,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_built() {
        assert_eq!(small().validate(), Ok(()));
        for (cfg, knob) in [
            (
                ModelConfig {
                    embed_dim: 100_000_000,
                    ..small()
                },
                "embed_dim",
            ),
            (
                ModelConfig {
                    depth: 10_000_000,
                    ..small()
                },
                "depth",
            ),
            (
                ModelConfig {
                    mlp_ratio: (f64::INFINITY, 4.0),
                    ..small()
                },
                "mlp_ratio.0",
            ),
            (
                ModelConfig {
                    drop_path: f64::NAN,
                    ..small()
                },
                "drop_path",
            ),
        ] {
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(knob), "{err}");
        }
        // Within every per-knob cap but far over the parameter budget.
        let huge = ModelConfig {
            embed_dim: 60_000,
            depth: 1000,
            ..small()
        };
        let err = huge.validate().unwrap_err();
        assert!(
            err.contains("parameters") && err.contains(limits::MAX_PARAMS_ENV),
            "{err}"
        );
    }

    #[test]
    fn solver_knobs_must_be_usable() {
        let imixer = |solver| ModelConfig {
            family: Family::IMixer,
            imixer: IMixerConfig {
                solver,
                ..IMixerConfig::default()
            },
            ..small()
        };
        for (solver, flag) in [
            (Solver::from_name("picard", f64::NAN, 30, 5), "--solver-tol"),
            (Solver::from_name("picard", -1.0, 30, 5), "--solver-tol"),
            (Solver::from_name("anderson", 1e-4, 30, 0), "--anderson-m"),
            (
                Solver::from_name("anderson", 1e-4, 0, 5),
                "--solver-max-iter",
            ),
        ] {
            let err = imixer(solver.unwrap()).validate().unwrap_err();
            assert!(err.contains(flag), "{err}");
        }
        let good = Solver::from_name("anderson", 1e-4, 30, 5).unwrap();
        assert_eq!(imixer(good).validate(), Ok(()));
    }

    #[test]
    fn unknown_nested_keys_are_errors() {
        let json = serde_json::to_value(small()).unwrap();
        let mut typo = json.clone();
        typo["embed_dimm"] = 64.into();
        assert!(serde_json::from_value::<ModelConfig>(typo).is_err());
        let mut typo = json.clone();
        typo["imixer"]["n_iterr"] = 3.into();
        assert!(serde_json::from_value::<ModelConfig>(typo).is_err());
        assert_eq!(
            serde_json::from_value::<ModelConfig>(json).unwrap(),
            small()
        );
    }
}
