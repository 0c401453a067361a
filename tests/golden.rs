//! Golden parity with the PyTorch reference (docs/models.md "Properties the tests check", 1).
//!
//! For every family, `<family>.safetensors` + `<family>.json` from `$IMIXER_GOLDEN_DIR` (default
//! `tests/golden/`, the reference tensors shipped with the repository): eval activations and
//! logits, train-mode logits and losses, every gradient, the spectral-norm buffers and per-call
//! traces, the eval forward after training, and one AdamW step. A missing file fails the test.
//!
//! `IMIXER_TEST_DEVICE=cuda[:N]` runs the models on that device instead of the CPU (a build with
//! the `cuda` feature; `scripts/gpu_check.sh` does): the portable path, which is what a GPU runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use imixer::config::{Family, IMixerConfig, ModelConfig};
use imixer::kernels::KernelPath;
use imixer::layers::{ForwardCtx, Observe};
use imixer::optim::{AdamW, AdamWConfig};
use imixer::MixerNet;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    std::env::var_os("IMIXER_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"))
}

/// The device the models run on: `IMIXER_TEST_DEVICE`, else the CPU.
fn test_device() -> Result<Device> {
    match std::env::var("IMIXER_TEST_DEVICE") {
        Ok(spec) if !spec.is_empty() => Ok(imixer::device::open(&spec)?),
        _ => Ok(Device::Cpu),
    }
}

struct Golden {
    tensors: HashMap<String, Tensor>,
    sidecar: Value,
}

