//! Raw samples and train/val splits.
//!
//! Small datasets (IDX, CIFAR) live in one flat `u8` buffer so a 60 000-image split is one
//! allocation; image folders keep only paths and decode on demand, because ImageNet-sized folders do
//! not fit in memory.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::error::{DataError, Result};
use super::image::{decode_image, RawImage};

/// Where the pixels of a split live.
#[derive(Clone, Debug)]
pub enum Samples {
    /// `count` images of identical size in one buffer, image after image, each HWC.
    InMemory {
        data: Vec<u8>,
        count: usize,
        width: usize,
        height: usize,
        channels: usize,
    },
    /// Image files decoded (to RGB) when a batch needs them.
    Files(Vec<PathBuf>),
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Samples::InMemory { count, .. } => *count,
            Samples::Files(paths) => paths.len(),
        }
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A list of samples with their class indices.
#[derive(Clone, Debug)]
pub struct Split {
    pub samples: Samples,
    pub labels: Vec<usize>,
}

impl Split {
    /// Checked constructor: as many labels as samples, and a consistent in-memory buffer.
    pub fn new(samples: Samples, labels: Vec<usize>) -> Result<Self> {
        if let Samples::InMemory {
            data,
            count,
            width,
            height,
            channels,
        } = &samples
        {
            if data.len() != count * width * height * channels {
                return Err(DataError::InvalidImage(format!(
                    "in-memory split of {count} {width}x{height}x{channels} images needs {} bytes, got {}",
                    count * width * height * channels,
                    data.len()
                )));
            }
        }
        if samples.len() != labels.len() {
            return Err(DataError::InvalidImage(format!(
                "split has {} samples but {} labels",
                samples.len(),
                labels.len()
            )));
        }
        Ok(Split { samples, labels })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample `i` as an HWC `u8` image (decoded from disk for file-backed splits).
    pub fn get(&self, i: usize) -> Result<RawImage> {
        if i >= self.len() {
            return Err(DataError::InvalidImage(format!(
                "sample index {i} out of range for a split of {} samples",
                self.len()
            )));
        }
        match &self.samples {
            Samples::InMemory {
                data,
                width,
                height,
                channels,
                ..
            } => {
                let n = width * height * channels;
                // fields are public, so re-check instead of trusting `Split::new` ran
                let bytes = data.get(i * n..(i + 1) * n).ok_or_else(|| {
                    DataError::InvalidImage(format!(
                        "in-memory buffer of {} bytes is too short for sample {i}",
                        data.len()
                    ))
                })?;
                Ok(RawImage {
                    width: *width,
                    height: *height,
                    channels: *channels,
                    data: bytes.to_vec(),
                })
            }
            Samples::Files(paths) => match paths.get(i) {
                Some(p) => decode_image(p),
                None => Err(DataError::InvalidImage(format!(
                    "split has {} labels but only {} files",
                    self.len(),
                    paths.len()
                ))),
            },
        }
    }

    /// How many samples each class has (labels ≥ `num_classes` are ignored).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l) {
                *c += 1;
            }
        }
        counts
    }

    /// The samples at `indices` (out-of-range indices are skipped), in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let indices: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len() && i < self.samples.len())
            .collect();
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let samples = match &self.samples {
            Samples::InMemory {
                data,
                width,
                height,
                channels,
                ..
            } => {
                let n = width * height * channels;
                let mut out = Vec::with_capacity(indices.len() * n);
                for &i in &indices {
                    out.extend_from_slice(data.get(i * n..(i + 1) * n).unwrap_or(&[]));
                }
                Samples::InMemory {
                    data: out,
                    count: indices.len(),
                    width: *width,
                    height: *height,
                    channels: *channels,
                }
            }
            Samples::Files(paths) => {
                Samples::Files(indices.iter().map(|&i| paths[i].clone()).collect())
            }
        };
        Split { samples, labels }
    }

    /// A deterministic, class-balanced subset of at most `n` samples for quick runs and tests.
    ///
    /// Samples of each class are shuffled with `seed`, then classes are visited round-robin, so
    /// every class gets `n / classes` samples (±1) unless it runs out. The result keeps the original
    /// order of the chosen samples, so the subset of a subset is stable.
    pub fn subset(&self, n: usize, seed: u64) -> Split {
        if n >= self.len() {
            return self.clone();
        }
        let num_classes = self.labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            per_class[l].push(i);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for list in &mut per_class {
            list.shuffle(&mut rng);
            list.reverse(); // pop() from the back takes the shuffled front
        }
        let mut chosen = Vec::with_capacity(n);
        while chosen.len() < n {
            for list in &mut per_class {
                if chosen.len() == n {
                    break;
                }
                if let Some(i) = list.pop() {
                    chosen.push(i);
                }
            }
        }
        chosen.sort_unstable();
        self.select(&chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: usize) -> Split {
        let data: Vec<u8> = (0..n * 4).map(|i| (i / 4) as u8).collect();
        let samples = Samples::InMemory {
            data,
            count: n,
            width: 2,
            height: 2,
            channels: 1,
        };
        Split::new(samples, (0..n).map(|i| i % classes).collect()).unwrap()
    }

    #[test]
    fn get_returns_the_right_image_and_rejects_bad_index() {
        let s = toy(5, 2);
        assert_eq!(s.get(3).unwrap().data, vec![3; 4]);
        assert!(s.get(5).is_err());
    }

    #[test]
    fn new_rejects_label_count_mismatch() {
        let samples = Samples::Files(vec![PathBuf::from("a.png")]);
        assert!(Split::new(samples, vec![0, 1]).is_err());
    }

    #[test]
    fn subset_is_deterministic_balanced_and_consistent() {
        let s = toy(100, 4);
        let a = s.subset(20, 7);
        let b = s.subset(20, 7);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.len(), 20);
        assert_eq!(a.class_counts(4), vec![5; 4]);
        for i in 0..a.len() {
            // pixel value encodes the original index, whose label is index % 4
            let orig = a.get(i).unwrap().data[0] as usize;
            assert_eq!(a.labels[i], orig % 4);
        }
        let c = s.subset(20, 8);
        assert_ne!(
            (0..20)
                .map(|i| a.get(i).unwrap().data[0])
                .collect::<Vec<_>>(),
            (0..20)
                .map(|i| c.get(i).unwrap().data[0])
                .collect::<Vec<_>>()
        );
        assert_eq!(s.subset(1000, 1).len(), 100);
    }
}
