//! The `imixer` command-line tool: argument parsing and printing (`cli/`, one file per
//! subcommand) over the `imixer` library, which holds all the logic and returns typed errors.

mod cli;

// mimalloc: candle allocates a fresh buffer for every op result, every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in `enum mi_option_e` (mimalloc.h, 0-based position 15). The same
/// position in mimalloc v3, which `libmimalloc-sys` builds by default, and in v2 (its `v2` feature).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS. A train step frees and re-allocates the same large
/// activation buffers every step; with purging on, each one comes back as fresh pages that the
/// kernel must zero (measured: 20 k page faults and ~10 % of the step in `clear_page` on the
/// fmnist-tiny bench; 0.5 k with purging off). Peak memory is unchanged: the buffers are reused.
fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table. It takes no pointers,
    // and it runs first thing in `main`, before any other thread exists, so mimalloc's
    // "not thread safe" caveat for option setters cannot apply.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// OpenMP threads that sleep as soon as their work is done. oneDNN (the bf16 matmuls) runs
/// on OpenMP, whose threads otherwise spin for a while after every matmul, on the cores that
/// rayon's threads need for the next op. libgomp reads the variable when it is loaded, which
/// happens later, at the first bf16 matmul; a value the user set is kept.
fn passive_openmp_threads() {
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // Sound: `main` calls this before any other thread exists, so no thread can read the
        // environment concurrently (the caveat of `set_var`).
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
}

fn main() {
    keep_freed_memory();
    passive_openmp_threads();
    match cli::main() {
        Ok(()) => {}
        // The reader of a pipe has gone (`imixer models | head -1`): it wanted no more output, so
        // stop quietly with success (`cli::output` explains the choice).
        Err(e) if cli::output::is_broken_pipe(&e) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
