//! x Wᵀ (+ b) (+ r) over the last axis, with the bias and the residual in the matmul's epilogue.
//!
//! Why: composed from candle ops, `x.matmul(Wᵀ) + b + r` writes the raw product, reads it back
//! for every add, and — because candle's graph keeps the inputs of every op until the backward —
//! holds each intermediate alive although no backward reads it. Here the destination starts as
//! b (+ r) and gemm accumulates the product into it (`read_dst`): one pass, and the graph keeps
//! only x, W and r. On the iMixer's unrolled fixed-point loop that is one activation fewer per
//! iteration of every block (the raw `fc_sn2` product), and on a residual branch one fewer per
//! block.
//!
//! With both a bias and a residual the op has four inputs (x, W, b, r), more than candle's widest
//! upstream custom op: it is an n-ary op of the vendored candle (`vendor/README.md`, patch 7).
//! Before that patch the bias travelled as the last column of the weight, [W | b], a copy of the
//! weight per call that the graph kept until the backward.
//!
//! Rounding: the result is (b + r) + Σₖ xₖWₖ where the composition computes (Σₖ xₖWₖ + b) + r;
//! with a bias alone, or a residual alone, it is the same single addition (bit-identical when gemm
//! accumulates k in one block).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOpN, Layout, Result, Shape, Tensor};

use super::bias::{bias_gelu, ColumnSums, ScaleWithColumnSums};
use super::gelu::{gelu, gelu_in_place, gelu_in_place_with_derivative};
use crate::kernels::cpu::{
    check_input_lens, dispatch, f32_slices, gemm_parallelism, par_output, with_f32_slice, Float,
    SliceKernel, PAR_CHUNK,
};
use crate::kernels::onednn::{self, Key, Packed};
use crate::kernels::{bf16, fused, matmul};

/// x Wᵀ + b + r along the last axis of x (…, in) for W (out, in), b (out), r (…, out); either
/// addend may be absent. CPU runs one fused op; other devices the candle composition.
pub fn linear_epilogue(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: Option<&Tensor>,
) -> Result<Tensor> {
    linear_with(x, w, b, r, Activation::Identity)
}

/// [`linear_epilogue`], then `activation` in place on the product.
fn linear_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&in_f) {
        candle_core::bail!(
            "linear: input {:?} does not end in the weight's {in_f} input features",
            x.shape()
        );
    }
    let rows = x.elem_count() / in_f.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap_or(&mut 0) = out_f;
    if let Some(r) = r {
        if r.dims() != out_dims.as_slice() {
            candle_core::bail!(
                "linear: residual {:?} does not match the output {out_dims:?}",
                r.shape()
            );
        }
    }
    if let Some(b) = b {
        if b.dims() != [out_f] {
            candle_core::bail!("linear: bias {:?} for {out_f} outputs", b.shape());
        }
    }
    let x2 = x.reshape((rows, in_f))?;
    if !fused(x) {
        let mut y = matmul(&x2, &w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        if let Some(r) = r {
            y = (y + r.reshape((rows, out_f))?)?;
        }
        return y.reshape(out_dims);
    }
    // The addends in the op's input order: b, then r.
    let (addend, addends) = match (b, r) {
        (None, None) => return matmul(&x2, &w.t()?)?.reshape(out_dims),
        (Some(b), None) => (Addend::Bias, vec![b.contiguous()?]),
        (None, Some(r)) => (
            Addend::Residual,
            vec![r.reshape((rows, out_f))?.contiguous()?],
        ),
        (Some(b), Some(r)) => (
            Addend::BiasResidual,
            vec![b.contiguous()?, r.reshape((rows, out_f))?.contiguous()?],
        ),
    };
    let op = LinearEpilogue {
        addend,
        rows,
        in_f,
        out_f,
        activation,
        bf16: bf16::active_for(x),
        derivative: OnceLock::new(),
        packed_x: OnceLock::new(),
    };
    let (x2, w) = (x2.contiguous()?, w.contiguous()?);
    let mut inputs = vec![&x2, &w];
    inputs.extend(&addends);
    Tensor::apply_op_n(&inputs, op)?.reshape(out_dims)
}

