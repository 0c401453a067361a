//! Using a run's checkpoint after training: `eval` and `inspect` take the data set from it and
//! refuse data that does not fit the model (channels, image size, classes); `train
//! --initial-checkpoint` fine-tunes from it, re-initialising the head for a new class count.
//!
//! Tiny generated data sets in the real on-disk formats and tiny models keep every run to
//! seconds.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use common::*;
use imixer::config::Family;
use imixer::data::DatasetKind;
use imixer::train::{train, RunOptions, TrainConfig};
use imixer::MixerNet;

const LIMIT: Duration = Duration::from_secs(120);

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// One short epoch of a tiny model on `data` (format `kind`) into `out`.
fn one_epoch(
    kind: DatasetKind,
    data: &Path,
    out: &Path,
    model: imixer::ModelConfig,
) -> TrainConfig {
    let cfg = TrainConfig {
        model_config: Some(model),
        dataset: kind,
        data_dir: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        epochs: 1,
        cooldown_epochs: 0,
        warmup_epochs: 0.5,
        batch_size: 8,
        eval_batch_size: 16,
        workers: 1,
        threads: 1,
        ..TrainConfig::defaults_for(kind)
    };
    train(&cfg, &RunOptions::default()).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
    cfg
}

/// The generated data sets: CIFAR-10 (named classes), Fashion-MNIST and MNIST layouts (IDX),
/// CIFAR-100.
struct Data {
    cifar10: PathBuf,
    cifar10_names: Vec<String>,
    idx: PathBuf,
    cifar100: PathBuf,
}

fn data(root: &Path) -> Data {
    let cifar10 = root.join("c10");
    let cifar10_names: Vec<String> = (0..10).map(|i| format!("thing{i}")).collect();
    write_cifar10(&cifar10, 8, 10, &cifar10_names);
    let idx = root.join("idx");
    write_idx_dataset(&idx, 48, 20, false);
    let cifar100 = write_cifar100(&root.join("c100"), 20, 10);
    Data {
        cifar10,
        cifar10_names,
        idx,
        cifar100,
    }
}

#[test]
fn eval_and_inspect_trust_the_checkpoint_and_refuse_data_that_does_not_fit() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let run = dir.path().join("run");
    one_epoch(
        DatasetKind::Cifar10,
        &d.cifar10,
        &run,
        tiny_model(Family::Mixer, 32, 3, 8),
    );
    let best = s(&run.join("best.safetensors"));
    let png = s(&dir.path().join("c.png"));

    // No --dataset, no --data-dir: the run's CIFAR-10 from the run's directory.
    let o = run_bin(
        &[
            "eval",
            "--checkpoint",
            &best,
            "--json",
            "--confusion-png",
            &png,
        ],
        LIMIT,
    )
    .ok("eval with the checkpoint's data set");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["dataset"], "cifar10");
    assert_eq!(v["data_dir"], s(&d.cifar10));
    assert_eq!(v["images"], 10, "the generated CIFAR-10 test batch");
    assert_eq!(v["classes"], serde_json::json!(d.cifar10_names));

    // A CIFAR-10 model on Fashion-MNIST: refused, naming both, instead of scored on grey
    // images copied into RGB.
    let idx = s(&d.idx);
    let eval_on = |kind: &str, dir: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            &best,
            "--dataset",
            kind,
            "--data-dir",
            dir,
            "--confusion-png",
            &png,
        ];
        args.extend_from_slice(extra);
        run_bin(&args, LIMIT)
    };
    let o = eval_on("fashion-mnist", &idx, &[]).failed("CIFAR-10 model on Fashion-MNIST");
    for needle in [
        &best,
        "32×32×3",
        "fashion-mnist",
        "1-channel",
        "copied into RGB",
        "--adapt-images",
    ] {
        assert!(o.stderr.contains(needle), "no {needle:?} in: {}", o.stderr);
    }
    assert!(
        o.stdout.trim().is_empty(),
        "no result on failure: {}",
        o.stdout
    );
    // Converting the images knowingly still meets the classes: other names, same count.
    let o = eval_on("mnist", &idx, &["--adapt-images"]).failed("CIFAR-10 model on MNIST");
    for needle in ["\"thing0\"", "\"0\"", "classes"] {
        assert!(o.stderr.contains(needle), "no {needle:?} in: {}", o.stderr);
    }
    // … and another class count.
    let c100 = s(&d.cifar100);
    let o = eval_on("cifar100", &c100, &[]).failed("CIFAR-10 model on CIFAR-100");
    assert!(
        o.stderr.contains("10 classes") && o.stderr.contains("has 100"),
        "{}",
        o.stderr
    );

    // inspect feeds the fixed-point analysis from the run's data set, and refuses another.
    let o = run_bin(
        &["inspect", "--checkpoint", &best, "--images", "2", "--json"],
        LIMIT,
    )
    .ok("inspect with the checkpoint's data set");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["inputs"], "2 held-out images of cifar10");
    let o = run_bin(
        &[
            "inspect",
            "--checkpoint",
            &best,
            "--dataset",
            "mnist",
            "--data-dir",
            &idx,
        ],
        LIMIT,
    )
    .failed("inspect of a CIFAR-10 model on MNIST");
    assert!(o.stderr.contains("1-channel"), "{}", o.stderr);

    // A file without a training configuration names no data set: --dataset is asked for.
    let bare = dir.path().join("bare.safetensors");
    MixerNet::load(&run.join("best.safetensors"), None, &Device::Cpu)
        .unwrap()
        .save(&bare)
        .unwrap();
    let o = run_bin(&["eval", "--checkpoint", &s(&bare)], LIMIT).failed("eval of a bare model");
    assert!(
        o.stderr.contains("--dataset") && o.stderr.contains("bare.safetensors"),
        "{}",
        o.stderr
    );
    let o = run_bin(
        &[
            "eval",
            "--checkpoint",
            &s(&bare),
            "--dataset",
            "cifar10",
            "--data-dir",
            &s(&d.cifar10),
            "--confusion-png",
            &png,
            "--json",
        ],
        LIMIT,
    )
    .ok("eval of a bare model on its data set");
    assert!(o.stdout.contains("\"images\":10"), "{}", o.stdout);
}

