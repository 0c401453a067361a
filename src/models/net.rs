//! The network of every family: stem → blocks → LayerNorm(D) → mean over tokens → head.

use candle_core::{DType, Device, Result, Tensor};

use super::blocks::Block;
use crate::config::ModelConfig;
use crate::layers::{mean_tokens, Emit, Epilogue, ForwardCtx, LayerNorm, Linear, PatchEmbed};
use crate::params::{Builder, ParamStore};

#[derive(Clone, Debug)]
pub struct MixerNet {
    pub config: ModelConfig,
    pub params: ParamStore,
    pub stem: PatchEmbed,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
}

impl MixerNet {
    /// A freshly initialised f32 model (timm init, every draw from `seed`).
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::with_dtype(config, seed, DType::F32, device)
    }

    pub fn with_dtype(
        config: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let builder = Builder::new(seed, dtype, device);
        let root = builder.root();
        let stem = PatchEmbed::new(
            &root.sub("stem"),
            config.in_chans,
            config.embed_dim,
            config.patch_size,
            config.img_size,
        )?;
        let blocks = (0..config.depth)
            .map(|i| Block::new(&root.sub("blocks").sub(i), config))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&root.sub("norm"), &[config.embed_dim])?;
        // timm zero-initialises the head (weight and bias).
        let head_scope = root.sub("head");
        let head = Linear {
            weight: head_scope.zeros("weight", &[config.num_classes, config.embed_dim])?,
            bias: Some(head_scope.zeros("bias", &[config.num_classes])?),
        };
        let params = builder.finish();
        Ok(Self {
            config: config.clone(),
            params,
            stem,
            blocks,
            norm,
            head,
        })
    }

    pub fn device(&self) -> &Device {
        self.head.weight.device()
    }

    pub fn dtype(&self) -> DType {
        self.head.weight.dtype()
    }

    /// Inference: the eval-mode forward with no backward graph recorded
    /// (`candle_core::backprop::no_grad`, a patch of the vendored candle-core), so each
    /// intermediate activation is freed as soon as the next op has consumed it — lower peak
    /// memory and warm, reused buffers instead of a fresh allocation per op.
    /// The σ̂ of this forward is committed, as the reference's eval forward records it.
    pub fn infer(&self, images: &Tensor) -> Result<Tensor> {
        let mut ctx = ForwardCtx::eval();
        let logits = candle_core::backprop::no_grad(|| self.forward(images, &mut ctx))?;
        ctx.sn.commit()?;
        Ok(logits)
    }

    /// (B, C, H, W) images → (B, classes) logits. The model is not written: the spectral-norm
    /// buffers the forward advanced are in `ctx.sn`, and `ctx.sn.commit()` stores them (the
    /// training step does, once per step; see `layers::sn_state`).
    pub fn forward(&self, images: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut x = self.stem.forward(images)?;
        ctx.record("stem", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, ctx)?;
            ctx.record(format!("blocks.{i}"), &x);
        }
        let x = self.norm.forward(&x, Emit::AsIs)?;
        ctx.record("norm", &x);
        self.head.forward(&mean_tokens(&x)?, Epilogue::None)
    }

    /// The name of the first parameter or buffer holding a NaN or ±∞, if any: checked before a
    /// checkpoint is written or after one is loaded, so that broken weights are named, not kept.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        for e in self.params.entries() {
            let values = e
                .var
                .as_tensor()
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(Some(e.name.clone()));
            }
        }
        Ok(None)
    }

    /// AsymMixer's symmetry-breaking penalty λ·Σ_blocks(‖tok.fc2.W‖² + ‖ch.fc2.W‖²) (no ½);
    /// `None` when λ = 0 (the reference skips the term).
    pub fn regularizer(&self) -> Result<Option<Tensor>> {
        if self.config.lambda == 0.0 {
            return Ok(None);
        }
        let mut total: Option<Tensor> = None;
        for block in &self.blocks {
            let (t, c) = block.mlps();
            for w in [t.fc2_weight(), c.fc2_weight()].into_iter().flatten() {
                let s = w.as_tensor().sqr()?.sum_all()?;
                total = Some(match total {
                    Some(acc) => (acc + s)?,
                    None => s,
                });
            }
        }
        total.map(|t| t * self.config.lambda).transpose()
    }

    /// Mean cross-entropy against hard labels (+ the λ term): returns (loss, ce, reg).
    pub fn loss(
        &self,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let ce = candle_nn::loss::cross_entropy(logits, labels)?;
        self.add_regularizer(ce)
    }

    /// Mean soft-target cross-entropy −Σ t·log softmax(z) (Mixup/CutMix, label smoothing).
    pub fn soft_loss(
        &self,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let logp = candle_nn::ops::log_softmax(logits, 1)?;
        let ce = (targets * logp)?.sum(1)?.neg()?.mean_all()?;
        self.add_regularizer(ce)
    }

    fn add_regularizer(&self, ce: Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        match self.regularizer()? {
            Some(r) => Ok(((&ce + &r)?, ce, Some(r))),
            None => Ok((ce.clone(), ce, None)),
        }
    }
}
