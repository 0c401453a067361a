//! `imixer energy-demo`: the Energy MetaFormer (a 3-layer HAM denoiser, docs/models.md "Energy
//! MetaFormer demo") trained on Fashion-MNIST (or MNIST); writes the loss curve, an energy-descent curve from random states,
//! denoised examples, learned receptive fields and metrics.json.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::dynamics::{non_negative_f64, positive_f64, positive_usize};
use super::output::outln;
use imixer::data::{self, DatasetKind, Split};
use imixer::hopfield::energy_metaformer::EnergyMetaformer;
use imixer::optim::{AdamW, AdamWConfig};
use imixer::plot::{line_panels, Series};

#[derive(Args)]
pub struct EnergyDemoArgs {
    /// Compute device: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// fashion-mnist (default) or mnist.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Training epochs (the reference runs 100; a few already show the effect).
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 512, value_parser = positive_usize)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4, value_parser = positive_f64)]
    pub lr: f64,
    /// Neurons in each hidden ReLU layer.
    #[arg(long, default_value_t = 900, value_parser = positive_usize)]
    pub hidden: usize,
    /// Updates per forward pass and their step size η.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 0.1, value_parser = positive_f64)]
    pub eta: f64,
    /// Std of the Gaussian noise added to the (L2-normalised) images.
    #[arg(long, default_value_t = 0.3, value_parser = non_negative_f64)]
    pub noise: f64,
    /// Train on a subset of this many images.
    #[arg(long, value_parser = positive_usize)]
    pub train_subset: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value = "runs/energy-demo")]
    pub out: PathBuf,
}

/// Flattened images / 255, L2-normalised, as (n, 784).
fn images(split: &Split, idx: &[usize], device: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(idx.len() * 784);
    for &i in idx {
        let img = split.get(i)?;
        let px: Vec<f32> = img.data.iter().map(|&p| p as f32 / 255.0).collect();
        let n = px.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        v.extend(px.iter().map(|a| a / n));
    }
    let d = v.len() / idx.len().max(1);
    Ok(Tensor::from_vec(v, (idx.len(), d), device)?)
}

fn noise_like(t: &Tensor, std: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..t.elem_count())
        .map(|_| (std * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)) as f32)
        .collect();
    Ok(Tensor::from_vec(v, t.shape(), t.device())?)
}

