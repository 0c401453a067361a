//! Registry, parameter counts and the single-module properties of docs/models.md ("Properties the
//! tests check", 2, 3, 4).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use imixer::config::{Family, IMixerConfig, ModelConfig};
use imixer::layers::{gelu, Epilogue, ForwardCtx, Observe, SoftSpectralNorm};
use imixer::models::imlp::IMlp;
use imixer::params::Builder;
use imixer::{registry, MixerNet};

mod common;
use common::seeded_normal;

#[test]
fn parameter_counts_match_spec() -> Result<()> {
    let dev = Device::Cpu;
    let built = |name: &str, f: &dyn Fn(&mut ModelConfig)| -> Result<usize> {
        let mut cfg = registry::lookup(name).map_err(anyhow::Error::msg)?;
        f(&mut cfg);
        Ok(MixerNet::new(&cfg, 0, &dev)?.params.num_params())
    };
    assert_eq!(built("imixer_s16_224", &|_| {})?, 20_123_690);
    assert_eq!(
        built("imixer_s16_224", &|c| c.imixer.hidden_ratio = 1.0)?,
        19_073_066
    );
    assert_eq!(built("vanillamixer_s16_224", &|_| {})?, 21_191_178);
    assert_eq!(built("paramixer_s16_224", &|_| {})?, 19_585_546);
    assert_eq!(built("asymmixer_s16_224", &|_| {})?, 19_585_546);
    assert_eq!(built("symmixer_s16_224", &|_| {})?, 10_795_530);
    // The big ones analytically (the analytic count is checked against built models below).
    let analytic = |name: &str| registry::lookup(name).unwrap().num_params();
    assert_eq!(analytic("imixer_b16_224"), 66_210_874);
    assert_eq!(analytic("imixer_l16_224"), 232_384_106);
    Ok(())
}

#[test]
fn analytic_count_equals_built_model_for_every_family() -> Result<()> {
    for (name, cfg) in registry::all() {
        if !name.ends_with("_t4_28") && !name.ends_with("_s4_32") {
            continue;
        }
        let model = MixerNet::new(&cfg, 0, &Device::Cpu)?;
        assert_eq!(model.params.num_params(), cfg.num_params(), "{name}");
    }
    Ok(())
}

#[test]
fn registry_has_every_reference_name() {
    let names: Vec<String> = registry::all().into_iter().map(|(n, _)| n).collect();
    for family in [
        "mixer",
        "imixer",
        "vanillamixer",
        "paramixer",
        "symmixer",
        "asymmixer",
    ] {
        for size in ["s16", "s32", "b16", "b32", "l16", "l32"] {
            assert!(
                names.contains(&format!("{family}_{size}_224")),
                "{family}_{size}_224"
            );
        }
    }
    for ni in 2..=4 {
        assert!(names.contains(&format!("paramixer_s16_224_ni{ni}")));
        assert!(names.contains(&format!("symmixer_b16_224_ni{ni}")));
    }
    let lambdas = [
        ("l10", 1.0),
        ("l01", 0.1),
        ("l02", 1e-2),
        ("l03", 1e-3),
        ("l035", 5e-4),
        ("l04", 1e-4),
        ("l05", 1e-5),
        ("l06", 1e-6),
        ("l00", 0.0),
    ];
    for (code, lambda) in lambdas {
        let cfg = registry::lookup(&format!("asymmixer_s16_224_{code}")).unwrap();
        assert_eq!(cfg.lambda, lambda);
    }
    let err = registry::lookup("imixer_x16_224").unwrap_err();
    assert!(
        err.contains("unknown model name") && err.contains("imixer_s16_224"),
        "{err}"
    );
}

#[test]
fn config_validation_names_the_bad_knob() {
    let cfg = ModelConfig {
        img_size: 30,
        patch_size: 4,
        ..ModelConfig::default()
    };
    assert!(cfg.validate().unwrap_err().contains("patch_size"));
    let cfg = ModelConfig {
        family: Family::Mixer,
        lambda: 0.1,
        ..ModelConfig::default()
    };
    assert!(cfg.validate().unwrap_err().contains("lambda"));
    assert!(MixerNet::new(
        &ModelConfig {
            depth: 0,
            ..ModelConfig::default()
        },
        0,
        &Device::Cpu
    )
    .is_err());
}

