//! The Hopfield side (docs/models.md "Properties the tests check", 5–7), in f64 where the property
//! is exact.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use imixer::config::{Family, ModelConfig};
use imixer::hopfield::lagrangian::{gelu, phi_gelu, Lagrangian};
use imixer::hopfield::mixer_energy::{block_interaction_energy, ToyBlock};
use imixer::hopfield::ode::{rk45, OdeOptions};
use imixer::hopfield::{Ham, Layer, Synapse};
use imixer::layers::{transpose12, Epilogue, ForwardCtx};
use imixer::MixerNet;
use rand::{Rng, SeedableRng};

mod common;
use common::seeded_normal;

fn vec_rand(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-scale..scale)).collect()
}

#[test]
fn activation_is_the_gradient_of_every_lagrangian() {
    let cases = [
        Lagrangian::Identity,
        Lagrangian::Relu,
        Lagrangian::Gelu,
        Lagrangian::Softmax { beta: 1.7 },
        Lagrangian::LayerNorm {
            gamma: 1.3,
            delta: 0.2,
            eps: 1e-6,
        },
    ];
    for l in cases {
        let x = vec_rand(11, 3, 2.0);
        let g = l.activation(&x);
        for i in 0..x.len() {
            let h = 1e-6;
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (l.value(&p) - l.value(&m)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-7,
                "{l:?} coordinate {i}: fd {fd} vs g {}",
                g[i]
            );
        }
    }
    // Φ′_GELU = GELU on a fine grid.
    for k in -80..80 {
        let x = k as f64 * 0.07;
        let fd = (phi_gelu(x + 1e-6) - phi_gelu(x - 1e-6)) / 2e-6;
        assert!((fd - gelu(x)).abs() < 1e-8, "x = {x}");
    }
}

fn paper2_model(family: Family) -> Result<MixerNet> {
    let cfg = ModelConfig {
        family,
        img_size: 8,
        in_chans: 1,
        patch_size: 2,
        embed_dim: 3,
        depth: 1,
        num_classes: 2,
        ..Default::default()
    };
    Ok(MixerNet::with_dtype(&cfg, 9, DType::F64, &Device::Cpu)?)
}

/// tok(g) + ch(g) of block 0 (the block's update without the residual).
fn block_update(net: &MixerNet, g: &Tensor) -> Result<Tensor> {
    let (tok, ch) = net.blocks[0].mlps();
    let mut ctx = ForwardCtx::eval();
    let t = transpose12(&tok.forward(&transpose12(g)?, Epilogue::None, &mut ctx)?)?;
    Ok((t + ch.forward(g, Epilogue::None, &mut ctx)?)?)
}

#[test]
fn symmixer_block_is_minus_grad_of_interaction_energy() -> Result<()> {
    let net = paper2_model(Family::SymMixer)?;
    let g = Var::from_tensor(&seeded_normal(3, &[2, 16, 3], 1.0)?)?;
    let e = block_interaction_energy(&net.blocks[0], g.as_tensor())?;
    let grad = e.backward()?.get(g.as_tensor()).unwrap().clone();
    let m = block_update(&net, g.as_tensor())?;
    let d = (m + grad)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(d < 1e-12, "M(g) + ∇E_int(g) = {d}");
    Ok(())
}

/// Max |J − Jᵀ| / max |J| of the block update's Jacobian at a random g (central differences).
fn jacobian_asymmetry(net: &MixerNet) -> Result<f64> {
    let shape = (1, 16, 3);
    let g0 = vec_rand(48, 5, 1.0);
    let eval = |v: &[f64]| -> Result<Vec<f64>> {
        Ok(
            block_update(net, &Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1::<f64>()?,
        )
    };
    let n = g0.len();
    let mut j = vec![vec![0.0; n]; n];
    for c in 0..n {
        let (mut p, mut m) = (g0.clone(), g0.clone());
        p[c] += 1e-6;
        m[c] -= 1e-6;
        let (fp, fm) = (eval(&p)?, eval(&m)?);
        for r in 0..n {
            j[r][c] = (fp[r] - fm[r]) / 2e-6;
        }
    }
    let (mut asym, mut scale) = (0f64, 0f64);
    for (r, row) in j.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            asym = asym.max((v - j[c][r]).abs());
            scale = scale.max(v.abs());
        }
    }
    Ok(asym / scale)
}

#[test]
fn block_jacobian_is_symmetric_only_for_symmixer() -> Result<()> {
    let sym = jacobian_asymmetry(&paper2_model(Family::SymMixer)?)?;
    assert!(sym < 1e-7, "SymMixer Jacobian asymmetry {sym}");
    for family in [Family::ParaMixer, Family::AsymMixer] {
        let a = jacobian_asymmetry(&paper2_model(family)?)?;
        assert!(
            a > 1e-2,
            "{family} Jacobian should not be symmetric (asymmetry {a})"
        );
    }
    Ok(())
}

#[test]
fn energy_descends_for_symmetric_and_not_for_asymmetric_dynamics() {
    // The demo's sizes (docs/models.md "Dynamics demo"): (S, C, Ns, Nc) = (4, 8, 20, 160);
    // weights on spheres.
    let x0 = vec_rand(4 * 8, 11, 2.0);
    let sym = ToyBlock::random(4, 8, 20, 160, 3.0, 0.0, 1);
    let tr = sym.trajectory(&x0, 10.0);
    assert!(
        tr.max_increase <= 1e-9,
        "symmetric dynamics increased E by {}",
        tr.max_increase
    );
    assert!(tr.energy.last().unwrap() < &tr.energy[0]);
    // Small explicit Euler steps descend too.
    let mut x = x0.clone();
    let mut e = sym.energy(&x);
    for _ in 0..200 {
        let v = sym.velocity(&x);
        x.iter_mut().zip(&v).for_each(|(a, b)| *a += 0.01 * b);
        let e2 = sym.energy(&x);
        assert!(e2 <= e + 1e-12, "Euler step increased E: {e} → {e2}");
        e = e2;
    }
    // Strong symmetry breaking: some trajectory increases the same energy.
    let any_increase = (0..8).any(|seed| {
        let asym = ToyBlock::random(4, 8, 20, 160, 3.0, 6.0, 100 + seed);
        asym.trajectory(&vec_rand(32, 200 + seed, 2.0), 10.0)
            .max_increase
            > 1e-6
    });
    assert!(
        any_increase,
        "asymmetric dynamics never increased the energy"
    );
}

