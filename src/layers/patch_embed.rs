//! The stem: Conv2d(C, D, kernel = stride = p) with bias, flattened to tokens (B, N, D).
//!
//! A conv whose kernel equals its stride sees disjoint patches, so it is exactly one matmul of the
//! flattened patches (B·N, C·p·p) with the flattened kernel (D, C·p·p)ᵀ; the token index is
//! row-major over the patch grid, as `flatten(2).transpose(1, 2)` in the reference.

use candle_core::{Result, Tensor, Var};

use super::linear_epilogue::linear_epilogue;
use crate::params::Scope;

#[derive(Clone, Debug)]
pub struct PatchEmbed {
    /// `stem.proj.weight` (D, C, p, p).
    pub weight: Var,
    /// `stem.proj.bias` (D).
    pub bias: Var,
    pub patch: usize,
    pub in_chans: usize,
    pub img_size: usize,
}

impl PatchEmbed {
    pub fn new(
        scope: &Scope,
        in_chans: usize,
        dim: usize,
        patch: usize,
        img_size: usize,
    ) -> Result<Self> {
        let s = scope.sub("proj");
        let weight = s.lecun_normal("weight", &[dim, in_chans, patch, patch])?;
        let bias = s.zeros("bias", &[dim])?;
        Ok(Self {
            weight,
            bias,
            patch,
            in_chans,
            img_size,
        })
    }

    /// (B, C, H, W) images → (B, N, D) tokens.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "model input must be (batch, channels, height, width), got {:?}",
                x.shape()
            ))
        })?;
        if c != self.in_chans || h != self.img_size || w != self.img_size {
            candle_core::bail!(
                "model expects images of shape (B, {}, {}, {}), got {:?}",
                self.in_chans,
                self.img_size,
                self.img_size,
                x.shape()
            );
        }
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let dim = self.weight.dim(0)?;
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let kernel = self.weight.reshape((dim, c * p * p))?;
        // The bias in the matmul's epilogue: its gradient is a parallel column sum, not
        // candle's strided reduction of a broadcast add.
        linear_epilogue(&patches, &kernel, Some(self.bias.as_tensor()), None)?.reshape((
            b,
            gh * gw,
            dim,
        ))
    }
}
