//! The sweep file: shared training settings, the varied ones, seeds, parallelism and plots.
//!
//! ```toml
//! seeds = [0, 1, 2]
//! threads = 1                 # compute threads of each run
//! parallel = 2                # runs side by side (default: cores / threads)
//!
//! [base]                      # any `imixer train --config` field, shared by every run
//! model = "asymmixer_n4_28"
//! epochs = 8
//!
//! [grid]                      # field = [values]: the Cartesian product of the lists
//! lambda = [1.0, 0.1, 0.0]
//!
//! [[runs]]                    # more runs, one per table (here: reference bands)
//! model = "symmixer_n4_28"
//!
//! [[plot]]
//! x = "lambda"                # a varied field, or "epoch" for a curve over training
//! y = "final_val_top1"
//! log_x = true
//! ```
//!
//! Nested fields are written as TOML dotted keys (`train_transform.hflip = [0.0, 0.5]`).

use std::path::Path;

use super::error::{bail, Result, SweepError};
use crate::files::FileError;
use serde::{Deserialize, Serialize};

/// One `[[plot]]` of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotSpec {
    /// The x axis: a varied field (numeric values), or `epoch` for the per-epoch history.
    pub x: String,
    /// The metric on the y axis (a column of `results.jsonl`'s `metrics`, or of the history).
    #[serde(default = "default_y")]
    pub y: String,
    #[serde(default)]
    pub log_x: bool,
    /// File name inside the sweep directory (default `<y>_vs_<x>.png`).
    pub file: Option<String>,
}

fn default_y() -> String {
    "final_val_top1".into()
}

impl PlotSpec {
    pub fn file_name(&self) -> String {
        self.file
            .clone()
            .unwrap_or_else(|| format!("{}_vs_{}.png", self.y, self.x))
    }
}

/// A parsed sweep file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Every run's seeds: each setting runs once per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Compute threads per run (default: cores / parallel).
    pub threads: Option<usize>,
    /// Runs side by side (default: cores / threads, at least 1).
    pub parallel: Option<usize>,
    /// Training-config fields shared by every run.
    #[serde(default)]
    pub base: toml::Table,
    /// Field → list of values; their Cartesian product gives one setting per combination.
    #[serde(default)]
    pub grid: toml::Table,
    /// Explicit settings, each a table of fields, run beside the grid's.
    #[serde(default)]
    pub runs: Vec<toml::Table>,
    /// Metrics of `summary.md` (default: accuracy, losses, symmetry, time — those present).
    pub metrics: Option<Vec<String>>,
    #[serde(default)]
    pub plot: Vec<PlotSpec>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Fields a sweep sets itself: each run's directory and seed.
const RESERVED: [&str; 2] = ["out", "seed"];

impl SweepSpec {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError::new("read the sweep file", path, e))?;
        let spec: SweepSpec = toml::from_str(&text).map_err(|e| {
            SweepError::Spec(format!(
                "{} is not a valid sweep file (fields: seeds, threads, parallel, base, grid, runs, metrics, plot): {e}",
                path.display()
            ))
        })?;
        spec.validate().map_err(|e| SweepError::Context {
            doing: format!("in the sweep file {}", path.display()),
            error: Box::new(e),
        })?;
        Ok(spec)
    }

    /// Structural checks; each run's training config is checked when the sweep is planned.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            bail!("seeds is empty: give at least one seed");
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.seeds {
            if !seen.insert(s) {
                bail!("seed {s} is listed twice in seeds");
            }
        }
        if self.threads == Some(0) || self.parallel == Some(0) {
            bail!("threads and parallel must be ≥ 1");
        }
        for key in RESERVED {
            let in_runs = self.runs.iter().any(|r| r.contains_key(key));
            if self.base.contains_key(key) || self.grid.contains_key(key) || in_runs {
                bail!(
                    "`{key}` is set by the sweep itself (seeds = [...] for seeds; each run writes to DIR/<run-id>): remove it from base, grid and runs"
                );
            }
        }
        for p in &self.plot {
            if p.x.is_empty() || p.y.is_empty() {
                bail!("a [[plot]] needs non-empty x and y");
            }
        }
        Ok(())
    }

    /// (threads per run, runs side by side) on a machine of `cores`.
    pub fn budget(&self, cores: usize) -> (usize, usize) {
        let cores = cores.max(1);
        match (self.threads, self.parallel) {
            (Some(t), Some(p)) => (t, p),
            (Some(t), None) => (t, (cores / t).max(1)),
            (None, Some(p)) => ((cores / p).max(1), p),
            (None, None) => (1, cores),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SweepSpec> {
        let spec: SweepSpec = toml::from_str(s).map_err(|e| SweepError::Spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn reserved_fields_and_empty_seeds_are_errors() {
        let e = parse("[base]\nseed = 3\n").unwrap_err().to_string();
        assert!(e.contains("`seed`"), "{e}");
        let e = parse("[grid]\nout = [\"a\"]\n").unwrap_err().to_string();
        assert!(e.contains("`out`"), "{e}");
        let e = parse("seeds = []\n").unwrap_err().to_string();
        assert!(e.contains("seeds"), "{e}");
        let e = parse("seeds = [1, 1]\n").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(toml::from_str::<SweepSpec>("seedz = [1]\n").is_err());
    }

    #[test]
    fn a_bad_sweep_file_is_a_spec_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        std::fs::write(&path, "seeds = [1, 1]\n").unwrap();
        let e = SweepSpec::read(&path).unwrap_err();
        assert!(
            matches!(e.root(), SweepError::Spec(m) if m.contains("twice")),
            "{e:?}"
        );
        assert!(e.to_string().contains("sweep.toml"), "{e}");
        std::fs::write(&path, "seeds = 1\n").unwrap();
        assert!(matches!(SweepSpec::read(&path), Err(SweepError::Spec(_))));
        let missing = dir.path().join("none.toml");
        match SweepSpec::read(&missing) {
            Err(SweepError::File(f)) => assert_eq!(f.path, missing),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn the_budget_fills_the_cores() {
        let s = parse("").unwrap();
        assert_eq!(s.budget(8), (1, 8));
        let s = parse("threads = 2\n").unwrap();
        assert_eq!(s.budget(8), (2, 4));
        assert_eq!(s.budget(1), (2, 1));
        let s = parse("parallel = 3\n").unwrap();
        assert_eq!(s.budget(8), (2, 3));
    }
}
