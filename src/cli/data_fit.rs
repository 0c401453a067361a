//! Which data a checkpoint is evaluated on, and whether that data fits the model.
//!
//! A run's checkpoint names the data set it trained on (its saved training config), so `eval`
//! and `inspect` default to it; a flag overrides it. Data the model was not trained on must fit
//! the model exactly — the same channels and image size, the same classes in the same order —
//! because the loader would otherwise convert it silently (grey copied into RGB, images resized)
//! and the scores would be of a different task. `--adapt-images` accepts the conversion
//! knowingly (the papers evaluate CIFAR-10 upscaled to 224 this way).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use imixer::config::ModelConfig;
use imixer::data::{self, Dataset, DatasetKind};

/// Where a run's data came from, as its saved training config says.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedOn {
    pub dataset: DatasetKind,
    /// The run's `--data-dir`, when it gave one.
    pub data_dir: Option<PathBuf>,
}

/// The data set to use and whether it is the one the run trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct DataChoice {
    pub kind: DatasetKind,
    pub dir: PathBuf,
    pub trained_on_it: bool,
}

/// The data set of the flags, else the run's; its directory from the flag, else the run's (for
/// the run's data set), else the data set's default location.
pub fn choose(
    flag_kind: Option<DatasetKind>,
    flag_dir: Option<&Path>,
    trained: Option<&TrainedOn>,
    checkpoint: &Path,
) -> Result<DataChoice> {
    let Some(kind) = flag_kind.or(trained.map(|t| t.dataset)) else {
        bail!(
            "{} carries no training configuration naming its data set (a reference checkpoint?): pass --dataset",
            checkpoint.display()
        );
    };
    let trained_on_it = trained.is_some_and(|t| t.dataset == kind);
    let dir = match (flag_dir, trained) {
        (Some(d), _) => d.to_path_buf(),
        (
            None,
            Some(TrainedOn {
                data_dir: Some(d), ..
            }),
        ) if trained_on_it => d.clone(),
        _ => data::default_data_dir(kind),
    };
    Ok(DataChoice {
        kind,
        dir,
        trained_on_it,
    })
}

/// Data the model was not trained on must have its channels and image size, unless `adapt`.
pub fn check_images(
    model: &ModelConfig,
    ds: &Dataset,
    choice: &DataChoice,
    adapt: bool,
    checkpoint: &Path,
) -> Result<()> {
    if choice.trained_on_it || adapt {
        return Ok(());
    }
    let (size, chans) = (model.img_size, model.in_chans);
    let what = format!(
        "{} takes {size}×{size}×{chans} images but {} ({}) holds",
        checkpoint.display(),
        choice.kind,
        choice.dir.display()
    );
    let remedy = "evaluate on the data set the model was trained on, or pass --adapt-images to convert the images anyway";
    if ds.channels != chans {
        let how = if chans == 3 {
            "grey images would be copied into RGB"
        } else {
            "RGB images would be averaged to grey"
        };
        bail!("{what} {}-channel images: {how}; {remedy}", ds.channels);
    }
    if let Some((h, w)) = ds.native_size {
        if (h, w) != (size, size) {
            bail!("{what} {h}×{w} images: they would be resized to {size}×{size}; {remedy}");
        }
    }
    Ok(())
}

/// The model's classes must be the data set's: the same count, and the same names in the same
/// order when the checkpoint stores its names (else label k would mean another class).
pub fn check_classes(
    model: &ModelConfig,
    stored: Option<&[String]>,
    ds: &Dataset,
    choice: &DataChoice,
    checkpoint: &Path,
) -> Result<()> {
    let (k, theirs) = (model.num_classes, &ds.classes);
    let data = format!("{} ({})", choice.kind, choice.dir.display());
    if k != theirs.len() {
        bail!(
            "{} has {k} classes but {data} has {}: evaluate on the data set the model was trained on",
            checkpoint.display(),
            theirs.len()
        );
    }
    if let Some(names) = stored {
        if let Some(i) = (0..k).find(|&i| names[i] != theirs[i]) {
            bail!(
                "{}'s classes are not those of {data}: class {i} is {:?} in the checkpoint but {:?} in the data ({} vs {}); evaluate on the data set the model was trained on",
                checkpoint.display(),
                names[i],
                theirs[i],
                preview(names),
                preview(theirs)
            );
        }
    }
    Ok(())
}