/// Writes rows of (n, 784) as a grid of 28×28 gray tiles, each tile min–max normalised.
fn tiles(path: &Path, rows: &[Vec<f32>], cols: usize) -> Result<()> {
    let side = 28usize;
    let n = rows.len().max(1);
    let grid_rows = n.div_ceil(cols);
    let (w, h) = ((cols * (side + 2)) as u32, (grid_rows * (side + 2)) as u32);
    let mut img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
    for (k, r) in rows.iter().enumerate() {
        let (lo, hi) = r
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = (hi - lo).max(1e-12);
        let (ox, oy) = ((k % cols) * (side + 2) + 1, (k / cols) * (side + 2) + 1);
        for (i, v) in r.iter().take(side * side).enumerate() {
            let p = (255.0 * (v - lo) / span) as u8;
            img.put_pixel(
                (ox + i % side) as u32,
                (oy + i / side) as u32,
                image::Luma([p]),
            );
        }
    }
    let tmp = path.with_extension("tmp.png");
    img.save(&tmp)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn run(a: EnergyDemoArgs) -> Result<()> {
    imixer::threads::set_threads(a.threads);
    if !matches!(a.dataset, DatasetKind::FashionMnist | DatasetKind::Mnist) {
        anyhow::bail!("energy-demo works on 28×28 images: --dataset fashion-mnist or mnist");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let dev = imixer::device::open(&a.device)?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| data::default_data_dir(a.dataset));
    let ds = data::load_dataset(a.dataset, &dir)?;
    let train = match a.train_subset {
        Some(n) => ds.train.subset(n, a.seed),
        None => ds.train.clone(),
    };
    let (net, params) = EnergyMetaformer::new(784, a.hidden, a.seed, &dev)?;
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr: a.lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ 0xe7e);
    let mut losses = Vec::new();
    let started = Instant::now();
    let mut step = 0usize;
    for epoch in 0..a.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(a.batch_size) {
            let clean = images(&train, chunk, &dev)?;
            let noisy = (&clean + noise_like(&clean, a.noise, &mut rng)?)?;
            let loss = net.loss(&noisy, &clean, a.steps, a.eta)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                anyhow::bail!("energy-demo loss became {value} at epoch {epoch}, step {step}; lower --lr or --eta");
            }
            opt.step(&loss.backward()?)?;
            losses.push((step as f64, value));
            step += 1;
        }
        eprintln!(
            "epoch {epoch}: denoising loss {:.4} ({:.0} s)",
            losses.last().map(|l| l.1).unwrap_or(f64::NAN),
            started.elapsed().as_secs_f64()
        );
    }
    // Energy descent from random states 10·N(0, 1), 28 updates of step 0.5.
    let b = 64;
    let rand_state = |n: usize, rng: &mut ChaCha8Rng| {
        noise_like(
            &Tensor::zeros((b, n), candle_core::DType::F32, &dev)?,
            10.0,
            rng,
        )
    };
    let mut s = (
        rand_state(784, &mut rng)?,
        rand_state(a.hidden, &mut rng)?,
        rand_state(a.hidden, &mut rng)?,
    );
    let mut energies = vec![net.energy(&s)?.mean_all()?.to_scalar::<f32>()? as f64];
    for _ in 0..28 {
        s = net.step(&s, 0.5)?;
        energies.push(net.energy(&s)?.mean_all()?.to_scalar::<f32>()? as f64);
    }
    let monotone = energies
        .windows(2)
        .all(|w| w[1] <= w[0] + 1e-6 * w[0].abs().max(1.0));
    // Figures.
    line_panels(
        &a.out.join("loss.png"),
        &[(
            "denoising loss",
            "step",
            "mean (LN(x_v) − clean)²",
            vec![Series {
                name: "train",
                points: losses.clone(),
            }],
        )],
    )?;
    let e_pts: Vec<(f64, f64)> = energies
        .iter()
        .enumerate()
        .map(|(i, e)| (i as f64, *e))
        .collect();
    line_panels(
        &a.out.join("energy.png"),
        &[(
            "energy from 10·N(0,1) states (mean of 64)",
            "update",
            "E",
            vec![Series {
                name: "E",
                points: e_pts,
            }],
        )],
    )?;
    let idx: Vec<usize> = (0..8).collect();
    let clean = images(&ds.val, &idx, &dev)?;
    let noisy = (&clean + noise_like(&clean, a.noise, &mut rng)?)?;
    let denoised = net.denoise(&noisy, a.steps, a.eta)?;
    let mut rows = Vec::new();
    for t in [&clean, &noisy, &denoised] {
        rows.extend(t.to_vec2::<f32>()?);
    }
    tiles(&a.out.join("denoised.png"), &rows, 8)?;
    let fields: Vec<Vec<f32>> = net
        .xi1
        .as_tensor()
        .narrow(0, 0, 64.min(a.hidden))?
        .to_vec2::<f32>()?;
    tiles(&a.out.join("receptive_fields.png"), &fields, 8)?;
    let metrics = serde_json::json!({
        "dataset": a.dataset.name(), "epochs": a.epochs, "steps": step,
        "final_loss": losses.last().map(|l| l.1), "energy_descent": energies, "energy_monotone": monotone,
        "seconds": started.elapsed().as_secs_f64(),
    });
    imixer::files::write_atomically(
        &a.out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    outln!(
        "final denoising loss {:.4}; energy from random states {} ({:.3} → {:.3}); figures in {}",
        losses.last().map(|l| l.1).unwrap_or(f64::NAN),
        if monotone {
            "descends monotonically"
        } else {
            "is NOT monotone"
        },
        energies[0],
        energies[energies.len() - 1],
        a.out.display()
    )?;
    Ok(())
}
