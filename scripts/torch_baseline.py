#!/usr/bin/env python3
"""PyTorch baseline for imixer: the six model families of docs/models.md in plain PyTorch, timed on the
benchmark configs, so the Rust implementation can be compared against PyTorch on the same machine.

Install (outside the repository or in a git-ignored folder; plain torch + numpy, no timm):

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy

Run one measurement, or all of them (each run in its own subprocess, so peak RSS is per run):

    .venv-torch/bin/python scripts/torch_baseline.py --family imixer --config cifar-s --mode train --threads 2
    .venv-torch/bin/python scripts/torch_baseline.py --family all --config all --mode all --threads 2 --out torch.jsonl
    .venv-torch/bin/python scripts/torch_baseline.py --verify tests/golden    # models == golden vectors?

Every run prints ONE JSON line on stdout:
    {"impl": "pytorch", "family", "config", "mode", "threads", "batch", "median_ms", "min_ms",
     "img_per_s", "peak_rss_mb", "torch_version"}
(progress, loss and machine-load notes go to stderr). --family/--config take a name, a comma list or
`all`; --mode is train, infer or all (all three default to all); --threads defaults to the usable cores.

What is measured (float32, CPU, torch.set_num_threads(--threads)):
  train  model.train(); zero_grad; forward; mean cross-entropy (+ lambda * sum ||fc2.W||^2 for
         asymmixer, lambda = 0.1; the term is skipped where lambda = 0); backward; AdamW step
         (lr 5e-4, wd 0.05, betas (0.9, 0.999), eps 1e-8, no decay for 1-D params and `.bias`;
         torch's default AdamW implementation). iMixer runs its power iterations in every call.
  infer  model.eval(); torch.no_grad() forward.
  --warmup (3) untimed steps, then up to --steps (10) timed steps; the timed loop stops early once
  --budget seconds (20) have passed (at least one step is always timed). median_ms / min_ms are over
  the timed steps, img_per_s = batch / median. peak_rss_mb = ru_maxrss of the process that ran the
  model (it includes the Python interpreter and libtorch). Input: fixed random images and labels;
  weights: timm's init (docs/models.md), seeded by --seed.

Configs (mlp ratios (0.5, 4.0): token hidden int(0.5 D), channel hidden int(4 D); 10 classes):
  fmnist-tiny  28x28x1,   patch 4,  D 128, 4 blocks, batch 128  (N = 49 tokens)
  cifar-s      32x32x3,   patch 4,  D 256, 8 blocks, batch 128  (N = 64)
  s16-224      224x224x3, patch 16, D 512, 8 blocks, batch 16   (N = 196; paper S/16 size)
iMixer: hidden_ratio 2, n_power 8, n_iter 2, coeff 0.9.  AsymMixer: lambda 0.1.

Timings are only comparable within one run on one machine: run this and the Rust benchmark
back-to-back, with the same thread count, on an otherwise idle machine (stderr reports how many
cores other processes used during each timed loop; anything well above 0 invalidates the number).

The models follow the written semantics of docs/models.md and tests/golden/*.json only (no code from the
authors' repositories); parameter names are the reference state_dict names, and `--verify DIR`
checks them against the golden vectors (logits, losses, every gradient, spectral-norm buffers).
"""
import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = ["mixer", "vanillamixer", "imixer", "paramixer", "symmixer", "asymmixer"]
CONFIGS = {
    "fmnist-tiny": dict(img_size=28, in_chans=1, patch_size=4, embed_dim=128, num_blocks=4,
                        num_classes=10, batch=128),
    "cifar-s": dict(img_size=32, in_chans=3, patch_size=4, embed_dim=256, num_blocks=8,
                    num_classes=10, batch=128),
    "s16-224": dict(img_size=224, in_chans=3, patch_size=16, embed_dim=512, num_blocks=8,
                    num_classes=10, batch=16),
}
MODES = ["train", "infer"]
MLP_RATIO = (0.5, 4.0)
LN_EPS = 1e-6
IMIXER = dict(hidden_ratio=2, n_power=8, n_iter=2, coeff=0.9, eps=1e-12)
ASYM_LAMBDA = 0.1
ADAMW = dict(lr=5e-4, weight_decay=0.05)


