//! End-to-end training tests: learning on real Fashion-MNIST, bit-identical resume (in-process
//! and after SIGKILL of the real binary), NaN handling, every on-disk data format, and the CLI's
//! eval / predict / models commands and error messages.
//!
//! Every run uses a tiny model (D = 32, 2 blocks, 16 tokens) so the whole file stays well under
//! a minute and a half in release mode on two cores.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::*;
use imixer::config::Family;
use imixer::data::{self, DatasetKind, MixupConfig};
use imixer::layers::ForwardCtx;
use imixer::train::config::SchedUnit;
use imixer::train::{train, RunOptions, TrainConfig, TrainError};
use imixer::MixerNet;

const METRIC_FIELDS: [&str; 9] = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "seconds",
    "img_per_s",
];

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn opts() -> RunOptions {
    RunOptions::default()
}

fn resume() -> RunOptions {
    RunOptions {
        resume: true,
        ..RunOptions::default()
    }
}

fn stop_after(n: u64, resume: bool) -> RunOptions {
    RunOptions {
        resume,
        stop_after_steps: Some(n),
        ..RunOptions::default()
    }
}

/// Checks `metrics.jsonl` of a finished run: one line per epoch, the documented fields, sane values.
fn check_metrics(run: &Path, epochs: usize) -> Vec<serde_json::Value> {
    let lines = metrics(run);
    assert_eq!(lines.len(), epochs, "one metrics line per epoch: {lines:?}");
    let expected: BTreeSet<&str> = METRIC_FIELDS
        .into_iter()
        .chain(["weight_symmetry"])
        .collect();
    for (e, m) in lines.iter().enumerate() {
        let keys: BTreeSet<&str> = m.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, expected, "fields of metrics line {e}");
        // Block-mean cosines of cos(W_out, W_inᵀ) lie in [−1, 1].
        let sym = m["weight_symmetry"].as_object().unwrap();
        for (k, v) in sym {
            let v = v.as_f64().unwrap_or(f64::NAN);
            assert!(
                k == "w2_w1_ratio" || (-1.0..=1.0).contains(&v),
                "{k} = {v}: {m}"
            );
        }
        assert_eq!(m["epoch"].as_u64(), Some(e as u64));
        for f in &METRIC_FIELDS[1..] {
            let v = m[f]
                .as_f64()
                .unwrap_or_else(|| panic!("{f} of epoch {e} is not a number: {m}"));
            assert!(v.is_finite() && v >= 0.0, "{f} of epoch {e} = {v}");
        }
        for f in ["train_acc", "val_top1", "val_top5"] {
            assert!(m[f].as_f64().unwrap() <= 1.0, "{f} of epoch {e}: {m}");
        }
        assert!(m["val_top5"].as_f64() >= m["val_top1"].as_f64(), "{m}");
    }
    lines
}

fn assert_png(path: &Path) -> (u32, u32) {
    let img =
        image::open(path).unwrap_or_else(|e| panic!("{} is not an image: {e}", path.display()));
    assert!(
        img.width() > 100 && img.height() > 100,
        "{}: {}×{}",
        path.display(),
        img.width(),
        img.height()
    );
    (img.width(), img.height())
}

// -------------------------------------------------------------------------------------------------

#[test]
fn learns_fashion_mnist_subset() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 32,
        // The tiny Mixer learns slowly at the default 2e-3 with a whole warm-up epoch (0.55 after
        // these 375 steps); 1e-2 with a short warm-up reaches ≈ 0.74.
        lr: Some(1e-2),
        warmup_epochs: 0.3,
        sched_on: SchedUnit::Step,
        train_subset: Some(4000),
        val_subset: Some(1000),
        ..fmnist_config(Family::Mixer, &out)
    };
    let t = Instant::now();
    let summary = train(&cfg, &opts()).unwrap();
    eprintln!(
        "learns_fashion_mnist_subset: train {:.1} s, {summary:?}",
        t.elapsed().as_secs_f64()
    );

    // 4000 / 32 = 125 optimizer steps per epoch, 375 in all.
    let st = run_state(&out.join("last.safetensors"));
    assert_eq!((st.epoch, st.next_batch, st.step), (3, 0, 375));
    assert_eq!(summary.epochs, 3);
    assert_eq!(summary.model, "custom");
    assert!(
        summary.final_val_top1 > 0.6,
        "a tiny Mixer should reach well above chance (0.1) on Fashion-MNIST after 375 steps, got top-1 {}",
        summary.final_val_top1
    );
    assert!(
        summary.final_val_top5 > 0.9,
        "top-5 {}",
        summary.final_val_top5
    );
    assert!(
        summary.final_val_loss < 1.2,
        "val loss {}",
        summary.final_val_loss
    );

    let lines = check_metrics(&out, 3);
    let get = |e: usize, f: &str| lines[e][f].as_f64().unwrap();
    assert_eq!(get(2, "val_top1"), summary.final_val_top1);
    assert_eq!(get(2, "val_loss"), summary.final_val_loss);
    assert!(
        get(2, "train_loss") < get(0, "train_loss"),
        "training loss must fall: {lines:?}"
    );
    assert!(
        get(2, "val_loss") < get(0, "val_loss"),
        "val loss must fall: {lines:?}"
    );
    assert!(get(2, "lr") < get(1, "lr"), "cosine decays: {lines:?}");
    // Val accuracies are multiples of 1/1000 (the val subset size).
    for e in 0..3 {
        let k = get(e, "val_top1") * 1000.0;
        assert!(
            (k - k.round()).abs() < 1e-6,
            "val_top1 {} is not k/1000",
            get(e, "val_top1")
        );
    }
    let (best_e, best) = (0..3)
        .map(|e| (e, get(e, "val_top1")))
        .fold((0, -1.0), |a, b| if b.1 > a.1 { b } else { a });
    assert_eq!(summary.best_val_top1, best);
    assert_eq!(summary.best_epoch, Some(best_e));

    for f in [
        "last.safetensors",
        "best.safetensors",
        "config.toml",
        "curves.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing in the run directory");
    }
    assert_png(&out.join("curves.png"));
    let saved: TrainConfig =
        toml::from_str(&fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        saved, cfg,
        "config.toml must round-trip to the run's configuration"
    );
    // best.safetensors: model only, from the best epoch, with the class names.
    let best_file = imixer::checkpoint::read(&out.join("best.safetensors"), &Device::Cpu).unwrap();
    assert!(best_file
        .tensors
        .keys()
        .all(|k| !k.starts_with("optimizer.")));
    assert_eq!(
        run_state(&out.join("best.safetensors")).best_epoch,
        Some(best_e)
    );
    let classes = imixer::train::state::classes(&best_file.metadata).unwrap();
    assert_eq!(classes, FASHION_CLASSES);
}

