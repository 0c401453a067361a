//! Deterministic, parallel, prefetching batch loader.
//!
//! Determinism: the sample order of an epoch is a `ChaCha8Rng` permutation seeded from
//! `(seed, epoch)`, and every sample's augmentation RNG is seeded from `(seed, epoch, position in
//! the epoch)`; Mixup/CutMix gets one RNG per `(seed, epoch, batch)`. Nothing depends on which
//! thread does the work, so batches are bit-identical for any number of workers, and batch `k` can
//! be produced directly — a resumed run continues mid-epoch with exactly the batches it would have
//! seen.
//!
//! Parallelism: a producer thread builds batches one after another, decoding and augmenting the
//! samples of each batch on a dedicated rayon pool of `workers` threads, and pushes finished
//! batches into a bounded channel of `prefetch` slots, so up to `prefetch` batches are ready
//! before the trainer asks. Errors (e.g. an undecodable image) travel through the channel as
//! `Err`; a panicking worker is caught and reported as `Err` too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::mix::Mixup;
use super::split::Split;
use super::transforms::{Image, Transform};

/// Batching settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order every epoch (train) or keep the stored order (eval).
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    pub seed: u64,
    /// Threads decoding and augmenting samples (0 is treated as 1).
    pub workers: usize,
    /// Finished batches buffered ahead of the consumer (0 is treated as 1).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Training defaults: shuffled, incomplete batch dropped, 4 workers, 4 batches prefetched.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed,
            workers: 4,
            prefetch: 4,
        }
    }

    /// Evaluation defaults: stored order, every sample kept.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::train(batch_size, 0)
        }
    }
}

/// One batch, ready to become tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `B × C × H × W` values, NCHW.
    pub images: Vec<f32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Hard labels (before mixing).
    pub labels: Vec<usize>,
    /// Indices of the samples in the split.
    pub indices: Vec<usize>,
    /// `B × num_classes` soft targets when the loader has a [`Mixup`].
    pub soft_targets: Option<Vec<f32>>,
    /// Position of this batch in the epoch.
    pub batch_index: usize,
}

/// Salts keeping the RNG streams of order, samples and mixing apart.
const ORDER_SALT: u64 = 0x0000_006f_7264_6572; // "order"
const SAMPLE_SALT: u64 = 0x0000_7361_6d70_6c65; // "sample"
const MIX_SALT: u64 = 0x0000_006d_6978_7570; // "mixup"

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-mixed seed from several integers.
fn derive_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x1234_5678_9abc_def0, |h, &p| splitmix64(h ^ splitmix64(p)))
}

/// Everything a batch needs; shared between the consumer and the producer thread.
struct Shared {
    split: Arc<Split>,
    transform: Transform,
    mixup: Option<Mixup>,
    cfg: LoaderConfig,
}

impl Shared {
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.split.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(&[
                self.cfg.seed,
                epoch,
                ORDER_SALT,
            ])));
        }
        order
    }

    fn num_batches(&self) -> usize {
        let (n, b) = (self.split.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn sample(&self, epoch: u64, pos: usize, index: usize) -> Result<Image> {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
            self.cfg.seed,
            epoch,
            SAMPLE_SALT,
            pos as u64,
        ]));
        let raw = self.split.get(index)?;
        self.transform.apply(&raw, &mut rng)
    }

    /// Build batch `k` of `epoch` (`order` is that epoch's permutation), on `pool` if given.
    fn batch(
        &self,
        epoch: u64,
        order: &[usize],
        k: usize,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Batch> {
        let b = self.cfg.batch_size;
        let positions: Vec<usize> = (k * b..((k + 1) * b).min(order.len())).collect();
        let work = || -> Vec<Result<Image>> {
            positions
                .par_iter()
                .map(|&pos| self.sample(epoch, pos, order[pos]))
                .collect()
        };
        let results = match pool {
            Some(p) => p.install(work),
            None => work(),
        };
        let (c, h, w) = self.transform.output_shape();
        let mut images = Vec::with_capacity(positions.len() * c * h * w);
        for r in results {
            let img = r?;
            if (img.c, img.h, img.w) != (c, h, w) {
                return Err(DataError::Worker(format!(
                    "transform produced a {}x{}x{} image, expected {c}x{h}x{w}",
                    img.c, img.h, img.w
                )));
            }
            images.extend_from_slice(&img.data);
        }
        let indices: Vec<usize> = positions.iter().map(|&p| order[p]).collect();
        let labels: Vec<usize> = indices.iter().map(|&i| self.split.labels[i]).collect();
        let shape = [indices.len(), c, h, w];
        let soft_targets = match &self.mixup {
            Some(m) => {
                let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
                    self.cfg.seed,
                    epoch,
                    MIX_SALT,
                    k as u64,
                ]));
                Some(m.apply(&mut images, shape, &labels, &mut rng)?.targets)
            }
            None => None,
        };
        Ok(Batch {
            images,
            shape,
            labels,
            indices,
            soft_targets,
            batch_index: k,
        })
    }
}

/// Batches of a split, transformed, in a reproducible order.
pub struct Loader {
    shared: Arc<Shared>,
}

