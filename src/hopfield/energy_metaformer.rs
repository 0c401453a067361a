//! The "Energy MetaFormer" demo (docs/models.md "Energy MetaFormer demo"): a three-layer HAM
//! (hidden ReLU ⇄ LayerNorm visible ⇄ hidden ReLU, dense synapses ξ₁, ξ₂ initialised
//! 0.02·N(0, 1)) trained as a denoiser.
//!
//! The visible layer starts at image + 0.3·N(0, 1) (pixels/255, flattened, L2-normalised), the
//! hidden layers at 0; every layer takes `steps` updates x ← x − η ∂E/∂g with
//! ∂E/∂g_l = x_l − I_l; the loss is mean((LN(x_v) − clean)²), trained with Adam through all
//! updates (candle autograd).

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::layers::layer_norm::{layer_norm, LN_EPS};
use crate::params::{Builder, ParamStore};

pub struct EnergyMetaformer {
    /// ξ₁ (hidden, visible) and ξ₂ (hidden, visible).
    pub xi1: Var,
    pub xi2: Var,
    ones: Tensor,
    zeros: Tensor,
}

/// (visible, hidden₁, hidden₂) states, each (B, n).
pub type State = (Tensor, Tensor, Tensor);

impl EnergyMetaformer {
    /// ξ₁, ξ₂ ~ 0.02·N(0, 1) from `seed`; the returned store holds them for the optimizer.
    pub fn new(
        visible: usize,
        hidden: usize,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let b = Builder::new(seed, DType::F32, device);
        let xi1 = b.root().normal("xi1", &[hidden, visible], 0.02)?;
        let xi2 = b.root().normal("xi2", &[hidden, visible], 0.02)?;
        let net = Self {
            xi1,
            xi2,
            ones: Tensor::ones(visible, DType::F32, device)?,
            zeros: Tensor::zeros(visible, DType::F32, device)?,
        };
        Ok((net, b.finish()))
    }

    fn g_visible(&self, xv: &Tensor) -> Result<Tensor> {
        layer_norm(xv, &self.ones, &self.zeros, LN_EPS)
    }

    /// Per-sample energy (B,): Σ_l [x·g − L(x)] − g₁ᵀξ₁g_v − g₂ᵀξ₂g_v.
    pub fn energy(&self, s: &State) -> Result<Tensor> {
        let (xv, x1, x2) = s;
        let gv = self.g_visible(xv)?;
        let (g1, g2) = (x1.relu()?, x2.relu()?);
        let d = xv.dim(1)? as f64;
        let xc = xv.broadcast_sub(&xv.mean_keepdim(1)?)?;
        let l_ln = ((xc.sqr()?.mean(1)? + LN_EPS)?.sqrt()? * d)?;
        let visible = ((xv * &gv)?.sum(1)? - l_ln)?;
        let hidden = |x: &Tensor, g: &Tensor| -> Result<Tensor> {
            (x * g)?.sum(1)? - (g.sqr()?.sum(1)? * 0.5)?
        };
        let coupling =
            |g: &Tensor, xi: &Var| -> Result<Tensor> { (g.matmul(xi.as_tensor())? * &gv)?.sum(1) };
        (visible + hidden(x1, &g1)? + hidden(x2, &g2)?)?
            - coupling(&g1, &self.xi1)?
            - coupling(&g2, &self.xi2)?
    }

    /// One update x ← x − η ∂E/∂g on all layers.
    pub fn step(&self, s: &State, eta: f64) -> Result<State> {
        let (xv, x1, x2) = s;
        let gv = self.g_visible(xv)?;
        let (g1, g2) = (x1.relu()?, x2.relu()?);
        let iv = (g1.matmul(self.xi1.as_tensor())? + g2.matmul(self.xi2.as_tensor())?)?;
        let i1 = gv.matmul(&self.xi1.as_tensor().t()?)?;
        let i2 = gv.matmul(&self.xi2.as_tensor().t()?)?;
        let upd = |x: &Tensor, i: &Tensor| -> Result<Tensor> { x - ((x - i)? * eta)? };
        Ok((upd(xv, &iv)?, upd(x1, &i1)?, upd(x2, &i2)?))
    }

    /// Visible start `xv0`, hidden layers at zero, `steps` updates.
    pub fn run(&self, xv0: &Tensor, steps: usize, eta: f64) -> Result<State> {
        let (b, h) = (xv0.dim(0)?, self.xi1.dim(0)?);
        let z = Tensor::zeros((b, h), DType::F32, xv0.device())?;
        let mut s = (xv0.clone(), z.clone(), z);
        for _ in 0..steps {
            s = self.step(&s, eta)?;
        }
        Ok(s)
    }

    /// Denoising loss mean((LN(x_v) − clean)²) after the updates.
    pub fn loss(&self, noisy: &Tensor, clean: &Tensor, steps: usize, eta: f64) -> Result<Tensor> {
        let (xv, _, _) = self.run(noisy, steps, eta)?;
        (self.g_visible(&xv)? - clean)?.sqr()?.mean_all()
    }

    /// LN(x_v) after the updates (the denoised image).
    pub fn denoise(&self, noisy: &Tensor, steps: usize, eta: f64) -> Result<Tensor> {
        let (xv, _, _) = self.run(&noisy.detach(), steps, eta)?;
        self.g_visible(&xv.detach())
    }
}