// -------------------------------------------------------------------------------------------------

/// ParaMixer with drop-path 0.1 and Mixup/CutMix on every batch: every random stream matters.
fn paramixer_cfg(out: &Path) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 16,
        train_subset: Some(320),
        val_subset: Some(100),
        drop_path: 0.1,
        lr: Some(2e-3),
        mixup: MixupConfig {
            prob: 1.0,
            ..MixupConfig::spec(10)
        },
        ..fmnist_config(Family::ParaMixer, out)
    }
}

#[test]
fn resume_is_bit_identical() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg_a = paramixer_cfg(&a);
    let cfg_b = paramixer_cfg(&b);

    let summary_a = train(&cfg_a, &opts()).unwrap();
    // 320 / 16 = 20 steps per epoch, 40 in all.
    assert_eq!(run_state(&a.join("last.safetensors")).step, 40);

    // B: killed (in-process) at step 7 (epoch 0, batch 7), then at step 7 + 20 = 27 (epoch 1,
    // batch 7), then run to completion.
    let err = train(&cfg_b, &stop_after(7, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stopped after 7 steps"), "{err}");
    let st = run_state(&b.join("last.safetensors"));
    assert_eq!((st.epoch, st.next_batch, st.step), (0, 7, 7));
    assert!(!b.join("metrics.jsonl").exists() || metrics(&b).is_empty());

    let err = train(&cfg_b, &stop_after(20, true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stopped after 20 steps"), "{err}");
    let st = run_state(&b.join("last.safetensors"));
    assert_eq!((st.epoch, st.next_batch, st.step), (1, 7, 27));
    assert_eq!(
        metrics(&b).len(),
        1,
        "epoch 0 finished in the second process"
    );

    let summary_b = train(&cfg_b, &resume()).unwrap();
    let (model, opt) =
        assert_bit_identical(&a.join("last.safetensors"), &b.join("last.safetensors"));
    eprintln!("resume_is_bit_identical: {model} model + {opt} optimizer tensors identical");
    assert_bit_identical_model(&a.join("best.safetensors"), &b.join("best.safetensors"));
    assert_eq!(
        run_state(&a.join("last.safetensors")),
        run_state(&b.join("last.safetensors"))
    );
    assert_eq!(summary_a.final_val_top1, summary_b.final_val_top1);
    assert_eq!(
        summary_a.final_val_loss.to_bits(),
        summary_b.final_val_loss.to_bits()
    );
    // Every per-epoch number is the same too, including the train loss/accuracy of the
    // interrupted epochs (their running sums travel in the checkpoint).
    let (ma, mb) = (check_metrics(&a, 2), check_metrics(&b, 2));
    for (x, y) in ma.iter().zip(&mb) {
        for f in [
            "train_loss",
            "train_acc",
            "val_loss",
            "val_top1",
            "val_top5",
            "lr",
        ] {
            assert_eq!(x[f], y[f], "{f} of epoch {}", x["epoch"]);
        }
    }

    // Control: the comparison does see a difference where there is one (another seed).
    let c = dir.path().join("c");
    train(
        &TrainConfig {
            seed: 1,
            epochs: 1,
            ..paramixer_cfg(&c)
        },
        &opts(),
    )
    .unwrap();
    let (diff, _, opt_c) =
        tensor_differences(&a.join("last.safetensors"), &c.join("last.safetensors"));
    assert_eq!(
        diff.len(),
        model + opt,
        "every tensor differs with another seed: {diff:?}"
    );
    assert_eq!(opt_c, opt);

    // Resuming a finished run is a no-op that keeps the checkpoint.
    let before = fs::read(b.join("last.safetensors")).unwrap();
    let again = train(&cfg_b, &resume()).unwrap();
    assert_eq!(again.final_val_top1, summary_b.final_val_top1);
    assert_eq!(fs::read(b.join("last.safetensors")).unwrap(), before);
    assert_eq!(metrics(&b).len(), 2);

    // A run directory is never overwritten by accident, and a changed config cannot resume.
    let err = train(&cfg_b, &opts()).unwrap_err();
    assert!(
        matches!(&err, TrainError::OutputOccupied { dir, .. } if dir == &b),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
    let changed = TrainConfig {
        lr: Some(1e-3),
        ..cfg_b.clone()
    };
    let err = train(&changed, &resume()).unwrap_err();
    let TrainError::ResumeMismatch { differences, .. } = &err else {
        panic!("a ResumeMismatch error, not {err:?}");
    };
    assert!(
        differences.iter().any(|d| d.starts_with("lr")),
        "{differences:?}"
    );
    assert!(err.to_string().contains("configuration differs"), "{err}");
}

fn assert_bit_identical_model(a: &Path, b: &Path) {
    let (diff, model, opt) = tensor_differences(a, b);
    assert!(
        diff.is_empty(),
        "{} vs {}: {diff:?}",
        a.display(),
        b.display()
    );
    assert!(
        model > 0 && opt == 0,
        "{model} model, {opt} optimizer tensors"
    );
}

// -------------------------------------------------------------------------------------------------

const KILL_CONFIG: &str = r#"
epochs = 2
batch_size = 32
train_subset = 2560
val_subset = 200
workers = 1
threads = 1
drop_path = 0.1
lr = 0.002

[mixup]
prob = 1.0
mixup_alpha = 0.8
cutmix_alpha = 1.0

[model_config]
family = "imixer"
img_size = 28
in_chans = 1
patch_size = 7
embed_dim = 32
depth = 2
num_classes = 10

[model_config.imixer]
n_iter = 1
n_power = 1
"#;

#[test]
fn kill_dash_9_then_resume_is_bit_identical() {
    let data = fashion_dir();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    fs::write(&cfg, KILL_CONFIG).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--save-every-steps".into(),
            "2".into(),
            "--json".into(),
        ]
    };
    let limit = Duration::from_secs(120);

    // B: start, wait for a mid-epoch checkpoint, SIGKILL; resume and kill again in the next
    // epoch; then resume to completion. 2560 / 32 = 80 optimizer steps per epoch.
    let last_b = b.join("last.safetensors");
    let mut resume_args = args(&b);
    resume_args.push("--resume".into());
    let mut previous: Option<imixer::train::state::RunState> = None;
    for target_epoch in [0, 1] {
        let run_args = if previous.is_some() {
            resume_args.clone()
        } else {
            args(&b)
        };
        let mut run = spawn(bin().args(&run_args));
        let t0 = Instant::now();
        let seen = loop {
            assert!(
                t0.elapsed() < limit,
                "no mid-epoch checkpoint of epoch {target_epoch} appeared in {} within {limit:?}",
                b.display()
            );
            if run.exited() {
                let o = run.finish(limit, "imixer train (to be killed)");
                panic!(
                    "the run ended ({}) before a mid-epoch checkpoint of epoch {target_epoch} was seen:\n{}",
                    o.status, o.stderr
                );
            }
            if last_b.is_file() {
                let st = run_state(&last_b);
                if st.epoch == target_epoch && st.next_batch > 0 {
                    break st;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let killed = run.kill();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "expected death by SIGKILL: {}",
            killed.status
        );
        if let Some(p) = &previous {
            assert!(
                killed.stderr.contains(&format!(
                    "at epoch {} batch {} (step {})",
                    p.epoch, p.next_batch, p.step
                )),
                "the resumed run should say where it resumes:\n{}",
                killed.stderr
            );
        }
        let st = run_state(&last_b);
        // The kill landed mid-run, possibly a few steps after `seen`.
        assert!(st.step >= seen.step && st.step < 160, "{seen:?} → {st:?}");
        assert!(
            st.next_batch > 0 && st.next_batch < 80,
            "mid-epoch state expected: {st:?}"
        );
        assert_eq!(st.step as usize, st.epoch * 80 + st.next_batch);
        let n = metrics(&b).len();
        assert!(
            n == st.epoch || n == st.epoch + 1,
            "{n} metrics lines at {st:?}"
        );
        eprintln!("killed at {st:?}");
        previous = Some(st);
    }
    let st = previous.unwrap();
    let rb = run_bin(&resume_args, limit).ok("imixer train --resume");
    assert!(
        rb.stderr.contains(&format!(
            "at epoch {} batch {} (step {})",
            st.epoch, st.next_batch, st.step
        )),
        "the resumed run should say where it resumes:\n{}",
        rb.stderr
    );
    let ra = run_bin(&args(&a), limit).ok("imixer train (uninterrupted)");

    let (model, opt) =
        assert_bit_identical(&a.join("last.safetensors"), &b.join("last.safetensors"));
    eprintln!("kill -9: {model} model + {opt} optimizer tensors identical");
    let final_state = run_state(&b.join("last.safetensors"));
    assert_eq!(
        (final_state.epoch, final_state.next_batch, final_state.step),
        (2, 0, 160)
    );
    assert_eq!(final_state, run_state(&a.join("last.safetensors")));
    let (ja, jb): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(ra.stdout.trim()).unwrap(),
        serde_json::from_str(rb.stdout.trim()).unwrap(),
    );
    assert_eq!(ja["final_val_top1"], jb["final_val_top1"]);
    assert_eq!(ja["final_val_loss"], jb["final_val_loss"]);
    assert_eq!(ja["params"], jb["params"]);
    for (x, y) in check_metrics(&a, 2).iter().zip(&check_metrics(&b, 2)) {
        for f in ["train_loss", "train_acc", "val_loss", "val_top1"] {
            assert_eq!(x[f], y[f], "{f} of epoch {} after kill -9", x["epoch"]);
        }
    }
    // The TOML merge keeps the Fashion-MNIST recipe: no RandAugment crept in from the serde
    // defaults (it did before `rand_augment` got a field-level default).
    let saved: TrainConfig =
        toml::from_str(&fs::read_to_string(b.join("config.toml")).unwrap()).unwrap();
    assert_eq!(saved.train_transform.rand_augment, None);
    assert_eq!(saved.mixup.prob, 1.0);
    assert_eq!(saved.drop_path, 0.1);
    assert_eq!(saved.model_config.as_ref().unwrap().family, Family::IMixer);
    assert_eq!(saved.save_every_steps, Some(2));
}

// -------------------------------------------------------------------------------------------------

#[test]
fn nan_loss_is_an_error_and_keeps_the_checkpoint() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let (cfg2, good) = continue_with_absurd_lr(&first, &second, 320);
    let err = train(&cfg2, &resume()).unwrap_err();
    assert!(
        matches!(&err, TrainError::NonFinite { quantity, step: Some(_), .. } if quantity == "loss"),
        "{err:?}"
    );
    let err = format!("{err:#}");
    eprintln!("NaN run: {err}");
    assert!(err.contains("loss became"), "{err}");
    assert!(err.contains("NaN") || err.contains("inf"), "{err}");
    // Epoch 1 (0-based) is the first of the continued run; the message says which batch and
    // step. Batch 0 runs on the good weights, so the failure comes at batch ≥ 1.
    assert!(err.contains("epoch 1, batch"), "{err}");
    let (batch, step) = parse_batch_step(&err);
    assert!((1..10).contains(&batch), "{err}");
    assert_eq!(step, 10 + batch as u64, "{err}");
    assert!(
        err.contains(&second.join("last.safetensors").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("--lr") && err.contains("--clip-grad"),
        "the message says what to do: {err}"
    );

    let after = fs::read(second.join("last.safetensors")).unwrap();
    assert!(
        after == good,
        "last.safetensors changed although the run failed"
    );
    assert!(!second.join("best.safetensors").exists());
    assert_eq!(
        metrics(&second).len(),
        1,
        "no metrics line for the failed epoch"
    );
    // The kept checkpoint still resumes (with a sane learning rate).
    let cfg3 = TrainConfig {
        lr: Some(2e-3),
        ..cfg2.clone()
    };
    fs::write(
        second.join("config.toml"),
        toml::to_string_pretty(&cfg3).unwrap(),
    )
    .unwrap();
    let err = train(&cfg3, &stop_after(1, true)).unwrap_err().to_string();
    assert!(err.contains("stopped after 1 steps"), "{err}");
    assert_eq!(run_state(&second.join("last.safetensors")).step, 11);
}

/// Trains one good epoch in `first` (`subset` images, batch 32), then sets up `second` to continue
/// it with an absurd learning rate. Returns the continuation's config and the good checkpoint.
fn continue_with_absurd_lr(first: &Path, second: &Path, subset: usize) -> (TrainConfig, Vec<u8>) {
    let cfg = TrainConfig {
        epochs: 1,
        train_subset: Some(subset),
        val_subset: Some(100),
        ..fmnist_config(Family::Mixer, first)
    };
    train(&cfg, &opts()).unwrap();
    let good = fs::read(first.join("last.safetensors")).unwrap();
    assert_eq!(
        run_state(&first.join("last.safetensors")).step,
        (subset / 32) as u64
    );
    // The first step of the continuation blows the weights up; a following forward pass gives a
    // non-finite loss.
    let cfg2 = TrainConfig {
        out: second.to_path_buf(),
        epochs: 3,
        lr: Some(1e30),
        warmup_epochs: 0.0,
        ..cfg
    };
    fs::create_dir_all(second).unwrap();
    for f in ["last.safetensors", "metrics.jsonl"] {
        fs::copy(first.join(f), second.join(f)).unwrap();
    }
    fs::write(
        second.join("config.toml"),
        toml::to_string_pretty(&cfg2).unwrap(),
    )
    .unwrap();
    (cfg2, good)
}

/// With one step per epoch the broken update is the epoch's last: no later batch sees a NaN loss,
/// so the end-of-epoch checks (weights, validation loss) must stop the run before it saves.
#[test]
fn weights_broken_by_an_epochs_last_step_are_not_saved() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let (cfg2, good) = continue_with_absurd_lr(&first, &second, 32);
    let err = train(&cfg2, &resume()).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err:?}");
    let err = format!("{err:#}");
    eprintln!("broken-weights run: {err}");
    assert!(
        err.contains("non-finite") || err.contains("validation loss became"),
        "{err}"
    );
    assert!(
        err.contains("after epoch 1") || err.contains("at epoch 1"),
        "{err}"
    );
    assert!(err.contains("--lr"), "the message says what to do: {err}");
    let after = fs::read(second.join("last.safetensors")).unwrap();
    assert!(after == good, "last.safetensors was overwritten");
    assert!(!second.join("best.safetensors").exists());
    assert_eq!(
        metrics(&second).len(),
        1,
        "no metrics line for the broken epoch"
    );
}

/// `(batch, step)` from "… at epoch E, batch K (step S) …".
fn parse_batch_step(err: &str) -> (usize, u64) {
    let after = |key: &str| -> u64 {
        let i = err
            .find(key)
            .unwrap_or_else(|| panic!("no '{key}' in: {err}"))
            + key.len();
        err[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("no number after '{key}' in: {err}"))
    };
    (after("batch ") as usize, after("(step "))
}

// -------------------------------------------------------------------------------------------------

/// One short epoch on `dir` in format `kind` with a tiny model of the right shape; returns the
/// class names stored in the checkpoint.
fn train_one_epoch(
    kind: DatasetKind,
    dir: &Path,
    out: &Path,
    model: imixer::ModelConfig,
) -> Vec<String> {
    let cfg = TrainConfig {
        model_config: Some(model),
        dataset: kind,
        data_dir: Some(dir.to_path_buf()),
        out: out.to_path_buf(),
        epochs: 1,
        cooldown_epochs: 0,
        // The CIFAR and folder recipes warm up for 5 and 20 epochs: longer than this run.
        warmup_epochs: 0.5,
        batch_size: 8,
        eval_batch_size: 16,
        workers: 1,
        threads: 1,
        ..TrainConfig::defaults_for(kind)
    };
    let ds = data::load_dataset(kind, dir).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let summary = train(&cfg, &opts()).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
    assert_eq!(summary.epochs, 1);
    let lines = check_metrics(out, 1);
    assert_eq!(lines[0]["val_top1"].as_f64(), Some(summary.final_val_top1));
    // Val accuracy is a multiple of 1/|val|: the whole held-out split was evaluated.
    let k = summary.final_val_top1 * ds.val.len() as f64;
    assert!(
        (k - k.round()).abs() < 1e-6,
        "{kind}: top-1 {} with {} val images",
        summary.final_val_top1,
        ds.val.len()
    );
    let last = out.join("last.safetensors");
    assert_eq!(
        run_state(&last).step as usize,
        ds.train.len() / 8,
        "{kind}: one step per full batch"
    );
    let f = imixer::checkpoint::read(&last, &Device::Cpu).unwrap();
    let classes = imixer::train::state::classes(&f.metadata).unwrap();
    let net = MixerNet::load(&last, None, &Device::Cpu).unwrap();
    assert_eq!(
        net.config.num_classes,
        classes.len(),
        "{kind}: head sized to the data set"
    );
    classes
}

#[test]
fn every_data_format_trains() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let gray = tiny_model(Family::Mixer, 28, 1, 7);
    let rgb = tiny_model(Family::IMixer, 32, 3, 8);

    // MNIST, raw IDX files.
    let d = root.join("mnist-raw");
    write_idx_dataset(&d, 48, 20, false);
    assert!(d.join("train-images-idx3-ubyte").is_file());
    let classes = train_one_epoch(
        DatasetKind::Mnist,
        &d,
        &root.join("out-mnist"),
        gray.clone(),
    );
    assert_eq!(classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());

    // Fashion-MNIST layout, gzipped IDX files.
    let d = root.join("fmnist-gz");
    write_idx_dataset(&d, 40, 12, true);
    assert!(d.join("t10k-labels-idx1-ubyte.gz").is_file());
    let classes = train_one_epoch(
        DatasetKind::FashionMnist,
        &d,
        &root.join("out-fmnist"),
        gray,
    );
    assert_eq!(classes, FASHION_CLASSES);

    // CIFAR-10 binary: data dir is the parent of cifar-10-batches-bin; names from batches.meta.txt.
    let names: Vec<String> = (0..10).map(|i| format!("thing{i}")).collect();
    let c10 = root.join("c10");
    write_cifar10(&c10, 8, 10, &names);
    let classes = train_one_epoch(
        DatasetKind::Cifar10,
        &c10,
        &root.join("out-c10"),
        rgb.clone(),
    );
    assert_eq!(classes, names);

    // CIFAR-100 binary (coarse + fine label bytes): 100 classes, pointed at the directory itself.
    let c100 = write_cifar100(&root.join("c100"), 48, 12);
    let classes = train_one_epoch(
        DatasetKind::Cifar100,
        &c100,
        &root.join("out-c100"),
        rgb.clone(),
    );
    assert_eq!(classes.len(), 100);

    // CIFAR-10 python version (torchvision's download), pointed at the parent folder: the
    // format is detected from the files; no batches.meta, so the standard names.
    let c10py = root.join("c10py");
    write_cifar10_python(&c10py, 8, 10);
    let classes = train_one_epoch(
        DatasetKind::Cifar10,
        &c10py,
        &root.join("out-c10py"),
        rgb.clone(),
    );
    assert_eq!(classes[0], "airplane");

    // CIFAR-100 python version, pointed at the directory itself.
    let c100py = write_cifar100_python(&root.join("c100py"), 48, 12);
    let classes = train_one_epoch(
        DatasetKind::Cifar100,
        &c100py,
        &root.join("out-c100py"),
        rgb.clone(),
    );
    assert_eq!(classes.len(), 100);

    // Food-101's own layout (images/ + meta/ lists), JPEGs of assorted sizes.
    let food = write_food101(&root.join("food"), &["apple_pie", "ramen", "waffles"], 6, 2);
    let classes = train_one_epoch(
        DatasetKind::Food101,
        food.parent().unwrap(),
        &root.join("out-food"),
        rgb.clone(),
    );
    assert_eq!(classes, ["apple_pie", "ramen", "waffles"]);

    // Image folder, PNG and JPEG of assorted sizes (resized/cropped to 32×32).
    let f = root.join("folder");
    write_image_folder(&f, &["cat", "dog", "fish"], 6, 2);
    let classes = train_one_epoch(DatasetKind::Folder, &f, &root.join("out-folder"), rgb);
    assert_eq!(classes, ["cat", "dog", "fish"]);
}

