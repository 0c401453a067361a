//! Probe: the core's peak f32 multiply-add rate — the ceiling for any matmul on the CPU it runs on.
//!
//! Twelve independent 8-lane accumulators (enough to cover the FMA latency on two pipes) updated
//! with `a·b + c` in a loop the compiler turns into packed FMAs (this project builds for
//! x86-64-v3). One thread per core, each on its own accumulators; prints GFLOP/s per thread
//! and in total, the number `BENCHMARKS.md` compares the gemm and the whole steps against.
//!
//! `cargo run --release --example fma_peak [THREADS]` (default: 2).
use std::hint::black_box;
use std::time::Instant;

const LANES: usize = 8;
const ACCUMULATORS: usize = 12;
const STEPS: u64 = 100_000_000;

/// GFLOP/s of one thread running `STEPS` rounds of 12 × 8 fused multiply-adds.
fn run() -> f64 {
    let mut acc = [[0f32; LANES]; ACCUMULATORS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = [i as f32; LANES];
    }
    let (b, c) = (black_box(1.000_000_1f32), black_box(1e-7f32));
    let start = Instant::now();
    for _ in 0..STEPS {
        for a in acc.iter_mut() {
            for v in a.iter_mut() {
                *v = v.mul_add(b, c);
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(acc);
    (STEPS * (ACCUMULATORS * LANES * 2) as u64) as f64 / seconds / 1e9
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |a| a.parse().expect("THREADS as an integer"));
    let rates: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    for (i, r) in rates.iter().enumerate() {
        println!("thread {i}: {r:6.1} GFLOP/s");
    }
    println!("total:    {:6.1} GFLOP/s", rates.iter().sum::<f64>());
}
