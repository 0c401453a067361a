#!/usr/bin/env python3
"""Writes the PyTorch checkpoint fixtures of tests/fixtures/pytorch/ (see its README.md).

Every file is written by `torch.save` itself, from tiny modules whose state_dict names are the
reference names (timm MLP-Mixer, the official iMixer and paper-2 code), so imixer's reader is
tested against real PyTorch output, not against a Rust re-implementation of the format.

Every tensor holds deterministic values that the Rust tests recompute from the tensor's name:

    value[j] = ((7 * j + 3 * len(name)) % 17 - 8) / 16      (j: row-major element index)

(exact in float32, float16 and bfloat16); the EMA copies add 0.5.

    python scripts/make_pytorch_fixtures.py write  [DIR]    # (re)write the fixtures
    python scripts/make_pytorch_fixtures.py verify FAMILY FILE.safetensors [--ema]
        # load an `imixer export` output into the fixture's nn.Module with strict=True
"""

import argparse
import os
import sys

import torch
from torch import nn

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pytorch")


# ---- reference-named modules -------------------------------------------------------------


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm Mlp; paper 2's vMlp without biases; AsymMlp's two weights)."""

    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)


class SymMlp(nn.Module):
    """SymMixer: one weight (hidden, in), stored as fc2.weight."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc2 = nn.Linear(dim, hidden, bias=False)


class SpectralNormLinear(nn.Module):
    """The official spectral_norm_fc state: bias, weight_orig and the u, v, sigma buffers."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.weight_orig = nn.Parameter(torch.zeros(fan_out, fan_in))
        self.register_buffer("weight_u", torch.zeros(fan_out))
        self.register_buffer("weight_v", torch.zeros(fan_in))
        self.register_buffer("weight_sigma", torch.ones(1))


class IMlp(nn.Module):
    def __init__(self, dim, hidden, inner):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc_sn1 = SpectralNormLinear(hidden, inner)
        self.fc_sn2 = SpectralNormLinear(inner, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class SerialBlock(nn.Module):
    def __init__(self, norm_shape, mlp_tokens, mlp_channels):
        super().__init__()
        self.norm1 = nn.LayerNorm(norm_shape)
        self.mlp_tokens = mlp_tokens
        self.norm2 = nn.LayerNorm(norm_shape)
        self.mlp_channels = mlp_channels


class ParallelBlock(nn.Module):
    def __init__(self, norm_shape, mlp_tokens, mlp_channels):
        super().__init__()
        self.norm = nn.LayerNorm(norm_shape)
        self.mlp_tokens = mlp_tokens
        self.mlp_channels = mlp_channels


class Stem(nn.Module):
    def __init__(self, in_chans, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)


class Net(nn.Module):
    def __init__(self, family, img, chans, patch, dim, depth, classes, hidden_ratio=2.0):
        super().__init__()
        n = (img // patch) ** 2
        tok, ch = int(0.5 * dim), int(4.0 * dim)
        self.stem = Stem(chans, dim, patch)
        blocks = []
        for _ in range(depth):
            if family == "mixer":
                b = SerialBlock(dim, Mlp(n, tok, True), Mlp(dim, ch, True))
            elif family == "imixer":
                b = SerialBlock(
                    dim, IMlp(n, tok, int(tok * hidden_ratio)), Mlp(dim, ch, True)
                )
            elif family == "vanillamixer":
                b = SerialBlock((n, dim), Mlp(n, tok, False), Mlp(dim, ch, False))
            elif family in ("paramixer", "asymmixer"):
                b = ParallelBlock((n, dim), Mlp(n, tok, False), Mlp(dim, ch, False))
            elif family == "symmixer":
                b = ParallelBlock((n, dim), SymMlp(n, tok), SymMlp(dim, ch))
            else:
                raise ValueError(family)
            blocks.append(b)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)


# The fixture models: (family, img, chans, patch, dim, depth, classes, hidden_ratio).
MODELS = {
    "imixer": ("imixer", 8, 3, 4, 8, 2, 5, 1.5),
    "paramixer": ("paramixer", 8, 1, 2, 6, 2, 4, 2.0),
    "mixer": ("mixer", 12, 3, 4, 4, 1, 3, 2.0),
}


def pattern(name, shape, dtype=torch.float32):
    n = 1
    for s in shape:
        n *= s
    j = torch.arange(n, dtype=torch.int64)
    v = ((7 * j + 3 * len(name)) % 17 - 8).to(torch.float32) / 16
    return v.reshape(shape).to(dtype)


def build(key):
    family, img, chans, patch, dim, depth, classes, ratio = MODELS[key]
    model = Net(family, img, chans, patch, dim, depth, classes, ratio)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t.copy_(pattern(name, t.shape))
    return model


def training_checkpoint(model):
    """What the official train.py (timm CheckpointSaver) saves, with a DDP `module.` prefix."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(saved[k])
    args = argparse.Namespace(
        model="imixer_tiny_fixture",
        num_classes=5,
        img_size=None,
        input_size=None,
        h_ratio=1.5,
        n_power=8,
        n_iter=4,
        drop_path=0.1,
        lr=5e-4,
        opt="adamw",
        mean=[0.5, 0.5, 0.5],
        betas=(0.9, 0.999),
        amp=False,
    )
    state = model.state_dict()
    return {
        "epoch": 3,
        "arch": args.model,
        "state_dict": {"module." + k: v for k, v in state.items()},
        "optimizer": opt.state_dict(),
        "version": 2,
        "args": args,
        "state_dict_ema": {k: v + 0.5 for k, v in state.items()},
        "metric": 12.5,
    }