/// GELU(x Wᵀ + b) along the last axis (an MLP's first layer and activation), one op on CPU.
///
/// gemm accumulates into the bias rows and the GELU runs in place on the result, so the
/// pre-activation is never a tensor of its own. Under [`candle_core::backprop::no_grad`] that
/// is all. With the graph recorded, the same pass also writes GELU′ at every point (erf and the
/// exponential are at hand) and the op keeps it for its backward in place of the
/// pre-activation — the same memory — so the backward is ∂z = ∂h ⊙ GELU′, a multiply, with the
/// bias gradient's column sums in the same pass, instead of a second erf and exponential per
/// element and a separate reduction. Without `b` the bias is zero and gets no gradient.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !fused(x) {
        let z = linear_epilogue(x, w, None, None)?;
        return match b {
            Some(b) => bias_gelu(&z, b),
            None => gelu(&z),
        };
    }
    let activation = match (candle_core::backprop::grad_enabled(), b.is_some()) {
        (false, _) => Activation::Gelu,
        (true, has_bias) => Activation::GeluKeepingDerivative { has_bias },
    };
    // No bias: GELU(0 + Σ) — gemm's 0 + s is s exactly, so the result is GELU of the plain product.
    let b = match b {
        Some(b) => b.clone(),
        None => Tensor::zeros(w.dim(0)?, x.dtype(), x.device())?,
    };
    linear_with(x, w, Some(&b), None, activation)
}

/// What runs on the finished product, in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activation {
    Identity,
    /// GELU, nothing kept: no backward (inference, see [`linear_gelu`]).
    Gelu,
    /// GELU, with GELU′ kept for the backward (whose bias gradient is dropped without a bias).
    GeluKeepingDerivative {
        has_bias: bool,
    },
}

/// What the destination starts as before gemm accumulates x Wᵀ into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addend {
    /// Inputs (x, W, b): every row starts as b.
    Bias,
    /// Inputs (x, W, r): the destination starts as r.
    Residual,
    /// Inputs (x, W, b, r): the destination starts as r + b.
    BiasResidual,
}

struct LinearEpilogue {
    addend: Addend,
    rows: usize,
    in_f: usize,
    out_f: usize,
    activation: Activation,
    /// bf16 precision: every product of this op (forward and backward) takes bf16 inputs and
    /// accumulates in f32 (through [`onednn`] where it runs, else [`bf16::gemm`]). The graph
    /// keeps the f32 inputs; the operands are converted per product, except that on oneDNN the
    /// forward's packed x is kept for ∂W (`packed_x`). The rounding's gradient is the identity
    /// (autocast's cast backward without its rounding of the gradient).
    bf16: bool,
    /// GELU′ at every output, written by the forward for the backward
    /// ([`Activation::GeluKeepingDerivative`]).
    derivative: OnceLock<CpuStorage>,
    /// bf16 on oneDNN with a backward to come: the forward's packed bf16 x, which the weight
    /// gradient ∂W = gᵀ x reads again (half the bytes of x, instead of a second conversion).
    packed_x: OnceLock<Packed>,
}

impl LinearEpilogue {
    /// The element counts of the addend inputs (after x and W), in input order.
    fn addend_lens(&self) -> Vec<usize> {
        let (rows, out_f) = (self.rows, self.out_f);
        match self.addend {
            Addend::Bias => vec![out_f],
            Addend::Residual => vec![rows * out_f],
            Addend::BiasResidual => vec![out_f, rows * out_f],
        }
    }

    /// The destination as it starts before gemm accumulates into it: b in every row, r, or
    /// r + b. On one thread (a data-parallel shard's lane) it is built by copying, with no
    /// zero pass before (paired A/B on fmnist-tiny Mixer inference: −1 %; the zeroing's
    /// `memset` looked larger in profiles because it takes the first-touch cache misses the
    /// copy then avoids); with more threads `par_output` splits the fill, zeroing each block
    /// just before it writes it.
    /// `addends` are the op's inputs after x and W: [b], [r] or [b, r].
    fn initial_destination<T: Float>(&self, addends: &[&[T]]) -> Vec<T> {
        let (rows, out_f) = (self.rows, self.out_f);
        let c = addends[addends.len() - 1];
        if candle_core::utils::get_num_threads() == 1 {
            return match self.addend {
                Addend::Bias => c.repeat(rows),
                Addend::Residual => c.to_vec(),
                Addend::BiasResidual => {
                    let b = addends[0];
                    let mut dst = Vec::with_capacity(rows * out_f);
                    for r in c.chunks(out_f) {
                        dst.extend(r.iter().zip(b).map(|(&r, &b)| r + b));
                    }
                    dst
                }
            };
        }
        let block = (PAR_CHUNK / out_f.max(1)).max(1) * out_f;
        par_output(rows * out_f, block, |start, o| match self.addend {
            Addend::Bias => o.chunks_mut(out_f).for_each(|row| row.copy_from_slice(c)),
            Addend::Residual => o.copy_from_slice(&c[start..start + o.len()]),
            Addend::BiasResidual => {
                let r = &c[start..start + o.len()];
                for (o, r) in o.chunks_mut(out_f).zip(r.chunks(out_f)) {
                    for ((o, &r), &b) in o.iter_mut().zip(r).zip(addends[0]) {
                        *o = r + b;
                    }
                }
            }
        })
    }
}

