#!/usr/bin/env bash
# GPU check for rnnpipe's CUDA backend: its tests on the real GPU, then the benchmark.
#
# Run on a machine with an NVIDIA GPU and driver, from anywhere in the repository:
#
#     bash tests/benchmarks/gpu_check.sh [bench_gpu.py options, e.g. --repeats 5]
#
# It installs nothing (such machines may have no network). Beforehand, in the environment
# of $PYTHON:
#
#     pip install -e '.[dev,cuda]'   # numba-cuda[cu12] (CUDA 12 runtime wheels), pytest
#     pip install torch              # a CUDA build, for the cuDNN rows (optional: without
#                                    # it the benchmark prints rnnpipe's rows only)
#
# PYTHON picks the interpreter (default: python3 on PATH). Exit status: non-zero when no GPU
# is visible or a test fails; the benchmark runs only after the tests pass.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
# the real GPU, never the simulator the CPU-only test run uses
unset NUMBA_ENABLE_CUDASIM RNNPIPE_CUDA_SIM_CHILD

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
else
    echo "nvidia-smi not found; asking numba-cuda"
fi

"$PYTHON" - <<'EOF'
import sys

import numba_cuda
from numba import cuda

if not cuda.is_available():
    sys.exit("numba-cuda sees no CUDA GPU: check the driver and pip install -e '.[cuda]'")
dev = cuda.get_current_device()
name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
print(f"numba-cuda {numba_cuda.__version__} sees {name}, compute capability {dev.compute_capability}")
EOF

echo "== CUDA kernel tests on the GPU (the first run compiles the kernels)"
"$PYTHON" -m pytest -q -o addopts= -p no:cacheprovider tests/test_kernels_cuda.py

echo "== benchmark: rnnpipe CUDA vs PyTorch cuDNN"
"$PYTHON" tests/benchmarks/bench_gpu.py "$@"
