# Source this file to build imixer's `cuda` feature on a machine with no system CUDA toolkit:
#   source scripts/cuda_env.sh && cargo build --release --features cuda
# It installs pinned CUDA 13.0 wheels from PyPI into a venv (first time: ~675 MB, ~1 min), makes the
# wheel tree look like a toolkit, builds a link-time stub of the driver library (libcuda.so; the real one
# comes with the NVIDIA driver at run time), and exports what cudarc and candle-kernels need.
# CUDA 13.0 on purpose: the lent H100/H200 machines run driver 580 (CUDA 13.0) and ship CUDA 13 runtime
# libraries; a 13.0 driver cannot load PTX from a newer nvcc. CUDA_COMPUTE_CAP=90 targets H100/H200.
# Measured: the first cuda build of candle takes ~13 minutes on 2 cores (nvcc compiling candle-kernels).
# At run time the binary needs libcuda.so.1 (driver), libcudart.so.13, libcublas.so.13(+Lt), libcurand.so.10
# on LD_LIBRARY_PATH.
CUDA_VENV="${CUDA_VENV:-$HOME/.cache/imixer-cuda-venv}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
_cuda_wheels="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14"
[ -x "$CUDA_VENV/bin/python" ] || python3 -m venv "$CUDA_VENV"
"$CUDA_VENV/bin/python" -m pip install --quiet $_cuda_wheels || return 1
_site="$("$CUDA_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU="$_site/nvidia/cu13"
for l in cudart cublas cublasLt nvrtc; do ln -sfn "lib$l.so.13" "$CU/lib/lib$l.so"; done
ln -sfn libcurand.so.10 "$CU/lib/libcurand.so"
[ -e "$CU/lib64" ] || ln -s lib "$CU/lib64"
if [ ! -e "$CU/lib/stubs/libcuda.so" ]; then
  mkdir -p "$CU/lib/stubs"
  { gcc -E -P -x c -I"$CU/include" "$CU/include/cuda.h"
    gcc -E -P -x c -D__CUDA_API_VERSION_INTERNAL -I"$CU/include" "$CU/include/cuda.h"
  } | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' | sort -u \
    | awk '{print "int " $1 "(void) { return 34; }"}' > "$CU/lib/stubs/libcuda_stub.c"
  printf 'int %s(void) { return 34; }\n' cuProfilerInitialize cuProfilerStart cuProfilerStop >> "$CU/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -O0 -w -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/libcuda_stub.c"
  ln -sfn libcuda.so "$CU/lib/stubs/libcuda.so.1"
fi
export PATH="$CU/bin:$PATH" CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_HOME="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
export CUDARC_CUDA_VERSION=13000
nvcc --version | tail -1
