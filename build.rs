//! Build script: names the commit the binary is built from, for `imixer --version`.
//!
//! Sets `IMIXER_VERSION` to `0.1.0 (commit 9b3f529)`, with `, modified` when the sources the
//! binary is built from (`src/`, `vendor/`, the manifests, `build.rs`, `.cargo/`) differ from that
//! commit. Outside a git checkout of this crate (a source tarball, no `git`) it says
//! `commit unknown`, unless `IMIXER_COMMIT` names one (for packagers building from an archive).
//!
//! It re-runs when HEAD moves or a source file changes, not on every build, so editing the
//! documentation does not recompile the crate.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files and folders the binary is built from (relative to the crate root).
const SOURCES: [&str; 6] = [
    "src",
    "vendor",
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    ".cargo",
];

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim_end().to_string())
}

/// The short commit hash and whether the sources differ from it, when `dir` is the top of a git
/// checkout (not a crate unpacked somewhere inside another repository).
fn commit(dir: &Path) -> Option<(String, bool)> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    let modified = !git(dir, &status)?.is_empty();
    // Re-run when HEAD or the branch it points at moves (a commit, a checkout, a reset).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some((hash, modified))
}

fn main() {
    let dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let version = env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    for source in SOURCES {
        if dir.join(source).exists() {
            println!("cargo:rerun-if-changed={source}");
        }
    }
    println!("cargo:rerun-if-env-changed=IMIXER_COMMIT");
    let described = match env::var("IMIXER_COMMIT") {
        Ok(given) if !given.trim().is_empty() => format!("commit {}", given.trim()),
        _ => match commit(&dir) {
            Some((hash, false)) => format!("commit {hash}"),
            Some((hash, true)) => format!("commit {hash}, modified"),
            None => "commit unknown: not built from a git checkout".to_string(),
        },
    };
    println!("cargo:rustc-env=IMIXER_VERSION={version} ({described})");
}