impl Loader {
    /// Validate the settings and build a loader.
    pub fn new(
        split: Arc<Split>,
        transform: impl Into<Transform>,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        let transform = transform.into();
        transform.validate()?;
        if cfg.batch_size == 0 {
            return Err(DataError::Config("batch size must be positive".into()));
        }
        Ok(Loader {
            shared: Arc::new(Shared {
                split,
                transform,
                mixup: None,
                cfg,
            }),
        })
    }

    /// Also mix every batch with Mixup/CutMix and produce soft targets.
    ///
    /// Fails when some batch would be odd-sized (timm requires even batches).
    pub fn with_mixup(self, mixup: Mixup) -> Result<Self> {
        let s = &self.shared;
        let b = s.cfg.batch_size;
        let last = s.split.len() % b;
        if !b.is_multiple_of(2) || (!s.cfg.drop_last && !last.is_multiple_of(2)) {
            return Err(DataError::Config(format!(
                "Mixup/CutMix needs even batches, but batch size is {b} and the last batch has {} \
                 samples; use an even batch size and drop_last = true",
                if last == 0 { b } else { last }
            )));
        }
        let max_label = s.split.labels.iter().copied().max().unwrap_or(0);
        if max_label >= mixup.config().num_classes {
            return Err(DataError::Config(format!(
                "split has label {max_label} but mixup num_classes is {}",
                mixup.config().num_classes
            )));
        }
        Ok(Loader {
            shared: Arc::new(Shared {
                split: s.split.clone(),
                transform: s.transform.clone(),
                mixup: Some(mixup),
                cfg: s.cfg.clone(),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        self.shared.num_batches()
    }

    /// True when an epoch yields no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The order in which `epoch` visits the split.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.shared.order(epoch)
    }

    /// Build batch `k` of `epoch` synchronously on the calling thread.
    pub fn batch(&self, epoch: u64, k: usize) -> Result<Batch> {
        if k >= self.len() {
            return Err(DataError::Config(format!(
                "batch {k} requested but an epoch has {} batches",
                self.len()
            )));
        }
        self.shared.batch(epoch, &self.shared.order(epoch), k, None)
    }

    /// Iterate over all batches of `epoch`.
    pub fn iter(&self, epoch: u64) -> LoaderIter {
        self.iter_from(epoch, 0)
    }

    /// Iterate over the batches of `epoch` starting at batch `start_batch` (to resume mid-epoch).
    pub fn iter_from(&self, epoch: u64, start_batch: usize) -> LoaderIter {
        let shared = self.shared.clone();
        let total = shared.num_batches();
        let (tx, rx) = sync_channel(shared.cfg.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("imixer-loader".into())
            .spawn(move || {
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(shared.cfg.workers.max(1))
                    .thread_name(|i| format!("imixer-loader-{i}"))
                    .build()
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(DataError::Worker(format!(
                            "cannot start worker threads: {e}"
                        ))));
                        return;
                    }
                };
                let order = shared.order(epoch);
                for k in start_batch..total {
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        shared.batch(epoch, &order, k, Some(&pool))
                    }))
                    .unwrap_or_else(|p| Err(DataError::Worker(panic_message(&p))));
                    let failed = result.is_err();
                    if tx.send(result).is_err() || failed {
                        return; // consumer gone, or error delivered: stop
                    }
                }
            });
        match handle {
            Ok(h) => LoaderIter {
                rx: Some(rx),
                handle: Some(h),
                remaining: total.saturating_sub(start_batch),
            },
            Err(e) => LoaderIter::failed(DataError::Worker(format!(
                "cannot start loader thread: {e}"
            ))),
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("a worker panicked: {msg}")
}

/// Iterator over the batches of one epoch; yields `Err` once and stops on failure.
pub struct LoaderIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl LoaderIter {
    fn failed(e: DataError) -> Self {
        let (tx, rx) = sync_channel(1);
        let _ = tx.send(Err(e));
        LoaderIter {
            rx: Some(rx),
            handle: None,
            remaining: 1,
        }
    }
}

