//! Hostile inputs and faults: forged checkpoints, absurd numbers, shared run directories,
//! interrupts and torn files. Every case must end in a clear error (or a clean stop), never a
//! panic, an abort, an unbounded allocation or silently wrong results.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use common::*;
use imixer::checkpoint::CONFIG_KEY;
use imixer::config::{Family, ModelConfig};
use imixer::data::DatasetKind;
use imixer::train::state::{self, RunState};
use imixer::train::trainer::LOCK_FILE;
use imixer::train::TrainError;
use imixer::train::{train, RunOptions, TrainConfig};
use imixer::MixerNet;

const LIMIT: Duration = Duration::from_secs(120);

/// A small gzipped Fashion-MNIST-format directory (`n_train` / `n_test` images).
fn synthetic(root: &Path, n_train: usize, n_test: usize) -> PathBuf {
    let d = root.join("data");
    write_idx_dataset(&d, n_train, n_test, true);
    d
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `imixer ARGS…`, expected to fail with a message containing every one of `says`.
fn fails_saying(args: &[String], says: &[&str]) -> Output {
    let o = run_bin(args, LIMIT).failed(&args.join(" "));
    for s in says {
        assert!(
            o.stderr.contains(s),
            "`imixer {}` should say {s:?}:\n{}",
            args.join(" "),
            o.stderr
        );
    }
    o
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn forged_checkpoints_are_clean_errors_in_every_command() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 20, 10);
    let cfg = tiny_model(Family::Mixer, 28, 1, 7);
    let model = MixerNet::new(&cfg, 0, &Device::Cpu).unwrap();
    let png = dir.path().join("x.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([7]))
        .save(&png)
        .unwrap();
    let forged = dir.path().join("forged.safetensors");
    let commands = |ckpt: &Path| {
        vec![
            args(&[
                "eval",
                "--checkpoint",
                &s(ckpt),
                "--data-dir",
                &s(&data),
                "--confusion-png",
                &s(&dir.path().join("c.png")),
            ]),
            args(&["predict", "--checkpoint", &s(ckpt), &s(&png)]),
            args(&["inspect", "--checkpoint", &s(ckpt), "--images", "2"]),
        ]
    };
    // Without the checks each of these allocates gigabytes (or until the machine runs out)
    // before looking at a single tensor.
    for (forged_cfg, says) in [
        (
            ModelConfig {
                embed_dim: 100_000_000,
                ..cfg.clone()
            },
            "embed_dim",
        ),
        (
            ModelConfig {
                depth: 10_000_000,
                ..cfg.clone()
            },
            "depth",
        ),
    ] {
        let mut meta = HashMap::new();
        meta.insert(
            CONFIG_KEY.to_string(),
            serde_json::to_string(&forged_cfg).unwrap(),
        );
        imixer::checkpoint::write(&forged, &model.state_dict(), &meta).unwrap();
        for cmd in commands(&forged) {
            fails_saying(&cmd, &[says, "forged.safetensors"]);
        }
    }

    // A stored training config whose crop_pct would make eval resize to an 896 GB image.
    let train_cfg = TrainConfig {
        eval_transform: imixer::data::EvalTransform {
            crop_pct: 1e-9,
            ..imixer::data::EvalTransform::spec(28, 1)
        },
        ..TrainConfig::default()
    };
    let classes: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let run_ckpt = dir.path().join("run.safetensors");
    state::save(
        &run_ckpt,
        &model,
        None,
        None,
        &RunState::start(),
        &toml::to_string(&train_cfg).unwrap(),
        &classes,
    )
    .unwrap();
    for cmd in &commands(&run_ckpt)[..2] {
        fails_saying(cmd, &["crop_pct", "run.safetensors"]);
    }

    // NaN weights: eval and predict used to print "loss NaN" and NaN probabilities, exit 0.
    let e = &model.params.entries()[1];
    e.var.set(&(e.var.as_tensor() * f64::NAN).unwrap()).unwrap();
    let nan = dir.path().join("nan.safetensors");
    model.save(&nan).unwrap();
    for cmd in commands(&nan) {
        fails_saying(&cmd, &["non-finite", &e.name]);
    }
}

#[test]
fn absurd_numbers_are_refused_before_a_run_directory_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 100, 20);
    let out = dir.path().join("run");
    let train_with = |extra: &[&str]| {
        let mut a = args(&["train", "--data-dir", &s(&data), "--out", &s(&out)]);
        a.extend(args(extra));
        a
    };
    for (extra, says) in [
        (&["--crop-pct", "1e-300"][..], "crop_pct"),
        (&["--crop-pct", "100"], "crop_pct"),
        (&["--crop-padding", "1000000"], "--crop-padding"),
        (&["--warmup-epochs", "NaN"], "warmup_epochs"),
        (&["--warmup-epochs", "inf"], "warmup_epochs"),
        (&["--warmup-epochs=-1"], "warmup_epochs"),
        (
            &["--epochs", "1", "--warmup-epochs", "3"],
            "--warmup-epochs",
        ),
        (&["--save-every-steps", "0"], "save_every_steps"),
        (&["--val-subset", "0"], "val_subset"),
        (
            &[
                "--model",
                "imixer_n4_28",
                "--solver",
                "picard",
                "--solver-tol",
                "NaN",
            ],
            "--solver-tol",
        ),
        (
            &[
                "--model",
                "imixer_n4_28",
                "--solver",
                "anderson",
                "--anderson-m",
                "0",
            ],
            "--anderson-m",
        ),
    ] {
        fails_saying(&train_with(extra), &[says]);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    let toml = dir.path().join("empty-out.toml");
    fs::write(&toml, "out = \"\"\n").unwrap();
    fails_saying(
        &args(&["train", "--config", &s(&toml), "--data-dir", &s(&data)]),
        &["out"],
    );

    // An empty validation split used to report val 0.0 and pick a "best" checkpoint.
    let empty_val = dir.path().join("empty-val");
    write_idx_dataset(&empty_val, 100, 0, false);
    fails_saying(
        &args(&["train", "--data-dir", &s(&empty_val), "--out", &s(&out)]),
        &["validation split is empty"],
    );
    assert!(!out.exists());

    // The demos' numbers.
    let demo_out = s(&dir.path().join("demo"));
    fails_saying(
        &args(&[
            "energy-demo",
            "--batch-size",
            "0",
            "--data-dir",
            &s(&data),
            "--out",
            &demo_out,
        ]),
        &["--batch-size"],
    );
    for t in ["NaN", "-5", "inf", "1e9"] {
        fails_saying(
            &args(&["dynamics", &format!("--time={t}"), "--out", &demo_out]),
            &["--time"],
        );
    }
}