/// `lr = 0` everywhere: the optimizer leaves every weight where fine-tuning put it.
fn frozen(cfg: TrainConfig) -> TrainConfig {
    TrainConfig {
        lr: Some(0.0),
        min_lr: 0.0,
        warmup_lr: 0.0,
        warmup_epochs: 0.0,
        ..cfg
    }
}

#[test]
fn fine_tuning_keeps_the_weights_and_resets_the_head_for_new_classes() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let idx = root.join("idx");
    write_idx_dataset(&idx, 48, 20, false);
    let folder = root.join("folder");
    write_image_folder(&folder, &["cat", "dog", "fish"], 6, 2);
    let source_run = root.join("source");
    let gray = tiny_model(Family::Mixer, 28, 1, 7);
    one_epoch(DatasetKind::FashionMnist, &idx, &source_run, gray.clone());
    let source = source_run.join("best.safetensors");
    let src = MixerNet::load(&source, None, &Device::Cpu).unwrap();

    // Three classes from a ten-class checkpoint, with the optimizer frozen: every weight but
    // the head is the checkpoint's, the head is a fresh one (timm: zeros) of three rows.
    let out = root.join("ft");
    let cfg = TrainConfig {
        model_config: Some(gray.clone()),
        dataset: DatasetKind::Folder,
        data_dir: Some(folder.clone()),
        out: out.clone(),
        epochs: 1,
        cooldown_epochs: 0,
        warmup_epochs: 0.0,
        batch_size: 6,
        eval_batch_size: 6,
        workers: 1,
        threads: 1,
        initial_checkpoint: Some(source.clone()),
        ..TrainConfig::defaults_for(DatasetKind::Folder)
    };
    train(&frozen(cfg.clone()), &RunOptions::default()).unwrap();
    let tuned = MixerNet::load(&out.join("last.safetensors"), None, &Device::Cpu).unwrap();
    assert_eq!(tuned.config.num_classes, 3);
    let (mut same, mut heads) = (0, 0);
    for e in tuned.params.entries() {
        let got = values(&tuned, &e.name);
        if e.name.starts_with("head.") {
            assert_eq!(e.var.dims()[0], 3, "{}", e.name);
            assert!(
                got.iter().all(|v| *v == 0),
                "{} is not fresh (+0.0)",
                e.name
            );
            heads += 1;
        } else {
            assert_eq!(got, values(&src, &e.name), "{} not carried over", e.name);
            same += 1;
        }
    }
    assert_eq!(heads, 2);
    assert!(same > 10, "{same} tensors carried over");
    // The run really starts afresh: a new optimizer (one step per batch) and schedule.
    assert_eq!(run_state(&out.join("last.safetensors")).step, 3);

    // Through the binary, with the model taken from the checkpoint: the run says what it did.
    let out2 = root.join("ft-cli");
    let o = run_bin(
        &[
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            &s(&folder),
            "--initial-checkpoint",
            &s(&source),
            "--out",
            &s(&out2),
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--cooldown-epochs",
            "0",
            "--batch-size",
            "6",
            "--threads",
            "1",
            "--json",
        ],
        LIMIT,
    )
    .ok("fine-tuning through the CLI");
    for needle in ["fine-tuning", "re-initialised", "10 classes", "3"] {
        assert!(o.stderr.contains(needle), "no {needle:?} in: {}", o.stderr);
    }
    let saved: TrainConfig =
        toml::from_str(&fs::read_to_string(out2.join("config.toml")).unwrap()).unwrap();
    let model = saved.model_config.expect("the checkpoint's model recorded");
    assert_eq!(
        (model.img_size, model.patch_size, model.embed_dim),
        (28, 7, 32)
    );

    // Another token count: a clear error before any run directory exists.
    let out3 = root.join("ft-tokens");
    let err = train(
        &TrainConfig {
            model_config: Some(tiny_model(Family::Mixer, 28, 1, 4)),
            out: out3.clone(),
            ..cfg.clone()
        },
        &RunOptions::default(),
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "16 tokens",
        "49 tokens",
        "img_size 28 / patch 7",
        "best.safetensors",
    ] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert!(
        !out3.exists(),
        "a refused fine-tune left {}",
        out3.display()
    );
    // A missing checkpoint is named.
    let err = train(
        &TrainConfig {
            initial_checkpoint: Some(root.join("nope.safetensors")),
            out: out3.clone(),
            ..cfg
        },
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope.safetensors"), "{err:#}");
    assert!(
        matches!(
            err.root(),
            imixer::train::TrainError::Checkpoint(c)
                if matches!(c.root(), imixer::checkpoint::CheckpointError::File(f) if f.path.ends_with("nope.safetensors"))
        ),
        "{err:?}"
    );
    assert!(!out3.exists());
}

fn values(m: &MixerNet, name: &str) -> Vec<u32> {
    let e = m.params.get(name).unwrap();
    let v: Vec<f32> = e.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}
