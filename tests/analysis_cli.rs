//! `imixer inspect` on a trained iMixer and paper-2 model, and `imixer dynamics`.

mod common;

use std::process::Command;

use imixer::config::Family;
use imixer::train::{train, RunOptions};

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .args(args)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "imixer {args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn inspect_reports_spectral_norms_fixed_point_and_symmetry() {
    common::single_thread();
    let dir = tempfile::tempdir().unwrap();
    for family in [Family::IMixer, Family::SymMixer] {
        let out = dir.path().join(family.name());
        let mut cfg = common::fmnist_config(family, &out);
        cfg.epochs = 1;
        cfg.train_subset = Some(256);
        cfg.val_subset = Some(100);
        train(&cfg, &RunOptions::default()).unwrap();
        let ckpt = out.join("last.safetensors");
        let v = run_json(&[
            "inspect",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--images",
            "16",
            "--steps",
            "12",
            "--json",
        ]);
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        for b in blocks {
            let sym = b["symmetry"].as_array().unwrap();
            assert_eq!(sym.len(), 2);
            for s in sym {
                let cos = s["cosine"].as_f64().unwrap();
                if family == Family::SymMixer {
                    assert!(
                        (cos - 1.0).abs() < 1e-9,
                        "tied weights must give cos 1, got {cos}"
                    );
                } else {
                    assert!(cos.abs() < 0.9);
                }
            }
            if family == Family::IMixer {
                let sn = b["spectral_norms"].as_array().unwrap();
                assert_eq!(sn.len(), 2);
                for s in sn {
                    // The applied weight never exceeds the bound by more than the σ̂ estimate error.
                    assert!(s["sigma_effective"].as_f64().unwrap() <= 0.9 * 1.05, "{s}");
                }
                let res: Vec<f64> = b["fixed_point"]["residuals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_f64().unwrap())
                    .collect();
                assert_eq!(res.len(), 12);
                assert!(
                    res[11] < res[0],
                    "fixed-point residual should shrink: {res:?}"
                );
                assert!(b["lipschitz_bound"].as_f64().unwrap() > 0.0);
                // Picard and Anderson, per default tolerance, converge to the same point.
                let solvers = b["solvers"].as_array().unwrap();
                assert_eq!(solvers.len(), 2);
                for c in solvers {
                    assert_eq!(c["picard_converged"], true, "{c}");
                    assert_eq!(c["anderson_converged"], true, "{c}");
                    let tol = c["tol"].as_f64().unwrap();
                    assert!(
                        c["relative_difference"].as_f64().unwrap() < 100.0 * tol,
                        "{c}"
                    );
                }
            } else {
                assert!(b["fixed_point"].is_null());
                assert!(b["solvers"].as_array().unwrap().is_empty());
            }
        }
    }
}

#[test]
fn dynamics_demo_shows_descent_only_for_symmetric_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dyn");
    let status = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .args([
            "dynamics",
            "--tokens",
            "2",
            "--channels",
            "1",
            "--token-hidden",
            "3",
            "--channel-hidden",
            "2",
            "--starts",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .args(["dynamics", "--starts", "3", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dynamics.json")).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    for r in runs {
        let monotone = r["monotone"].as_bool().unwrap();
        if r["block"].as_str().unwrap().starts_with("symmetric") {
            assert!(monotone, "symmetric run increased the energy: {r}");
        }
    }
    assert!(runs
        .iter()
        .any(|r| r["block"].as_str().unwrap().starts_with("asymmetric")
            && !r["monotone"].as_bool().unwrap()));
    for png in ["energy.png", "trajectories.png"] {
        assert!(std::fs::metadata(out.join(png)).unwrap().len() > 1000);
    }
}

#[test]
fn energy_demo_trains_and_descends_from_random_states() {
    common::fashion_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("energy");
    let o = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .args([
            "energy-demo",
            "--epochs",
            "1",
            "--train-subset",
            "1024",
            "--hidden",
            "64",
            "--batch-size",
            "256",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["energy_monotone"], true, "{m}");
    let e: Vec<f64> = m["energy_descent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 29);
    assert!(e[28] < e[0]);
    assert!(m["final_loss"].as_f64().unwrap().is_finite());
    for png in [
        "loss.png",
        "energy.png",
        "denoised.png",
        "receptive_fields.png",
    ] {
        assert!(
            std::fs::metadata(out.join(png)).unwrap().len() > 200,
            "{png}"
        );
    }
}
