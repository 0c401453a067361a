//! The command line as a program in a pipeline: a reader that goes away early, an output that
//! cannot be written, and `--version`.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use candle_core::Device;
use imixer::config::Family;
use imixer::MixerNet;

/// Runs `imixer ARGS` with stdout going to a pipe whose reading end is already closed, so the
/// first write fails with EPIPE (deterministically: no race with a reader that closes later).
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_imixer"))
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("the binary runs")
}

fn assert_quiet_success(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "imixer {args:?} into a closed pipe: {}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "imixer {args:?} into a closed pipe printed:\n{stderr}"
    );
}

#[test]
fn a_closed_pipe_ends_models_quietly() {
    for args in [&["models"][..], &["models", "--json"]] {
        let out = run_into_closed_pipe(args);
        assert_quiet_success(args, &out);
    }
}

#[test]
fn a_closed_pipe_ends_predict_quietly() {
    common::single_thread();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny.safetensors");
    MixerNet::new(
        &common::tiny_model(Family::Mixer, 28, 1, 7),
        0,
        &Device::Cpu,
    )
    .unwrap()
    .save(&ckpt)
    .unwrap();
    let img = dir.path().join("digit.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]))
        .save(&img)
        .unwrap();
    let (ckpt, img) = (ckpt.to_str().unwrap(), img.to_str().unwrap());
    let args = ["predict", "--checkpoint", ckpt, img, img, img];
    let out = run_into_closed_pipe(&args);
    assert_quiet_success(&args, &out);
}

#[test]
fn an_unwritable_stdout_is_a_clear_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipping: no /dev/full on this system");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .arg("models")
        .stdout(File::create("/dev/full").unwrap())
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to standard output")
            && stderr.contains("No space left on device")
            && !stderr.contains("panicked"),
        "stderr:\n{stderr}"
    );
}

/// `imixer --version` names the commit: `imixer 0.1.0 (commit 9b3f529)` in a git checkout (with
/// `, modified` when the sources differ from it), `commit unknown` when built from elsewhere.
#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_imixer"))
        .arg("--version")
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("imixer {} (commit ", env!("CARGO_PKG_VERSION"));
    let rest = text
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("--version printed {text:?}"));
    let word = rest.split([',', ')', ':']).next().unwrap();
    let in_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists();
    if in_checkout && option_env!("IMIXER_COMMIT").is_none() {
        assert!(
            word.len() >= 7 && word.chars().all(|c| c.is_ascii_hexdigit()),
            "--version printed {text:?}: expected a commit hash"
        );
    } else {
        assert!(!word.is_empty(), "--version printed {text:?}");
    }
    assert!(text.trim_end().ends_with(')'), "--version printed {text:?}");
}
