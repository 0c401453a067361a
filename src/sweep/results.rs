//! What a finished run contributes to its sweep (one line of `results.jsonl`), and the mean ± std
//! over seeds of every setting (`summary.md`).

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{Result, SweepError};
use crate::files::FileError;
use serde::{Deserialize, Serialize};

use candle_core::Device;

use super::plan::{describe, value_text, PlannedRun};
use crate::analysis::symmetry::SymmetrySummary;
use crate::train::metrics::{read_history, EpochMetrics};
use crate::train::TrainConfig;
use crate::MixerNet;

/// One line of `results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub id: String,
    /// The setting's name without the seed (runs sharing it are averaged).
    pub setting: String,
    /// The varied fields and their values.
    pub settings: BTreeMap<String, toml::Value>,
    pub seed: u64,
    /// Final metrics: the last epoch's (`final_val_top1`, `train_loss`, `token_cosine`, …),
    /// `best_val_top1`, `train_seconds` and `params`.
    pub metrics: BTreeMap<String, f64>,
    /// Per epoch: `epoch`, the validation/training numbers and the weight symmetry; first a row
    /// with `epoch` −1 holding the symmetry of the initial weights (where training starts from).
    pub history: Vec<BTreeMap<String, f64>>,
}

/// The symmetry numbers of a summary, by name.
fn symmetry_row(s: &SymmetrySummary) -> impl Iterator<Item = (String, f64)> {
    [
        ("token_cosine", s.token_cosine),
        ("channel_cosine", s.channel_cosine),
        ("w2_w1_ratio", s.w2_w1_ratio),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
}

/// The weight symmetry of a run's initial model, rebuilt from its seed (the head, the only part
/// that depends on the class count, is zero-initialised after the blocks, so 10 classes give
/// the same block weights as any other count).
fn initial_symmetry(run: &PlannedRun) -> Result<SymmetrySummary> {
    let cfg = TrainConfig::from_table(None, run.table.clone())?;
    let model = crate::train::trainer::resolve_model(&cfg, 10)?;
    let net = MixerNet::new(&model, cfg.seed, &Device::Cpu)?;
    Ok(crate::analysis::symmetry::summary(&net)?)
}

/// The numbers of one epoch, by name.
fn epoch_row(m: &EpochMetrics) -> BTreeMap<String, f64> {
    let mut r = BTreeMap::from([
        ("epoch".to_string(), m.epoch as f64),
        ("val_top1".into(), m.val_top1),
        ("val_top5".into(), m.val_top5),
        ("val_loss".into(), m.val_loss),
        ("train_loss".into(), m.train_loss),
        ("train_acc".into(), m.train_acc),
    ]);
    if let Some(s) = &m.weight_symmetry {
        r.extend(symmetry_row(s));
    }
    r
}

impl RunResult {
    /// Collects a finished run from its directory's `metrics.jsonl` (and the parameter count
    /// that `imixer train --json` printed).
    pub fn collect(run: &PlannedRun, dir: &Path, params: Option<f64>) -> Result<Self> {
        let history = read_history(&dir.join("metrics.jsonl"))?;
        let last = history.last().ok_or_else(|| SweepError::Unusable {
            path: dir.join("metrics.jsonl"),
            problem: "the run finished without any epoch in it".into(),
        })?;
        let mut metrics: BTreeMap<String, f64> = epoch_row(last)
            .into_iter()
            .filter(|(k, _)| k != "epoch")
            .map(|(k, v)| match k.strip_prefix("val_") {
                Some(rest) => (format!("final_val_{rest}"), v),
                None => (k, v),
            })
            .collect();
        let best = history
            .iter()
            .map(|m| m.val_top1)
            .fold(f64::NEG_INFINITY, f64::max);
        metrics.insert("best_val_top1".into(), best);
        metrics.insert(
            "train_seconds".into(),
            history.iter().map(|m| m.seconds).sum(),
        );
        metrics.insert("epochs".into(), history.len() as f64);
        if let Some(p) = params {
            metrics.insert("params".into(), p);
        }
        let mut init: BTreeMap<String, f64> = symmetry_row(&initial_symmetry(run)?).collect();
        init.insert("epoch".into(), -1.0);
        Ok(RunResult {
            id: run.id.clone(),
            setting: run.setting_id.clone(),
            settings: run.settings.clone(),
            seed: run.seed,
            metrics,
            history: std::iter::once(init)
                .chain(history.iter().map(epoch_row))
                .collect(),
        })
    }
}

/// Reads `results.jsonl`; a torn last line (a sweep killed while writing it) is dropped, the
/// run it described is then simply run (resumed) again.
pub fn read_results(path: &Path) -> Result<Vec<RunResult>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| FileError::new("read", path, e))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(SweepError::Unusable {
                    path: path.to_path_buf(),
                    problem: format!("line {} is not a run result ({e}); remove the line to run that setting again", i + 1),
                });
            }
        }
    }
    Ok(out)
}

