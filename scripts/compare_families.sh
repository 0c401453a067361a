#!/usr/bin/env bash
# Family comparison on Fashion-MNIST at the same small size (D 64, 4 blocks, patch 4) and budget
# (EPOCHS epochs of the default recipe; CROP_PADDING=2 REPROB=0 give the recipe README's family
# table was measured with). Writes runs/compare/<family>/ and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-2}
CROP_PADDING=${CROP_PADDING:-0}
REPROB=${REPROB:-0.25}
# Data-parallel shards per batch (SHARDS=1 reproduces the README table, measured before shards).
SHARDS=${SHARDS:-2}
BIN=./target/release/imixer
cargo build --release --quiet
mkdir -p runs/compare
for f in mixer imixer paramixer symmixer; do
  out=runs/compare/$f
  rm -rf "$out"
  "$BIN" train --model "${f}_n4_28" --epochs "$EPOCHS" --crop-padding "$CROP_PADDING" --reprob "$REPROB" --shards "$SHARDS" \
    --out "$out" --json > "$out.json" 2> "$out.log"
done
python3 - <<'PY'
import json
print("| model | params | val top-1 | val top-5 | val loss | train seconds |")
print("|---|---|---|---|---|---|")
for f in ["mixer", "imixer", "paramixer", "symmixer"]:
    d = json.load(open(f"runs/compare/{f}.json"))
    print(f"| {f}_n4_28 | {d['params']:,} | {d['final_val_top1']:.4f} | {d['final_val_top5']:.4f} | {d['final_val_loss']:.4f} | {d['train_seconds']:.0f} |")
PY