/// σ(W) by 2000 power-iteration steps in f64 (independent of the layer's own u, v).
fn spectral_norm(w: &Tensor) -> Result<f64> {
    let w = w.to_dtype(DType::F64)?;
    let mut v = Tensor::ones((w.dim(1)?, 1), DType::F64, w.device())?;
    for _ in 0..2000 {
        let u = w.matmul(&v)?;
        let nv = w.t()?.matmul(&u)?;
        let n = nv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        v = (nv / n)?;
    }
    Ok(w.matmul(&v)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)
}

fn sn_layer(scale: f64, coeff: f64, n_power: usize) -> Result<SoftSpectralNorm> {
    let b = Builder::new(3, DType::F64, &Device::Cpu);
    let sn = SoftSpectralNorm::new(&b.root().sub("sn"), 24, 40, coeff, n_power)?;
    sn.weight_orig.set(&(sn.weight_orig.as_tensor() * scale)?)?;
    Ok(sn)
}

#[test]
fn soft_sn_leaves_small_weights_unchanged() -> Result<()> {
    let sn = sn_layer(0.2, 0.9, 50)?;
    assert!(spectral_norm(sn.weight_orig.as_tensor())? < 0.9);
    let w = sn.weight(&mut ForwardCtx::train(0))?;
    let d = (w - sn.weight_orig.as_tensor())?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert_eq!(d, 0.0, "σ ≤ c must leave W exactly unchanged");
    Ok(())
}

/// A forward leaves the model's spectral-norm buffers alone; its commit writes exactly what the
/// forward's last call of each layer left, and a second forward from the committed state goes on
/// from there.
#[test]
fn spectral_norm_buffers_change_only_at_the_commit() -> Result<()> {
    let sn = sn_layer(3.0, 0.9, 2)?;
    let before = sn.u.as_tensor().to_vec1::<f64>()?;
    let mut ctx = ForwardCtx::train(0);
    sn.weight(&mut ctx)?;
    sn.weight(&mut ctx)?; // a second call in the same forward goes on from the first's buffers
    assert_eq!(
        sn.u.as_tensor().to_vec1::<f64>()?,
        before,
        "the forward wrote u"
    );
    let left = ctx
        .sn
        .get(&sn.name)
        .expect("the layer's buffers")
        .u
        .to_vec1::<f64>()?;
    assert_ne!(left, before, "two training calls must move u");
    ctx.sn.commit()?;
    assert_eq!(sn.u.as_tensor().to_vec1::<f64>()?, left);
    // Four power steps in one forward equal two forwards of two steps, each committed.
    let four = sn_layer(3.0, 0.9, 4)?;
    let mut once = ForwardCtx::train(0);
    four.weight(&mut once)?;
    let u4 = once.sn.get(&four.name).unwrap().u.to_vec1::<f64>()?;
    let d = u4
        .iter()
        .zip(&left)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-12, "{d}");
    Ok(())
}

#[test]
fn soft_sn_converges_to_the_bound_with_power_steps() -> Result<()> {
    let mut errors = Vec::new();
    for n_power in [1, 5, 100] {
        let sn = sn_layer(3.0, 0.9, n_power)?;
        assert!(spectral_norm(sn.weight_orig.as_tensor())? > 0.9);
        let w = sn.weight(&mut ForwardCtx::train(0))?;
        errors.push((spectral_norm(&w)? - 0.9).abs());
    }
    assert!(
        errors[2] < 1e-6,
        "σ(W̃) after 100 steps off by {}",
        errors[2]
    );
    assert!(
        errors[0] > errors[2],
        "more power steps must tighten σ(W̃) → c: {errors:?}"
    );
    Ok(())
}

fn imlp(coeff: f64, n_iter: usize, n_power: usize) -> Result<(IMlp, Tensor)> {
    let cfg = IMixerConfig {
        hidden_ratio: 2.0,
        n_iter,
        n_power,
        coeff,
        ..IMixerConfig::default()
    };
    let b = Builder::new(11, DType::F64, &Device::Cpu);
    let m = IMlp::new(&b.root().sub("imlp"), 9, 8, &cfg)?;
    // Make F strongly non-trivial: weights well above the SN bound before normalisation.
    for sn in [&m.f.fc_sn1, &m.f.fc_sn2] {
        sn.weight_orig.set(&(sn.weight_orig.as_tensor() * 4.0)?)?;
    }
    // The iMLP acts on the last axis (the token axis, as the block feeds it LN(x)ᵀ).
    let z = seeded_normal(5, &[3, 5, 9], 1.0)?;
    Ok((m, z))
}

