//! Loader batches moved to the model's device ahead of the step that needs them.
//!
//! Decoding and augmentation are CPU work on every device, so the loader builds host batches. On
//! a GPU the host-to-device copy of the next batch then runs on its own thread while the current
//! step computes, as a PyTorch `DataLoader(pin_memory=True)` with `non_blocking` copies does, and
//! the training loop receives tensors already on the device. On the CPU a tensor wraps the
//! loader's buffer without copying it, so nothing is moved and no thread is started.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use super::error::{Result, TrainError};
use crate::data::{Batch, LoaderIter};

/// Batches the upload thread keeps ready on the device (two: the next one and the one after,
/// enough to hide a copy that is far shorter than a step, at two batches of device memory).
const UPLOADED_AHEAD: usize = 2;

/// One batch on the model's device.
pub struct DeviceBatch {
    /// `B × C × H × W` images.
    pub images: Tensor,
    /// `B × classes` soft targets, when the loader mixes or smooths (training).
    pub soft_targets: Option<Tensor>,
    /// Hard labels, on the host (accuracy and the confusion matrix are counted there).
    pub labels: Vec<usize>,
    /// Position of the batch in its epoch.
    pub batch_index: usize,
}

impl DeviceBatch {
    fn upload(batch: Batch, classes: usize, device: &Device) -> Result<Self> {
        let images = Tensor::from_vec(batch.images, batch.shape.to_vec(), device)?;
        let b = batch.labels.len();
        let soft_targets = match batch.soft_targets {
            Some(t) if t.len() == b * classes => Some(Tensor::from_vec(t, (b, classes), device)?),
            Some(t) => {
                return Err(TrainError::Config(format!(
                    "the loader produced {} soft-target values for {b} images of {classes} classes",
                    t.len()
                )))
            }
            None => None,
        };
        Ok(DeviceBatch {
            images,
            soft_targets,
            labels: batch.labels,
            batch_index: batch.batch_index,
        })
    }
}

/// The batches of a [`LoaderIter`] on `device`, in the loader's order.
pub struct DeviceBatches {
    source: Source,
}

enum Source {
    /// CPU: each batch is wrapped as it arrives.
    Inline {
        batches: LoaderIter,
        classes: usize,
        device: Device,
    },
    /// Other devices: an upload thread copies batches ahead.
    Uploaded {
        rx: Option<Receiver<Result<DeviceBatch>>>,
        handle: Option<JoinHandle<()>>,
    },
}

/// `batches` on `device`; `classes` is the width of the soft targets.
pub fn on_device(batches: LoaderIter, classes: usize, device: &Device) -> DeviceBatches {
    if device.is_cpu() {
        DeviceBatches {
            source: Source::Inline {
                batches,
                classes,
                device: device.clone(),
            },
        }
    } else {
        uploaded(batches, classes, device)
    }
}

/// The upload-thread path, whatever the device (the CPU tests exercise it through this).
fn uploaded(batches: LoaderIter, classes: usize, device: &Device) -> DeviceBatches {
    let (tx, rx) = sync_channel(UPLOADED_AHEAD);
    let device = device.clone();
    let spawned = std::thread::Builder::new()
        .name("imixer-upload".into())
        .spawn(move || {
            for batch in batches {
                let result = batch
                    .map_err(TrainError::from)
                    .and_then(|b| DeviceBatch::upload(b, classes, &device));
                let failed = result.is_err();
                if tx.send(result).is_err() || failed {
                    return; // the consumer is gone, or the error is delivered
                }
            }
        });
    match spawned {
        Ok(handle) => DeviceBatches {
            source: Source::Uploaded {
                rx: Some(rx),
                handle: Some(handle),
            },
        },
        Err(e) => {
            let (tx, rx) = sync_channel(1);
            let _ = tx.send(Err(TrainError::Shard(format!(
                "cannot start the batch upload thread: {e}"
            ))));
            DeviceBatches {
                source: Source::Uploaded {
                    rx: Some(rx),
                    handle: None,
                },
            }
        }
    }
}

impl Iterator for DeviceBatches {
    type Item = Result<DeviceBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Inline {
                batches,
                classes,
                device,
            } => batches.next().map(|b| {
                b.map_err(TrainError::from)
                    .and_then(|b| DeviceBatch::upload(b, *classes, device))
            }),
            Source::Uploaded { rx, .. } => rx.as_ref()?.recv().ok(),
        }
    }
}

impl Drop for DeviceBatches {
    fn drop(&mut self) {
        if let Source::Uploaded { rx, handle } = &mut self.source {
            // Closing the channel first makes a blocked `send` fail, so the thread ends (and
            // drops its loader iterator, which stops the loader's own threads).
            drop(rx.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::grey_split;
    use crate::data::{EvalTransform, Loader, LoaderConfig};

    fn loader(n: usize) -> Loader {
        let side = 8;
        let split = grey_split(n, side);
        let transform = EvalTransform {
            crop_pct: 1.0,
            ..EvalTransform::spec(side, 1)
        };
        Loader::new(split, transform, LoaderConfig::eval(4)).unwrap()
    }

    fn contents(batches: DeviceBatches) -> Vec<(Vec<f32>, Vec<usize>, usize)> {
        batches
            .map(|b| {
                let b = b.unwrap();
                let x = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (x, b.labels, b.batch_index)
            })
            .collect()
    }

    #[test]
    fn the_upload_thread_delivers_the_loaders_batches_in_order() {
        let l = loader(10);
        let host: Vec<_> = l
            .iter(0)
            .map(|b| {
                let b = b.unwrap();
                (b.images, b.labels, b.batch_index)
            })
            .collect();
        let inline = contents(on_device(l.iter(0), 3, &Device::Cpu));
        let threaded = contents(uploaded(l.iter(0), 3, &Device::Cpu));
        assert_eq!(host.len(), 3);
        assert_eq!(inline, host);
        assert_eq!(threaded, host);
    }

    #[test]
    fn stopping_early_ends_the_upload_thread() {
        let l = loader(40);
        let mut batches = uploaded(l.iter(0), 3, &Device::Cpu);
        assert!(batches.next().unwrap().is_ok());
        drop(batches); // joins the thread: would hang if a blocked send were not released
    }

    #[test]
    fn soft_targets_of_the_wrong_width_are_an_error() {
        let l = loader(4);
        let mut batch = l.batch(0, 0).unwrap();
        batch.soft_targets = Some(vec![0.0; 4 * 2]);
        let e = DeviceBatch::upload(batch, 3, &Device::Cpu).err().unwrap();
        assert!(matches!(e, TrainError::Config(_)), "{e}");
    }
}