def write(out):
    os.makedirs(out, exist_ok=True)
    imixer = build("imixer")
    ckpt = training_checkpoint(imixer)
    torch.save(ckpt, os.path.join(out, "imixer_train.pth.tar"))
    torch.save(
        ckpt,
        os.path.join(out, "imixer_train_legacy.pth.tar"),
        _use_new_zipfile_serialization=False,
    )
    # A bare state_dict in float16, as a Hugging Face `pytorch_model.bin`.
    para = build("paramixer").half()
    torch.save(para.state_dict(), os.path.join(out, "paramixer_fp16.bin"))
    # A DeiT-style {"model": state_dict} in the legacy format, pickle protocol 4, with a
    # non-contiguous (transposed-view) head weight.
    mixer = build("mixer")
    sd = mixer.state_dict()
    sd["head.weight"] = sd["head.weight"].t().contiguous().t()
    assert not sd["head.weight"].is_contiguous()
    torch.save(
        {"model": sd, "epoch": 1},
        os.path.join(out, "mixer_model_legacy_p4.pth"),
        _use_new_zipfile_serialization=False,
        pickle_protocol=4,
    )
    for name in sorted(os.listdir(out)):
        if name.endswith((".pth", ".tar", ".bin")):
            print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes")


def verify(family, path, ema):
    """`imixer export` output -> the fixture module, load_state_dict(strict=True)."""
    from safetensors.torch import load_file

    key = {"imixer": "imixer", "paramixer": "paramixer", "mixer": "mixer"}[family]
    model = build(key)
    tensors = load_file(path)
    model.load_state_dict(tensors, strict=True)
    for name, t in model.state_dict().items():
        want = pattern(name, t.shape) + (0.5 if ema else 0.0)
        if not torch.equal(t.float(), want):
            sys.exit(f"{name}: values differ from the fixture pattern")
    print(f"{path}: load_state_dict(strict=True) OK, {len(tensors)} tensors, values match")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir", nargs="?", default=FIXTURE_DIR)
    v = sub.add_parser("verify")
    v.add_argument("family", choices=sorted(MODELS))
    v.add_argument("file")
    v.add_argument("--ema", action="store_true", help="the file holds the EMA weights (+0.5)")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.cmd == "write":
        write(a.dir)
    else:
        verify(a.family, a.file, a.ema)


if __name__ == "__main__":
    main()
