//! Data-parallel shards (`train::Shards`): a sharded pass computes the whole batch's gradients
//! (up to the summation order), leaves the spectral-norm buffers exactly where the unsharded
//! pass leaves them, and gives the same bits whatever the thread count.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use imixer::config::Family;
use imixer::train::{forward_backward, Shards, Targets};
use imixer::{registry, MixerNet};

mod common;
use common::seeded_normal;

/// An `_n4_28` model of `family` with a random head (timm's zero head would leave every other
/// gradient zero) and drop-path `drop_path`.
fn model(family: Family, drop_path: f64) -> Result<MixerNet> {
    let mut cfg = registry::lookup(&format!("{family}_n4_28")).map_err(anyhow::Error::msg)?;
    cfg.drop_path = drop_path;
    let model = MixerNet::new(&cfg, 3, &Device::Cpu)?;
    let head = model.head.weight.as_tensor();
    model
        .head
        .weight
        .set(&seeded_normal(11, head.dims(), 0.2)?.to_dtype(DType::F32)?)?;
    Ok(model)
}

fn batch(b: usize) -> Result<(Tensor, Tensor)> {
    let x = seeded_normal(5, &[b, 1, 28, 28], 1.0)?.to_dtype(DType::F32)?;
    let labels: Vec<u32> = (0..b as u32).map(|i| (i * 7) % 10).collect();
    Ok((x, Tensor::new(labels.as_slice(), &Device::Cpu)?))
}

/// Every parameter's gradient, by name.
fn grads_of(model: &MixerNet, g: &GradStore) -> Result<Vec<(String, Vec<f32>)>> {
    model
        .params
        .params()
        .map(|e| {
            let t = g
                .get(e.var.as_tensor())
                .expect("every parameter has a gradient");
            Ok((e.name.clone(), t.flatten_all()?.to_vec1::<f32>()?))
        })
        .collect()
}

/// Every buffer (spectral-norm u, v, σ), by name.
fn buffers_of(model: &MixerNet) -> Result<Vec<(String, Vec<f32>)>> {
    model
        .params
        .buffers()
        .map(|e| {
            Ok((
                e.name.clone(),
                e.var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
            ))
        })
        .collect()
}

#[test]
fn sharded_gradients_match_the_whole_batch_and_sn_buffers_match_exactly() -> Result<()> {
    let (x, labels) = batch(7)?;
    for family in Family::ALL {
        let whole = model(family, 0.0)?;
        let split = model(family, 0.0)?;
        let pass = |m: &MixerNet, shards: usize| {
            forward_backward(
                m,
                &Shards::new(shards, 2)?,
                &x,
                Targets::Hard(&labels),
                9,
                1,
            )
        };
        let one = pass(&whole, 1)?;
        // 7 rows in 3 shards: 3 + 2 + 2, so the shard weights are unequal.
        let three = pass(&split, 3)?;
        assert!(
            (one.loss - three.loss).abs() < 1e-5 * one.loss.abs(),
            "{family}: loss {} vs {}",
            one.loss,
            three.loss
        );
        let (a, b) = (one.logits.to_vec2::<f32>()?, three.logits.to_vec2::<f32>()?);
        for (ra, rb) in a.iter().zip(&b) {
            for (p, q) in ra.iter().zip(rb) {
                assert!((p - q).abs() < 1e-5, "{family}: logits {p} vs {q}");
            }
        }
        let mut nonzero = 0;
        for ((name, ga), (_, gb)) in grads_of(&whole, &one.grads)?
            .into_iter()
            .zip(grads_of(&split, &three.grads)?)
        {
            let scale = ga.iter().fold(0f32, |m, v| m.max(v.abs()));
            nonzero += usize::from(scale > 0.0);
            for (p, q) in ga.iter().zip(&gb) {
                assert!(
                    (p - q).abs() <= 1e-4 * scale + 1e-7,
                    "{family} {name}: gradient {p} vs {q} (max |g| {scale})"
                );
            }
        }
        assert!(
            nonzero > 10,
            "{family}: only {nonzero} gradients are nonzero"
        );
        assert_eq!(
            buffers_of(&whole)?,
            buffers_of(&split)?,
            "{family}: spectral-norm buffers differ after a sharded step"
        );
    }
    Ok(())
}

#[test]
fn a_sharded_pass_gives_the_same_bits_for_any_thread_count() -> Result<()> {
    let (x, labels) = batch(6)?;
    let soft = seeded_normal(8, &[6, 10], 1.0)?
        .to_dtype(DType::F32)?
        .exp()?;
    let soft = soft.broadcast_div(&soft.sum_keepdim(1)?)?;
    for family in [Family::IMixer, Family::ParaMixer, Family::AsymMixer] {
        let mut runs = Vec::new();
        for threads in [1, 2, 4] {
            let m = model(family, 0.2)?;
            let shards = Shards::new(2, threads)?;
            let hard = forward_backward(&m, &shards, &x, Targets::Hard(&labels), 4, 1)?;
            let soft = forward_backward(&m, &shards, &x, Targets::Soft(&soft), 4, 2)?;
            runs.push((
                grads_of(&m, &hard.grads)?,
                grads_of(&m, &soft.grads)?,
                hard.logits.to_vec2::<f32>()?,
                buffers_of(&m)?,
            ));
        }
        assert!(
            runs.windows(2).all(|w| w[0] == w[1]),
            "{family}: results depend on threads"
        );
    }
    Ok(())
}

#[test]
fn sharded_inference_equals_the_whole_batch() -> Result<()> {
    let (x, _) = batch(5)?;
    for family in [Family::IMixer, Family::Mixer] {
        let m = model(family, 0.0)?;
        let whole = m.infer(&x)?.to_vec2::<f32>()?;
        let sigma_whole = buffers_of(&m)?;
        let split = Shards::new(2, 2)?.infer(&m, &x)?;
        assert!(
            !split.track_op(),
            "{family}: sharded inference recorded a graph"
        );
        for (ra, rb) in whole.iter().zip(&split.to_vec2::<f32>()?) {
            for (p, q) in ra.iter().zip(rb) {
                assert!((p - q).abs() < 1e-5, "{family}: logits {p} vs {q}");
            }
        }
        assert_eq!(sigma_whole, buffers_of(&m)?, "{family}: buffers moved");
    }
    Ok(())
}