impl Golden {
    fn load(family: &str, dev: &Device) -> Result<Self> {
        let dir = golden_dir();
        let st = dir.join(format!("{family}.safetensors"));
        let js = dir.join(format!("{family}.json"));
        let tensors = candle_core::safetensors::load(&st, dev).with_context(|| {
            format!(
                "golden file {} is missing or unreadable (restore tests/golden/ from the \
                 repository, or set IMIXER_GOLDEN_DIR to a directory with the reference files)",
                st.display()
            )
        })?;
        let sidecar: Value = serde_json::from_str(
            &std::fs::read_to_string(&js)
                .with_context(|| format!("golden sidecar {} is missing", js.display()))?,
        )?;
        Ok(Self { tensors, sidecar })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("golden tensor {name} missing"))
    }

    fn floor(&self, key: &str) -> f64 {
        self.sidecar["f32_vs_f64_max_abs_err"][key]
            .as_f64()
            .unwrap_or(1e-7)
    }

    fn near_zero_grads(&self) -> Vec<String> {
        self.sidecar["f32_vs_f64_max_abs_err"]["grad_near_zero"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn config(&self) -> Result<ModelConfig> {
        let c = &self.sidecar["config"];
        let a = &self.sidecar["model_args"];
        let family: Family = self.sidecar["family"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let u = |v: &Value| v.as_u64().map(|x| x as usize);
        let ratio = c["mlp_ratio"].as_array().context("mlp_ratio")?;
        let mut cfg = ModelConfig {
            family,
            img_size: u(&c["img_size"]).context("img_size")?,
            in_chans: u(&c["in_chans"]).context("in_chans")?,
            patch_size: u(&c["patch_size"]).context("patch_size")?,
            embed_dim: u(&c["embed_dim"]).context("embed_dim")?,
            depth: u(&c["num_blocks"]).context("num_blocks")?,
            num_classes: u(&c["num_classes"]).context("num_classes")?,
            mlp_ratio: (ratio[0].as_f64().unwrap(), ratio[1].as_f64().unwrap()),
            drop_path: c["drop_path_rate"].as_f64().unwrap_or(0.0),
            ..ModelConfig::default()
        };
        if family == Family::IMixer {
            cfg.imixer = IMixerConfig {
                hidden_ratio: a["hidden_ratio"].as_f64().context("hidden_ratio")?,
                n_power: u(&a["n_power_iterations"]).context("n_power_iterations")?,
                n_iter: u(&a["n_repeat"]).context("n_repeat")?,
                coeff: self.sidecar["spectral_norm"]["coeff"]
                    .as_f64()
                    .unwrap_or(0.9),
                ..IMixerConfig::default()
            };
        }
        if family.is_paper2() {
            cfg.n_iter = u(&a["n_iter"]).unwrap_or(1);
            cfg.lambda = a["lcoeff"].as_f64().unwrap_or(0.0);
        }
        Ok(cfg)
    }
}

/// Records the worst relative error seen, and fails with every offender listed.
#[derive(Default)]
struct Checker {
    failures: Vec<String>,
    checked: usize,
    worst: (f64, String),
}

impl Checker {
    /// |a − e| ≤ atol + rtol·max|e| elementwise-max.
    fn close(
        &mut self,
        name: &str,
        actual: &Tensor,
        expected: &Tensor,
        atol: f64,
        rtol: f64,
    ) -> Result<()> {
        self.checked += 1;
        // Compared on the CPU, in f64, whatever device produced them.
        let on_cpu = |t: &Tensor| {
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?
                .flatten_all()
        };
        let (a, e) = (on_cpu(actual)?, on_cpu(expected)?);
        if a.dims() != e.dims() {
            self.failures.push(format!(
                "{name}: {} elements vs expected {}",
                a.elem_count(),
                e.elem_count()
            ));
            return Ok(());
        }
        let err = (&a - &e)?.abs()?.max_all()?.to_scalar::<f64>()?;
        let scale = e.abs()?.max_all()?.to_scalar::<f64>()?;
        let tol = atol + rtol * scale;
        let rel = err / scale.max(1e-30);
        if rel > self.worst.0 && scale > 1e-6 {
            self.worst = (rel, name.to_string());
        }
        // NaN-safe: a NaN error must fail.
        if err.is_nan() || err > tol {
            self.failures.push(format!(
                "{name}: max abs err {err:.3e} > tol {tol:.3e} (max |expected| {scale:.3e})"
            ));
        }
        Ok(())
    }

    /// One AdamW step from g: Δp = lr·g/(|g| + eps) (t = 1), whose sensitivity to g is
    /// lr·eps/(|g| + eps)². Where |g| ~ eps a rounding-level gradient difference moves the step by
    /// up to lr, so each element's tolerance is the gradient tolerance `dg` propagated through
    /// that derivative (capped at 2·lr) on top of the usual relative tolerance.
    #[allow(clippy::too_many_arguments)]
    fn close_adam_step(
        &mut self,
        name: &str,
        actual: &Tensor,
        expected: &Tensor,
        grad: &Tensor,
        lr: f64,
        eps: f64,
        dg: f64,
    ) -> Result<()> {
        self.checked += 1;
        let a = actual
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let e = expected
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let g = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
        let mut worst = 0f64;
        for i in 0..e.len() {
            let sens = (lr * eps * dg / (g[i].abs() + eps).powi(2)).min(2.0 * lr);
            let tol = 1e-6 + RTOL * scale + sens;
            let err = (a[i] - e[i]).abs();
            if err.is_nan() || err > tol {
                self.failures.push(format!(
                    "{name}[{i}]: {} vs expected {} (tol {tol:.2e}, grad {:.2e})",
                    a[i], e[i], g[i]
                ));
                return Ok(());
            }
            worst = worst.max(err);
        }
        if worst / scale > self.worst.0 {
            self.worst = (worst / scale, name.to_string());
        }
        Ok(())
    }

    fn finish(self, family: &str) -> Result<()> {
        eprintln!(
            "{family}: {} comparisons, worst relative error {:.2e} ({})",
            self.checked, self.worst.0, self.worst.1
        );
        if !self.failures.is_empty() {
            bail!(
                "{family}: {} mismatches:\n  {}",
                self.failures.len(),
                self.failures.join("\n  ")
            );
        }
        Ok(())
    }
}

const RTOL: f64 = 1e-5;

fn check_sn_trace(
    g: &Golden,
    c: &mut Checker,
    phase: &str,
    trace: &[imixer::layers::sn_state::SnCall],
) -> Result<()> {
    let mut calls: HashMap<&str, usize> = HashMap::new();
    for call in trace {
        let k = calls.entry(call.module.as_str()).or_default();
        let base = format!("trace.{phase}.{}.call{k}", call.module);
        *k += 1;
        c.close(
            &format!("{base}.u"),
            &call.u,
            g.get(&format!("{base}.u"))?,
            1e-6,
            RTOL,
        )?;
        c.close(
            &format!("{base}.v"),
            &call.v,
            g.get(&format!("{base}.v"))?,
            1e-6,
            RTOL,
        )?;
        let sigma = Tensor::new(&[call.sigma], &Device::Cpu)?;
        c.close(
            &format!("{base}.sigma"),
            &sigma,
            g.get(&format!("{base}.sigma"))?,
            1e-6,
            RTOL,
        )?;
        let factor = Tensor::new(&[call.factor], &Device::Cpu)?;
        c.close(
            &format!("{base}.factor"),
            &factor,
            g.get(&format!("{base}.factor"))?,
            1e-6,
            RTOL,
        )?;
    }
    let expected = g
        .tensors
        .keys()
        .filter(|k| k.starts_with(&format!("trace.{phase}.")) && k.ends_with(".sigma"))
        .count();
    if expected != trace.len() {
        c.failures.push(format!(
            "{phase}: {} spectral-norm calls, reference made {expected}",
            trace.len()
        ));
    }
    Ok(())
}

/// The kernel paths each family is checked on: `IMIXER_KERNELS` when set, else both — the fused
/// CPU kernels and the portable candle composition that CUDA runs.
fn kernel_paths() -> Result<Vec<KernelPath>> {
    match std::env::var("IMIXER_KERNELS") {
        Ok(v) => Ok(vec![KernelPath::parse(&v).map_err(anyhow::Error::msg)?]),
        Err(_) => Ok(vec![KernelPath::Fused, KernelPath::Portable]),
    }
}

/// The kernel path is a process-wide setting: families run one at a time so that each run uses
/// only the path it names.
static ONE_PATH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_family(family: &str) -> Result<()> {
    for path in kernel_paths()? {
        let _serial = ONE_PATH_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        imixer::kernels::set_kernel_path(path);
        run_family_on_current_path(family)
            .with_context(|| format!("{family} on the {} kernel path", path.name()))?;
    }
    Ok(())
}

fn run_family_on_current_path(family: &str) -> Result<()> {
    let dev = test_device()?;
    let g = Golden::load(family, &dev)?;
    let cfg = g.config()?;
    let model = MixerNet::new(&cfg, 0, &dev)?;
    let mut c = Checker::default();

    // Names: exactly the reference parameters and buffers.
    let mut ours: Vec<String> = model
        .params
        .entries()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let mut theirs: Vec<String> = ["param_names", "buffer_names"]
        .iter()
        .flat_map(|k| g.sidecar[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    ours.sort();
    theirs.sort();
    if ours != theirs {
        bail!("{family}: state_dict names differ\n ours:   {ours:?}\n theirs: {theirs:?}");
    }
    model.load_state(&g.tensors, true)?;
    let input = g.get("input")?.clone();
    let labels = g.get("labels")?.to_dtype(DType::U32)?;
    let logit_tol = 10.0 * g.floor("logits_eval");

    // Eval forward, with intermediate activations and SN calls.
    let mut ctx = ForwardCtx::eval().observing(&[Observe::Activations, Observe::SnCalls]);
    let logits = model.forward(&input, &mut ctx)?;
    c.close(
        "logits_eval",
        &logits,
        g.get("logits_eval")?,
        logit_tol,
        RTOL,
    )?;
    let observed = std::mem::take(&mut ctx.observer);
    for (name, act) in observed.activations.expect("activations") {
        c.close(
            &format!("act_eval.{name}"),
            &act,
            g.get(&format!("act_eval.{name}"))?,
            logit_tol,
            RTOL,
        )?;
    }
    if family == "imixer" {
        check_sn_trace(
            &g,
            &mut c,
            "eval",
            observed.sn_calls.as_deref().expect("SN calls observed"),
        )?;
    }

    // Train forward + loss + backward.
    let mut ctx = ForwardCtx::train(0).observing(&[Observe::SnCalls]);
    let logits = model.forward(&input, &mut ctx)?;
    c.close(
        "logits_train",
        &logits,
        g.get("logits_train")?,
        10.0 * g.floor("logits_train"),
        RTOL,
    )?;
    let (loss, ce, reg) = model.loss(&logits, &labels)?;
    let loss_tol = 10.0 * g.floor("loss");
    c.close("loss", &loss.reshape(1)?, g.get("loss")?, loss_tol, RTOL)?;
    c.close(
        "loss_ce",
        &ce.reshape(1)?,
        g.get("loss_ce")?,
        loss_tol,
        RTOL,
    )?;
    if let Ok(expected) = g.get("loss_reg") {
        let reg = match reg {
            Some(r) => r.reshape(1)?,
            None => Tensor::zeros(1, DType::F32, &dev)?,
        };
        c.close("loss_reg", &reg, expected, loss_tol, RTOL)?;
    }
    if family == "imixer" {
        check_sn_trace(
            &g,
            &mut c,
            "train",
            ctx.observer.sn_calls.as_deref().expect("SN calls observed"),
        )?;
    }
    let grads = loss.backward()?;
    let near_zero = g.near_zero_grads();
    let grad_floor = g.floor("grad_max_abs");
    let mut n_grads = 0;
    for e in model.params.params() {
        let expected = g.get(&format!("grad.{}", e.name))?;
        let actual = grads
            .get(e.var.as_tensor())
            .with_context(|| format!("no gradient for {}", e.name))?;
        if near_zero.contains(&e.name) {
            // Analytically zero: both sides are rounding noise; compare absolutely.
            c.close(
                &format!("grad.{} (≈0)", e.name),
                actual,
                &expected.zeros_like()?,
                1e-6,
                0.0,
            )?;
        } else {
            c.close(
                &format!("grad.{}", e.name),
                actual,
                expected,
                10.0 * grad_floor,
                RTOL,
            )?;
        }
        n_grads += 1;
    }
    let expected_grads = g.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    if n_grads != expected_grads {
        c.failures.push(format!(
            "{n_grads} gradients checked, reference has {expected_grads}"
        ));
    }

    // Buffers after the train forward (committed as a training step does), then the eval
    // forward that uses them.
    ctx.sn.commit()?;
    for e in model.params.buffers() {
        c.close(
            &format!("after.{}", e.name),
            e.var.as_tensor(),
            g.get(&format!("after.{}", e.name))?,
            1e-6,
            RTOL,
        )?;
    }
    let mut ctx = ForwardCtx::eval().observing(&[Observe::SnCalls]);
    let logits = model.forward(&input, &mut ctx)?;
    c.close(
        "logits_eval_after",
        &logits,
        g.get("logits_eval_after")?,
        logit_tol,
        RTOL,
    )?;
    if family == "imixer" {
        check_sn_trace(
            &g,
            &mut c,
            "eval_after",
            ctx.observer.sn_calls.as_deref().expect("SN calls observed"),
        )?;
    }

    // One AdamW step with the sidecar's settings and groups.
    let a = &g.sidecar["adamw"];
    let betas = a["betas"].as_array().context("betas")?;
    let opt_cfg = AdamWConfig {
        lr: a["lr"].as_f64().context("lr")?,
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: a["eps"].as_f64().context("eps")?,
        weight_decay: a["weight_decay"].as_f64().context("weight_decay")?,
    };
    let mut opt = AdamW::new(&model.params, opt_cfg)?;
    let mut decayed: Vec<String> = opt.decayed_names().into_iter().map(String::from).collect();
    let mut expected_decayed: Vec<String> = a["decayed_params"]
        .as_array()
        .context("decayed_params")?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    decayed.sort();
    expected_decayed.sort();
    if decayed != expected_decayed {
        c.failures.push(format!(
            "weight-decay groups differ: ours {decayed:?} vs {expected_decayed:?}"
        ));
    }
    opt.step(&grads)?;
    for e in model.params.params() {
        if near_zero.contains(&e.name) {
            continue; // the sidecar: noise-driven step, not comparable
        }
        let g_ref = g.get(&format!("grad.{}", e.name))?;
        let dg = 10.0 * grad_floor + RTOL * g_ref.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        let (lr, eps) = (opt.config.lr, opt.config.eps);
        c.close_adam_step(
            &format!("step.{}", e.name),
            e.var.as_tensor(),
            g.get(&format!("step.{}", e.name))?,
            g_ref,
            lr,
            eps,
            dg,
        )?;
    }
    c.finish(family)
}

#[test]
fn golden_mixer() -> Result<()> {
    run_family("mixer")
}

#[test]
fn golden_vanillamixer() -> Result<()> {
    run_family("vanillamixer")
}

#[test]
fn golden_imixer() -> Result<()> {
    run_family("imixer")
}

#[test]
fn golden_paramixer() -> Result<()> {
    run_family("paramixer")
}

#[test]
fn golden_symmixer() -> Result<()> {
    run_family("symmixer")
}

#[test]
fn golden_asymmixer() -> Result<()> {
    run_family("asymmixer")
}