// -------------------------------------------------------------------------------------------------

#[test]
fn cli_eval_predict_and_errors() {
    single_thread();
    let data = fashion_dir();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = TrainConfig {
        epochs: 2,
        lr: Some(1e-2),
        warmup_epochs: 0.2,
        train_subset: Some(2000),
        val_subset: Some(1000),
        ..fmnist_config(Family::Mixer, &run)
    };
    train(&cfg, &opts()).unwrap();
    let best = run.join("best.safetensors");
    let limit = Duration::from_secs(60);

    // eval --json on the full test split.
    let png = run.join("best.confusion.png");
    let o = run_bin(
        &[
            "eval",
            "--checkpoint",
            best.to_str().unwrap(),
            "--dataset",
            "fashion-mnist",
            "--json",
        ],
        limit,
    )
    .ok("imixer eval");
    let lines: Vec<&str> = o.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object: {}", o.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for k in [
        "top1",
        "top5",
        "loss",
        "per_class_accuracy",
        "confusion",
        "images",
        "classes",
    ] {
        assert!(v.get(k).is_some(), "eval JSON lacks {k}: {v}");
    }
    assert_eq!(v["images"], 10_000);
    let conf: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
    assert_eq!(conf.len(), 10);
    assert!(conf.iter().all(|r| r.len() == 10));
    for (c, row) in conf.iter().enumerate() {
        assert_eq!(
            row.iter().sum::<u64>(),
            1000,
            "Fashion-MNIST has 1000 test images of class {c}"
        );
        let acc = v["per_class_accuracy"][c].as_f64().unwrap();
        assert!((acc - row[c] as f64 / 1000.0).abs() < 1e-12);
    }
    let top1 = v["top1"].as_f64().unwrap();
    let trace: u64 = (0..10).map(|c| conf[c][c]).sum();
    assert!((top1 - trace as f64 / 1e4).abs() < 1e-12);
    assert!(top1 > 0.4, "a trained tiny Mixer: top-1 {top1}");
    // The full test split agrees with the run's own estimate on a 1000-image subset.
    let best_val = run_state(&best).best_top1;
    eprintln!("eval: top-1 {top1} on 10000 test images, run's val top-1 {best_val}");
    assert!(
        (top1 - best_val).abs() < 0.08,
        "eval top-1 {top1} vs run's val top-1 {best_val}"
    );
    assert!(v["top5"].as_f64().unwrap() >= top1);
    assert!(v["loss"].as_f64().unwrap().is_finite());
    assert_eq!(v["classes"], serde_json::json!(FASHION_CLASSES));
    assert_eq!(v["confusion_png"], png.display().to_string());
    assert_png(&png);

    // predict --json on a 28×28 PNG of a real test image; probabilities match the model's.
    let ds = data::load_dataset(DatasetKind::FashionMnist, &data).unwrap();
    let raw = ds.val.get(0).unwrap();
    let img_path = dir.path().join("item0.png");
    image::GrayImage::from_raw(28, 28, raw.data.clone())
        .unwrap()
        .save(&img_path)
        .unwrap();
    let o = run_bin(
        &[
            "predict",
            "--checkpoint",
            best.to_str().unwrap(),
            img_path.to_str().unwrap(),
            "--json",
        ],
        limit,
    )
    .ok("imixer predict");
    let p: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(p["image"], img_path.display().to_string());
    let top = p["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let probs: Vec<f64> = top
        .iter()
        .map(|t| t["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "sorted: {probs:?}");
    assert!(probs.iter().all(|&q| (0.0..=1.0).contains(&q)));
    let sum: f64 = probs.iter().sum();
    assert!(
        sum <= 1.0 + 1e-5 && sum > 0.2,
        "top-5 probabilities sum to {sum}"
    );
    let names: Vec<&str> = top.iter().map(|t| t["class"].as_str().unwrap()).collect();
    assert!(
        names.iter().all(|n| FASHION_CLASSES.contains(n)),
        "{names:?}"
    );
    // Same numbers in-process: eval transform of the run (crop 1.0, mean = std = 0.5).
    let net = MixerNet::load(&best, None, &Device::Cpu).unwrap();
    let x = cfg.eval_transform.apply(&raw).unwrap();
    let t = Tensor::from_vec(x.data, (1, 1, 28, 28), &Device::Cpu).unwrap();
    let logits = net.forward(&t, &mut ForwardCtx::eval()).unwrap();
    let want = candle_nn::ops::softmax(&logits, 1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for t in top {
        let c = FASHION_CLASSES
            .iter()
            .position(|n| *n == t["class"].as_str().unwrap())
            .unwrap();
        let got = t["probability"].as_f64().unwrap();
        assert!(
            (got - want[c] as f64).abs() < 1e-5,
            "{}: predict {got}, model {}",
            FASHION_CLASSES[c],
            want[c]
        );
    }

    // Errors: non-zero exit, a message that says what is wrong, never a panic.
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out_x = dir.path().join("x");
    let out = out_x.to_str().unwrap();
    // A failed start names the problem and leaves no run directory behind.
    let refused = |args: &[&str], needles: &[&str]| {
        let what = format!("imixer {}", args.join(" "));
        let o = run_bin(args, limit).failed(&what);
        for n in needles {
            assert!(o.stderr.contains(n), "{what}: no {n:?} in {}", o.stderr);
        }
        assert!(!out_x.exists(), "{what} created {}", out_x.display());
    };
    refused(
        &[
            "train",
            "--model",
            "nosuchmodel",
            "--out",
            out,
            "--epochs",
            "1",
        ],
        &["nosuchmodel", "imixer models"],
    );
    // The default model (ParaMixer) has no fixed point: --solver is refused, not ignored.
    refused(
        &["train", "--solver", "anderson", "--out", out],
        &["--solver", "imixer_n4_28"],
    );
    refused(
        &["train", "--data-dir", "/nonexistent/fmnist", "--out", out],
        &["/nonexistent/fmnist", "not found"],
    );

    let o = run_bin(
        &["train", "--resume", "--out", empty.to_str().unwrap()],
        limit,
    )
    .failed("train --resume in an empty directory");
    assert!(
        o.stderr.contains("no run to resume") && o.stderr.contains(empty.to_str().unwrap()),
        "{}",
        o.stderr
    );
    assert!(!empty.join("last.safetensors").exists());

    let bytes = fs::read(&best).unwrap();
    let trunc = dir.path().join("truncated.safetensors");
    fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let o = run_bin(
        &["eval", "--checkpoint", trunc.to_str().unwrap(), "--json"],
        limit,
    )
    .failed("eval of a truncated checkpoint");
    assert!(o.stderr.contains(trunc.to_str().unwrap()), "{}", o.stderr);
    assert!(
        o.stdout.trim().is_empty(),
        "no JSON on failure: {}",
        o.stdout
    );

    let missing = dir.path().join("missing.safetensors");
    let o = run_bin(
        &[
            "predict",
            "--checkpoint",
            missing.to_str().unwrap(),
            img_path.to_str().unwrap(),
        ],
        limit,
    )
    .failed("predict with a missing checkpoint");
    assert!(o.stderr.contains(missing.to_str().unwrap()), "{}", o.stderr);

    let not_png = dir.path().join("not-an-image.png");
    fs::write(&not_png, b"hello").unwrap();
    let o = run_bin(
        &[
            "predict",
            "--checkpoint",
            best.to_str().unwrap(),
            not_png.to_str().unwrap(),
        ],
        limit,
    )
    .failed("predict on a non-image");
    assert!(o.stderr.contains(not_png.to_str().unwrap()), "{}", o.stderr);
}

// -------------------------------------------------------------------------------------------------

#[test]
fn models_command_lists_counts() {
    let o = run_bin(&["models", "--json"], Duration::from_secs(30)).ok("imixer models --json");
    let mut listed = Vec::new();
    for line in o.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let name = v["name"].as_str().unwrap().to_string();
        let params = v["params"]
            .as_u64()
            .unwrap_or_else(|| panic!("no params: {line}"));
        listed.push((name, params));
    }
    let registry = imixer::registry::all();
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        registry.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "every registry name, in registry order"
    );
    for ((name, params), (_, cfg)) in listed.iter().zip(&registry) {
        assert_eq!(*params as usize, cfg.num_params(), "{name}");
    }
    let count = |n: &str| listed.iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(count("imixer_s16_224"), 20_123_690);
    assert_eq!(count("paramixer_s16_224"), 19_585_546);
    assert_eq!(count("symmixer_s16_224"), 10_795_530);

    // --filter and --classes change what is listed.
    let o = run_bin(
        &[
            "models",
            "--json",
            "--filter",
            "imixer_s16",
            "--classes",
            "1000",
        ],
        Duration::from_secs(30),
    )
    .ok("imixer models --filter");
    let v: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !v.is_empty()
            && v.iter()
                .all(|x| x["name"].as_str().unwrap().contains("imixer_s16"))
    );
    let s16 = v.iter().find(|x| x["name"] == "imixer_s16_224").unwrap();
    // The head grows by (1000 − 10) · (512 + 1) parameters.
    assert_eq!(s16["params"].as_u64(), Some(20_123_690 + 990 * 513));
}