impl SliceKernel for LinearEpilogue {
    /// inputs: x (rows, in), W (out, in), then b (out) and/or r (rows, out); all contiguous.
    fn run<T: Float>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w) = (i[0], i[1]);
        let (rows, in_f, out_f) = (self.rows, self.in_f, self.out_f);
        let dst = self.initial_destination(&i[2..]);
        if rows == 0 || out_f == 0 || in_f == 0 {
            return self.activate(dst);
        }
        let mut dst = dst;
        // SAFETY: `dispatch` hands us the contiguous inputs the wrapper validated: x holds
        // rows·in elements, W out·in, and dst was just allocated with rows·out initialised
        // elements. With these strides gemm reads x[r·in + k] (r < rows, k < in),
        // W[j·in + k] (j < out, k < in) and reads/writes dst[r·out + j] — all in bounds. dst
        // is a fresh buffer, so it aliases neither input, and gemm returns only when every
        // (Rayon) worker is done with the pointers.
        unsafe {
            gemm::gemm(
                rows,
                out_f,
                in_f,
                dst.as_mut_ptr(),
                1,
                out_f as isize,
                true,
                x.as_ptr(),
                1,
                in_f as isize,
                w.as_ptr(),
                in_f as isize,
                1,
                T::one(),
                T::one(),
                false,
                false,
                false,
                gemm_parallelism(),
            )
        };
        self.activate(dst)
    }
}

impl LinearEpilogue {
    /// The forward under bf16 precision (f32 inputs, contiguous as in [`SliceKernel::run`]):
    /// the product of the bf16-rounded x and W accumulated into the destination in f32, through
    /// oneDNN where it takes the shape, else by [`bf16::gemm`].
    fn run_bf16(&self, x: &[f32], w: &[f32], addends: &[&[f32]]) -> Result<Vec<f32>> {
        let mut dst = self.initial_destination(addends);
        let key = Key {
            m: self.rows,
            n: self.out_f,
            k: self.in_f,
            lhs_strides: [self.in_f, 1],
            rhs_strides: [1, self.in_f],
            accumulate: true,
        };
        if onednn::available() && self.rows * self.in_f * self.out_f > 0 {
            let px = Packed::new(x, key.m, key.k, key.lhs_strides)?;
            let pw = Packed::new(w, key.k, key.n, key.rhs_strides)?;
            if onednn::accumulate_packed(px.as_ref(), pw.as_ref(), &mut dst)? {
                if candle_core::backprop::grad_enabled() {
                    let _ = self.packed_x.set(px);
                }
                return Ok(self.activate(dst));
            }
        }
        bf16::gemm(key, &mut dst, x, w)?;
        Ok(self.activate(dst))
    }

    /// The activation, in place on the finished product.
    fn activate<T: Float>(&self, mut dst: Vec<T>) -> Vec<T> {
        match self.activation {
            Activation::Identity => {}
            Activation::Gelu => gelu_in_place(&mut dst),
            Activation::GeluKeepingDerivative { .. } => {
                let derivative = gelu_in_place_with_derivative(&mut dst);
                // The op runs its forward once; a second run would recompute the same values.
                let _ = self.derivative.set(T::into_storage(derivative));
            }
        }
        dst
    }
}