#[test]
fn one_iteration_imlp_is_fc2_gelu_y_plus_f_y() -> Result<()> {
    let (m, z) = imlp(0.9, 1, 8)?;
    let mut ctx = ForwardCtx::eval();
    let out = m.forward(&z, Epilogue::None, &mut ctx)?;
    let y = m.fc1.forward(&z, Epilogue::None)?;
    let f = m.f.forward(&y, Epilogue::None, &mut ctx)?;
    let expected = m.fc2.forward(&gelu(&(y + f)?)?, Epilogue::None)?;
    let d = (out - expected)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(d < 1e-12, "{d}");
    Ok(())
}

#[test]
fn fixed_point_converges_geometrically_and_uniquely_for_c_088() -> Result<()> {
    let (m, z) = imlp(0.88, 1, 500)?;
    // Converge u, v (one training call of each layer), then evaluate F with the stored state.
    let mut train = ForwardCtx::train(0);
    m.f.forward(
        &z.narrow(2, 0, 8)?.contiguous()?,
        Epilogue::None,
        &mut train,
    )?;
    train.sn.commit()?;
    let mut ctx = ForwardCtx::eval();
    let y = m.fc1.forward(&z, Epilogue::None)?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?) };
    let solve = |x0: Tensor, ctx: &mut ForwardCtx| -> Result<(Tensor, Vec<f64>)> {
        let mut x = x0;
        let mut residuals = Vec::new();
        for _ in 0..200 {
            let next = (m.f.forward(&x, Epilogue::None, ctx)? + &y)?;
            residuals.push(norm(&(&next - &x)?)?);
            x = next;
        }
        Ok((x, residuals))
    };
    let (x_a, r) = solve(y.clone(), &mut ctx)?;
    assert!(
        r[199] < 1e-9 * r[0].max(1.0),
        "residual {:.3e} → {:.3e}",
        r[0],
        r[199]
    );
    // Geometric: every ratio bounded by the Lipschitz bound L = (c·1.1289)² < 1.
    let lip = (0.88f64 * 1.128_904_3).powi(2);
    for k in 1..60 {
        if r[k - 1] > 1e-12 {
            assert!(
                r[k] <= lip * r[k - 1] * (1.0 + 1e-9),
                "step {k}: {} > L·{}",
                r[k],
                r[k - 1]
            );
        }
    }
    // x* = y + F(x*), and the same x* from a random start.
    let fx = (m.f.forward(&x_a, Epilogue::None, &mut ctx)? + &y)?;
    assert!(norm(&(&fx - &x_a)?)? < 1e-8);
    let (x_b, _) = solve(seeded_normal(6, y.dims(), 3.0)?, &mut ctx)?;
    assert!(norm(&(&x_a - &x_b)?)? < 1e-8, "fixed point not unique");
    // (1 − F) is bi-Lipschitz with constants 1 ∓ L.
    for seed in 0..5 {
        let a = seeded_normal(100 + seed, y.dims(), 1.0 + seed as f64)?;
        let b = seeded_normal(200 + seed, y.dims(), 1.0)?;
        let ga = (&a - m.f.forward(&a, Epilogue::None, &mut ctx)?)?;
        let gb = (&b - m.f.forward(&b, Epilogue::None, &mut ctx)?)?;
        let (dx, dg) = (norm(&(&a - &b)?)?, norm(&(ga - gb)?)?);
        assert!(
            dg >= (1.0 - lip) * dx - 1e-12 && dg <= (1.0 + lip) * dx + 1e-12,
            "{dg} vs {dx}"
        );
    }
    Ok(())
}

