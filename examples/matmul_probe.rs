//! Probe: candle matmul throughput for the Mixer shapes (plain vs transposed right factor).
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time(f: impl Fn() -> candle_core::Result<Tensor>, flops: f64) -> candle_core::Result<()> {
    f()?;
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    let s = t.elapsed().as_secs_f64() / n as f64;
    println!("{:8.2} ms  {:6.1} GFLOP/s", s * 1e3, flops / s / 1e9);
    Ok(())
}

/// `cargo run --release --example matmul_probe [ROWS IN OUT]` (default: fmnist-tiny channel fc1).
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROWS IN OUT as integers"))
        .collect();
    let (m, k, n) = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (6272, 128, 512),
    };
    println!("rows {m}, in {k}, out {n}");
    let x = imixer::params::seeded_normal(1, &[m, k], 1.0, candle_core::DType::F32, &dev)?;
    let w = imixer::params::seeded_normal(2, &[n, k], 1.0, candle_core::DType::F32, &dev)?;
    let wt = w.t()?.contiguous()?;
    let fl = 2.0 * (m * k * n) as f64;
    print!("x·wᵀ (view)        ");
    time(|| x.matmul(&w.t()?), fl)?;
    print!("x·wᵀ (contiguous)  ");
    time(|| x.matmul(&wt), fl)?;
    let h = imixer::params::seeded_normal(3, &[m, n], 1.0, candle_core::DType::F32, &dev)?;
    print!("h·w  (back to D)   ");
    time(|| h.matmul(&w), fl)?;
    print!("hᵀ·x (weight grad) ");
    time(|| h.t()?.matmul(&x), fl)?;
    print!("hᵀ·x (copy hᵀ)     ");
    time(|| h.t()?.contiguous()?.matmul(&x), fl)?;
    Ok(())
}
