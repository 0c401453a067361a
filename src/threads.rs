//! The process's thread count: one call that sizes every pool imixer's work runs on.
//!
//! Three pools share the cores: rayon's global pool (gemm's matmuls, imixer's kernels, the
//! data-parallel shards), candle's barrier pool (its elementwise ops), and OpenMP's (oneDNN's
//! bf16 matmuls, sized per call from candle's count). [`set_threads`] sets all of them through
//! their APIs; no environment variable is written, so a library user can call it from any thread.

/// Sets the worker-thread count of candle's kernels, its matmuls and imixer's own kernels (0: all
/// cores) and returns the count chosen. Call it before the first tensor operation: rayon's global
/// pool and candle's barrier pool are sized when they start, and a later call cannot resize them.
///
/// candle's barrier pool workers busy-wait 25 000 spins after every op by default. Those spins
/// take the core from the rayon workers (matmuls, our kernels) and the data-loader threads that
/// run next, so they park at once here: Fashion-MNIST training throughput +15 % (`imixer_n4_28`,
/// 355 → 405 img/s, 2 cores, three alternated runs each), the standalone benchmarks unchanged
/// within noise. `CANDLE_BARRIER_POOL_SPIN_LIMIT`, when set, still wins, for experiments.
pub fn set_threads(n: usize) -> usize {
    let n = if n > 0 {
        n
    } else {
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    };
    // Always pinned: when unset, candle re-derives the core count (reading /proc) on every matmul.
    candle_core::utils::set_num_threads(n);
    candle_core::utils::set_barrier_pool_spin_limit(0);
    // An error means the global pool already exists (a second call, or a rayon user before us):
    // its size stays, and candle's count above still caps the matmuls.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}
