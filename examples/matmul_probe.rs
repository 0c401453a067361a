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

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (m, k, n) = (6272, 128, 512);
    let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
    let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
    let wt = w.t()?.contiguous()?;
    let fl = 2.0 * (m * k * n) as f64;
    print!("x·wᵀ (view)        ");
    time(|| x.matmul(&w.t()?), fl)?;
    print!("x·wᵀ (contiguous)  ");
    time(|| x.matmul(&wt), fl)?;
    let h = Tensor::randn(0f32, 1., (m, n), &dev)?;
    print!("h·w  (back to D)   ");
    time(|| h.matmul(&w), fl)?;
    print!("hᵀ·x (weight grad) ");
    time(|| h.t()?.matmul(&x), fl)?;
    Ok(())
}
