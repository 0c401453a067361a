//! F, the residual map of the iMLP's three-layer Hopfield network:
//!
//! ```text
//! F(x) = fc_sn2(GELU(fc_sn1(GELU(x))))       fc_sn1: N1 → N1·r, fc_sn2: N1·r → N1
//! ```
//! Both layers carry soft spectral normalisation (re-run at every call, as in the reference),
//! which keeps Lip(F) < 1 so that x = F(x) + y has one solution and the iteration finds it.

use candle_core::{Result, Tensor};

use super::implicit::FixedMap;
use crate::layers::gelu_mlp::Input;
use crate::layers::{gelu_mlp, Epilogue, ForwardCtx, SoftSpectralNorm};
use crate::params::Scope;

#[derive(Clone, Debug)]
pub struct ResidualMap {
    pub fc_sn1: SoftSpectralNorm,
    pub fc_sn2: SoftSpectralNorm,
}

impl ResidualMap {
    /// The layers live in the iMLP's own scope (`…mlp_tokens.fc_sn1`, `…mlp_tokens.fc_sn2`), as
    /// in the reference's state_dict.
    pub fn new(
        scope: &Scope,
        dim: usize,
        inner: usize,
        coeff: f64,
        n_power: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc_sn1: SoftSpectralNorm::new(&scope.sub("fc_sn1"), dim, inner, coeff, n_power)?,
            fc_sn2: SoftSpectralNorm::new(&scope.sub("fc_sn2"), inner, dim, coeff, n_power)?,
        })
    }

    /// F(x) over the last axis, then `epilogue` on fc_sn2's product: one unrolled solver step
    /// x ← F(x) + y is `forward(x, Epilogue::Add(y))`. F is a GELU MLP of GELU(x) whose weights
    /// are this call's normalised W̃₁, W̃₂, so it is one [`gelu_mlp()`] call: on the CPU fc_sn1's
    /// matmul, bias and GELU are one op (which keeps GELU′ instead of the pre-activation) and y
    /// sits in fc_sn2's epilogue, so the backward keeps neither fc_sn2's raw product nor F(x);
    /// under bf16 the whole of F is one op that keeps GELU(x), its hidden layer and both GELU′
    /// in bf16, per unrolled iteration. Each call runs each layer's spectral norm once, fc_sn1's
    /// first.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let w1 = self.fc_sn1.weight(ctx)?;
        let w2 = self.fc_sn2.weight(ctx)?;
        gelu_mlp(
            x,
            Input::Gelu,
            &w1,
            Some(self.fc_sn1.bias.as_tensor()),
            &w2,
            Some(self.fc_sn2.bias.as_tensor()),
            epilogue,
        )
    }

    /// F with this call's normalised weights, detached: what the fixed-point solvers iterate.
    /// Runs each layer's spectral norm once, as a forward would.
    pub fn detached(&self, ctx: &mut ForwardCtx) -> Result<FixedMap> {
        let w1 = self.fc_sn1.weight(ctx)?;
        let w2 = self.fc_sn2.weight(ctx)?;
        let (b1, b2) = (self.fc_sn1.bias.as_tensor(), self.fc_sn2.bias.as_tensor());
        Ok(FixedMap::detached(&w1, b1, &w2, b2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{seeded_normal, Builder};
    use candle_core::{DType, Device};

    /// The fused step F(x) + y (y in fc_sn2's epilogue) equals F(x), then + y, up to the
    /// rounding of its one reordered addition ((b₂ + y) + Σ), with the same gradients.
    #[test]
    fn fused_step_equals_map_plus_y() -> Result<()> {
        let dev = Device::Cpu;
        let builder = Builder::new(3, DType::F64, &dev);
        let f = ResidualMap::new(&builder.root(), 5, 10, 1.0, 1)?;
        // Biases of a trained size (timm initialises them at 1e-6).
        f.fc_sn1
            .bias
            .set(&seeded_normal(1, &[10], 0.5, DType::F64, &dev)?)?;
        f.fc_sn2
            .bias
            .set(&seeded_normal(2, &[5], 0.5, DType::F64, &dev)?)?;
        let x = seeded_normal(3, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let y = seeded_normal(4, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let probe = seeded_normal(5, &[4, 3, 5], 1.0, DType::F64, &dev)?;
        let mut ctx = ForwardCtx::eval();
        let fused = f.forward(&x, Epilogue::Add(&y), &mut ctx)?;
        let composed = (f.forward(&x, Epilogue::None, &mut ctx)? + &y)?;
        let d = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-13, "forward {d}");
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (composed * &probe)?.sum_all()?.backward()?;
        for v in [
            &f.fc_sn1.weight_orig,
            &f.fc_sn1.bias,
            &f.fc_sn2.weight_orig,
            &f.fc_sn2.bias,
        ] {
            let d = (gf.get(v).unwrap() - gc.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(d < 1e-12, "gradient {d}");
        }
        Ok(())
    }

    /// Under bf16 the step is one MLP op of GELU(x) over the normalised weights: its output
    /// equals GELU, then the two bf16 linear layers', and the gradients reach x and weight_orig
    /// (through σ̂) as theirs do, within the bf16 rounding of both GELU′ (as in
    /// `layers::gelu_mlp`).
    #[test]
    fn bf16_step_equals_two_bf16_layers() -> Result<()> {
        use crate::kernels::{with_precision, Precision};
        use crate::layers::gelu;
        use crate::layers::linear::linear;
        let dev = Device::Cpu;
        let builder = Builder::new(5, DType::F32, &dev);
        // σ̂ above c = 0.5 for every layer, so the weights are divided by σ̂ / c.
        let f = ResidualMap::new(&builder.root(), 24, 40, 0.5, 1)?;
        let x =
            candle_core::Var::from_tensor(&seeded_normal(3, &[4, 3, 24], 1.0, DType::F32, &dev)?)?;
        let y = seeded_normal(4, &[4, 3, 24], 1.0, DType::F32, &dev)?;
        let probe = seeded_normal(5, &[4, 3, 24], 1.0, DType::F32, &dev)?;
        let (one, two) = with_precision(Precision::Bf16, || -> Result<_> {
            let one = f.forward(&x, Epilogue::Add(&y), &mut ForwardCtx::eval())?;
            let mut ctx = ForwardCtx::eval();
            let (w1, w2) = (f.fc_sn1.weight(&mut ctx)?, f.fc_sn2.weight(&mut ctx)?);
            let h = linear(
                &gelu(&x)?,
                &w1,
                Some(f.fc_sn1.bias.as_tensor()),
                Epilogue::Gelu,
            )?;
            let two = linear(&h, &w2, Some(f.fc_sn2.bias.as_tensor()), Epilogue::Add(&y))?;
            Ok((one, two))
        })?;
        let d = (&one - &two)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "forward {d}");
        let g_one = (one * &probe)?.sum_all()?.backward()?;
        let g_two = (two * &probe)?.sum_all()?.backward()?;
        let mut fc_sn1_differs = false;
        // x's gradient passes GELU′(x), which the one op keeps in bf16 as well.
        for (v, tol) in [
            (&x, 2f32.powi(-7)),
            (&f.fc_sn1.weight_orig, 2f32.powi(-7)),
            (&f.fc_sn1.bias, 2f32.powi(-7)),
            (&f.fc_sn2.weight_orig, 1e-5),
            (&f.fc_sn2.bias, 1e-5),
        ] {
            let (a, b) = (g_one.get(v).unwrap(), g_two.get(v).unwrap());
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d <= tol * scale, "gradient {d} (scale {scale})");
            fc_sn1_differs |= tol > 1e-5 && d > 0.0;
        }
        // Where the one op runs, fc_sn1's side reads the bf16 GELU′ and so is not bit-equal:
        // equal bits would mean the step still ran as two layers.
        if crate::kernels::onednn::available() {
            assert!(fc_sn1_differs, "the bf16 step did not run as one MLP op");
        }
        Ok(())
    }

    /// The detached map computes the same F as the forward.
    #[test]
    fn detached_map_is_the_forward() -> Result<()> {
        let dev = Device::Cpu;
        let builder = Builder::new(4, DType::F64, &dev);
        let f = ResidualMap::new(&builder.root(), 6, 3, 0.9, 1)?;
        let x = seeded_normal(6, &[2, 4, 6], 1.0, DType::F64, &dev)?;
        let mut ctx = ForwardCtx::eval();
        let a = f.forward(&x, Epilogue::None, &mut ctx)?;
        let b = f.detached(&mut ctx)?.apply(&x)?;
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-13, "{d}");
        Ok(())
    }
}