impl CustomOpN for LinearEpilogue {
    fn name(&self) -> &'static str {
        "imixer-linear-epilogue"
    }

    fn cpu_fwd(&self, args: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let mut lens = vec![self.rows * self.in_f, self.out_f * self.in_f];
        lens.extend(self.addend_lens());
        check_input_lens(self.name(), args, &lens, format!("{self:?}"))?;
        if args[1].1.dims() != [self.out_f, self.in_f] {
            candle_core::bail!(
                "{}: weight {:?} for {self:?}",
                self.name(),
                args[1].1.shape()
            );
        }
        let out = match (self.bf16, f32_slices(args)) {
            (true, Some(i)) => CpuStorage::F32(self.run_bf16(i[0], i[1], &i[2..])?),
            _ => dispatch(self.name(), self, args)?,
        };
        Ok((out, Shape::from((self.rows, self.out_f))))
    }

    /// ∂x = g W, ∂W = gᵀ x, ∂b = Σ_rows g, ∂r = g.
    fn bwd(&self, args: &[Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&args[0], &args[1]);
        let g = grad.contiguous()?;
        match self.activation {
            Activation::Identity => {}
            Activation::Gelu => {
                candle_core::bail!("{}: the in-place GELU has no backward", self.name())
            }
            Activation::GeluKeepingDerivative { has_bias } => {
                return self.gelu_bwd(x, w, &g, has_bias);
            }
        }
        let bias_grad = || g.apply_op1_no_bwd(&ColumnSums { cols: self.out_f });
        let (dx, dw) = self.input_and_weight_grads(&g, w, x)?;
        // One gradient per input, in the inputs' order.
        Ok(match self.addend {
            Addend::Bias => vec![Some(dx), Some(dw), Some(bias_grad()?)],
            Addend::Residual => vec![Some(dx), Some(dw), Some(g)],
            Addend::BiasResidual => vec![Some(dx), Some(dw), Some(bias_grad()?), Some(g)],
        })
    }
}

impl LinearEpilogue {
    /// ∂x = g W and ∂W = gᵀ x, for the upstream gradient g
    /// (rows × out). Under bf16 the products take bf16 inputs and accumulate in f32, as in the
    /// forward; on oneDNN, g is packed once for both products and ∂W reads the forward's packed x.
    fn input_and_weight_grads(
        &self,
        g: &Tensor,
        w: &Tensor,
        x: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if !self.bf16 {
            return Ok((g.matmul(w)?, g.t()?.matmul(x)?));
        }
        if let Some(px) = self.packed_x.get() {
            let (rows, in_f, out_f) = (self.rows, self.in_f, self.out_f);
            let pg = with_f32_slice(g, |g| Packed::new(g, rows, out_f, [out_f, 1]))?;
            let pw = with_f32_slice(w, |w| Packed::new(w, out_f, in_f, [in_f, 1]))?;
            let dx = onednn::product_packed(pg.as_ref(), pw.as_ref())?;
            let dw = onednn::product_packed(pg.t(), px.as_ref())?;
            if let (Some(dx), Some(dw)) = (dx, dw) {
                return Ok((
                    Tensor::from_vec(dx, (rows, in_f), g.device())?,
                    Tensor::from_vec(dw, (out_f, in_f), g.device())?,
                ));
            }
        }
        Ok((
            bf16::product_no_grad(g, w)?,
            bf16::product_no_grad(&g.t()?, x)?,
        ))
    }

    /// Backward of GELU(x Wᵀ + b) from the kept GELU′: ∂z = g ⊙ GELU′ (with ∂b = Σ_rows ∂z in
    /// the same pass), ∂x = ∂z W, ∂W = ∂zᵀ x.
    fn gelu_bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
        has_bias: bool,
    ) -> Result<Vec<Option<Tensor>>> {
        let derivative = self.derivative.get().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: backward before the forward ran", self.name()))
        })?;
        let scale = ScaleWithColumnSums {
            factor: derivative,
            cols: self.out_f,
            sums: has_bias.then(OnceLock::new),
        };
        let dz = g.apply_op1_no_bwd(&scale)?;
        let db = match scale.sums {
            Some(sums) => {
                let sums = sums.into_inner().ok_or_else(|| {
                    candle_core::Error::Msg(format!("{}: column sums not computed", self.name()))
                })?;
                Some(Tensor::from_vec(sums, self.out_f, g.device())?.to_dtype(g.dtype())?)
            }
            None => None,
        };
        let (dx, dw) = self.input_and_weight_grads(&dz, w, x)?;
        Ok(vec![Some(dx), Some(dw), db])
    }
}