#[test]
fn an_image_whose_body_is_corrupt_stops_the_run_before_its_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("folder");
    write_image_folder(&data, &["a", "b"], 4, 2);
    // A PNG whose header still reads (its size is right) but whose pixels are cut short, at the
    // end of the validation split: only a full decode finds it before an epoch is spent.
    let bad = data.join("val/b/00.png");
    let bytes = fs::read(&bad).unwrap();
    fs::write(&bad, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = dir.path().join("run");
    let o = fails_saying(
        &args(&[
            "train",
            "--data-dir",
            &s(&data),
            "--dataset",
            "folder",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--out",
            &s(&out),
        ]),
        &["val/b/00.png", "decode"],
    );
    assert!(
        !o.stderr.contains("epoch"),
        "the run started:\n{}",
        o.stderr
    );
    assert!(!out.exists(), "the run directory was created");
}

/// A tiny Fashion-MNIST-format run of `steps_per_epoch` steps of 8 images.
fn tiny_run(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        model_config: Some(tiny_model(Family::Mixer, 28, 1, 7)),
        data_dir: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        epochs,
        batch_size: 8,
        eval_batch_size: 16,
        warmup_epochs: 0.5,
        workers: 1,
        threads: 1,
        shards: 1,
        ..TrainConfig::defaults_for(DatasetKind::FashionMnist)
    }
}

#[test]
fn one_run_per_directory() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 32, 16);
    let out = dir.path().join("run");
    let cli = |extra: &[&str]| {
        let mut a = args(&[
            "train",
            "--data-dir",
            &s(&data),
            "--out",
            &s(&out),
            "--epochs",
            "1",
            "--warmup-epochs",
            "0.5",
            "--batch-size",
            "8",
            "--shards",
            "1",
            "--json",
        ]);
        a.extend(args(extra));
        a
    };

    // Another process holds the directory's lock: a second run is refused and touches nothing.
    fs::create_dir_all(&out).unwrap();
    let holder = fs::File::create(out.join(LOCK_FILE)).unwrap();
    holder.try_lock().unwrap();
    fails_saying(&cli(&[]), &["in use by another imixer train"]);
    assert!(!out.join("config.toml").exists());
    // The OS releases a lock with its holder (however it ends): the next run proceeds.
    drop(holder);
    run_bin(&cli(&[]), LIMIT).ok("train after the lock was released");

    // An earlier run whose last.safetensors is gone still owns best and metrics.
    fs::remove_file(out.join("last.safetensors")).unwrap();
    let best = fs::read(out.join("best.safetensors")).unwrap();
    fails_saying(&cli(&[]), &["best.safetensors", "--overwrite"]);
    assert_eq!(fs::read(out.join("best.safetensors")).unwrap(), best);
    run_bin(&cli(&["--overwrite"]), LIMIT).ok("train --overwrite");
    assert!(out.join("last.safetensors").exists());

    // A fresh run that fails before its first checkpoint leaves nothing that looks like a run.
    let failing = dir.path().join("failing");
    let diverging = args(&[
        "train",
        "--data-dir",
        &s(&data),
        "--out",
        &s(&failing),
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--lr",
        "1e30",
        "--batch-size",
        "8",
        "--json",
    ]);
    fails_saying(&diverging, &["became", "--lr"]);
    assert!(
        !failing.exists(),
        "a failed start left {}",
        failing.display()
    );
}