#[test]
fn checkpoint_roundtrip_and_mismatch_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = registry::lookup("paramixer_t4_28").map_err(anyhow::Error::msg)?;
    let model = MixerNet::new(&cfg, 5, &Device::Cpu)?;
    let path = dir.path().join("m.safetensors");
    model.save(&path)?;
    let loaded = MixerNet::load(&path, None, &Device::Cpu)?;
    for (a, b) in model.state_dict().iter().zip(loaded.state_dict()) {
        assert_eq!(a.0, b.0);
        assert_eq!(
            a.1.flatten_all()?.to_vec1::<f32>()?,
            b.1.flatten_all()?.to_vec1::<f32>()?
        );
    }
    // Loading into the wrong family lists the problems.
    let other = registry::lookup("symmixer_t4_28").map_err(anyhow::Error::msg)?;
    let err = MixerNet::load(&path, Some(&other), &Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("does not match") && msg.contains("file has shape [49, 64]"),
        "{msg}"
    );
    match err.root() {
        imixer::checkpoint::CheckpointError::Misfit { problems, .. } => {
            assert!(problems
                .iter()
                .any(|p| p.contains("file has shape [49, 64]")))
        }
        other => panic!("expected a misfit, got {other:?}"),
    }
    // A truncated file is a clear error, not a panic.
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = MixerNet::load(&path, None, &Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("m.safetensors"), "{msg}");
    assert!(
        matches!(err.root(), imixer::checkpoint::CheckpointError::Unreadable { path: p, .. } if *p == path),
        "{err:?}"
    );
    Ok(())
}

/// Implicit mode (the exact (1 − F)⁻¹ of docs/models.md "imixer: the iMLP"): gradients equal the
/// 50-step unrolled ones on a contractive F, equal finite differences in f64, and both solvers find the same fixed point.
#[test]
fn implicit_gradients_match_unrolled_and_finite_differences() -> Result<()> {
    use imixer::config::Solver;
    let dev = Device::Cpu;
    let make_c = |solver: Solver, n_iter: usize, coeff: f64| -> Result<IMlp> {
        let cfg = IMixerConfig {
            hidden_ratio: 2.0,
            n_iter,
            n_power: 50,
            coeff,
            solver,
        };
        let b = Builder::new(21, DType::F64, &dev);
        let m = IMlp::new(&b.root().sub("imlp"), 9, 8, &cfg)?;
        for sn in [&m.f.fc_sn1, &m.f.fc_sn2] {
            sn.weight_orig.set(&(sn.weight_orig.as_tensor() * 4.0)?)?;
        }
        Ok(m)
    };
    let make = |solver: Solver, n_iter: usize| make_c(solver, n_iter, 0.6);
    let z = seeded_normal(7, &[2, 3, 9], 1.0)?;
    let probe = seeded_normal(8, &[2, 3, 9], 1.0)?;
    // A training forward whose spectral-norm buffers are committed, as a training step's are.
    let loss = |m: &IMlp, z: &Tensor| -> Result<Tensor> {
        let mut ctx = ForwardCtx::train(0);
        let out = m.forward(z, Epilogue::None, &mut ctx)?;
        ctx.sn.commit()?;
        Ok((out * &probe)?.sum_all()?)
    };
    let grads_of = |m: &IMlp| -> Result<Vec<Tensor>> {
        let zv = candle_core::Var::from_tensor(&z)?;
        let g = loss(m, zv.as_tensor())?.backward()?;
        let mut out = vec![g.get(zv.as_tensor()).unwrap().clone()];
        for v in [
            &m.fc1.weight,
            &m.f.fc_sn1.weight_orig,
            &m.f.fc_sn1.bias,
            &m.f.fc_sn2.weight_orig,
            &m.fc2.weight,
        ] {
            out.push(g.get(v.as_tensor()).unwrap().clone());
        }
        Ok(out)
    };
    let unrolled = make(Solver::Unrolled, 50)?;
    let g_ref = grads_of(&unrolled)?;
    for solver in [
        Solver::Picard {
            tol: 1e-12,
            max_iter: 500,
        },
        Solver::Anderson {
            m: 5,
            tol: 1e-12,
            max_iter: 500,
        },
    ] {
        let m = make(solver.clone(), 2)?;
        let g = grads_of(&m)?;
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                d <= 1e-8 * scale.max(1.0),
                "{solver:?} gradient {i}: diff {d} (scale {scale})"
            );
        }
    }
    // Finite differences on the input, implicit Anderson mode.
    let m = make(
        Solver::Anderson {
            m: 5,
            tol: 1e-13,
            max_iter: 500,
        },
        2,
    )?;
    let g = grads_of(&m)?;
    // Power iterations have converged (n_power 50): evaluate with the stored u, v from now on.
    let f = |z: &Tensor| -> Result<f64> {
        let mut ctx = ForwardCtx::eval();
        Ok((m.forward(z, Epilogue::None, &mut ctx)? * &probe)?
            .sum_all()?
            .to_scalar::<f64>()?)
    };
    let zs = z.flatten_all()?.to_vec1::<f64>()?;
    let gz = g[0].flatten_all()?.to_vec1::<f64>()?;
    for i in [0, 7, 20, 41] {
        let h = 1e-6;
        let mut p = zs.clone();
        p[i] += h;
        let mut q = zs.clone();
        q[i] -= h;
        let fd = (f(&Tensor::from_vec(p, z.shape(), &dev)?)?
            - f(&Tensor::from_vec(q, z.shape(), &dev)?)?)
            / (2.0 * h);
        assert!(
            (fd - gz[i]).abs() < 1e-6 * gz[i].abs().max(1.0),
            "input {i}: fd {fd} vs implicit {}",
            gz[i]
        );
    }
    // Both solvers reach the same point through the model's forward, and report it converged.
    // (Anderson's speed-up is asserted on a slow contraction in `models::implicit`'s unit tests:
    // this F contracts fast, so the two counts are close.)
    let iters = |solver: Solver| -> Result<(usize, Tensor)> {
        let m = make_c(solver, 2, 0.88)?;
        let mut warm = ForwardCtx::train(0);
        m.forward(&z, Epilogue::None, &mut warm)?; // converge u, v (n_power 50)
        warm.sn.commit()?;
        let mut ctx = ForwardCtx::eval().observing(&[Observe::SolverStats]);
        let out = m.forward(&z, Epilogue::None, &mut ctx)?;
        let stats = ctx.observer.solver_stats.expect("observed");
        assert!(stats.iter().all(|s| s.converged && s.residual <= 1e-10));
        Ok((stats[0].iterations, out))
    };
    let (n_picard, x_p) = iters(Solver::Picard {
        tol: 1e-10,
        max_iter: 1000,
    })?;
    let (n_anderson, x_a) = iters(Solver::Anderson {
        m: 5,
        tol: 1e-10,
        max_iter: 1000,
    })?;
    eprintln!("iterations to 1e-10: picard {n_picard}, anderson(m=5) {n_anderson}");
    assert!((x_p - x_a)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-8);
    Ok(())
}

