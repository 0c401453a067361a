//! Probe: the bf16 matmul engines on the Mixer shapes, one thread per product as in a
//! data-parallel shard, and all threads as with `--shards 1`.
//!
//! `cargo run --release --example bf16_matmul_probe [THREADS]` prints, per shape, the f32 gemm,
//! gemm on bf16-rounded operands (the engine of CPUs without a bf16 unit imixer uses) and oneDNN
//! on the CPU's bf16 unit (AMX-BF16, or AVX512-BF16 on AMD: `onednn::unit_for`; with
//! `libdnnl.so.2` installed), each including its operand conversions.
use std::time::Instant;

use imixer::kernels::bf16;
use imixer::kernels::onednn::{self, Key, Packed};

fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) as f32 * 1e-9).sin())
        .collect()
}

/// Median seconds of `f` over 15 calls after 3 warm-up calls.
fn median(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("THREADS as an integer"))
        .unwrap_or(1);
    // fmnist-tiny per shard (64 images, 49 tokens, D 128, channel hidden 512, token hidden 64)
    // and cifar-s (D 256, hidden 1024): forward x·Wᵀ, and the backward's ∂x = g·W, ∂W = gᵀ·x.
    let shapes: [(&str, usize, usize, usize, bool); 6] = [
        ("channel fc1 x·Wᵀ", 3136, 128, 512, true),
        ("channel fc2 x·Wᵀ", 3136, 512, 128, true),
        ("token fc1 x·Wᵀ", 8192, 49, 64, true),
        ("channel fc1 ∂W = gᵀ·x", 512, 3136, 128, false),
        ("cifar-s fc1 x·Wᵀ", 4096, 256, 1024, true),
        ("cifar-s fc2 x·Wᵀ", 4096, 1024, 256, true),
    ];
    println!(
        "{threads} thread(s); oneDNN engine: {}",
        if let Some(unit) = onednn::unit() {
            unit.describe().to_string()
        } else {
            format!("off ({})", onednn::why_unavailable())
        }
    );
    println!("| product | m × k × n | f32 gemm GFLOP/s | bf16 on gemm | bf16 on oneDNN |");
    println!("|---|---|---|---|---|");
    candle_core::utils::with_num_threads(threads, || -> candle_core::Result<()> {
        for (name, m, k, n, weight_rhs) in shapes {
            // A weight right factor is Wᵀ of an (n × k) W, i.e. column-major; a gradient product
            // reads gᵀ (column-major) against a row-major x.
            let (lhs_strides, rhs_strides) = if weight_rhs {
                ([k, 1], [1, k])
            } else {
                ([1, m], [n, 1])
            };
            let key = Key {
                m,
                n,
                k,
                lhs_strides,
                rhs_strides,
                accumulate: false,
            };
            let (a, b) = (values(1, key.lhs_span()), values(2, key.rhs_span()));
            let mut dst = vec![0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            let rate = |s: f64| format!("{:.0}", flops / s / 1e9);
            let f32_gemm = median(|| {
                // SAFETY: as in `bf16::gemm`: the slices cover the strides' spans, dst holds
                // m·n elements and aliases neither operand.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        lhs_strides[1] as isize,
                        lhs_strides[0] as isize,
                        b.as_ptr(),
                        rhs_strides[1] as isize,
                        rhs_strides[0] as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        imixer::kernels::cpu::gemm_parallelism(),
                    )
                }
            });
            let on_gemm = median(|| bf16::gemm(key, &mut dst, &a, &b).expect("bf16 gemm"));
            // Packing both operands is part of every AMX product, as in the layers.
            let amx = if onednn::available() {
                rate(median(|| {
                    let pa = Packed::new(&a, m, k, lhs_strides).expect("lhs span");
                    let pb = Packed::new(&b, k, n, rhs_strides).expect("rhs span");
                    let product = onednn::product_packed(pa.as_ref(), pb.as_ref());
                    assert!(
                        product.expect("oneDNN product").is_some(),
                        "AMX took no {key:?}"
                    );
                }))
            } else {
                "—".to_string()
            };
            println!(
                "| {name} | {m} × {k} × {n} | {} | {} | {amx} |",
                rate(f32_gemm),
                rate(on_gemm)
            );
        }
        Ok(())
    })
}