#[test]
fn ham_energy_gradient_and_monotone_dynamics() {
    // 3-layer HAM: ReLU ⇄ LayerNorm-visible ⇄ ReLU (the Energy MetaFormer's shape, small).
    let layers = vec![
        Layer {
            size: 6,
            lagrangian: Lagrangian::Relu,
            tau: 1.0,
        },
        Layer {
            size: 5,
            lagrangian: Lagrangian::LayerNorm {
                gamma: 1.0,
                delta: 0.0,
                eps: 1e-6,
            },
            tau: 1.0,
        },
        Layer {
            size: 7,
            lagrangian: Lagrangian::Relu,
            tau: 0.5,
        },
    ];
    let synapses = vec![
        Synapse {
            a: 1,
            b: 0,
            xi: vec_rand(30, 1, 0.5),
        },
        Synapse {
            a: 1,
            b: 2,
            xi: vec_rand(35, 2, 0.5),
        },
    ];
    let ham = Ham { layers, synapses };
    ham.validate().unwrap();
    let x: Vec<Vec<f64>> = vec![
        vec_rand(6, 3, 1.0),
        vec_rand(5, 4, 1.0),
        vec_rand(7, 5, 1.0),
    ];
    // ∂E/∂g = x − I: check the chain rule dE = Σ (∂E/∂g)ᵀ dg along a random direction of x.
    let dir: Vec<Vec<f64>> = vec![
        vec_rand(6, 6, 1.0),
        vec_rand(5, 7, 1.0),
        vec_rand(7, 8, 1.0),
    ];
    let shift = |s: f64| -> Vec<Vec<f64>> {
        x.iter()
            .zip(&dir)
            .map(|(a, d)| a.iter().zip(d).map(|(a, d)| a + s * d).collect())
            .collect()
    };
    let h = 1e-6;
    let de = (ham.energy(&shift(h)) - ham.energy(&shift(-h))) / (2.0 * h);
    let gp = ham.activations(&shift(h));
    let gm = ham.activations(&shift(-h));
    let dg = ham.grad_g(&x);
    let predicted: f64 = (0..3)
        .map(|l| {
            (0..dg[l].len())
                .map(|i| dg[l][i] * (gp[l][i] - gm[l][i]) / (2.0 * h))
                .sum::<f64>()
        })
        .sum();
    assert!(
        (de - predicted).abs() < 1e-6 * de.abs().max(1.0),
        "dE {de} vs {predicted}"
    );
    // Continuous dynamics: energy never increases.
    let traj = ham.integrate(&x, 20.0, &OdeOptions::default());
    let energies: Vec<f64> = traj.iter().map(|(_, s)| ham.energy(s)).collect();
    for w in energies.windows(2) {
        assert!(w[1] <= w[0] + 1e-9, "energy increased {} → {}", w[0], w[1]);
    }
    // Discrete small steps too.
    let mut s = x.clone();
    let mut e = ham.energy(&s);
    for _ in 0..100 {
        ham.step(&mut s, 0.05);
        let e2 = ham.energy(&s);
        assert!(e2 <= e + 1e-10);
        e = e2;
    }
}

#[test]
fn ham_with_fast_hidden_layers_settles_to_the_imlp_fixed_point() {
    // Visible dynamics with both hidden layers at their stationary point:
    // dx/dt = y + W2·GELU(W1·GELU(x) + b1) + b2 − x, which is stationary exactly at x* = y + F(x*).
    let (n1, n2) = (5, 8);
    let w1 = vec_rand(n2 * n1, 1, 0.35);
    let w2 = vec_rand(n1 * n2, 2, 0.35);
    let (b1, b2, y) = (
        vec_rand(n2, 3, 0.1),
        vec_rand(n1, 4, 0.1),
        vec_rand(n1, 5, 1.0),
    );
    let f = |x: &[f64]| -> Vec<f64> {
        let h: Vec<f64> = (0..n2)
            .map(|k| gelu((0..n1).map(|i| w1[k * n1 + i] * gelu(x[i])).sum::<f64>() + b1[k]))
            .collect();
        (0..n1)
            .map(|i| (0..n2).map(|k| w2[i * n2 + k] * h[k]).sum::<f64>() + b2[i])
            .collect()
    };
    let sol = rk45(
        |_, x| {
            f(x).iter()
                .zip(&y)
                .zip(x)
                .map(|((f, y), x)| y + f - x)
                .collect()
        },
        &vec![0.0; n1],
        40.0,
        &OdeOptions::default(),
    );
    let x_ham = &sol.last().unwrap().1;
    // Picard iteration of the iMLP.
    let mut x = y.clone();
    for _ in 0..200 {
        x = f(&x).iter().zip(&y).map(|(f, y)| y + f).collect();
    }
    for i in 0..n1 {
        assert!(
            (x[i] - x_ham[i]).abs() < 1e-6,
            "HAM {} vs iMLP {}",
            x_ham[i],
            x[i]
        );
    }
}