/// Writes `results.jsonl` whole, atomically, in a stable order.
pub fn write_results(path: &Path, results: &[RunResult]) -> Result<()> {
    let mut text = String::new();
    for r in results {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    Ok(crate::files::write_atomically(path, text.as_bytes())?)
}

/// Mean and sample standard deviation (n − 1; `None` for a single value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanStd {
    pub n: usize,
    pub mean: f64,
    pub std: Option<f64>,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(MeanStd { n, mean, std })
    }

    /// `0.8712 ± 0.0021`: 4 decimals when the mean is below 10, else 1, for both numbers.
    pub fn text(&self) -> String {
        let decimals = if self.mean.abs() >= 10.0 { 1 } else { 4 };
        match self.std {
            Some(s) => format!("{:.*} ± {:.*}", decimals, self.mean, decimals, s),
            None => format!("{:.*}", decimals, self.mean),
        }
    }
}

/// One setting's runs.
pub struct SettingGroup<'a> {
    pub setting: String,
    pub settings: BTreeMap<String, toml::Value>,
    pub runs: Vec<&'a RunResult>,
}

impl SettingGroup<'_> {
    pub fn stat(&self, metric: &str) -> Option<MeanStd> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.metrics.get(metric).copied())
            .collect();
        MeanStd::of(&v)
    }
}

/// Results grouped by setting, in the order the settings first appear in `order`.
pub fn group<'a>(order: &[PlannedRun], results: &'a [RunResult]) -> Vec<SettingGroup<'a>> {
    let mut groups: Vec<SettingGroup> = Vec::new();
    for p in order {
        if groups.iter().any(|g| g.setting == p.setting_id) {
            continue;
        }
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.setting == p.setting_id)
            .collect();
        groups.push(SettingGroup {
            setting: p.setting_id.clone(),
            settings: p.settings.clone(),
            runs,
        });
    }
    groups
}

/// Metrics `summary.md` shows when the sweep file names none (those no run has are left out).
pub const DEFAULT_METRICS: [&str; 9] = [
    "final_val_top1",
    "best_val_top1",
    "final_val_loss",
    "train_loss",
    "token_cosine",
    "channel_cosine",
    "w2_w1_ratio",
    "train_seconds",
    "params",
];

/// The markdown table of mean ± std per setting.
pub fn summary_markdown(
    title: &str,
    planned: &[PlannedRun],
    results: &[RunResult],
    failed: &[(String, String)],
    metrics: Option<&[String]>,
) -> String {
    let groups = group(planned, results);
    let wanted: Vec<String> = match metrics {
        Some(m) => m.to_vec(),
        None => DEFAULT_METRICS
            .iter()
            .filter(|m| results.iter().any(|r| r.metrics.contains_key(**m)))
            .map(|m| m.to_string())
            .collect(),
    };
    let mut s = format!(
        "# {title}\n\n{} of {} runs finished{}. Each cell: mean ± sample standard deviation over the seeds that finished (n − 1 in the denominator); a single seed shows its value alone.\n\n",
        results.len(),
        planned.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", failed.len())
        }
    );
    s.push_str("| setting | seeds |");
    for m in &wanted {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(wanted.len()));
    s.push('\n');
    for g in &groups {
        let seeds: Vec<String> = g.runs.iter().map(|r| r.seed.to_string()).collect();
        let name = if g.settings.is_empty() {
            describe(&g.settings)
        } else {
            g.settings
                .iter()
                .map(|(k, v)| format!("{k}={}", value_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| {name} | {} |",
            if seeds.is_empty() {
                "—".into()
            } else {
                seeds.join(",")
            }
        ));
        for m in &wanted {
            s.push_str(&format!(
                " {} |",
                g.stat(m).map_or("—".to_string(), |st| st.text())
            ));
        }
        s.push('\n');
    }
    if !failed.is_empty() {
        s.push_str("\n## Failed runs\n\n");
        for (id, why) in failed {
            s.push_str(&format!("- `{id}`: {why}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = MeanStd::of(&[0.80, 0.82, 0.84]).unwrap();
        assert_eq!(m.n, 3);
        assert!((m.mean - 0.82).abs() < 1e-12);
        // Sample std of (−0.02, 0, 0.02): sqrt(0.0008 / 2) = 0.02.
        assert!((m.std.unwrap() - 0.02).abs() < 1e-12);
        assert_eq!(m.text(), "0.8200 ± 0.0200");
        let one = MeanStd::of(&[0.5]).unwrap();
        assert_eq!((one.std, one.text()), (None, "0.5000".to_string()));
        assert!(MeanStd::of(&[]).is_none());
        assert_eq!(MeanStd::of(&[120.0, 130.0]).unwrap().text(), "125.0 ± 7.1");
    }
}
