//! From a sweep file to its runs: settings (grid product and explicit runs) × seeds, each with a
//! readable, stable directory name and a fully resolved training configuration.

use std::collections::BTreeMap;

use super::error::{bail, Doing, Result, SweepError};

use super::spec::SweepSpec;
use crate::train::config::merge_toml;
use crate::train::TrainConfig;

/// The varied fields of one setting, by dotted path (`train_transform.hflip`).
pub type Settings = BTreeMap<String, toml::Value>;

/// One training run of a sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Directory name inside the sweep directory, e.g. `lambda-0.001_seed-2`.
    pub id: String,
    /// The setting's id without the seed: runs sharing it are averaged over seeds.
    pub setting_id: String,
    pub settings: Settings,
    pub seed: u64,
    /// base ⊕ settings ⊕ seed: what the run's `--config` file holds.
    pub table: toml::Table,
}

/// Every run of `spec`: for each seed, every setting in file order (explicit runs first, then
/// the grid with its last field varying fastest).
pub fn plan(spec: &SweepSpec) -> Result<Vec<PlannedRun>> {
    let mut settings: Vec<Settings> = Vec::new();
    for (i, r) in spec.runs.iter().enumerate() {
        let mut s = Settings::new();
        flatten(&mut s, "", r, false).doing(|| format!("in [[runs]] entry {}", i + 1))?;
        settings.push(s);
    }
    let mut axes = Settings::new();
    flatten(&mut axes, "", &spec.grid, true).doing(|| "in [grid]".into())?;
    if !axes.is_empty() || spec.runs.is_empty() {
        settings.extend(product(&axes));
    }
    let mut ids = BTreeMap::new();
    for s in &settings {
        let setting_id = setting_id(s);
        if let Some(prev) = ids.insert(setting_id.clone(), s.clone()) {
            bail!(
                "two settings of the sweep have the same name '{setting_id}' ({} and {}): every setting must differ",
                describe(&prev),
                describe(s)
            );
        }
    }
    // Seed-major: every setting's first seed runs before any second seed, so a sweep stopped
    // early has the whole comparison at fewer seeds rather than half of it at all seeds.
    let mut runs = Vec::new();
    for &seed in &spec.seeds {
        for s in &settings {
            let setting_id = setting_id(s);
            let mut table = merged_settings(&spec.base, s);
            table.insert("seed".into(), toml::Value::Integer(seed as i64));
            let id = format!("{}seed-{seed}", prefix(&setting_id));
            // Resolved now: a typo in run 40 must not wait for runs 1–39 to finish.
            check(&table).doing(|| format!("sweep run {id} ({})", describe(s)))?;
            runs.push(PlannedRun {
                id,
                setting_id,
                settings: s.clone(),
                seed,
                table,
            });
        }
    }
    Ok(runs)
}

/// Resolves a run's configuration and model as `imixer train` will (the class count does not
/// matter for the checks).
fn check(table: &toml::Table) -> Result<()> {
    let c = TrainConfig::from_table(None, table.clone())?;
    c.validate().map_err(SweepError::Spec)?;
    crate::train::trainer::resolve_model(&c, 10)?;
    Ok(())
}

/// The base table with each dotted setting written into its nested place.
fn merged_settings(base: &toml::Table, s: &Settings) -> toml::Table {
    let mut table = base.clone();
    for (path, v) in s {
        let mut parts = path.split('.').rev();
        let leaf = parts.next().unwrap_or_default();
        let mut value = v.clone();
        let mut key = leaf.to_string();
        for p in parts {
            let mut t = toml::Table::new();
            t.insert(key, value);
            value = toml::Value::Table(t);
            key = p.to_string();
        }
        merge_toml(&mut table, key, value);
    }
    table
}

/// Flattens nested tables into dotted paths. In the grid every leaf must be a list of values.
fn flatten(out: &mut Settings, prefix: &str, t: &toml::Table, lists: bool) -> Result<()> {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(out, &path, inner, lists)?,
            toml::Value::Array(a) if lists && a.is_empty() => {
                bail!("`{path}` has no values: give at least one")
            }
            toml::Value::Array(_) if lists => {
                out.insert(path, v.clone());
            }
            _ if lists => bail!("`{path}` must be a list of values, e.g. {path} = [{v}]"),
            _ => {
                out.insert(path, v.clone());
            }
        }
    }
    Ok(())
}