# ------------------------------------------------------------------------------------------------
# Models. Linear weights are (out, in); GELU is the exact erf form; LayerNorm eps 1e-6.

class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm Mlp with biases for mixer/imixer; bias-free vMlp for paper 2)."""

    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SymMlp(nn.Module):
    """Tied weights: y = GELU(x W^T) W, the single W stored as fc2.weight with shape (hidden, in)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc2 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        w = self.fc2.weight
        return F.linear(F.gelu(F.linear(x, w)), w.t())


class AsymMlp(nn.Module):
    """h = GELU(x W1^T); y = h W1 + h W2^T: symmetric part plus symmetry-breaking W2 (no biases)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)  # W1 (hidden, in)
        self.fc2 = nn.Linear(hidden, dim, bias=False)  # W2 (in, hidden)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        return F.linear(h, self.fc1.weight.t()) + self.fc2(h)


class SNLinear(nn.Module):
    """Linear with soft spectral normalisation, applied at EVERY call: W / max(1, sigma / coeff),
    sigma = u^T W v. In training each call first runs n_power power-iteration steps on the
    persistent buffers u, v (no gradient); the gradient reaches W through sigma. Eval uses the
    stored u, v. weight_sigma only logs the last sigma."""

    def __init__(self, fin, fout, coeff, n_power, eps):
        super().__init__()
        self.coeff, self.n_power, self.eps = coeff, n_power, eps
        self.weight_orig = nn.Parameter(torch.empty(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.register_buffer("weight_u", F.normalize(torch.randn(fout), dim=0, eps=eps))
        self.register_buffer("weight_v", F.normalize(torch.randn(fin), dim=0, eps=eps))
        self.register_buffer("weight_sigma", torch.ones(1))

    def forward(self, x):
        w = self.weight_orig
        u, v = self.weight_u, self.weight_v
        if self.training and self.n_power > 0:
            with torch.no_grad():
                for _ in range(self.n_power):
                    v = F.normalize(torch.mv(w.t(), u), dim=0, eps=self.eps)
                    u = F.normalize(torch.mv(w, v), dim=0, eps=self.eps)
                self.weight_u.copy_(u)
                self.weight_v.copy_(v)
        sigma = torch.dot(u, torch.mv(w, v))
        with torch.no_grad():
            self.weight_sigma.copy_(sigma.reshape(1))
        return F.linear(x, w / torch.clamp(sigma / self.coeff, min=1.0), self.bias)


class IMlp(nn.Module):
    """iMLP token mixer: y = fc1(x); z = y; n_iter times z = fc_sn2(GELU(fc_sn1(GELU(z)))) + y;
    out = fc2(GELU(z)). fc1: N -> Dt, fc_sn1: Dt -> Dt*hidden_ratio, fc_sn2: back to Dt, fc2: Dt -> N."""

    def __init__(self, dim, hidden, hidden_ratio, n_iter, coeff, n_power, eps):
        super().__init__()
        self.n_iter = n_iter
        inner = int(hidden * hidden_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc_sn1 = SNLinear(hidden, inner, coeff, n_power, eps)
        self.fc_sn2 = SNLinear(inner, hidden, coeff, n_power, eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        y = self.fc1(x)
        z = y
        for _ in range(self.n_iter):
            z = self.fc_sn2(F.gelu(self.fc_sn1(F.gelu(z)))) + y
        return self.fc2(F.gelu(z))


class MixerBlock(nn.Module):
    """mixer / imixer: x += tok(LN_D(x)^T)^T; x += ch(LN_D(x)) with per-token LayerNorm(D)."""

    def __init__(self, tokens, dim, mlp_tokens, channels_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = mlp_tokens
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = Mlp(dim, channels_dim, bias=True)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class VanillaBlock(nn.Module):
    """vanillamixer: serial like mixer, but LayerNorm over (N, D) jointly with an (N, D) affine,
    and bias-free MLPs."""

    def __init__(self, tokens, dim, tokens_dim, channels_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm((tokens, dim), eps=LN_EPS)
        self.mlp_tokens = Mlp(tokens, tokens_dim, bias=False)
        self.norm2 = nn.LayerNorm((tokens, dim), eps=LN_EPS)
        self.mlp_channels = Mlp(dim, channels_dim, bias=False)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class ParallelBlock(nn.Module):
    """paramixer / symmixer / asymmixer: g = LN_{N,D}(x); x += tok(g^T)^T + ch(g)."""

    def __init__(self, tokens, dim, tokens_dim, channels_dim, mlp):
        super().__init__()
        self.norm = nn.LayerNorm((tokens, dim), eps=LN_EPS)
        self.mlp_tokens = mlp(tokens, tokens_dim)
        self.mlp_channels = mlp(dim, channels_dim)

    def forward(self, x):
        g = self.norm(x)
        return x + self.mlp_tokens(g.transpose(1, 2)).transpose(1, 2) + self.mlp_channels(g)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patch grid


class MixerNet(nn.Module):
    """stem -> blocks -> LayerNorm(D) -> mean over tokens -> head, for any of the six families."""

    def __init__(self, family, img_size, in_chans, patch_size, embed_dim, num_blocks, num_classes,
                 imixer=None, lcoeff=None):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError("unknown family %r (one of %s)" % (family, ", ".join(FAMILIES)))
        imixer = dict(IMIXER, **(imixer or {}))
        self.family = family
        self.lcoeff = (ASYM_LAMBDA if family == "asymmixer" else 0.0) if lcoeff is None else lcoeff
        n, d = (img_size // patch_size) ** 2, embed_dim
        dt, dc = int(MLP_RATIO[0] * d), int(MLP_RATIO[1] * d)
        self.stem = PatchEmbed(in_chans, d, patch_size)
        blocks = []
        for _ in range(num_blocks):
            if family == "mixer":
                blocks.append(MixerBlock(n, d, Mlp(n, dt, bias=True), dc))
            elif family == "imixer":
                blocks.append(MixerBlock(n, d, IMlp(n, dt, imixer["hidden_ratio"], imixer["n_iter"],
                                                    imixer["coeff"], imixer["n_power"], imixer["eps"]), dc))
            elif family == "vanillamixer":
                blocks.append(VanillaBlock(n, d, dt, dc))
            else:
                mlp = {"paramixer": lambda i, h: Mlp(i, h, bias=False), "symmixer": SymMlp,
                       "asymmixer": AsymMlp}[family]
                blocks.append(ParallelBlock(n, d, dt, dc, mlp))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.head = nn.Linear(d, num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """timm Mixer init (docs/models.md): xavier-uniform Linear weights, MLP biases N(0, 1e-6), other biases
        0, lecun-normal conv stem, LayerNorm (1, 0), head weight and bias 0."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("head."):
                    p.zero_()
                elif name == "stem.proj.weight":
                    std = math.sqrt(1.0 / p[0].numel()) / 0.87962566103423978
                    nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
                elif "norm" in name.split(".")[-2]:
                    p.fill_(1.0 if name.endswith(".weight") else 0.0)
                elif name.endswith(".bias") and ".mlp_" in name:
                    nn.init.normal_(p, std=1e-6)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    nn.init.xavier_uniform_(p)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=1))

    def reg_loss(self):
        """AsymMixer's symmetry-breaking penalty lambda * sum_blocks(||tok.fc2.W||^2 + ||ch.fc2.W||^2)."""
        return self.lcoeff * sum(b.mlp_tokens.fc2.weight.pow(2).sum() + b.mlp_channels.fc2.weight.pow(2).sum()
                                 for b in self.blocks)

    def loss(self, logits, labels):
        loss = F.cross_entropy(logits, labels)
        return loss + self.reg_loss() if self.lcoeff != 0 else loss


