//! Probe: data-parallel shards vs intra-op threading on any registered model (`imixer bench`
//! covers only the PyTorch-baseline configs). Times the train step (forward, loss, backward,
//! AdamW) of MODEL at batch BATCH on THREADS threads, the batch split into SHARDS slices:
//!
//! `cargo run --release --example shard_probe -- SHARDS MODEL [BATCH=64] [THREADS=2]`
//!
//! Measurements: BENCHMARKS.md, history at commit 91098eb. Machine speed can drift, so compare
//! only runs alternated back to back.
use anyhow::{Context, Result};
use imixer::bench::{run_model, Timing};
use imixer::registry;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: shard_probe SHARDS MODEL [BATCH] [THREADS]";
    let shards: usize = args.next().context(usage)?.parse()?;
    let name = args.next().context(usage)?;
    let batch: usize = args.next().map_or(Ok(64), |b| b.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |t| t.parse())?;
    imixer::threads::set_threads(threads);
    let cfg = registry::lookup(&name).map_err(anyhow::Error::msg)?;
    let timing = Timing {
        device: candle_core::Device::Cpu,
        threads,
        shards,
        warmup: 3,
        steps: 20,
        budget_s: 60.0,
    };
    let r = run_model(&name, &cfg, batch, "train", &timing)?;
    println!(
        "{name} batch {batch}, {threads} thread(s), {shards} shard(s): median {:.0} ms, min {:.0} ms",
        r.median_ms, r.min_ms
    );
    Ok(())
}
