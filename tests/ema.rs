//! Model EMA (`--model-ema`): evaluated every epoch, saved under `ema.*`, picking `best`,
//! leaving the raw training untouched, and resumed bit-identically after interruptions.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use imixer::checkpoint::{read, EMA_PREFIX, TRAIN_STATE_PREFIX};
use imixer::config::Family;
use imixer::data::{DatasetKind, MixupConfig};
use imixer::train::{train, RunOptions, TrainConfig};
use imixer::MixerNet;

/// A tiny iMixer (spectral-norm buffers) with drop-path and Mixup on generated Fashion-MNIST
/// files: 64 images in batches of 8, 8 steps per epoch, 2 epochs.
fn cfg(data: &Path, out: &Path, ema: bool) -> TrainConfig {
    TrainConfig {
        model_config: Some(tiny_model(Family::IMixer, 28, 1, 7)),
        data_dir: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        epochs: 2,
        batch_size: 8,
        eval_batch_size: 16,
        lr: Some(2e-3),
        drop_path: 0.1,
        mixup: MixupConfig {
            prob: 1.0,
            ..MixupConfig::spec(10)
        },
        workers: 1,
        threads: 1,
        model_ema: ema,
        // Far from 1, so that 16 steps move the average well away from the start.
        model_ema_decay: 0.8,
        ..TrainConfig::defaults_for(DatasetKind::FashionMnist)
    }
}

fn stop_after(n: u64, resume: bool) -> RunOptions {
    RunOptions {
        resume,
        stop_after_steps: Some(n),
        ..RunOptions::default()
    }
}

fn f32_bits(t: &candle_core::Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn the_ema_is_evaluated_saved_and_resumed_bit_identically() {
    single_thread();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_idx_dataset(&data, 64, 32, false);
    let (a, b, plain) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("plain"),
    );
    let summary_a = train(&cfg(&data, &a, true), &RunOptions::default()).unwrap();
    let last_a = a.join("last.safetensors");
    assert_eq!(run_state(&last_a).step, 16);

    // Every model tensor has its EMA twin; parameters moved apart, the spectral-norm u, v are
    // the raw model's (copied every step, and evaluation does not iterate them).
    let f = read(&last_a, &Device::Cpu).unwrap();
    let model_names: Vec<&String> = f
        .tensors
        .keys()
        .filter(|k| !k.starts_with(EMA_PREFIX) && !k.starts_with(TRAIN_STATE_PREFIX))
        .collect();
    let (mut copied, mut averaged) = (0, 0);
    for name in &model_names {
        let ema = &f.tensors[&format!("{EMA_PREFIX}{name}")];
        let same = f32_bits(ema) == f32_bits(&f.tensors[*name]);
        if name.ends_with("weight_u") || name.ends_with("weight_v") {
            assert!(same, "{name}: the EMA's buffer is not the model's");
            copied += 1;
        } else if name.ends_with("weight_orig") || name.ends_with("proj.weight") {
            assert!(!same, "{name}: the EMA equals the raw weights");
            averaged += 1;
        }
    }
    assert!(
        copied >= 4 && averaged >= 5,
        "{copied} copied, {averaged} averaged"
    );
    let ema_count = f
        .tensors
        .keys()
        .filter(|k| k.starts_with(EMA_PREFIX))
        .count();
    assert_eq!(ema_count, model_names.len());

    // metrics.jsonl carries the EMA's numbers; best is picked by the EMA's top-1.
    let lines = metrics(&a);
    assert_eq!(lines.len(), 2);
    for m in &lines {
        for k in ["val_loss_ema", "val_top1_ema", "val_top5_ema"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k}: {m}");
        }
    }
    let best_ema = lines
        .iter()
        .map(|m| m["val_top1_ema"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(run_state(&last_a).best_top1, best_ema);
    assert_eq!(summary_a.best_val_top1, best_ema);
    assert_eq!(
        summary_a.final_val_top1_ema,
        lines[1]["val_top1_ema"].as_f64()
    );
    // best.safetensors still loads as a model (its plain names are the raw weights), and
    // carries the EMA beside them.
    let best = a.join("best.safetensors");
    MixerNet::load(&best, None, &Device::Cpu).unwrap();
    let fb = read(&best, &Device::Cpu).unwrap();
    assert!(fb.tensors.contains_key("ema.stem.proj.weight"));
    assert!(fb
        .tensors
        .keys()
        .all(|k| !k.starts_with(TRAIN_STATE_PREFIX)));

    // The EMA only watches: the raw training is bit for bit that of a run without it.
    let summary_plain = train(&cfg(&data, &plain, false), &RunOptions::default()).unwrap();
    let (diff, model, _) = tensor_differences(&last_a, &plain.join("last.safetensors"));
    let ema_only: Vec<&String> = diff.iter().filter(|d| !d.starts_with(EMA_PREFIX)).collect();
    assert!(
        ema_only.is_empty(),
        "raw training changed by the EMA: {ema_only:?}"
    );
    assert!(model > 0);
    assert_eq!(summary_plain.final_val_top1, summary_a.final_val_top1);
    assert!(metrics(&plain)[0].get("val_top1_ema").is_none());

    // Interrupted at step 3 (epoch 0) and step 3 + 8 = 11 (epoch 1), then finished.
    let cfg_b = cfg(&data, &b, true);
    let err = train(&cfg_b, &stop_after(3, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stopped after 3 steps"), "{err}");
    let err = train(&cfg_b, &stop_after(8, true)).unwrap_err().to_string();
    assert!(err.contains("stopped after 8 steps"), "{err}");
    let st = run_state(&b.join("last.safetensors"));
    assert_eq!((st.epoch, st.next_batch, st.step), (1, 3, 11));
    let resumed = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    let summary_b = train(&cfg_b, &resumed).unwrap();
    let (model, opt) = assert_bit_identical(&last_a, &b.join("last.safetensors"));
    eprintln!("EMA resume: {model} model + EMA and {opt} optimizer tensors identical");
    let (diff, _, _) = tensor_differences(&best, &b.join("best.safetensors"));
    assert!(diff.is_empty(), "best differs: {diff:?}");
    assert_eq!(
        summary_a.final_val_loss_ema.map(f64::to_bits),
        summary_b.final_val_loss_ema.map(f64::to_bits)
    );
    for (x, y) in lines.iter().zip(&metrics(&b)) {
        for k in ["val_loss_ema", "val_top1_ema", "val_loss", "train_loss"] {
            assert_eq!(x[k], y[k], "{k} of epoch {}", x["epoch"]);
        }
    }

    // A run cannot switch its EMA on or off when resumed.
    let err = train(&cfg(&data, &b, false), &resumed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_ema"), "{err}");
}
