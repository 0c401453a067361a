#!/usr/bin/env bash
# iMixer on Fashion-MNIST at the same budget (EPOCHS epochs of the Fashion-MNIST recipe with the
# RandomCrop(pad 2) and no random erasing it had when README's solver table was measured,
# imixer_n4_28):
# the reference unrolled iMLP (n_iter 2, backprop through both steps) vs Anderson acceleration
# solved to a tolerance with implicit gradients. Writes runs/solvers/<solver>/ and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-2}
TOL=${TOL:-1e-4}
SOLVERS=${SOLVERS:-"unrolled anderson"}
BIN=./target/release/imixer
cargo build --release --quiet
mkdir -p runs/solvers
for s in $SOLVERS; do
  out=runs/solvers/$s
  rm -rf "$out"
  "$BIN" train --model imixer_n4_28 --crop-padding 2 --reprob 0 --shards 1 --epochs "$EPOCHS" --solver "$s" --solver-tol "$TOL" \
    --out "$out" --json > "$out.json" 2> "$out.log"
done
python3 - <<'PY'
import json
print("| iMLP solver | test top-1 | test top-5 | test loss | train seconds | mean solver iterations (last epoch) | worst residual |")
print("|---|---|---|---|---|---|---|")
for s in ["unrolled", "anderson"]:
    d = json.load(open(f"runs/solvers/{s}.json"))
    last = [json.loads(l) for l in open(f"runs/solvers/{s}/metrics.jsonl")][-1]
    it = last.get("solver_mean_iters")
    res = last.get("solver_max_residual")
    print(f"| {s} | {d['final_val_top1']:.4f} | {d['final_val_top5']:.4f} | {d['final_val_loss']:.4f} | {d['train_seconds']:.0f} | "
          f"{'n_iter 2' if it is None else f'{it:.2f}'} | {'–' if res is None else f'{res:.1e}'} |")
PY
