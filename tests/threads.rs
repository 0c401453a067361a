//! The thread-count API (`imixer::threads::set_threads`), in a process of its own: the pools it
//! sizes are global, so it cannot share a process with tests that expect other counts.

#[test]
fn set_threads_reaches_candle_and_rayon_without_the_environment() {
    std::env::remove_var("CANDLE_NUM_THREADS");
    std::env::remove_var("RAYON_NUM_THREADS");
    assert_eq!(imixer::threads::set_threads(3), 3);
    assert_eq!(candle_core::utils::get_num_threads(), 3);
    assert_eq!(rayon::current_num_threads(), 3);
    // The per-thread cap of the data-parallel shards still wins.
    let capped = candle_core::utils::with_num_threads(1, candle_core::utils::get_num_threads);
    assert_eq!(capped, 1);
    assert!(std::env::var_os("CANDLE_NUM_THREADS").is_none());
    assert!(std::env::var_os("RAYON_NUM_THREADS").is_none());
    // 0 means every core.
    let all = std::thread::available_parallelism().map_or(1, |p| p.get());
    assert_eq!(imixer::threads::set_threads(0), all);
    assert_eq!(candle_core::utils::get_num_threads(), all);
}