impl Iterator for LoaderIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(Ok(batch)) => {
                self.remaining -= 1;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.remaining = 0;
                Some(Err(e))
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(DataError::Worker(
                    "loader thread stopped unexpectedly".into(),
                )))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for LoaderIter {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next `send` fail, so it stops promptly.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mix::MixupConfig;
    use crate::data::split::Samples;
    use crate::data::testutil::{grey_split, save_rgb};
    use crate::data::transforms::{EvalTransform, TrainTransform};

    fn split(n: usize) -> Arc<Split> {
        grey_split(n, 12)
    }

    fn cfg(workers: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            shuffle: true,
            drop_last: false,
            seed: 42,
            workers,
            prefetch: 2,
        }
    }

    fn all(loader: &Loader, epoch: u64, start: usize) -> Vec<Batch> {
        loader
            .iter_from(epoch, start)
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn same_seed_same_batches_for_any_worker_count() {
        let t = TrainTransform::spec(8, 3);
        let one = Loader::new(split(22), t.clone(), cfg(1)).unwrap();
        let three = Loader::new(split(22), t.clone(), cfg(3)).unwrap();
        let a = all(&one, 1, 0);
        assert_eq!(a.len(), 6);
        assert_eq!(a, all(&three, 1, 0));
        assert_eq!(a[5].shape, [2, 3, 8, 8]);
        assert_eq!(a[5].images.len(), 2 * 3 * 64);
        // every sample exactly once, labels consistent
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..22).collect::<Vec<_>>());
        assert!(a
            .iter()
            .all(|b| b.indices.iter().zip(&b.labels).all(|(i, l)| i % 3 == *l)));
        // another epoch: another order and other augmentations
        assert_ne!(a[0].indices, all(&one, 2, 0)[0].indices);
        let other_seed = Loader::new(split(22), t, LoaderConfig { seed: 1, ..cfg(1) }).unwrap();
        assert_ne!(a[0].images, all(&other_seed, 1, 0)[0].images);
    }

    #[test]
    fn start_batch_resumes_with_identical_batches() {
        let loader = Loader::new(split(22), TrainTransform::spec(8, 1), cfg(2)).unwrap();
        let full = all(&loader, 3, 0);
        let tail = all(&loader, 3, 4);
        assert_eq!(tail.len(), 2);
        assert_eq!(&full[4..], &tail[..]);
        assert_eq!(loader.batch(3, 4).unwrap(), full[4]);
        assert!(all(&loader, 3, 99).is_empty());
        assert!(loader.batch(3, 6).is_err());
    }

    #[test]
    fn eval_loader_keeps_order_and_drop_last_counts() {
        let loader = Loader::new(
            split(10),
            EvalTransform {
                crop_pct: 1.0,
                ..EvalTransform::spec(12, 1)
            },
            LoaderConfig::eval(4),
        )
        .unwrap();
        let b = all(&loader, 0, 0);
        assert_eq!(
            b.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        let raw = split(10).get(5).unwrap();
        assert_eq!(
            b[1].images[144 + 13],
            (raw.data[13] as f32 / 255.0 - 0.5) / 0.5
        );
        let dropping = Loader::new(
            split(10),
            EvalTransform::spec(12, 1),
            LoaderConfig {
                drop_last: true,
                ..LoaderConfig::eval(4)
            },
        )
        .unwrap();
        assert_eq!(dropping.len(), 2);
    }

    #[test]
    fn mixup_in_loader_is_deterministic_and_requires_even_batches() {
        let mix = Mixup::new(MixupConfig::spec(3)).unwrap();
        let c = LoaderConfig {
            drop_last: true,
            ..cfg(2)
        };
        let a = Loader::new(split(22), TrainTransform::spec(8, 3), c.clone())
            .unwrap()
            .with_mixup(mix.clone())
            .unwrap();
        let b = Loader::new(
            split(22),
            TrainTransform::spec(8, 3),
            LoaderConfig { workers: 1, ..c },
        )
        .unwrap()
        .with_mixup(mix.clone())
        .unwrap();
        let (x, y) = (all(&a, 0, 0), all(&b, 0, 0));
        assert_eq!(x, y);
        assert_eq!(x.len(), 5);
        assert_eq!(x[0].soft_targets.as_ref().unwrap().len(), 4 * 3);
        // 22 % 4 = 2 samples in the last batch: even, fine; 21 % 4 = 1: rejected without drop_last
        assert!(Loader::new(split(21), TrainTransform::spec(8, 3), cfg(1))
            .unwrap()
            .with_mixup(mix.clone())
            .is_err());
        assert!(Loader::new(
            split(22),
            TrainTransform::spec(8, 3),
            LoaderConfig {
                batch_size: 3,
                ..cfg(1)
            }
        )
        .unwrap()
        .with_mixup(mix)
        .is_err());
    }

    #[test]
    fn undecodable_image_is_an_err_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..6 {
            let p = dir.path().join(format!("img{i}.png"));
            if i == 4 {
                std::fs::write(&p, b"garbage bytes, not a PNG").unwrap();
            } else {
                save_rgb(&p, 6, 5, &[i as u8 * 40; 6 * 5 * 3]);
            }
            paths.push(p);
        }
        let s = Arc::new(Split::new(Samples::Files(paths), vec![0, 1, 0, 1, 0, 1]).unwrap());
        let loader = Loader::new(s, EvalTransform::spec(4, 3), LoaderConfig::eval(2)).unwrap();
        let results: Vec<Result<Batch>> = loader.iter(0).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        let e = results[2].as_ref().unwrap_err().to_string();
        assert!(e.contains("img4.png"), "{e}");
        // dropping a half-consumed iterator must not hang
        let mut it = loader.iter(0);
        assert!(it.next().unwrap().is_ok());
        drop(it);
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(Loader::new(
            split(4),
            TrainTransform::spec(8, 3),
            LoaderConfig {
                batch_size: 0,
                ..cfg(1)
            }
        )
        .is_err());
        assert!(Loader::new(
            split(4),
            TrainTransform {
                in_chans: 5,
                ..TrainTransform::spec(8, 3)
            },
            cfg(1)
        )
        .is_err());
    }
}
