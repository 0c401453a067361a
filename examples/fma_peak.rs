//! Probe: the core's peak multiply-add rate — the ceiling for any matmul on the machine.
//!
//! Twelve independent accumulators (enough to cover the FMA latency on two pipes) of 8 lanes
//! (AVX2) or 16 lanes (AVX-512), each updated with one packed FMA per round. The 16-lane loop
//! runs only where the CPU reports AVX-512. One thread per core, each on its own accumulators; prints GFLOP/s
//! per thread and in total, the number `BENCHMARKS.md` compares the gemm and the whole steps
//! against.
//!
//! Mode `bf16` measures the ceiling of `--precision bf16` on a CPU with AVX512-BF16 instead: the
//! same twelve accumulators, each updated by one `vdpbf16ps` (16 f32 lanes, each adding the
//! products of two bf16 pairs: 32 multiply-adds per instruction), the instruction oneDNN's
//! `avx512_core_bf16` kernels are built on. A CPU with AMX has a higher ceiling still, which this
//! probe does not measure; there `vdpbf16ps` is not the bf16 path at all (on an Intel Xeon of
//! family 6, model 207 it gives 210 GFLOP/s on 2 cores, half of the 435 of the 16-lane f32 loop,
//! while oneDNN's AMX kernels reach 520–1020 GFLOP/s on the Mixer's channel products:
//! `bf16_matmul_probe`).
//!
//! `cargo run --release --example fma_peak [THREADS] [MODE]` (defaults: 2 threads; MODE 8 or
//! 16 lanes of f32, default the widest the CPU has, or `bf16`).
use std::hint::black_box;
use std::time::Instant;

const ACCUMULATORS: usize = 12;
const STEPS: u64 = 100_000_000;

/// GFLOP/s of `STEPS` rounds of 12 independent instructions of `madds` multiply-adds each
/// (2 FLOPs per multiply-add), from the elapsed seconds.
fn rate(madds: usize, seconds: f64) -> f64 {
    (STEPS * (ACCUMULATORS * madds * 2) as u64) as f64 / seconds / 1e9
}

