//! `imixer sweep` end to end on tiny grids: results and statistics, skipping finished runs,
//! resuming interrupted ones bit-identically, and errors before any run starts.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_bit_identical, fashion_dir, run_bin, spawn};

const LIMIT: Duration = Duration::from_secs(900);

/// Two λ values × two seeds of a tiny AsymMixer, plus a SymMixer reference setting.
fn write_sweep(dir: &Path, seeds: &str, epochs: usize, subset: usize) -> std::path::PathBuf {
    let path = dir.join("sweep.toml");
    let text = format!(
        "seeds = {seeds}\nthreads = 1\nparallel = 2\n\
         [base]\nmodel = \"asymmixer_n4_28\"\nepochs = {epochs}\nwarmup_epochs = 0.0\n\
         train_subset = {subset}\nval_subset = 128\nbatch_size = 32\ndata_dir = \"{}\"\n\
         [grid]\nlambda = [0.1, 0.0]\n\
         [[runs]]\nmodel = \"symmixer_n4_28\"\n\
         [[plot]]\nx = \"lambda\"\nlog_x = true\n\
         [[plot]]\nx = \"epoch\"\ny = \"token_cosine\"\n",
        fashion_dir().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `imixer sweep --config CONFIG --out OUT [extra…]`.
fn sweep_args<'a>(config: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![
        "sweep".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| OsStr::new(*a)));
    args
}

/// A sweep that must fail (with a message, not a panic).
fn failing_sweep(config: &Path, out: &Path, what: &str) -> common::Output {
    run_bin(&sweep_args(config, out, &[]), LIMIT).failed(what)
}