/// The Cartesian product of the grid's lists (one empty setting when the grid is empty).
fn product(axes: &Settings) -> Vec<Settings> {
    let mut out = vec![Settings::new()];
    for (path, values) in axes {
        let values = values.as_array().cloned().unwrap_or_default();
        out = out
            .into_iter()
            .flat_map(|s| {
                values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.insert(path.clone(), v.clone());
                    s
                })
            })
            .collect();
    }
    out
}

/// `key=value, …` for messages.
pub fn describe(s: &Settings) -> String {
    if s.is_empty() {
        return "the base settings".into();
    }
    s.iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value as it appears in names and tables: strings bare, floats in their shortest form
/// (scientific below 1e-3, so λ = 1e-5 reads `1e-5`).
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) if *f != 0.0 && (f.abs() < 1e-3 || f.abs() >= 1e6) => {
            format!("{f:e}")
        }
        toml::Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// The directory-safe name of a setting: `field-value` pairs joined by `_` (the last path
/// component of each field), `base` for an empty setting.
fn setting_id(s: &Settings) -> String {
    if s.is_empty() {
        return "base".into();
    }
    let name = s
        .iter()
        .map(|(k, v)| {
            let key = k.rsplit('.').next().unwrap_or(k);
            format!("{key}-{}", value_text(v))
        })
        .collect::<Vec<_>>()
        .join("_");
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '~'
            }
        })
        .collect();
    if safe.len() <= 96 {
        safe
    } else {
        // Long settings keep a readable head and a hash of the whole, so names stay unique.
        format!("{}~{:016x}", &safe[..80], fnv1a(name.as_bytes()))
    }
}

fn prefix(setting_id: &str) -> String {
    if setting_id == "base" {
        String::new()
    } else {
        format!("{setting_id}_")
    }
}

/// FNV-1a, 64 bit: a stable hash for names (std's hasher is randomised per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> SweepSpec {
        let spec: SweepSpec = toml::from_str(s).unwrap();
        spec.validate().unwrap();
        spec
    }

    #[test]
    fn grid_times_seeds_with_readable_names_and_nested_fields() {
        let s = spec(
            "seeds = [0, 1]\n[base]\nmodel = \"asymmixer_n4_28\"\nepochs = 2\n\
             [grid]\nlambda = [0.1, 1e-5]\ntrain_transform.hflip = [0.0, 0.5]\n",
        );
        let runs = plan(&s).unwrap();
        assert_eq!(runs.len(), 8);
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids[0], "lambda-0.1_hflip-0_seed-0");
        assert_eq!(ids[1], "lambda-0.1_hflip-0.5_seed-0");
        assert_eq!(ids[2], "lambda-1e-5_hflip-0_seed-0");
        assert_eq!(ids[5], "lambda-0.1_hflip-0.5_seed-1");
        let cfg = TrainConfig::from_table(None, runs[5].table.clone()).unwrap();
        assert_eq!(
            (cfg.lambda, cfg.train_transform.hflip, cfg.seed),
            (Some(0.1), 0.5, 1)
        );
        assert_eq!((cfg.model.as_str(), cfg.epochs), ("asymmixer_n4_28", 2));
        // Fields the setting leaves alone keep the data set's defaults.
        let d = TrainConfig::default();
        assert_eq!(
            cfg.train_transform.random_erase,
            d.train_transform.random_erase
        );
    }

    #[test]
    fn explicit_runs_come_beside_the_grid() {
        let s = spec(
            "[grid]\nlambda = [0.1]\n[base]\nmodel = \"asymmixer_n4_28\"\n\
             [[runs]]\nmodel = \"symmixer_n4_28\"\n",
        );
        let ids: Vec<String> = plan(&s).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["model-symmixer_n4_28_seed-0", "lambda-0.1_seed-0"]);
        // No grid and no runs: the base alone, once per seed.
        let ids: Vec<String> = plan(&spec("seeds = [4]\n"))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["seed-4"]);
    }

    #[test]
    fn bad_settings_are_errors_before_any_run() {
        let e = format!("{:#}", plan(&spec("[grid]\nlambda = 0.1\n")).unwrap_err());
        assert!(e.contains("must be a list"), "{e}");
        let e = format!("{:#}", plan(&spec("[grid]\nepochz = [1]\n")).unwrap_err());
        assert!(e.contains("epochz"), "{e}");
        let e = format!(
            "{:#}",
            plan(&spec("[grid]\nlambda = [-1.0]\n")).unwrap_err()
        );
        assert!(e.contains("lambda"), "{e}");
        let e = format!(
            "{:#}",
            plan(&spec("[[runs]]\nepochs = 2\n[[runs]]\nepochs = 2\n")).unwrap_err()
        );
        assert!(e.contains("same name"), "{e}");
    }
}