impl std::fmt::Debug for LinearEpilogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} with rows {}, in {}, out {}, {:?}",
            self.addend, self.rows, self.in_f, self.out_f, self.activation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_normal;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar()
    }

    /// Every addend combination equals the candle composition, values and all four gradients,
    /// in f64; shapes include a 3-D input and a transposed (strided) weight.
    #[test]
    fn matches_composition_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (bias, residual) in [(false, false), (true, false), (false, true), (true, true)] {
            for transposed_w in [false, true] {
                let x = Var::from_tensor(&seeded_normal(1, &[3, 4, 6], 1.0, DType::F64, &dev)?)?;
                let w_store = Var::from_tensor(&seeded_normal(
                    2,
                    if transposed_w { &[6, 5] } else { &[5, 6] },
                    1.0,
                    DType::F64,
                    &dev,
                )?)?;
                let w = if transposed_w {
                    w_store.t()?
                } else {
                    w_store.as_tensor().clone()
                };
                let b = Var::from_tensor(&seeded_normal(3, &[5], 1.0, DType::F64, &dev)?)?;
                let r = Var::from_tensor(&seeded_normal(4, &[3, 4, 5], 1.0, DType::F64, &dev)?)?;
                let probe = seeded_normal(5, &[3, 4, 5], 1.0, DType::F64, &dev)?;
                let (bo, ro) = (
                    bias.then_some(b.as_tensor()),
                    residual.then_some(r.as_tensor()),
                );
                let fused = linear_epilogue(&x, &w, bo, ro)?;
                let mut composed = x.broadcast_matmul(&w.t()?)?;
                if bias {
                    composed = composed.broadcast_add(&b)?;
                }
                if residual {
                    composed = (composed + r.as_tensor())?;
                }
                let d = max_diff(&fused, &composed)?;
                assert!(d < 1e-13, "{bias} {residual} {transposed_w}: forward {d}");
                let gf = (fused * &probe)?.sum_all()?.backward()?;
                let gc = (composed * &probe)?.sum_all()?.backward()?;
                let mut vars = vec![&x, &w_store];
                if bias {
                    vars.push(&b);
                }
                if residual {
                    vars.push(&r);
                }
                for v in vars {
                    let d = max_diff(gf.get(v).unwrap(), gc.get(v).unwrap())?;
                    assert!(d < 1e-12, "{bias} {residual} {transposed_w}: gradient {d}");
                }
            }
        }
        Ok(())
    }

    /// A bias alone is the same single addition as `matmul + b`: bit-identical in f32.
    #[test]
    fn bias_epilogue_rounds_like_matmul_then_add() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded_normal(6, &[37, 24], 1.0, DType::F32, &dev)?;
        let w = seeded_normal(7, &[19, 24], 1.0, DType::F32, &dev)?;
        let b = seeded_normal(8, &[19], 1.0, DType::F32, &dev)?;
        let fused = linear_epilogue(&x, &w, Some(&b), None)?.to_vec2::<f32>()?;
        let composed = x.matmul(&w.t()?)?.broadcast_add(&b)?.to_vec2::<f32>()?;
        assert_eq!(fused, composed);
        Ok(())
    }

    /// The inference op is bit-identical to the recorded op (same gemm, and `gelu_scalar` /
    /// `gelu_and_grad_scalar` compute GELU with the same expression), with and without a
    /// bias, and records no graph.
    #[test]
    fn linear_gelu_without_graph_equals_the_recorded_op() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded_normal(9, &[5, 7, 24], 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&seeded_normal(10, &[33, 24], 0.3, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&seeded_normal(11, &[33], 1.0, DType::F32, &dev)?)?;
        for bias in [Some(b.as_tensor()), None] {
            let recorded = linear_gelu(&x, &w, bias)?;
            assert!(recorded.track_op());
            let fused = candle_core::backprop::no_grad(|| linear_gelu(&x, &w, bias))?;
            assert!(!fused.track_op());
            assert_eq!(fused.dims(), [5, 7, 33]);
            assert_eq!(
                fused.flatten_all()?.to_vec1::<f32>()?,
                recorded.flatten_all()?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }

    /// With the graph recorded, the fused op (GELU′ kept from the forward) has the values and
    /// the gradients of the two-op path it replaced (matmul, then `bias_gelu`/`gelu` with their
    /// own backward): f64 to rounding, with and without a bias; a second backward through the
    /// same graph gives the same gradients (the kept factor is not consumed).
    #[test]
    fn recorded_linear_gelu_matches_the_two_op_path_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded_normal(12, &[3, 5, 9], 1.0, DType::F64, &dev)?)?;
        let w = Var::from_tensor(&seeded_normal(13, &[7, 9], 0.5, DType::F64, &dev)?)?;
        let b = Var::from_tensor(&seeded_normal(14, &[7], 1.0, DType::F64, &dev)?)?;
        let probe = seeded_normal(15, &[3, 5, 7], 1.0, DType::F64, &dev)?;
        for bias in [Some(b.as_tensor()), None] {
            let fused = linear_gelu(&x, &w, bias)?;
            let z = x.broadcast_matmul(&w.t()?)?;
            let two_op = match bias {
                Some(b) => bias_gelu(&z, b)?,
                None => gelu(&z)?,
            };
            assert!(max_diff(&fused, &two_op)? < 1e-13);
            let loss = (&fused * &probe)?.sum_all()?;
            let gf = loss.backward()?;
            let again = loss.backward()?;
            let gc = (two_op * &probe)?.sum_all()?.backward()?;
            let mut vars = vec![&x, &w];
            if bias.is_some() {
                vars.push(&b);
            } else {
                assert!(gf.get(&b).is_none());
            }
            for v in vars {
                let d = max_diff(gf.get(v).unwrap(), gc.get(v).unwrap())?;
                assert!(d < 1e-12, "bias {}: gradient {d}", bias.is_some());
                assert_eq!(max_diff(gf.get(v).unwrap(), again.get(v).unwrap())?, 0.0);
            }
        }
        Ok(())
    }

    /// f32: the kept GELU′ is the backward kernel's own value, so ∂z — and from it the bias
    /// gradient — equals the two-op path's bit for bit.
    #[test]
    fn recorded_linear_gelu_bias_gradient_is_bit_identical_in_f32() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded_normal(16, &[40, 24], 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&seeded_normal(17, &[33, 24], 0.3, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&seeded_normal(18, &[33], 1.0, DType::F32, &dev)?)?;
        let probe = seeded_normal(19, &[40, 33], 1.0, DType::F32, &dev)?;
        let fused = linear_gelu(&x, &w, Some(&b))?;
        let two_op = bias_gelu(&x.matmul(&w.t()?)?, &b)?;
        assert_eq!(fused.to_vec2::<f32>()?, two_op.to_vec2::<f32>()?);
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (two_op * &probe)?.sum_all()?.backward()?;
        assert_eq!(
            gf.get(&b).unwrap().to_vec1::<f32>()?,
            gc.get(&b).unwrap().to_vec1::<f32>()?
        );
        Ok(())
    }

    /// The one-thread destination (built by copying) and the parallel one (zeroed blocks, then
    /// filled) give the same bits for every addend.
    #[test]
    fn one_thread_destination_equals_the_parallel_one() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded_normal(20, &[300, 24], 1.0, DType::F32, &dev)?;
        let w = seeded_normal(21, &[19, 24], 1.0, DType::F32, &dev)?;
        let b = seeded_normal(22, &[19], 1.0, DType::F32, &dev)?;
        let r = seeded_normal(23, &[300, 19], 1.0, DType::F32, &dev)?;
        for (bias, residual) in [(true, false), (false, true), (true, true)] {
            let run = || linear_epilogue(&x, &w, bias.then_some(&b), residual.then_some(&r));
            let one = candle_core::utils::with_num_threads(1, run)?.to_vec2::<f32>()?;
            let two = candle_core::utils::with_num_threads(2, run)?.to_vec2::<f32>()?;
            assert_eq!(one, two, "bias {bias}, residual {residual}");
        }
        Ok(())
    }

    #[test]
    fn shape_mismatches_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded_normal(1, &[4, 6], 1.0, DType::F32, &dev)?;
        let w = seeded_normal(2, &[5, 6], 1.0, DType::F32, &dev)?;
        let err = linear_epilogue(&x, &w.t()?, None, None).unwrap_err();
        assert!(err.to_string().contains("does not end"), "{err}");
        let bad_r = seeded_normal(3, &[4, 6], 1.0, DType::F32, &dev)?;
        let err = linear_epilogue(&x, &w, None, Some(&bad_r)).unwrap_err();
        assert!(err.to_string().contains("residual"), "{err}");
        let bad_b = seeded_normal(4, &[6], 1.0, DType::F32, &dev)?;
        let err = linear_epilogue(&x, &w, Some(&bad_b), None).unwrap_err();
        assert!(err.to_string().contains("bias"), "{err}");
        Ok(())
    }
}