/// Implicit solver modes train end to end and log per-block solver statistics per epoch; a cap
/// too small to converge is reported (unconverged counts), never silent.
#[test]
fn implicit_solver_training_logs_per_block_statistics() {
    use imixer::config::Solver;
    common::single_thread();
    let dir = tempfile::tempdir().unwrap();
    for (name, solver, converges) in [
        (
            "anderson",
            Solver::Anderson {
                m: 5,
                tol: 1e-4,
                max_iter: 50,
            },
            true,
        ),
        (
            "capped",
            Solver::Picard {
                tol: 1e-12,
                max_iter: 2,
            },
            false,
        ),
    ] {
        let out = dir.path().join(name);
        let mut cfg = common::fmnist_config(Family::IMixer, &out);
        cfg.epochs = 1;
        cfg.train_subset = Some(128);
        cfg.val_subset = Some(100);
        cfg.solver = Some(solver);
        train(&cfg, &opts()).unwrap();
        // The documented fields plus the solver's (check_metrics covers the unrolled runs).
        let m = metrics(&out).pop().unwrap();
        assert!(m["solver_mean_iters"].as_f64().unwrap() >= 1.0, "{m}");
        let blocks = m["solver_blocks"].as_array().expect("solver_blocks logged");
        let names: Vec<&str> = blocks
            .iter()
            .map(|b| b["module"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["blocks.0.mlp_tokens", "blocks.1.mlp_tokens"],
            "{name}: {m}"
        );
        for b in blocks {
            // 128 images in batches of 32, each batch in `shards` data-parallel slices that
            // solve separately: 4 · shards training solves per block.
            let solves = 4 * cfg.shards as u64;
            assert_eq!(b["solves"].as_u64(), Some(solves), "{b}");
            let unconverged = b["unconverged"].as_u64().unwrap();
            let residual = b["max_residual"].as_f64().unwrap();
            if converges {
                assert_eq!(unconverged, 0, "{b}");
                assert!(residual <= 1e-4, "{b}");
                assert!(b["mean_iterations"].as_f64().unwrap() >= 1.0, "{b}");
            } else {
                assert_eq!(unconverged, solves, "{b}");
                assert_eq!(b["mean_iterations"].as_f64().unwrap(), 2.0, "{b}");
            }
        }
    }
}

/// The model configurations that docs/results.md reports runs of still load and train: each file
/// in `docs/configs/` through `imixer train --config` for one short epoch.
#[test]
fn the_documented_model_configs_train() {
    let data = fashion_dir();
    let dir = tempfile::tempdir().unwrap();
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configs");
    let mut files: Vec<_> = std::fs::read_dir(&configs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no configs in {}", configs.display());
    for file in files {
        let out = dir.path().join(file.file_stem().unwrap());
        let o = run_bin(
            &[
                "train".as_ref(),
                "--config".as_ref(),
                file.as_os_str(),
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--epochs".as_ref(),
                "1".as_ref(),
                "--train-subset".as_ref(),
                "256".as_ref(),
                "--val-subset".as_ref(),
                "128".as_ref(),
                "--threads".as_ref(),
                "1".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
                "--json".as_ref(),
            ],
            Duration::from_secs(120),
        )
        .ok(&format!("imixer train --config {}", file.display()));
        let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
        let top1 = v["final_val_top1"].as_f64();
        assert!(
            top1.is_some_and(|t| (0.0..=1.0).contains(&t)),
            "{}: {v}",
            file.display()
        );
        assert_eq!(v["model"], "custom", "{}: {v}", file.display());
    }
}
