//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and every input that once crashed
//! a target (`fuzz/regressions/<target>/`) through the fuzz targets' own bodies, so that the normal
//! test suite, on a stable toolchain, keeps every reader as robust as fuzzing left it.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `f` panics, without printing the panic: a regression would otherwise bury the report
/// under one message per input. The hook stays silent only on the replaying thread, only during
/// the call, so the tests' own assertion messages still print.
fn quietly_panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let panicked = std::panic::catch_unwind(f).is_err();
    QUIET.with(|q| q.set(false));
    panicked
}

#[test]
fn a_panicking_input_is_caught_and_reported() {
    assert!(quietly_panics(|| panic!("boom")));
    assert!(!quietly_panics(|| ()));
}

/// Runs every input of `target`'s corpus and regressions and reports the ones that panicked.
fn replay(target: &str) {
    let (_, run) = targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus").join(target));
    let regressions = inputs(&fuzz.join("regressions").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} is empty or missing: the corpora are committed with the repository"
    );
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("readable corpus file");
        if quietly_panics(|| run(&data)) {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of the `{target}` fuzz target panic; reproduce one with \
         `cargo +nightly fuzz run {target} <file>` from fuzz/:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

#[test]
fn idx_corpus_replays_cleanly() {
    replay("idx");
}

#[test]
fn cifar_corpus_replays_cleanly() {
    replay("cifar");
}

#[test]
fn cifar_python_corpus_replays_cleanly() {
    replay("cifar_python");
}

#[test]
fn transforms_corpus_replays_cleanly() {
    replay("transforms");
}

#[test]
fn checkpoint_corpus_replays_cleanly() {
    replay("checkpoint");
}

#[test]
fn pytorch_checkpoint_corpus_replays_cleanly() {
    replay("pytorch_checkpoint");
}

#[test]
fn train_config_corpus_replays_cleanly() {
    replay("train_config");
}

/// Every target has a test above and a corpus: a new target cannot be added and forgotten here.
#[test]
fn every_fuzz_target_is_replayed() {
    let listed: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    let this = include_str!("fuzz_corpus.rs");
    for name in &listed {
        assert!(
            this.contains(&format!("replay(\"{name}\")")),
            "fuzz target `{name}` has no replay test in tests/fuzz_corpus.rs"
        );
    }
    let bins = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .count();
    assert_eq!(bins, listed.len(), "fuzz/fuzz_targets and TARGETS differ");
}