def build_model(family, cfg, **kw):
    args = {k: cfg[k] for k in ("img_size", "in_chans", "patch_size", "embed_dim", "num_blocks", "num_classes")}
    return MixerNet(family, **args, **kw)


def make_optimizer(model, lr=ADAMW["lr"], weight_decay=ADAMW["weight_decay"]):
    """AdamW with timm's parameter groups: no weight decay for params with ndim <= 1 or named *.bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


# ------------------------------------------------------------------------------------------------
# Benchmark

def peak_rss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, KiB on Linux


def busy_cores_counter():
    """(all-CPU busy seconds, own CPU seconds) for 'how many cores did others use'; Linux only."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    r = resource.getrusage(resource.RUSAGE_SELF)
    return busy, r.ru_utime + r.ru_stime


def bench(family, config, mode, threads, warmup, steps, budget, seed, amp="none", compile_=False,
          device="cpu"):
    torch.set_num_threads(threads)
    cfg = CONFIGS[config]
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_model(family, cfg).to(dev)
    # Optional speed modes a PyTorch user would reach for: autocast to bfloat16 (matmuls in bf16
    # on AVX-512-BF16/AMX hardware or tensor cores, reductions in fp32) and torch.compile.
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if amp == "bf16"
                else contextlib.nullcontext())
    forward = torch.compile(model) if compile_ else model
    b = cfg["batch"]
    x = torch.randn(b, cfg["in_chans"], cfg["img_size"], cfg["img_size"]).to(dev)
    y = torch.randint(0, cfg["num_classes"], (b,)).to(dev)
    # A GPU runs asynchronously: a step is timed to the end of its kernels.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    losses = []
    if mode == "train":
        model.train()
        opt = make_optimizer(model)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = model.loss(forward(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                forward(x)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t_warm = time.perf_counter() - t0
    load0 = busy_cores_counter()
    times = []
    t_start = time.perf_counter()
    while len(times) < max(1, steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - t_start >= budget:
            break
    wall = time.perf_counter() - t_start
    load1 = busy_cores_counter()
    median = statistics.median(times)
    note = "# %s %s %s: %d warm-up steps %.1fs, %d timed steps %.1fs" % (
        family, config, mode, warmup, t_warm, len(times), wall)
    if losses:
        note += ", loss %.4f -> %.4f" % (losses[0].item(), losses[-1].item())
    if load0 and load1:
        others = max(0.0, ((load1[0] - load0[0]) - (load1[1] - load0[1])) / wall)
        note += ", other processes used %.2f cores" % others
    print(note, file=sys.stderr, flush=True)
    return {"impl": "pytorch", "family": family, "config": config, "mode": mode,
            "threads": torch.get_num_threads(), "batch": b, "median_ms": round(median, 3),
            "min_ms": round(min(times), 3), "img_per_s": round(b / (median / 1e3), 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "torch_version": torch.__version__,
            "amp": amp, "compile": compile_, "device": device}


# ------------------------------------------------------------------------------------------------
# Golden check: are these the reference models? (reads tests/golden/<family>.safetensors + .json)

def read_safetensors(path):
    """Minimal safetensors reader (8-byte little-endian header size, JSON header, raw data)."""
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    with open(path, "rb") as f:
        buf = f.read()
    n = int.from_bytes(buf[:8], "little")
    out = {}
    for name, e in json.loads(buf[8:8 + n]).items():
        if name == "__metadata__":
            continue
        dt = np.dtype(dtypes[e["dtype"]])
        a, b = e["data_offsets"]
        arr = np.frombuffer(buf, dtype=dt, count=(b - a) // dt.itemsize, offset=8 + n + a)
        out[name] = torch.from_numpy(arr.reshape(e["shape"]).copy())
    return out


def verify(golden_dir):
    man = json.load(open(os.path.join(golden_dir, "MANIFEST.json")))
    failed = 0
    for family in man["files"]:
        side = json.load(open(os.path.join(golden_dir, family + ".json")))
        t = read_safetensors(os.path.join(golden_dir, side["file"]))
        ma, sn = side["model_args"], side.get("spectral_norm", {})
        imixer = dict(hidden_ratio=ma.get("hidden_ratio", 1), n_power=ma.get("n_power_iterations", 1),
                      n_iter=ma.get("n_repeat", 1), coeff=sn.get("coeff", IMIXER["coeff"]),
                      eps=sn.get("eps", IMIXER["eps"]))
        model = build_model(family, side["config"], imixer=imixer, lcoeff=ma.get("lcoeff", 0.0))
        names = set(side["param_names"]) | set(side["buffer_names"])
        errs = {}
        if set(model.state_dict()) != names:
            errs["state_dict names"] = sorted(set(model.state_dict()) ^ names)
        else:
            model.load_state_dict({k: t[k] for k in names})

            def cmp(key, got, want, atol, rtol=1e-4):
                err = (got.detach().double() - want.double()).abs()
                if not bool((err <= atol + rtol * want.double().abs()).all()):
                    errs[key] = float(err.max())
            x, y = t["input"], t["labels"]
            model.eval()
            with torch.no_grad():
                cmp("logits_eval", model(x), t["logits_eval"], 2e-5)
            model.train()
            logits = model(x)
            loss = F.cross_entropy(logits, y) + model.reg_loss()
            cmp("logits_train", logits, t["logits_train"], 2e-5)
            cmp("loss", loss.reshape(1), t["loss"], 1e-5)
            loss.backward()
            for name, p in model.named_parameters():
                cmp("grad." + name, p.grad, t["grad." + name], 1e-5, 1e-3)
            for name, buf in model.named_buffers():
                cmp("after." + name, buf, t["after." + name], 1e-5)
            model.eval()
            with torch.no_grad():
                cmp("logits_eval_after", model(x), t["logits_eval_after"], 2e-5)
            opt = make_optimizer(model)
            pname = {id(p): n for n, p in model.named_parameters()}
            decayed = {pname[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
            if decayed != set(side["adamw"]["decayed_params"]):
                errs["adamw decayed set"] = sorted(decayed ^ set(side["adamw"]["decayed_params"]))
        failed += bool(errs)
        print("%-13s %s" % (family, "ok" if not errs else "FAIL %s" % errs), flush=True)
    return failed


# ------------------------------------------------------------------------------------------------

def expand(arg, choices, what):
    names = choices if arg == "all" else arg.split(",")
    bad = [n for n in names if n not in choices]
    if bad:
        raise SystemExit("unknown %s %s (choose from %s, or all)" % (what, ", ".join(bad), ", ".join(choices)))
    return names


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="all", help="%s, comma list, or all" % ", ".join(FAMILIES))
    ap.add_argument("--config", default="all", help="%s, comma list, or all" % ", ".join(CONFIGS))
    ap.add_argument("--mode", default="all", help="train, infer, or all")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="intra-op threads (default: usable cores); use the Rust run's count")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--steps", type=int, default=10, help="at most this many timed steps (default 10)")
    ap.add_argument("--budget", type=float, default=20.0,
                    help="stop the timed loop after this many seconds (default 20; >= 1 step always)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none",
                    help="bf16: run forward under torch.autocast(<device>, bfloat16), as a speed-seeking user would")
    ap.add_argument("--compile", action="store_true", help="wrap the model in torch.compile (inductor)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--verify", metavar="GOLDEN_DIR",
                    help="check the models against the golden vectors in GOLDEN_DIR and exit")
    a = ap.parse_args()
    if a.verify:
        sys.exit(1 if verify(a.verify) else 0)
    if a.threads < 1:
        raise SystemExit("--threads must be >= 1")
    runs = [(f, c, m) for c in expand(a.config, list(CONFIGS), "config")
            for f in expand(a.family, FAMILIES, "family") for m in expand(a.mode, MODES, "mode")]
    out = open(a.out, "a") if a.out else None
    status = 0
    for family, config, mode in runs:
        if len(runs) == 1:
            line = json.dumps(bench(family, config, mode, a.threads, a.warmup, a.steps, a.budget, a.seed,
                                    a.amp, a.compile, a.device))
        else:  # one subprocess per run: peak RSS belongs to that run alone
            cmd = [sys.executable, os.path.abspath(__file__), "--family", family, "--config", config,
                   "--mode", mode, "--threads", str(a.threads), "--warmup", str(a.warmup),
                   "--steps", str(a.steps), "--budget", str(a.budget), "--seed", str(a.seed),
                   "--amp", a.amp, "--device", a.device] + (["--compile"] if a.compile else [])
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            sys.stderr.write(p.stderr)
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if p.returncode == 0 and lines:
                line = lines[-1]
            else:
                status = 1
                line = json.dumps({"impl": "pytorch", "family": family, "config": config, "mode": mode,
                                   "error": "exit %d: %s" % (p.returncode, p.stderr.strip()[-500:])})
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
