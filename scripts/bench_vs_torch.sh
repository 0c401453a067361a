#!/usr/bin/env bash
# imixer vs PyTorch on the same machine, back to back, same configs and thread count:
# imixer fp32 against PyTorch fp32, and imixer --precision bf16 against PyTorch with
# torch.autocast("cpu", bfloat16) (torch_baseline.py --amp bf16). PRECISIONS picks either.
# Needs a PyTorch venv: python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
# (or TORCH_PY=/path/to/python). Writes runs/bench/{imixer,torch}.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${TORCH_PY:-.venv-torch/bin/python}
THREADS=${THREADS:-2}
# imixer's data-parallel shards per batch (imixer bench --shards; 1 = every op split over the
# threads, as PyTorch does).
SHARDS=${SHARDS:-2}
CONFIGS=${CONFIGS:-fmnist-tiny}
FAMILIES=${FAMILIES:-all}
MODES=${MODES:-all}
# Rounds per row: each round runs imixer then PyTorch, one fresh process each. The speed of a
# shared virtual machine can drift by tens of percent within minutes, so one pair of numbers can
# mislead; the table reports each side's median over the rounds and the median of the per-round
# (paired) speed-ups.
ROUNDS=${ROUNDS:-3}
PRECISIONS=${PRECISIONS:-fp32,bf16}
mkdir -p runs/bench
cargo build --release --quiet
# One process per (config, family, mode) on both sides, so each peak RSS belongs to that run
# alone (a process that trained first would report the training peak for inference too).
[ "$FAMILIES" = all ] && FAMILIES=mixer,vanillamixer,imixer,paramixer,symmixer,asymmixer
[ "$MODES" = all ] && MODES=train,infer
: > runs/bench/imixer.jsonl
: > runs/bench/torch.jsonl
for c in ${CONFIGS//,/ }; do
  for f in ${FAMILIES//,/ }; do
    for m in ${MODES//,/ }; do
      for p in ${PRECISIONS//,/ }; do
        amp=none
        [ "$p" = bf16 ] && amp=bf16
        for _ in $(seq "$ROUNDS"); do
          ./target/release/imixer bench --config "$c" --family "$f" --mode "$m" --threads "$THREADS" --shards "$SHARDS" --precision "$p" --json | tee -a runs/bench/imixer.jsonl
          "$TORCH_PY" scripts/torch_baseline.py --config "$c" --family "$f" --mode "$m" --threads "$THREADS" --amp "$amp" 2>/dev/null | tee -a runs/bench/torch.jsonl
        done
      done
    done
  done
done
python3 - <<'PY'
import json, statistics
def precision(d):
    # imixer rows carry "precision"; PyTorch rows "amp" (none = fp32).
    return d.get("precision") or ("fp32" if d.get("amp", "none") == "none" else d["amp"])
def rows(path):
    out = {}
    for d in map(json.loads, open(path)):
        out.setdefault((d["config"], d["family"], d["mode"], precision(d)), []).append(d)
    return out
ours, torch = rows("runs/bench/imixer.jsonl"), rows("runs/bench/torch.jsonl")
med = statistics.median
print("| config | family | mode | precision | imixer ms | PyTorch ms | speed-up (PyTorch/imixer) | per-round speed-ups | imixer RSS MiB | PyTorch RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for k in sorted(ours):
    if k not in torch:
        continue
    a, b = ours[k], torch[k]
    ratios = [t["median_ms"] / o["median_ms"] for o, t in zip(a, b)]
    each = " ".join(f"{r:.2f}" for r in ratios)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {med(o['median_ms'] for o in a):.1f} | "
          f"{med(t['median_ms'] for t in b):.1f} | {med(ratios):.2f}× | {each} | "
          f"{max(o['peak_rss_mb'] for o in a):.0f} | {max(t['peak_rss_mb'] for t in b):.0f} |")
PY
