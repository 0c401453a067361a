//! The `imixer` command-line tool (all logic lives in the library's `cli` module).

// mimalloc: candle allocates a fresh buffer for every op result; glibc malloc returns large
// buffers to the OS and page-faults them back every step, which dominated small train steps.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = imixer::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
