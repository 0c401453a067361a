//! Probe: data-parallel shards vs intra-op threading on any registered model (`imixer bench`
//! covers only the PyTorch-baseline configs). Times the train step (forward, loss, backward,
//! AdamW) of MODEL at batch BATCH on 2 threads, the batch split into SHARDS slices:
//!
//! `cargo run --release --example shard_probe -- SHARDS MODEL [BATCH=64]`
//!
//! Measured (BENCHMARKS.md, tenth session): `paramixer_n4_28`, batch 64: one pass 84–101 ms,
//! two shards 74–81 ms.
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use imixer::optim::{AdamW, AdamWConfig};
use imixer::train::{train_step, Shards, Targets};
use imixer::{registry, MixerNet};
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: shard_probe SHARDS MODEL [BATCH]";
    let shards: usize = args.next().context(usage)?.parse()?;
    let name = args.next().context(usage)?;
    let batch: usize = args.next().map_or(Ok(64), |b| b.parse())?;
    imixer::cli::set_threads(2);
    let cfg = registry::lookup(&name).map_err(anyhow::Error::msg)?;
    let dev = Device::Cpu;
    let model = MixerNet::new(&cfg, 0, &dev)?;
    let shape = [batch, cfg.in_chans, cfg.img_size, cfg.img_size];
    let x = imixer::params::seeded_normal(0, &shape, 1.0, DType::F32, &dev)?;
    let labels: Vec<u32> = (0..batch as u32)
        .map(|i| i % cfg.num_classes as u32)
        .collect();
    let labels = Tensor::new(labels.as_slice(), &dev)?;
    let mut opt = AdamW::new(&model.params, AdamWConfig::default())?;
    let shards = Shards::new(shards, 2)?;
    let mut times = vec![];
    for step in 0..23 {
        let t = Instant::now();
        train_step(
            &model,
            &mut opt,
            &shards,
            &x,
            Targets::Hard(&labels),
            step,
            None,
        )?;
        if step >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name} batch {batch}, {} shard(s): median {:.0} ms, min {:.0} ms",
        shards.count(),
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