/// `MixerNet::infer` (no backward graph) gives exactly the eval forward's logits, records no
/// graph, and does not leave gradient recording switched off for the training that follows.
#[test]
fn infer_equals_eval_forward_without_a_graph() -> Result<()> {
    let dev = Device::Cpu;
    for name in ["imixer_n4_28", "paramixer_n4_28", "asymmixer_n4_28"] {
        let cfg = registry::lookup(name).map_err(anyhow::Error::msg)?;
        let model = MixerNet::new(&cfg, 0, &dev)?;
        let x = seeded_normal(7, &[3, 1, 28, 28], 1.0)?.to_dtype(DType::F32)?;
        let eval = model.forward(&x, &mut ForwardCtx::eval())?;
        assert!(eval.track_op(), "{name}: the eval forward records a graph");
        let infer = model.infer(&x)?;
        assert!(!infer.track_op(), "{name}: infer recorded a graph");
        let (a, b) = (eval.to_vec2::<f32>()?, infer.to_vec2::<f32>()?);
        assert_eq!(a, b, "{name}: infer and eval forward differ");
        // Recording is back on: a training forward after `infer` has a gradient.
        let loss = model.forward(&x, &mut ForwardCtx::train(1))?.sum_all()?;
        let grads = loss.backward()?;
        let head = model.head.weight.as_tensor();
        assert!(grads.get(head).is_some(), "{name}: no gradient after infer");
        // The backward records no graph of its own (vendored candle patch 5): a parameter's
        // gradient holding a graph node would keep that node's inputs (intermediate
        // gradients) allocated for as long as the gradients live.
        for p in model.params.params() {
            let g = grads.get(p.var.as_tensor());
            assert!(
                g.is_some_and(|g| !g.track_op()),
                "{name}: gradient of {}",
                p.name
            );
        }
    }
    Ok(())
}