/// Twelve 8-lane accumulators in AVX registers (`_mm256_fmadd_ps`, written out so that they stay
/// in registers: an array of accumulators would be kept in memory).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2() -> f64 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(black_box(1.000_000_1f32));
    let c = _mm256_set1_ps(black_box(1e-7f32));
    let mut a: [__m256; ACCUMULATORS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    let start = Instant::now();
    for _ in 0..STEPS {
        a[0] = _mm256_fmadd_ps(a[0], b, c);
        a[1] = _mm256_fmadd_ps(a[1], b, c);
        a[2] = _mm256_fmadd_ps(a[2], b, c);
        a[3] = _mm256_fmadd_ps(a[3], b, c);
        a[4] = _mm256_fmadd_ps(a[4], b, c);
        a[5] = _mm256_fmadd_ps(a[5], b, c);
        a[6] = _mm256_fmadd_ps(a[6], b, c);
        a[7] = _mm256_fmadd_ps(a[7], b, c);
        a[8] = _mm256_fmadd_ps(a[8], b, c);
        a[9] = _mm256_fmadd_ps(a[9], b, c);
        a[10] = _mm256_fmadd_ps(a[10], b, c);
        a[11] = _mm256_fmadd_ps(a[11], b, c);
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(a);
    rate(8, seconds)
}

/// The same with twelve 16-lane accumulators in 512-bit registers (`_mm512_fmadd_ps`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512() -> f64 {
    use std::arch::x86_64::*;
    let b = _mm512_set1_ps(black_box(1.000_000_1f32));
    let c = _mm512_set1_ps(black_box(1e-7f32));
    let mut a: [__m512; ACCUMULATORS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    let start = Instant::now();
    for _ in 0..STEPS {
        a[0] = _mm512_fmadd_ps(a[0], b, c);
        a[1] = _mm512_fmadd_ps(a[1], b, c);
        a[2] = _mm512_fmadd_ps(a[2], b, c);
        a[3] = _mm512_fmadd_ps(a[3], b, c);
        a[4] = _mm512_fmadd_ps(a[4], b, c);
        a[5] = _mm512_fmadd_ps(a[5], b, c);
        a[6] = _mm512_fmadd_ps(a[6], b, c);
        a[7] = _mm512_fmadd_ps(a[7], b, c);
        a[8] = _mm512_fmadd_ps(a[8], b, c);
        a[9] = _mm512_fmadd_ps(a[9], b, c);
        a[10] = _mm512_fmadd_ps(a[10], b, c);
        a[11] = _mm512_fmadd_ps(a[11], b, c);
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(a);
    rate(16, seconds)
}

/// Twelve 16-lane f32 accumulators, each updated by `_mm512_dpbf16_ps` with bf16 pairs: 32
/// multiply-adds per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn run_avx512_bf16() -> f64 {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(black_box(1.0f32));
    let tiny = _mm512_set1_ps(black_box(1e-7f32));
    // b holds bf16 pairs (1, 1) and c pairs (1e-7, 1e-7): a += 2e-7 per lane and round.
    let b = _mm512_cvtne2ps_pbh(one, one);
    let c = _mm512_cvtne2ps_pbh(tiny, tiny);
    let mut a: [__m512; ACCUMULATORS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    let start = Instant::now();
    for _ in 0..STEPS {
        a[0] = _mm512_dpbf16_ps(a[0], b, c);
        a[1] = _mm512_dpbf16_ps(a[1], b, c);
        a[2] = _mm512_dpbf16_ps(a[2], b, c);
        a[3] = _mm512_dpbf16_ps(a[3], b, c);
        a[4] = _mm512_dpbf16_ps(a[4], b, c);
        a[5] = _mm512_dpbf16_ps(a[5], b, c);
        a[6] = _mm512_dpbf16_ps(a[6], b, c);
        a[7] = _mm512_dpbf16_ps(a[7], b, c);
        a[8] = _mm512_dpbf16_ps(a[8], b, c);
        a[9] = _mm512_dpbf16_ps(a[9], b, c);
        a[10] = _mm512_dpbf16_ps(a[10], b, c);
        a[11] = _mm512_dpbf16_ps(a[11], b, c);
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(a);
    rate(32, seconds)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args
        .next()
        .map_or(2, |a| a.parse().expect("THREADS as an integer"));
    let default_mode = if has_avx512() { "16" } else { "8" };
    let mode = args.next().unwrap_or_else(|| default_mode.to_string());
    let (probe, what): (fn() -> f64, &str) = match mode.as_str() {
        // SAFETY (every arm): this project builds for x86-64-v3, so every CPU it runs on has
        // AVX2 and FMA; the 16-lane arm runs only after the CPU reported avx512f, the bf16 arm
        // only after it reported avx512f and avx512bf16.
        #[cfg(target_arch = "x86_64")]
        "8" => (|| unsafe { run_avx2() }, "8-lane f32 FMA"),
        #[cfg(target_arch = "x86_64")]
        "16" if has_avx512() => (|| unsafe { run_avx512() }, "16-lane f32 FMA"),
        #[cfg(target_arch = "x86_64")]
        "bf16" if has_avx512_bf16() => (
            || unsafe { run_avx512_bf16() },
            "AVX512-BF16 vdpbf16ps (bf16 pairs into 16 f32 lanes)",
        ),
        "16" | "bf16" => {
            eprintln!("this CPU does not report the instructions of mode {mode}: use mode 8");
            std::process::exit(2);
        }
        other => {
            eprintln!("MODE must be 8, 16 or bf16 (on x86_64), not {other}");
            std::process::exit(2);
        }
    };
    let rates: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(probe)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    println!("{what}");
    for (i, r) in rates.iter().enumerate() {
        println!("thread {i}: {r:6.1} GFLOP/s");
    }
    println!("total:    {:6.1} GFLOP/s", rates.iter().sum::<f64>());
}
