//! `imixer dynamics`: the AsymMixer continuous-time demo (paper 2). Small parallel Mixer blocks
//! with weights on spheres, integrated as dx/dt = M(LN x) − x; energy-vs-time and trajectory PNGs
//! show descent for symmetric weights and non-descent for symmetry-broken ones.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::output::outln;
use imixer::hopfield::mixer_energy::ToyBlock;
use imixer::plot::{line_panels, Series};

#[derive(Args)]
pub struct DynamicsArgs {
    /// Tokens S of the state.
    #[arg(long, default_value_t = 4)]
    pub tokens: usize,
    /// Channels C of the state.
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Token-MLP hidden width Ns.
    #[arg(long, default_value_t = 20)]
    pub token_hidden: usize,
    /// Channel-MLP hidden width Nc.
    #[arg(long, default_value_t = 160)]
    pub channel_hidden: usize,
    /// Frobenius radius of the symmetric weights W_s, W_c.
    #[arg(long, default_value_t = 3.0, value_parser = non_negative_f64)]
    pub radius: f64,
    /// Frobenius radius of the symmetry-breaking W2 of the asymmetric block.
    #[arg(long, default_value_t = 6.0, value_parser = non_negative_f64)]
    pub asym_radius: f64,
    /// Integration time (0 < t ≤ 10000).
    #[arg(long, default_value_t = 10.0, value_parser = integration_time)]
    pub time: f64,
    /// Initial states per block.
    #[arg(long, default_value_t = 4)]
    pub starts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "runs/dynamics")]
    pub out: PathBuf,
}

/// Largest `--time`: the adaptive integrator's step count grows with it.
pub const MAX_TIME: f64 = 1e4;

fn integration_time(s: &str) -> Result<f64, String> {
    let t = positive_f64(s)?;
    if t > MAX_TIME {
        return Err(format!("{t} exceeds the limit {MAX_TIME}"));
    }
    Ok(t)
}

/// A finite number > 0 (a command-line value parser).
pub(crate) fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} must be a finite number > 0")),
        Err(e) => Err(e.to_string()),
    }
}

/// A whole number ≥ 1 (a command-line value parser).
pub(crate) fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number ≥ 0 (a command-line value parser).
pub(crate) fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} must be a finite number ≥ 0")),
        Err(e) => Err(e.to_string()),
    }
}

/// (title, curve names, curves) of one figure panel.
type Panel = (&'static str, Vec<String>, Vec<Vec<(f64, f64)>>);

pub fn run(a: DynamicsArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let n = a.tokens * a.channels;
    if n == 0 || a.token_hidden == 0 || a.channel_hidden == 0 {
        anyhow::bail!("all sizes must be positive");
    }
    let mut summary = Vec::new();
    let mut energy_panels = Vec::new();
    let mut coord_panels = Vec::new();
    for (label, r2, seed) in [
        ("symmetric (SymMixer)", 0.0, a.seed),
        ("asymmetric (AsymMixer)", a.asym_radius, a.seed + 1),
    ] {
        let block = ToyBlock::random(
            a.tokens,
            a.channels,
            a.token_hidden,
            a.channel_hidden,
            a.radius,
            r2,
            seed,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ 0xd1a);
        let mut e_series = Vec::new();
        let mut x_series = Vec::new();
        let mut names = Vec::new();
        for s in 0..a.starts {
            let x0: Vec<f64> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let sol = block.trajectory(&x0, a.time);
            summary.push(serde_json::json!({
                "block": label, "start": s, "energy_start": sol.energy[0],
                "energy_end": sol.energy.last(), "max_increase": sol.max_increase,
                "monotone": sol.max_increase <= 1e-9, "final_speed": sol.final_speed,
            }));
            names.push(format!("start {s}"));
            e_series.push(
                sol.t
                    .iter()
                    .copied()
                    .zip(sol.energy.iter().copied())
                    .collect::<Vec<_>>(),
            );
            let traj = imixer::hopfield::ode::rk45(
                |_, x| block.velocity(x),
                &x0,
                a.time,
                &Default::default(),
            );
            x_series.push(traj.iter().map(|(t, x)| (*t, x[0])).collect::<Vec<_>>());
        }
        energy_panels.push((label, names.clone(), e_series));
        coord_panels.push((label, names, x_series));
    }
    fn to_panels<'a>(
        panels: &'a [Panel],
        ylabel: &'static str,
    ) -> Vec<(&'static str, &'static str, &'static str, Vec<Series<'a>>)> {
        panels
            .iter()
            .map(|(label, names, series)| {
                let s: Vec<Series> = names
                    .iter()
                    .zip(series)
                    .map(|(n, p)| Series {
                        name: n.as_str(),
                        points: p.clone(),
                    })
                    .collect();
                (*label, "time", ylabel, s)
            })
            .collect()
    }
    line_panels(
        &a.out.join("energy.png"),
        &to_panels(&energy_panels, "energy E(x)"),
    )?;
    line_panels(
        &a.out.join("trajectories.png"),
        &to_panels(&coord_panels, "x[0, 0]"),
    )?;
    let json = serde_json::json!({"sizes": [a.tokens, a.channels, a.token_hidden, a.channel_hidden], "runs": summary});
    imixer::files::write_atomically(
        &a.out.join("dynamics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    for r in &summary {
        outln!(
            "{:<24} start {}  E {:>9.4} → {:>9.4}  max ΔE {:+.2e}  {}",
            r["block"].as_str().unwrap_or(""),
            r["start"],
            r["energy_start"].as_f64().unwrap_or(f64::NAN),
            r["energy_end"].as_f64().unwrap_or(f64::NAN),
            r["max_increase"].as_f64().unwrap_or(f64::NAN),
            if r["monotone"].as_bool() == Some(true) {
                "monotone descent"
            } else {
                "energy increases"
            }
        )?;
    }
    outln!(
        "wrote {}/energy.png, trajectories.png, dynamics.json",
        a.out.display()
    )?;
    Ok(())
}
