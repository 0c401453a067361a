//! Datasets, augmentation and batching for the image classifiers.
//!
//! The module stops at plain `Vec<f32>` NCHW batches plus labels / soft targets so it stays
//! independent of candle; the trainer turns batches into tensors.
//!
//! * [`idx`], [`cifar`] (+ [`cifar_python`], [`pickle`]), [`folder`], [`food101`]: readers for
//!   the on-disk formats users bring (docs/models.md "Data").
//! * [`transforms`]: timm/torchvision-compatible train and eval pipelines on single images.
//! * [`mix`]: timm `Mixup`/CutMix and label smoothing on a batch.
//! * [`loader`]: deterministic, parallel, prefetching, resumable batch iterator.

pub mod cifar;
mod cifar_image;
pub mod cifar_python;
pub mod error;
pub mod folder;
pub mod food101;
pub mod idx;
pub mod image;
pub mod image_check;
pub mod loader;
pub mod mix;
pub mod pickle;
mod split;
pub mod transforms;

#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::{DataError, Result};
pub use image::RawImage;
pub use loader::{Batch, Loader, LoaderConfig, LoaderIter};
pub use mix::{smooth_targets, Mixup, MixupConfig};
pub use split::{Samples, Split};
pub use transforms::{
    EvalTransform, Image, Interpolation, TrainInterpolation, TrainTransform, Transform,
};

/// The dataset formats `imixer` can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST IDX files (28×28 gray, 10 clothing classes).
    FashionMnist,
    /// MNIST IDX files (28×28 gray digits).
    Mnist,
    /// CIFAR-10, binary or python version (32×32 RGB, 10 classes).
    Cifar10,
    /// CIFAR-100, binary or python version (32×32 RGB, 100 fine classes).
    Cifar100,
    /// `root/train/<class>/*.png|jpg` and `root/val/<class>/…` image folders.
    Folder,
    /// Food-101 as its archive extracts: `images/<class>/<id>.jpg` + `meta/{train,test}.txt`.
    Food101,
}

impl DatasetKind {
    /// All kinds, in the order they are documented.
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Folder,
        DatasetKind::Food101,
    ];

    /// The canonical command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Folder => "folder",
            DatasetKind::Food101 => "food101",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match norm.as_str() {
            "fashion-mnist" | "fashionmnist" | "fmnist" => DatasetKind::FashionMnist,
            "mnist" => DatasetKind::Mnist,
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" => DatasetKind::Cifar100,
            "folder" | "image-folder" | "imagefolder" => DatasetKind::Folder,
            "food101" | "food-101" => DatasetKind::Food101,
            _ => {
                return Err(DataError::Config(format!(
                    "unknown dataset '{s}'; expected one of: {}",
                    DatasetKind::ALL.map(DatasetKind::name).join(", ")
                )))
            }
        })
    }
}

/// A loaded dataset: both splits plus what the model needs to know about them.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub train: Split,
    /// The held-out split (IDX/CIFAR/Food-101 "test", folder "val" or "test").
    pub val: Split,
    pub classes: Vec<String>,
    /// Channels of the stored images (1 for (Fashion-)MNIST, 3 otherwise).
    pub channels: usize,
    /// `(height, width)` when every image has the same size (None for image folders, Food-101).
    pub native_size: Option<(usize, usize)>,
}

impl Dataset {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

/// Where a dataset is looked for when the user gives no directory.
///
/// Fashion-MNIST comes from the Debian package `dataset-fashion-mnist`; the others have no
/// system-wide home, so they default to `data/<name>` relative to the working directory.
pub fn default_data_dir(kind: DatasetKind) -> PathBuf {
    match kind {
        DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
        DatasetKind::Mnist => PathBuf::from("data/mnist"),
        // either version's extracted folder below it (torchvision's default root is `data`)
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => PathBuf::from("data"),
        DatasetKind::Folder => PathBuf::from("data/images"),
        // the extracted food-101 folder or the one holding it
        DatasetKind::Food101 => PathBuf::from("data"),
    }
}

/// Load both splits of a dataset of `kind` from `dir`.
pub fn load_dataset(kind: DatasetKind, dir: &Path) -> Result<Dataset> {
    // An unreadable path (a mode-000 parent) is an error naming it, not "not found".
    if !folder::is_directory(dir)? {
        return Err(DataError::missing(
            format!("{kind} data directory"),
            dir,
            download_hint(kind),
        ));
    }
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => idx::load_idx_dataset(kind, dir),
        DatasetKind::Cifar10 => cifar::load_cifar10(dir),
        DatasetKind::Cifar100 => cifar::load_cifar100(dir),
        DatasetKind::Folder => folder::load_folder(dir),
        DatasetKind::Food101 => food101::load_food101(dir),
    }
}

