//! `summary.md` and the `[[plot]]` figures of a sweep, redrawn from its results after every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::{bail, Result};

use super::plan::{describe, PlannedRun, Settings};
use super::results::{group, summary_markdown, MeanStd, RunResult};
use super::spec::{PlotSpec, SweepSpec};
use crate::plot::{error_bars, Band, ErrorSeries};

/// Writes `summary.md` and every plot; returns the plot paths.
pub fn write(
    out: &Path,
    spec: &SweepSpec,
    planned: &[PlannedRun],
    results: &[RunResult],
    failed: &[(String, String)],
) -> Result<Vec<PathBuf>> {
    let title = format!(
        "Sweep {}",
        out.file_name().map_or(out.display().to_string(), |n| n
            .to_string_lossy()
            .into_owned())
    );
    let md = summary_markdown(&title, planned, results, failed, spec.metrics.as_deref());
    crate::files::write_atomically(&out.join("summary.md"), md.as_bytes())?;
    let mut paths = Vec::new();
    for p in &spec.plot {
        let path = out.join(p.file_name());
        // A plot whose metric no finished run has yet (a partial sweep) is drawn later.
        if draw(&path, p, planned, results)? {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The value of field `x` in a setting: its dotted path, or the last component alone.
fn field<'a>(s: &'a Settings, x: &str) -> Option<(&'a String, &'a toml::Value)> {
    s.iter()
        .find(|(k, _)| k.as_str() == x || k.rsplit('.').next() == Some(x))
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// Draws one plot; `false` when no finished run has its metric yet.
fn draw(path: &Path, p: &PlotSpec, planned: &[PlannedRun], results: &[RunResult]) -> Result<bool> {
    let groups = group(planned, results);
    let title = format!("{} vs {} (mean ± std over seeds)", p.y, p.x);
    if p.x == "epoch" {
        let mut series = Vec::new();
        for g in groups.iter().filter(|g| !g.runs.is_empty()) {
            let mut by_epoch: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for r in &g.runs {
                for row in &r.history {
                    if let (Some(e), Some(v)) = (row.get("epoch"), row.get(&p.y)) {
                        by_epoch.entry(*e as i64).or_default().push(*v);
                    }
                }
            }
            let points = by_epoch
                .into_iter()
                .filter_map(|(e, v)| {
                    MeanStd::of(&v).map(|m| (e as f64, m.mean, m.std.unwrap_or(0.0)))
                })
                .collect::<Vec<_>>();
            if !points.is_empty() {
                series.push(ErrorSeries {
                    name: describe(&g.settings),
                    points,
                });
            }
        }
        if series.is_empty() {
            return Ok(false);
        }
        let xlabel = "epoch (−1: the initial weights)";
        error_bars(path, &title, xlabel, &p.y, p.log_x, &series, &[])?;
        return Ok(true);
    }
    // Runs that vary x form lines (one per combination of their other fields); runs without x
    // are reference bands.
    let mut lines: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut bands = Vec::new();
    for g in groups.iter().filter(|g| !g.runs.is_empty()) {
        let Some(stat) = g.stat(&p.y) else {
            continue;
        };
        let std = stat.std.unwrap_or(0.0);
        match field(&g.settings, &p.x) {
            Some((key, v)) => {
                let Some(x) = number(v) else {
                    bail!(
                        "plot {}: `{}` = {v} is not a number; plot a numeric field",
                        path.display(),
                        p.x
                    );
                };
                let mut rest = g.settings.clone();
                rest.remove(key);
                let name = if rest.is_empty() {
                    p.y.clone()
                } else {
                    describe(&rest)
                };
                lines.entry(name).or_default().push((x, stat.mean, std));
            }
            None => bands.push(Band {
                name: describe(&g.settings),
                mean: stat.mean,
                std,
            }),
        }
    }
    if lines.is_empty() && bands.is_empty() {
        return Ok(false);
    }
    let series: Vec<ErrorSeries> = lines
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            ErrorSeries { name, points }
        })
        .collect();
    error_bars(path, &title, &p.x, &p.y, p.log_x, &series, &bands)?;
    Ok(true)
}
