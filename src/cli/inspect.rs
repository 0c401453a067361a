//! `imixer inspect`: spectral norms and Lipschitz bounds of every SN layer, fixed-point
//! convergence of every iMLP on real inputs, and weight symmetry of every MLP.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;
use serde::Serialize;

use super::data_fit::{self, TrainedOn};
use super::eval::{eval_transform, load_for_inference};
use super::exec_args::ExecArgs;
use super::model_args::ModelArgs;
use super::output::outln;
use imixer::analysis::fixed_point::{compare_solvers, trace, FixedPointTrace, SolverComparison};
use imixer::analysis::spectral::{sn_report, SnReport, GELU_MAX_SLOPE};
use imixer::analysis::symmetry::{symmetry, SymmetryReport};
use imixer::data::{self, DatasetKind, Loader, LoaderConfig};
use imixer::layers::{Emit, ForwardCtx};
use imixer::models::{AnyMlp, Block};

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Checkpoint to analyse (any format `imixer eval` reads).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data set whose held-out images feed the fixed-point analysis (default: the one the run
    /// trained on, from the checkpoint; else fashion-mnist when the model takes 28×28×1 images,
    /// else random inputs).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Data directory (default: the run's, for the run's data set; else the standard location).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Analyse on a data set whose images differ from the model's input (other channels or
    /// size), converting them instead of refusing.
    #[arg(long)]
    pub adapt_images: bool,
    /// Images in the analysis batch.
    #[arg(long, default_value_t = 64)]
    pub images: usize,
    /// Fixed-point steps K to trace (beyond the trained n_iter).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Tolerances (relative residual) at which Picard and Anderson are compared (comma list).
    #[arg(long, value_delimiter = ',', default_values_t = [1e-4, 1e-6])]
    pub solver_tols: Vec<f64>,
    /// Anderson memory m for the comparison.
    #[arg(long, default_value_t = 5)]
    pub anderson_m: usize,
    /// Iteration cap of both solvers in the comparison (hitting it is reported).
    #[arg(long, default_value_t = 500)]
    pub solver_max_iter: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BlockReport {
    block: usize,
    spectral_norms: Vec<SnReport>,
    /// Lip(F) ≤ GELU′max² · σ(W̃1) · σ(W̃2) (< 1 ⇒ (1 − F) invertible, bi-Lipschitz 1 ∓ L).
    lipschitz_bound: Option<f64>,
    fixed_point: Option<FixedPointTrace>,
    /// Picard vs Anderson on the same inputs, per tolerance.
    solvers: Vec<SolverComparison>,
    symmetry: Vec<SymmetryReport>,
}

fn batch(
    args: &InspectArgs,
    net: &imixer::MixerNet,
    saved_tf: Option<data::EvalTransform>,
    trained_on: Option<&TrainedOn>,
) -> Result<(Tensor, String)> {
    let cfg = &net.config;
    let guess = (cfg.img_size == 28 && cfg.in_chans == 1).then_some(DatasetKind::FashionMnist);
    let kind = args.dataset.or(trained_on.map(|t| t.dataset)).or(guess);
    if let Some(kind) = kind {
        let choice = data_fit::choose(
            Some(kind),
            args.data_dir.as_deref(),
            trained_on,
            &args.checkpoint,
        )?;
        let ds = data::load_dataset(kind, &choice.dir)?;
        data_fit::check_images(cfg, &ds, &choice, args.adapt_images, &args.checkpoint)?;
        let split = ds.val.subset(args.images, 0);
        let loader = Loader::new(
            Arc::new(split),
            eval_transform(net, saved_tf, None, None),
            LoaderConfig::eval(args.images),
        )?;
        let b = loader.batch(0, 0)?;
        return Ok((
            Tensor::from_vec(b.images, b.shape.to_vec(), net.device())?,
            format!("{} held-out images of {kind}", b.shape[0]),
        ));
    }
    let x = imixer::params::seeded_normal(
        0,
        &[args.images, cfg.in_chans, cfg.img_size, cfg.img_size],
        1.0,
        DType::F32,
        net.device(),
    )?;
    Ok((x, format!("{} N(0,1) random inputs", args.images)))
}

pub fn run(a: InspectArgs) -> Result<()> {
    imixer::threads::set_threads(0);
    let loaded = load_for_inference(&a.checkpoint, &a.model, &a.exec.apply()?)?;
    let net = loaded.net;
    let (images, source) = batch(&a, &net, loaded.eval_transform, loaded.trained_on.as_ref())?;
    let mut x = net.stem.forward(&images)?;
    let mut reports = Vec::new();
    for (i, block) in net.blocks.iter().enumerate() {
        let (tok, ch) = block.mlps();
        let mut r = BlockReport {
            block: i,
            spectral_norms: vec![],
            lipschitz_bound: None,
            fixed_point: None,
            solvers: vec![],
            symmetry: vec![
                symmetry(&format!("blocks.{i}.mlp_tokens"), tok)?,
                symmetry(&format!("blocks.{i}.mlp_channels"), ch)?,
            ],
        };
        if let (AnyMlp::Implicit(m), Block::Serial(sb)) = (tok, block) {
            let s1 = sn_report(&m.f.fc_sn1)?;
            let s2 = sn_report(&m.f.fc_sn2)?;
            r.lipschitz_bound =
                Some(GELU_MAX_SLOPE * GELU_MAX_SLOPE * s1.sigma_effective * s2.sigma_effective);
            r.spectral_norms = vec![s1, s2];
            let z = sb.norm1.forward(&x, Emit::Transposed)?;
            r.fixed_point = Some(trace(m, &z, a.steps)?);
            r.solvers = compare_solvers(m, &z, &a.solver_tols, a.anderson_m, a.solver_max_iter)?;
        }
        x = block.forward(&x, &mut ForwardCtx::eval())?;
        reports.push(r);
    }
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"checkpoint": a.checkpoint.display().to_string(), "family": net.config.family, "inputs": source, "blocks": reports})
        )?;
        return Ok(());
    }
    outln!(
        "{} ({}), fixed-point inputs: {source}",
        a.checkpoint.display(),
        net.config.family
    )?;
    for r in &reports {
        outln!("block {}", r.block)?;
        for s in &r.spectral_norms {
            outln!(
                "  {:<28} σ̂ {:.4}  σ(W) {:.4}  σ(W̃) {:.4}  (c = {})",
                s.module,
                s.sigma_hat,
                s.sigma_weight,
                s.sigma_effective,
                s.coeff
            )?;
        }
        if let Some(l) = r.lipschitz_bound {
            outln!(
                "  Lipschitz bound of F: {l:.4} ({})",
                if l < 1.0 {
                    "contraction guaranteed"
                } else {
                    "no guarantee"
                }
            )?;
        }
        if let Some(fp) = &r.fixed_point {
            let show: Vec<String> = fp
                .residuals
                .iter()
                .take(8)
                .map(|v| format!("{v:.1e}"))
                .collect();
            outln!(
                "  fixed point (trained n_iter {}): residual k=1..: {} … k={}: {:.1e}; contraction {:.3}",
                fp.trained_n_iter,
                show.join(" "),
                fp.residuals.len(),
                fp.residuals.last().copied().unwrap_or(f64::NAN),
                fp.contraction
            )?;
        }
        for c in &r.solvers {
            outln!(
                "  solve to {:.0e}: picard {} it{}, anderson(m={}) {} it{}, ‖Δx*‖/‖x*‖ {:.1e}",
                c.tol,
                c.picard_iterations,
                if c.picard_converged { "" } else { " (cap hit)" },
                c.anderson_m,
                c.anderson_iterations,
                if c.anderson_converged {
                    ""
                } else {
                    " (cap hit)"
                },
                c.relative_difference
            )?;
        }
        for s in &r.symmetry {
            outln!(
                "  {:<28} cos(W_out, W_inᵀ) {:+.4}  antisymmetric ratio {:.4}",
                s.module,
                s.cosine,
                s.antisymmetric_ratio
            )?;
        }
    }
    Ok(())
}