/// What to tell a user whose data is missing.
pub(crate) fn download_hint(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::FashionMnist => {
            "Install it with `apt-get install dataset-fashion-mnist` (files land in \
             /usr/share/datasets/fashion-mnist) or point --data-dir at a folder holding the four \
             train-/t10k- IDX files"
        }
        DatasetKind::Mnist => {
            "Point --data-dir at a folder holding train-images-idx3-ubyte[.gz], \
             train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
        }
        DatasetKind::Cifar10 => {
            "Extract the binary (cifar-10-binary.tar.gz) or python version (cifar-10-python.tar.gz, \
             what torchvision downloads) and point --data-dir at cifar-10-batches-bin or \
             cifar-10-batches-py, or at the folder holding it"
        }
        DatasetKind::Cifar100 => {
            "Extract the binary (cifar-100-binary.tar.gz) or python version \
             (cifar-100-python.tar.gz, what torchvision downloads) and point --data-dir at \
             cifar-100-binary or cifar-100-python, or at the folder holding it"
        }
        DatasetKind::Folder => {
            "Point --data-dir at a folder with train/<class>/*.png|jpg and val/<class>/… (or test/)"
        }
        DatasetKind::Food101 => {
            "Extract food-101.tar.gz (https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz) and point \
             --data-dir at food-101 or the folder holding it"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_through_strings() {
        for k in DatasetKind::ALL {
            assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!(
            "Fashion_MNIST".parse::<DatasetKind>().unwrap(),
            DatasetKind::FashionMnist
        );
        let err = "imagenet".parse::<DatasetKind>().unwrap_err().to_string();
        assert!(
            err.contains("imagenet") && err.contains("cifar100"),
            "{err}"
        );
    }

    #[test]
    fn missing_dir_is_an_error_naming_it() {
        let dir = Path::new("/nonexistent/imixer-data-test");
        for k in DatasetKind::ALL {
            let err = load_dataset(k, dir).unwrap_err().to_string();
            assert!(err.contains("/nonexistent/imixer-data-test"), "{err}");
        }
    }

    #[test]
    fn fashion_mnist_smoke_test_on_real_files() {
        let dir = default_data_dir(DatasetKind::FashionMnist);
        if !dir.join("train-images-idx3-ubyte.gz").exists()
            && !dir.join("train-images-idx3-ubyte").exists()
        {
            println!(
                "skipping: Fashion-MNIST not installed at {} (apt-get install dataset-fashion-mnist)",
                dir.display()
            );
            return;
        }
        let ds = load_dataset(DatasetKind::FashionMnist, &dir).unwrap();
        assert_eq!(ds.train.len(), 60_000);
        assert_eq!(ds.val.len(), 10_000);
        assert_eq!(ds.classes.len(), 10);
        assert_eq!(ds.classes[9], "Ankle boot");
        assert_eq!(ds.channels, 1);
        assert_eq!(ds.native_size, Some((28, 28)));
        assert!(ds
            .train
            .labels
            .iter()
            .chain(&ds.val.labels)
            .all(|&l| l < 10));
        // Fashion-MNIST is balanced: 6000 train / 1000 test images per class.
        assert_eq!(ds.train.class_counts(10), vec![6000; 10]);
        assert_eq!(ds.val.class_counts(10), vec![1000; 10]);
        let img = ds.train.get(0).unwrap();
        assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
        assert!(img.data.iter().any(|&v| v > 0));
    }
}
