//! One block per family (docs/models.md "Blocks per family"), with g = LayerNorm(x):
//!
//! - serial (`mixer`, `imixer`, `vanillamixer`): x += tok(g₁ᵀ)ᵀ; x += ch(g₂)
//! - parallel (`paramixer`, `symmixer`, `asymmixer`): g = LN_{N,D}(x); x += tok(gᵀ)ᵀ + ch(g)
//!
//! Paper-2 blocks repeat `n_iter` times with shared weights; every repeat and every parallel branch
//! draws its own drop-path mask.

use candle_core::{Result, Tensor};

use super::imlp::IMlp;
use super::mlp::{AnyMlp, AsymMlp, Mlp, SymMlp};
use crate::config::{Family, ModelConfig};
use crate::layers::{
    add_residual_branch, add_transposed, drop_path, transpose12, Emit, Epilogue, ForwardCtx,
    LayerNorm,
};
use crate::params::Scope;

#[derive(Clone, Debug)]
pub enum Block {
    Serial(SerialBlock),
    Parallel(ParallelBlock),
}

#[derive(Clone, Debug)]
pub struct SerialBlock {
    pub norm1: LayerNorm,
    pub mlp_tokens: AnyMlp,
    pub norm2: LayerNorm,
    pub mlp_channels: AnyMlp,
    pub n_iter: usize,
    pub drop_path: f64,
}

#[derive(Clone, Debug)]
pub struct ParallelBlock {
    pub norm: LayerNorm,
    pub mlp_tokens: AnyMlp,
    pub mlp_channels: AnyMlp,
    pub n_iter: usize,
    pub drop_path: f64,
}

impl Block {
    pub fn new(scope: &Scope, cfg: &ModelConfig) -> Result<Self> {
        let (n, d) = (cfg.num_tokens(), cfg.embed_dim);
        let (dt, dc) = (cfg.tokens_dim(), cfg.channels_dim());
        // Per-token LayerNorm(D) for the timm families, joint LayerNorm((N, D)) for paper 2.
        let ln_shape: Vec<usize> = if cfg.family.is_paper2() {
            vec![n, d]
        } else {
            vec![d]
        };
        let dp = cfg.drop_path;
        Ok(match cfg.family {
            Family::Mixer | Family::IMixer | Family::VanillaMixer => {
                let bias = cfg.family != Family::VanillaMixer;
                let norm1 = LayerNorm::new(&scope.sub("norm1"), &ln_shape)?;
                let mlp_tokens = if cfg.family == Family::IMixer {
                    AnyMlp::Implicit(Box::new(IMlp::new(
                        &scope.sub("mlp_tokens"),
                        n,
                        dt,
                        &cfg.imixer,
                    )?))
                } else {
                    AnyMlp::Plain(Mlp::new(&scope.sub("mlp_tokens"), n, dt, bias)?)
                };
                let norm2 = LayerNorm::new(&scope.sub("norm2"), &ln_shape)?;
                let mlp_channels =
                    AnyMlp::Plain(Mlp::new(&scope.sub("mlp_channels"), d, dc, bias)?);
                Block::Serial(SerialBlock {
                    norm1,
                    mlp_tokens,
                    norm2,
                    mlp_channels,
                    n_iter: cfg.n_iter,
                    drop_path: dp,
                })
            }
            Family::ParaMixer | Family::SymMixer | Family::AsymMixer => {
                let norm = LayerNorm::new(&scope.sub("norm"), &ln_shape)?;
                let make = |name: &str, dim: usize, hidden: usize| -> Result<AnyMlp> {
                    let s = scope.sub(name);
                    Ok(match cfg.family {
                        Family::ParaMixer => AnyMlp::Plain(Mlp::new(&s, dim, hidden, false)?),
                        Family::SymMixer => AnyMlp::Sym(SymMlp::new(&s, dim, hidden)?),
                        _ => AnyMlp::Asym(AsymMlp::new(&s, dim, hidden)?),
                    })
                };
                let mlp_tokens = make("mlp_tokens", n, dt)?;
                let mlp_channels = make("mlp_channels", d, dc)?;
                Block::Parallel(ParallelBlock {
                    norm,
                    mlp_tokens,
                    mlp_channels,
                    n_iter: cfg.n_iter,
                    drop_path: dp,
                })
            }
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match self {
            Block::Serial(b) => b.forward(x, ctx),
            Block::Parallel(b) => b.forward(x, ctx),
        }
    }

    /// The two MLPs (token, channel).
    pub fn mlps(&self) -> (&AnyMlp, &AnyMlp) {
        match self {
            Block::Serial(b) => (&b.mlp_tokens, &b.mlp_channels),
            Block::Parallel(b) => (&b.mlp_tokens, &b.mlp_channels),
        }
    }
}

impl SerialBlock {
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut x = x.clone();
        for _ in 0..self.n_iter {
            // The token MLP runs on LN(x)ᵀ (B, D, N); its output is added back transposed.
            let g1t = self.norm1.forward(&x, Emit::Transposed)?;
            let t = self.mlp_tokens.forward(&g1t, Epilogue::None, ctx)?;
            x = add_transposed(&x, &drop_path(&t, self.drop_path, ctx)?)?;
            let g2 = self.norm2.forward(&x, Emit::AsIs)?;
            x = add_residual_branch(&x, self.drop_path, ctx, |then, ctx| {
                self.mlp_channels.forward(&g2, then, ctx)
            })?;
        }
        Ok(x)
    }
}

impl ParallelBlock {
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut x = x.clone();
        for _ in 0..self.n_iter {
            let g = self.norm.forward(&x, Emit::AsIs)?;
            // g feeds both branches, so the token branch transposes it (one parallel pass).
            let t = self
                .mlp_tokens
                .forward(&transpose12(&g)?, Epilogue::None, ctx)?;
            let x_t = add_transposed(&x, &drop_path(&t, self.drop_path, ctx)?)?;
            x = add_residual_branch(&x_t, self.drop_path, ctx, |then, ctx| {
                self.mlp_channels.forward(&g, then, ctx)
            })?;
        }
        Ok(x)
    }
}
