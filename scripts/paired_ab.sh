#!/usr/bin/env bash
# Paired A/B of two imixer binaries that a drifting machine speed cannot bias: A and B run at
# the same time, one core each (single-threaded, one shard), and swap cores every round. Each
# round's B/A step-time ratio compares the two under the same conditions; the median ratio is the
# result (< 1: B is faster). Whole-machine comparisons (scripts/bench_vs_torch.sh) alternate
# rounds instead, because PyTorch uses both cores.
#
#   scripts/paired_ab.sh ROUNDS CONFIG FAMILY MODE BIN_A BIN_B     (STEPS=8, PRECISION=fp32 by default)
#   e.g. scripts/paired_ab.sh 4 fmnist-tiny mixer train /tmp/imixer-old target/release/imixer
set -euo pipefail
if [ $# -ne 6 ]; then
  echo "usage: $0 ROUNDS CONFIG FAMILY MODE BIN_A BIN_B" >&2
  exit 2
fi
rounds=$1 config=$2 family=$3 mode=$4 a=$5 b=$6
steps=${STEPS:-8}
precision=${PRECISION:-fp32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # CORE BINARY OUT
  taskset -c "$1" "$2" bench --config "$config" --family "$family" --mode "$mode" \
    --threads 1 --shards 1 --steps "$steps" --precision "$precision" --json > "$3" 2>/dev/null
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then ca=0 cb=1; else ca=1 cb=0; fi
  run "$ca" "$a" "$tmp/a" &
  run "$cb" "$b" "$tmp/b"
  wait
  python3 - "$tmp/a" "$tmp/b" <<'PY'
import json, sys
a, b = (json.load(open(p))["median_ms"] for p in sys.argv[1:3])
print(f"A {a:8.1f} ms   B {b:8.1f} ms   B/A {b / a:.3f}")
PY
done | tee "$tmp/rounds"
python3 - "$tmp/rounds" <<'PY'
import statistics, sys
ratios = [float(l.split()[-1]) for l in open(sys.argv[1])]
print(f"median B/A over {len(ratios)} rounds: {statistics.median(ratios):.3f}")
PY
