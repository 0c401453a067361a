//! Data-parallel shards: a batch split into a fixed number of row slices that run side by side,
//! each on its own thread, their gradients summed in shard order.
//!
//! Why: the matrices of the small models are too small for intra-op threading to scale. A
//! single-threaded op has no fork/join or barrier per call, so two half-batches side by side, one
//! per core, beat every op split over both cores (`cargo run --release --example shard_probe --
//! {1,2} paramixer_n4_28 64 2`; the measurements are in BENCHMARKS.md at commit 91098eb).
//!
//! Determinism: results depend on the shard count (it decides in which order the weight
//! gradients sum over the batch) but never on the thread count. Shard `i` always gets the same
//! rows and the same seed, every op inside it is thread-count invariant, and the sums run in
//! shard order. With fewer threads than shards, the shards simply take turns.

use std::ops::Range;

use candle_core::Tensor;

use super::error::{Result, TrainError};
use crate::layers::ForwardCtx;
use crate::MixerNet;

/// How a batch is split and where the slices run.
pub struct Shards {
    count: usize,
    /// One pool per concurrent lane; shard `i` runs on lane `i % lanes.len()`.
    lanes: Vec<rayon::ThreadPool>,
    threads_per_lane: usize,
}

impl Shards {
    /// `count` shards per batch on `threads` compute threads (0: all cores). One shard runs on
    /// the calling thread with the global pools, exactly as an unsharded step.
    pub fn new(count: usize, threads: usize) -> Result<Self> {
        if count < 1 {
            return Err(TrainError::Config(format!(
                "--shards must be at least 1 (got {count})"
            )));
        }
        let threads = if threads > 0 {
            threads
        } else {
            std::thread::available_parallelism().map_or(1, |p| p.get())
        };
        let lane_count = if count == 1 { 0 } else { count.min(threads) };
        let threads_per_lane = (threads / lane_count.max(1)).max(1);
        let lanes = (0..lane_count)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads_per_lane)
                    .thread_name(move |t| format!("imixer-shard{i}-{t}"))
                    .build()
                    .map_err(|e| {
                        TrainError::Shard(format!("could not start the shard thread pools: {e}"))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            count,
            lanes,
            threads_per_lane,
        })
    }

    /// [`Shards::new`] on the CPU; one shard on any other device, where the device itself
    /// parallelises every op and the shard threads would only queue work for it. Results on a
    /// GPU therefore match a one-shard CPU run up to the device's rounding, not a `count`-shard
    /// one.
    pub fn for_device(count: usize, threads: usize, device: &candle_core::Device) -> Result<Self> {
        if device.is_cpu() {
            Self::new(count, threads)
        } else {
            Self::new(1, threads)
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The row ranges of a batch of `b`: sizes differ by at most one (the first `b % count`
    /// shards get the extra row); empty shards (b < count) are left out.
    pub fn split(&self, b: usize) -> Vec<Range<usize>> {
        let (base, extra) = (b / self.count, b % self.count);
        let mut start = 0;
        (0..self.count)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let r = start..start + len;
                start += len;
                r
            })
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Runs `f(i, rows)` for every shard of a batch of `b` and returns the results in shard
    /// order. Shards on different lanes run concurrently, each limited to its lane's threads.
    pub fn run<R: Send>(
        &self,
        b: usize,
        f: impl Fn(usize, Range<usize>) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let ranges = self.split(b);
        if self.lanes.is_empty() {
            return ranges
                .into_iter()
                .enumerate()
                .map(|(i, r)| f(i, r))
                .collect();
        }
        let lanes = self.lanes.len();
        let tpl = self.threads_per_lane;
        let (f, ranges) = (&f, &ranges);
        let run_lane = |lane: usize| -> Vec<(usize, Result<R>)> {
            self.lanes[lane].install(|| {
                (lane..ranges.len())
                    .step_by(lanes)
                    .map(|i| {
                        let r = ranges[i].clone();
                        (i, candle_core::utils::with_num_threads(tpl, || f(i, r)))
                    })
                    .collect()
            })
        };
        let mut done: Vec<(usize, Result<R>)> = std::thread::scope(|s| {
            let others: Vec<_> = (1..lanes.min(ranges.len()))
                .map(|lane| s.spawn(move || run_lane(lane)))
                .collect();
            let mut done = run_lane(0);
            for h in others {
                done.extend(
                    h.join()
                        .map_err(|_| TrainError::Shard("a batch shard panicked".into()))?,
                );
            }
            Ok::<_, TrainError>(done)
        })?;
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }
}

impl Shards {
    /// Eval-mode logits of `images`, the shards run side by side; rows in batch order. As
    /// `MixerNet::infer`, no backward graph is recorded; the spectral-norm σ buffers end as an
    /// unsharded eval forward leaves them (shard 0's, identical in every shard).
    pub fn infer(&self, model: &MixerNet, images: &Tensor) -> Result<Tensor> {
        if self.count == 1 {
            return Ok(model.infer(images)?);
        }
        let parts = self.run(images.dim(0)?, |_, rows| {
            let x = images.narrow(0, rows.start, rows.len())?;
            let mut ctx = ForwardCtx::eval();
            let logits = candle_core::backprop::no_grad(|| model.forward(&x, &mut ctx))?;
            Ok((logits, ctx.sn))
        })?;
        if let Some((_, sn)) = parts.first() {
            sn.commit()?;
        }
        let logits: Vec<Tensor> = parts.into_iter().map(|(l, _)| l).collect();
        Ok(Tensor::cat(&logits, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_batch_in_order_with_sizes_within_one() {
        let s = Shards::new(3, 1).unwrap();
        assert_eq!(s.split(8), vec![0..3, 3..6, 6..8]);
        assert_eq!(s.split(2), vec![0..1, 1..2]);
        assert_eq!(Shards::new(1, 2).unwrap().split(5), vec![0..5]);
    }

    #[test]
    fn results_come_back_in_shard_order_whatever_the_lanes() {
        for threads in [1, 2, 3] {
            let s = Shards::new(4, threads).unwrap();
            let out = s
                .run(10, |i, r| {
                    Ok((i, r.len(), candle_core::utils::get_num_threads()))
                })
                .unwrap();
            let ids: Vec<_> = out.iter().map(|o| (o.0, o.1)).collect();
            assert_eq!(ids, vec![(0, 3), (1, 3), (2, 2), (3, 2)]);
            // Each shard's ops are capped to its lane's share of the threads.
            assert!(out.iter().all(|o| o.2 == (threads / threads.min(4)).max(1)));
        }
    }

    #[test]
    fn a_failing_shard_fails_the_run() {
        let s = Shards::new(2, 2).unwrap();
        let err = s
            .run(4, |i, _| {
                if i == 1 {
                    return Err(TrainError::Shard(format!("shard {i} failed")));
                }
                Ok(())
            })
            .unwrap_err();
        assert!(err.to_string().contains("shard 1 failed"));
        assert!(Shards::new(0, 2).is_err());
    }
}