/// The first few names of a class list.
fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    let more = if names.len() > 4 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imixer::data::{Samples, Split};

    fn empty() -> Split {
        Split::new(Samples::Files(Vec::new()), Vec::new()).unwrap()
    }

    fn dataset(
        kind: DatasetKind,
        channels: usize,
        size: Option<usize>,
        classes: &[&str],
    ) -> Dataset {
        Dataset {
            kind,
            train: empty(),
            val: empty(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            channels,
            native_size: size.map(|s| (s, s)),
        }
    }

    fn model(size: usize, chans: usize, classes: usize) -> ModelConfig {
        ModelConfig {
            img_size: size,
            in_chans: chans,
            patch_size: 4,
            num_classes: classes,
            ..ModelConfig::default()
        }
    }

    const CKPT: &str = "run/best.safetensors";

    #[test]
    fn the_run_names_the_data_unless_a_flag_does() {
        let ckpt = Path::new(CKPT);
        let run = TrainedOn {
            dataset: DatasetKind::Cifar10,
            data_dir: Some("my/cifar".into()),
        };
        let c = choose(None, None, Some(&run), ckpt).unwrap();
        assert_eq!(
            (c.kind, c.dir.as_path(), c.trained_on_it),
            (DatasetKind::Cifar10, Path::new("my/cifar"), true)
        );
        let c = choose(Some(DatasetKind::Mnist), None, Some(&run), ckpt).unwrap();
        assert_eq!(c.dir, data::default_data_dir(DatasetKind::Mnist));
        assert!(!c.trained_on_it);
        let c = choose(None, Some(Path::new("other")), Some(&run), ckpt).unwrap();
        assert_eq!(
            (c.dir.as_path(), c.trained_on_it),
            (Path::new("other"), true)
        );
        let err = choose(None, None, None, ckpt).unwrap_err().to_string();
        assert!(err.contains(CKPT) && err.contains("--dataset"), "{err}");
    }

    #[test]
    fn data_that_does_not_fit_is_an_error_naming_both() {
        let ckpt = Path::new(CKPT);
        let fmnist = dataset(DatasetKind::FashionMnist, 1, Some(28), &["T-shirt/top"; 10]);
        let other = |kind| DataChoice {
            kind,
            dir: "d".into(),
            trained_on_it: false,
        };
        let cifar_model = model(32, 3, 10);
        let choice = other(DatasetKind::FashionMnist);
        let err = check_images(&cifar_model, &fmnist, &choice, false, ckpt)
            .unwrap_err()
            .to_string();
        for needle in [
            CKPT,
            "32×32×3",
            "fashion-mnist",
            "1-channel",
            "copied into RGB",
            "--adapt-images",
        ] {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
        // Same channels, other size.
        let err = check_images(&model(32, 1, 10), &fmnist, &choice, false, ckpt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("28×28 images") && err.contains("resized to 32×32"),
            "{err}"
        );
        // The run's own data set, --adapt-images, or a fitting one pass.
        let own = DataChoice {
            trained_on_it: true,
            ..choice.clone()
        };
        check_images(&cifar_model, &fmnist, &own, false, ckpt).unwrap();
        check_images(&cifar_model, &fmnist, &choice, true, ckpt).unwrap();
        check_images(&model(28, 1, 10), &fmnist, &choice, false, ckpt).unwrap();

        // Classes: the count, then the names in order.
        let err = check_classes(&model(28, 1, 100), None, &fmnist, &choice, ckpt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("100 classes") && err.contains("has 10"),
            "{err}"
        );
        let digits: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let err = check_classes(&model(28, 1, 10), Some(&digits), &fmnist, &choice, ckpt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"0\"") && err.contains("\"T-shirt/top\""),
            "{err}"
        );
        let names = fmnist.classes.clone();
        check_classes(&model(28, 1, 10), Some(&names), &fmnist, &choice, ckpt).unwrap();
        check_classes(&model(28, 1, 10), None, &fmnist, &choice, ckpt).unwrap();
    }
}
