#!/usr/bin/env bash
# The GPU checks of imixer, in one run that fits 15 minutes of an H100/H200 machine with 16
# cores, build included, and ends with one summary:
#   1. build the `cuda` feature (or use a carried binary, IMIXER_BIN=path);
#   2. the golden-parity tests on the GPU (IMIXER_TEST_DEVICE=cuda; the portable path);
#   3. one bench row per family, train and infer, fp32 and bf16 (fmnist-tiny), and PyTorch's
#      rows on the same GPU when a torch with CUDA is importable;
#   4. a short Fashion-MNIST training on the GPU (2 epochs on 10,000 images).
#
# Usage, from the repository root on the GPU machine:
#   scripts/gpu_check.sh [OUT_DIR]          (default: gpu-check/)
# Environment:
#   IMIXER_BIN    a prebuilt `--features cuda` binary; skips the build of step 1
#   SKIP_TESTS=1  skip step 2 (it builds the test binaries, the longest part of the build)
#   FMNIST_DIR    Fashion-MNIST's four .gz files (default: /usr/share/datasets/fashion-mnist,
#                 else data/fashion-mnist/ in the repository)
#   TORCH_PY      a python with torch (default: .venv-torch/bin/python, else python3)
#   DEADLINE_S    seconds after which the remaining steps are skipped (default 840)
# Every step is time-limited; a failed step is reported and the next one still runs. The exit
# status is 0 only when every step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE_S="${DEADLINE_S:-840}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
STATUS=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
# step NAME LIMIT_S COMMAND...: runs it with its output in $OUT/NAME.log, within the time left.
step() {
  local name="$1" limit="$2"
  shift 2
  local remaining
  remaining=$(left)
  if [ "$remaining" -le 30 ]; then
    note "SKIP  $name (deadline: ${DEADLINE_S}s reached)"
    STATUS=1
    return 1
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  local t0 rc
  t0=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    note "PASS  $name ($(($(date +%s) - t0)) s)"
  else
    note "FAIL  $name (exit $rc after $(($(date +%s) - t0)) s; see $OUT/$name.log)"
    tail -n 15 "$OUT/$name.log" | sed 's/^/      /' | tee -a "$SUMMARY"
    STATUS=1
  fi
  return $rc
}

note "imixer GPU check, $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') on $(hostname)"
note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
note "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores"

# 1. Build. The CUDA toolkit comes from PyPI wheels (scripts/cuda_env.sh); the golden tests'
# binaries are built in the same cargo call so that nvcc compiles candle's kernels once.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"
if [ -n "${IMIXER_BIN:-}" ]; then
  BIN="$IMIXER_BIN"
  note "using the carried binary $BIN"
else
  # shellcheck disable=SC1091
  if ! source scripts/cuda_env.sh >"$OUT/cuda_env.log" 2>&1; then
    note "FAIL  cuda environment (see $OUT/cuda_env.log)"
    exit 1
  fi
  if [ "${SKIP_TESTS:-0}" = 1 ]; then
    step build 600 cargo build --release --features cuda
  else
    step build 600 cargo test --release --features cuda --test golden --no-run
    step build-bin 300 cargo build --release --features cuda
  fi
  BIN=target/release/imixer
fi
[ -x "$BIN" ] || { note "no binary at $BIN: nothing more to check"; exit 1; }
# The binary finds the CUDA runtime libraries of the wheels (the driver comes with the machine).
if [ -n "${CUDA_ROOT:-}" ]; then
  export LD_LIBRARY_PATH="$CUDA_ROOT/lib:${LD_LIBRARY_PATH:-}"
fi
step device-probe 60 "$BIN" bench --device cuda --config fmnist-tiny --family mixer --mode infer \
  --warmup 1 --steps 1 --json

# 2. Golden parity on the GPU.
if [ -z "${IMIXER_BIN:-}" ] && [ "${SKIP_TESTS:-0}" != 1 ]; then
  IMIXER_TEST_DEVICE=cuda step golden-cuda 300 cargo test --release --features cuda --test golden
fi

# 3. Bench rows: every family, train and infer, fp32 and bf16, then PyTorch on the same GPU.
BENCH="$OUT/bench.jsonl"
: >"$BENCH"
for precision in fp32 bf16; do
  step "bench-$precision" 240 bash -o pipefail -c "'$BIN' bench --device cuda --config fmnist-tiny --family all \
    --mode train,infer --precision $precision --warmup 3 --steps 10 --budget 10 --json | tee -a '$BENCH'"
done
TORCH_PY="${TORCH_PY:-.venv-torch/bin/python}"
[ -x "$TORCH_PY" ] || TORCH_PY=python3
if "$TORCH_PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for amp in none bf16; do
    step "torch-$amp" 240 bash -o pipefail -c "'$TORCH_PY' scripts/torch_baseline.py --device cuda --config fmnist-tiny \
      --family all --mode all --amp $amp --warmup 3 --steps 10 --budget 10 | tee -a '$BENCH'"
  done
else
  note "SKIP  PyTorch rows: no torch with CUDA for $TORCH_PY"
fi

# 4. A short Fashion-MNIST training on the GPU.
FMNIST_DIR="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
[ -e "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] || FMNIST_DIR=data/fashion-mnist
if [ -e "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  step train-fmnist 300 "$BIN" train --device cuda --data-dir "$FMNIST_DIR" --out "$OUT/run" \
    --overwrite --epochs 2 --warmup-epochs 1 --cooldown-epochs 0 --train-subset 10000 --json
else
  note "SKIP  training: no Fashion-MNIST in $FMNIST_DIR (set FMNIST_DIR)"
fi

# Summary: the bench table and the training's last epoch.
note ""
note "bench (fmnist-tiny, median ms per step; impl family mode precision/amp):"
python3 - "$BENCH" <<'PY' | tee -a "$SUMMARY"
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    impl = r.get("impl", "imixer")
    prec = r.get("precision", r.get("amp", ""))
    print("  %-8s %-12s %-6s %-5s %9s ms  %s" % (impl, r.get("family"), r.get("mode"), prec,
          r.get("median_ms", "-"), r.get("error", "")))
PY
if [ -s "$OUT/run/metrics.jsonl" ]; then
  note "training: $(tail -n 1 "$OUT/run/metrics.jsonl")"
fi
note "total $(($(date +%s) - START)) s; status $STATUS"
exit $STATUS
