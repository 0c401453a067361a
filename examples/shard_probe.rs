//! Probe: does data parallelism beat intra-op threading for the small models? Runs the
//! fmnist-tiny train step either as one batch with 2-thread ops (`shard_probe 1 FAMILY`) or as
//! two single-threaded half-batch shards run concurrently, gradients summed
//! (`shard_probe 2 FAMILY`). Families without spectral norm only (shards would race on the
//! SN buffers). Measured: mixer 991–1034 ms vs 855–904 ms (≈ 14 % faster), see BENCHMARKS.md.
use candle_core::{DType, Device, Tensor};
use imixer::bench::bench_config;
use imixer::config::Family;
use imixer::layers::ForwardCtx;
use imixer::optim::{AdamW, AdamWConfig};
use imixer::MixerNet;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let shards: usize = std::env::args().nth(1).unwrap().parse()?;
    // A family (fmnist-tiny benchmark config, batch 128) or a registered model name (batch
    // from the third argument, default 64).
    let name = std::env::args().nth(2).unwrap();
    let inner = if shards > 1 || std::env::var_os("PROBE_ONE_THREAD").is_some() {
        1
    } else {
        2
    };
    std::env::set_var("RAYON_NUM_THREADS", inner.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", inner.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()?;
    let (cfg, batch) = match name.parse::<Family>() {
        Ok(family) => bench_config("fmnist-tiny", family, &Default::default())?,
        Err(_) => (
            imixer::registry::lookup(&name).map_err(anyhow::Error::msg)?,
            std::env::args().nth(3).map_or(Ok(64), |b| b.parse())?,
        ),
    };
    let dev = Device::Cpu;
    let model = MixerNet::new(&cfg, 0, &dev)?;
    let x = imixer::params::seeded_normal(0, &[batch, 1, 28, 28], 1.0, DType::F32, &dev)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let labels = Tensor::new(labels.as_slice(), &dev)?;
    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            lr: 5e-4,
            ..AdamWConfig::default()
        },
    )?;
    let per = batch / shards;
    // One single-thread rayon pool per shard, so that our kernels' parallel loops stay on the
    // shard's own thread.
    let pools: Vec<rayon::ThreadPool> = (0..shards)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(inner).build())
        .collect::<Result<_, _>>()?;
    let mut times = vec![];
    for step in 0..23 {
        let t = Instant::now();
        let grads: Vec<candle_core::backprop::GradStore> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..shards)
                .map(|i| {
                    let (model, x, labels, pool) = (&model, &x, &labels, &pools[i]);
                    s.spawn(move || {
                        pool.install(|| -> candle_core::Result<_> {
                            let xs = x.narrow(0, i * per, per)?;
                            let ls = labels.narrow(0, i * per, per)?;
                            let mut ctx = ForwardCtx::train(i as u64);
                            let logits = model.forward(&xs, &mut ctx)?;
                            let (loss, _, _) = model.loss(&logits, &ls)?;
                            (loss / shards as f64)?.backward()
                        })
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<candle_core::Result<Vec<_>>>()
        })?;
        let mut it = grads.into_iter();
        let mut acc = it.next().unwrap();
        for g in it {
            for e in model.params.params() {
                if let Some(b) = g.get(e.var.as_tensor()) {
                    let s = (acc.get(e.var.as_tensor()).unwrap() + b)?;
                    acc.insert(e.var.as_tensor(), s);
                }
            }
        }
        opt.step(&acc)?;
        if step >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "shards {shards} {name}: median {:.0} ms min {:.0}",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
