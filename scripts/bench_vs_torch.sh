#!/usr/bin/env bash
# imixer vs PyTorch on the same machine, back to back, same configs and thread count.
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
      ./target/release/imixer bench --config "$c" --family "$f" --mode "$m" --threads "$THREADS" --shards "$SHARDS" --json | tee -a runs/bench/imixer.jsonl
      "$TORCH_PY" ../shared/bench/torch_baseline.py --config "$c" --family "$f" --mode "$m" --threads "$THREADS" 2>/dev/null | tee -a runs/bench/torch.jsonl
    done
  done
done
python3 - <<'PY'
import json
ours = {(d["family"], d["config"], d["mode"]): d for d in map(json.loads, open("runs/bench/imixer.jsonl"))}
torch = {(d["family"], d["config"], d["mode"]): d for d in map(json.loads, open("runs/bench/torch.jsonl"))}
print("| config | family | mode | imixer ms | PyTorch ms | speed-up (PyTorch/imixer) | imixer RSS MiB | PyTorch RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for k in sorted(ours):
    if k in torch:
        a, b = ours[k], torch[k]
        print(f"| {k[1]} | {k[0]} | {k[2]} | {a['median_ms']:.0f} | {b['median_ms']:.0f} | {b['median_ms']/a['median_ms']:.2f}× | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} |")
PY