fn sweep(config: &Path, out: &Path) -> serde_json::Value {
    let o = run_bin(&sweep_args(config, out, &["--json"]), LIMIT).ok("imixer sweep");
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

fn results(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn results_statistics_and_skipping_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_sweep(dir.path(), "[0, 1]", 1, 96);
    let out = dir.path().join("out");
    let first = sweep(&config, &out);
    assert_eq!(
        (&first["planned"], &first["finished"], &first["skipped"]),
        (&6.into(), &6.into(), &0.into())
    );
    let lines = results(&out);
    assert_eq!(lines.len(), 6);
    for id in [
        "model-symmixer_n4_28_seed-0",
        "lambda-0.1_seed-1",
        "lambda-0_seed-0",
    ] {
        assert!(lines.iter().any(|l| l["id"] == id), "{id} missing");
        assert!(out.join(id).join("last.safetensors").is_file());
    }
    // The run's metrics are its own metrics.jsonl: final top-1 is the last epoch's.
    let l = lines
        .iter()
        .find(|l| l["id"] == "lambda-0.1_seed-1")
        .unwrap();
    let own = common::metrics(&out.join("lambda-0.1_seed-1"));
    assert_eq!(
        l["metrics"]["final_val_top1"],
        own.last().unwrap()["val_top1"]
    );
    assert_eq!(l["settings"]["lambda"], 0.1);
    // SymMixer's tied weights are exactly symmetric; the AsymMixer's are not.
    let sym = lines
        .iter()
        .find(|l| l["id"] == "model-symmixer_n4_28_seed-0")
        .unwrap();
    assert!((sym["metrics"]["token_cosine"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // The history starts at the initial weights (epoch −1), then one row per epoch.
    let h = l["history"].as_array().unwrap();
    assert_eq!(
        (h.len(), &h[0]["epoch"], &h[1]["epoch"]),
        (2, &(-1.0).into(), &0.0.into())
    );
    assert!(h[0]["token_cosine"].as_f64().unwrap() < 0.99);
    assert!(h[0].get("val_top1").is_none());
    assert!(l["metrics"]["token_cosine"].as_f64().unwrap() < 0.99);
    assert!(l["metrics"]["w2_w1_ratio"].as_f64().unwrap() > 0.0);

    // summary.md: mean ± sample std over the two seeds, recomputed here from results.jsonl.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let top1 = |id: &str| {
        lines.iter().find(|l| l["id"] == id).unwrap()["metrics"]["final_val_top1"]
            .as_f64()
            .unwrap()
    };
    let (a, b) = (top1("lambda-0_seed-0"), top1("lambda-0_seed-1"));
    let mean = (a + b) / 2.0;
    let std = ((a - mean).powi(2) + (b - mean).powi(2)).sqrt(); // n − 1 = 1
    let cell = format!("{mean:.4} ± {std:.4}");
    let row = summary
        .lines()
        .find(|l| l.starts_with("| lambda=0 |"))
        .unwrap_or_else(|| panic!("no lambda=0 row in\n{summary}"));
    assert!(row.contains(&cell), "expected {cell} in {row}");
    assert!(row.contains("| 0,1 |"), "{row}");
    for plot in ["final_val_top1_vs_lambda.png", "token_cosine_vs_epoch.png"] {
        let bytes = std::fs::read(out.join(plot)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{plot}");
    }

    // Again: nothing to do, nothing rewritten.
    let ckpt = out.join("lambda-0_seed-0").join("last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let modified = std::fs::metadata(&ckpt).unwrap().modified().unwrap();
    let second = sweep(&config, &out);
    assert_eq!(
        (&second["finished"], &second["skipped"]),
        (&0.into(), &6.into())
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&ckpt).unwrap().modified().unwrap(),
        modified
    );

    // A new seed runs only the new seed's settings.
    let config = write_sweep(dir.path(), "[0, 1, 2]", 1, 96);
    let third = sweep(&config, &out);
    assert_eq!(
        (&third["finished"], &third["skipped"]),
        (&3.into(), &6.into())
    );
    assert_eq!(results(&out).len(), 9);

    // Changing a shared setting under finished runs is refused, naming the setting.
    let config = write_sweep(dir.path(), "[0, 1, 2]", 2, 96);
    let o = failing_sweep(&config, &out, "sweep with changed epochs");
    assert!(o.stderr.contains("epochs"), "{}", o.stderr);
}

#[test]
fn an_interrupted_sweep_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_sweep(dir.path(), "[0]", 2, 1024);
    let reference = dir.path().join("reference");
    sweep(&config, &reference);

    // Stop a second sweep with SIGTERM once its first runs have started.
    let out = dir.path().join("out");
    let mut running = spawn(common::bin().args(sweep_args(&config, &out, &[])));
    let started = Instant::now();
    while !out
        .join("lambda-0.1_seed-0")
        .join("sweep-run.toml")
        .exists()
    {
        assert!(
            !running.exited(),
            "the sweep ended before starting its runs"
        );
        assert!(
            started.elapsed() < LIMIT,
            "the sweep never started its runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = running.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = running.finish(LIMIT, "interrupted sweep");
    // The runs may have finished before the signal arrived on a fast machine; either way the
    // sweep must end cleanly, and a second call must complete it to the same bits.
    assert!(
        o.status.success() || o.status.code() == Some(130),
        "{}\n{}",
        o.status,
        o.stderr
    );
    if o.status.code() == Some(130) {
        assert!(o.stderr.contains("again to continue"), "{}", o.stderr);
    }
    let again = sweep(&config, &out);
    assert_eq!(again["failed"].as_array().unwrap().len(), 0);
    assert_eq!(results(&out).len(), 3);
    for id in [
        "lambda-0.1_seed-0",
        "lambda-0_seed-0",
        "model-symmixer_n4_28_seed-0",
    ] {
        assert_bit_identical(
            &reference.join(id).join("last.safetensors"),
            &out.join(id).join("last.safetensors"),
        );
    }
}

#[test]
fn a_bad_sweep_file_is_an_error_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (text, needle) in [
        ("[grid]\nlambda = 0.1\n", "must be a list"),
        ("[grid]\nepochz = [1, 2]\n", "epochz"),
        ("[base]\nseed = 1\n", "`seed`"),
        (
            "[base]\nmodel = \"mixer_n4_28\"\n[grid]\nlambda = [0.1]\n",
            "paper-2",
        ),
        ("[grid]\nmodel = [\"nosuchmodel_n4_28\"]\n", "nosuchmodel"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let o = failing_sweep(&config, &out, text);
        assert!(o.stderr.contains(needle), "{text}: {}", o.stderr);
        // No run directory was created.
        let runs = std::fs::read_dir(&out)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(runs, 0, "{text}");
    }
}
