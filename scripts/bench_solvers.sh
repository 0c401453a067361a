#!/usr/bin/env bash
# iMixer train step on cifar-s: time and peak memory vs fixed-point iterations, unrolled
# (backprop through every iterate, the reference) vs implicit gradients (picard / anderson run for
# exactly N iterations forward and N adjoint iterations backward). One process per run, so each
# peak RSS (VmHWM) belongs to that run alone. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-"1 2 4 8"}
SOLVERS=${SOLVERS:-"unrolled picard anderson"}
CONFIG=${CONFIG:-cifar-s}
BIN=./target/release/imixer
cargo build --release --quiet
echo "| iterations | solver | median ms | img/s | peak RSS MiB |"
echo "|---|---|---|---|---|"
for n in $ITERS; do
  for s in $SOLVERS; do
    "$BIN" bench --config "$CONFIG" --family imixer --mode train --solver "$s" --n-iter "$n" \
      --warmup 1 --steps 3 --budget 120 --json |
      python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("| %d | %s | %.0f | %.1f | %.0f |" % (d["n_iter"], d["solver"], d["median_ms"], d["img_per_s"], d["peak_rss_mb"]))'
  done
done
