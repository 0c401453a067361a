//! Fused CPU kernels vs the candle compositions they replace, forward and forward + backward, on
//! the fmnist-tiny shapes (batch 128, 49 tokens, D 128, channel hidden 512). `cargo bench`.

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use imixer::layers::bias::bias_gelu;
use imixer::layers::gelu::gelu;
use imixer::layers::layer_norm::{layer_norm, layer_norm_composed};
use imixer::layers::linear_epilogue::{linear_epilogue, linear_gelu};
use imixer::layers::spectral_norm::{power_iteration, power_iteration_composed};
use imixer::layers::transpose::{add_transposed, transpose12};
use imixer::params::seeded_normal;

const ROWS: usize = 128 * 49;
const D: usize = 128;
const HIDDEN: usize = 512;

fn normal(seed: u64, shape: &[usize]) -> Tensor {
    seeded_normal(seed, shape, 1.0, DType::F32, &Device::Cpu).expect("tensor")
}

/// Forward, then forward + backward of sum(f(x)·probe) with respect to every input.
fn both<F>(c: &mut Criterion, group: &str, name: &str, inputs: &[Tensor], f: F)
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).expect("var"))
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let probe = normal(99, f(&tensors).expect("forward").dims());
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    g.bench_function(format!("{name}/forward"), |b| {
        b.iter(|| f(inputs).expect("forward"))
    });
    g.bench_function(format!("{name}/forward+backward"), |b| {
        b.iter(|| {
            let y = f(&tensors).expect("forward");
            (y * &probe)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let x = normal(1, &[ROWS, D]);
    let (w, b) = (normal(2, &[D]), normal(3, &[D]));
    let ln = [x.clone(), w, b];
    both(c, "layer_norm", "fused", &ln, |t| {
        layer_norm(&t[0], &t[1], &t[2], 1e-6)
    });
    both(c, "layer_norm", "composed", &ln, |t| {
        layer_norm_composed(&t[0], &t[1], &t[2], 1e-6)
    });

    let h = [normal(4, &[ROWS, HIDDEN]), normal(5, &[HIDDEN])];
    both(c, "bias_gelu", "fused", &h, |t| bias_gelu(&t[0], &t[1]));
    both(c, "bias_gelu", "composed", &h, |t| {
        t[0].broadcast_add(&t[1])?.gelu_erf()
    });
    both(c, "gelu", "fused", &h[..1], |t| gelu(&t[0]));
    both(c, "gelu", "composed", &h[..1], |t| t[0].gelu_erf());

    // The channel MLP's fc2 with its bias and the block residual: x + (h W₂ᵀ + b₂).
    let fc2 = [
        normal(9, &[ROWS, HIDDEN]),
        normal(10, &[D, HIDDEN]),
        normal(11, &[D]),
        normal(12, &[ROWS, D]),
    ];
    both(c, "linear_bias_residual", "fused", &fc2, |t| {
        linear_epilogue(&t[0], &t[1], Some(&t[2]), Some(&t[3]))
    });
    both(c, "linear_bias_residual", "composed", &fc2, |t| {
        t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2])? + &t[3]
    });

    // Training: fc1 + bias + GELU as one op keeping GELU′ (backward = one multiply) vs the
    // matmul and `bias_gelu` (whose backward re-evaluates erf and the exponential).
    let fc1_train = [
        normal(16, &[ROWS, D]),
        normal(17, &[HIDDEN, D]),
        normal(18, &[HIDDEN]),
    ];
    both(c, "linear_bias_gelu", "fused", &fc1_train, |t| {
        linear_gelu(&t[0], &t[1], Some(&t[2]))
    });
    both(c, "linear_bias_gelu", "two_ops", &fc1_train, |t| {
        bias_gelu(&linear_epilogue(&t[0], &t[1], None, None)?, &t[2])
    });

    // Inference (no graph): the channel MLP's fc1 + bias + GELU as one op (GELU in place on
    // the gemm output) vs the two ops training needs (matmul into the bias, then GELU).
    let fc1 = [
        normal(13, &[ROWS, D]),
        normal(14, &[HIDDEN, D]),
        normal(15, &[HIDDEN]),
    ];
    let mut g = c.benchmark_group("linear_bias_gelu_inference");
    g.bench_function("fused", |bch| {
        bch.iter(|| {
            candle_core::backprop::no_grad(|| linear_gelu(&fc1[0], &fc1[1], Some(&fc1[2])))
                .expect("fused")
        })
    });
    g.bench_function("two_ops", |bch| {
        bch.iter(|| {
            let z = linear_epilogue(&fc1[0], &fc1[1], None, None).expect("matmul");
            bias_gelu(&z, &fc1[2]).expect("bias + GELU")
        })
    });
    g.finish();

    // The token axis: (B, N, D) → (B, D, N) and the transposed residual add x + tᵀ, vs
    // candle's strided copy (8 × 8 register tiles against an element-by-element move).
    let tokens = normal(19, &[128, 49, D]);
    let branch = normal(20, &[128, D, 49]);
    let mut g = c.benchmark_group("token_transpose");
    g.bench_function("transpose12", |bch| {
        bch.iter(|| transpose12(&tokens).expect("transpose"))
    });
    g.bench_function("candle_transpose_contiguous", |bch| {
        bch.iter(|| tokens.transpose(1, 2)?.contiguous())
    });
    g.bench_function("add_transposed", |bch| {
        bch.iter(|| add_transposed(&tokens, &branch).expect("add"))
    });
    g.bench_function("candle_add_transpose", |bch| {
        bch.iter(|| &tokens + branch.transpose(1, 2)?)
    });
    g.finish();

    // The iMLP's power iteration: 8 steps on a (98, 49) token weight (n_power 8, hidden ratio 2).
    let w = normal(6, &[98, 49]);
    let (u, v) = (normal(7, &[98]), normal(8, &[49]));
    let mut g = c.benchmark_group("power_iteration_8_steps");
    g.bench_function("kernel", |bch| {
        bch.iter(|| power_iteration(&w, &u, &v, 8).expect("power"))
    });
    g.bench_function("composed", |bch| {
        bch.iter(|| power_iteration_composed(&w, &u, &v, 8).expect("power"))
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