#[test]
fn an_interrupt_saves_last_and_resume_is_bit_identical() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 48, 16);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&tiny_run(&data, &a, 2), &RunOptions::default()).unwrap();

    // Ctrl-C/SIGTERM set the flag; the run stops at the next step boundary with `last` saved.
    let stop = Arc::new(AtomicBool::new(true));
    let err = train(
        &tiny_run(&data, &b, 2),
        &RunOptions {
            stop: Some(stop),
            ..RunOptions::default()
        },
    )
    .unwrap_err();
    let TrainError::Interrupted(stopped) = &err else {
        panic!("an Interrupted error, not {err:?}");
    };
    assert_eq!((stopped.epoch, stopped.batch, stopped.step), (0, 1, 1));
    assert!(err.to_string().contains("--resume"), "{err}");
    assert_eq!(run_state(&b.join("last.safetensors")).step, 1);

    // Run on into epoch 1, then fake what a kill -9 inside the next metrics append and
    // checkpoint write leaves: a torn last line and a full-size temporary file.
    let resume = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    let err = train(
        &tiny_run(&data, &b, 2),
        &RunOptions {
            stop_after_steps: Some(7),
            ..resume.clone()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("stopped after 7 steps"), "{err}");
    assert_eq!(metrics(&b).len(), 1);
    let m = b.join("metrics.jsonl");
    let mut text = fs::read_to_string(&m).unwrap();
    text.push_str("{\"epoch\":1,\"lr\":0.00");
    fs::write(&m, text).unwrap();
    let temp = b.join(".last.safetensors.4194301.tmp");
    fs::copy(b.join("last.safetensors"), &temp).unwrap();

    // Resume with other thread and worker counts (results do not depend on them).
    let resumed = TrainConfig {
        workers: 2,
        threads: 2,
        ..tiny_run(&data, &b, 2)
    };
    train(&resumed, &resume).unwrap();
    assert!(!temp.exists(), "the stale temporary file was not removed");
    assert_bit_identical(&a.join("last.safetensors"), &b.join("last.safetensors"));
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(mb.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        for f in ["train_loss", "train_acc", "val_loss", "val_top1", "lr"] {
            assert_eq!(x[f], y[f], "{f} of epoch {}", x["epoch"]);
        }
    }
}

#[test]
fn sigterm_stops_at_a_step_boundary_with_a_resumable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 800, 16);
    let out = dir.path().join("run");
    let run_args = args(&[
        "train",
        "--data-dir",
        &s(&data),
        "--out",
        &s(&out),
        "--epochs",
        "3",
        "--warmup-epochs",
        "0.5",
        "--batch-size",
        "8",
        "--shards",
        "1",
        "--threads",
        "1",
        "--save-every-steps",
        "1",
        "--json",
    ]);
    let last = out.join("last.safetensors");
    let mut run = spawn(bin().args(&run_args));
    let t0 = Instant::now();
    while !last.is_file() {
        assert!(t0.elapsed() < LIMIT, "no checkpoint appeared");
        if run.exited() {
            let o = run.finish(LIMIT, "imixer train (to be stopped)");
            panic!(
                "the run ended ({}) before it was signalled:\n{}",
                o.status, o.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = run.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = run.finish(LIMIT, "imixer train (SIGTERM)");
    assert_eq!(o.status.code(), Some(130), "{}\n{}", o.status, o.stderr);
    assert!(
        o.stderr.contains("interrupted") && o.stderr.contains("--resume"),
        "{}",
        o.stderr
    );
    let st = run_state(&last);
    assert!(st.step >= 1 && st.step < 300, "{st:?}");
    assert_eq!(st.step as usize, st.epoch * 100 + st.next_batch, "{st:?}");
    let mut resume = run_args.clone();
    resume.push("--resume".into());
    run_bin(&resume, LIMIT).ok("imixer train --resume after SIGTERM");
    assert_eq!(run_state(&last).step, 300);
}

#[test]
fn eval_prints_its_results_even_when_the_confusion_png_cannot_be_written() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 20, 10);
    let model = MixerNet::new(&tiny_model(Family::Mixer, 28, 1, 7), 0, &Device::Cpu).unwrap();
    let ckpt = dir.path().join("m.safetensors");
    model.save(&ckpt).unwrap();
    // A path under a regular file can never be created, whoever runs the test (root included).
    let blocked = dir.path().join("m.safetensors").join("c.png");
    let o = run_bin(
        &args(&[
            "eval",
            "--checkpoint",
            &s(&ckpt),
            // A bare model names no data set.
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            &s(&data),
            "--confusion-png",
            &s(&blocked),
            "--json",
        ]),
        LIMIT,
    )
    .ok("eval with an unwritable confusion PNG");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["images"], 10);
    assert!(v["confusion_png"].is_null(), "{v}");
    assert!(o.stderr.contains("--confusion-png"), "{}", o.stderr);
}
