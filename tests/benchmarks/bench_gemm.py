"""The recurrent step's small matrix product: rnnpipe's packed microkernel against BLAS.

Run: ``python tests/benchmarks/bench_gemm.py [--repeats 7]``

Each row is one product shape the kernels run every step (rows of a block x H, times the
packed W_hh), timed on one thread the way the kernels call it (a compiled loop of calls),
against the same product with NumPy's BLAS (``np.matmul`` into a preallocated output, BLAS
held to one thread; a loop of calls from Python, whose overhead, about a microsecond a
call, is at most a few percent of these products). Timings are interleaved; medians.
The last rows are the backward kernel's ``dW_hh`` product (``gemm.gemm_tn``: 128 staged
tokens' gate gradients, transposed, times their previous states, added into ``dW_hh``);
BLAS does ``A.T @ B`` into an output without the addition.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# rnnpipe's runtime defaults before NumPy: the thread environment OpenBLAS reads at load
from pipeline import runtime  # noqa: E402

runtime.apply_defaults()

# isort: split
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline import bench  # noqa: E402
from pipeline.kernels import gemm, memory  # noqa: E402

# (what, rows, K, N): forward steps are (rows, H) x (H, G*H); backward (rows, G*H) x (G*H, H)
SHAPES = [
    ("lstm H=128 forward, 128 rows", 128, 128, 512),
    ("lstm H=128 forward, 17 rows", 17, 128, 512),
    ("lstm H=128 backward, 32 rows", 32, 512, 128),
    ("gru H=128 forward, 128 rows", 128, 128, 384),
    ("rnn H=128 forward, 32 rows", 32, 128, 128),
    ("lstm H=32 forward, 128 rows", 128, 32, 128),
]
# (what, tokens, G*H, H): dW_hh (G*H, H) += dG.T @ h_prev over a block's staged tokens
TN_SHAPES = [
    ("lstm H=128 dW_hh, 128 tokens", 128, 512, 128),
    ("gru H=128 dW_hh, 128 tokens", 128, 384, 128),
    ("rnn H=128 dW_hh, 128 tokens", 128, 128, 128),
]


@njit(cache=True)
def _ours(A, Bp, K, Np, C, reps):
    for _ in range(reps):
        gemm.gemm(A, 0, A.shape[0], Bp, K, Np, C)


@njit(cache=True)
def _ours_tn(A, B, C, reps):
    for _ in range(reps):
        gemm.gemm_tn(A, 0, A.shape[0], C.shape[0], B, B.shape[1], C)


def _blas(A, B, C, reps):
    for _ in range(reps):
        np.matmul(A, B, out=C)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(bench.machine_line())
    print(f"one thread; tile {gemm.ROWS} rows x {gemm.NB} columns ({gemm.LANES}-float vectors)")
    hdr = f"{'product':<32}{'shape':>16}{'rnnpipe GFLOP/s':>17}{'BLAS GFLOP/s':>14}{'ratio':>8}"
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for what, M, K, N in SHAPES:
            A = rng.standard_normal((M, K)).astype(np.float32)
            B = rng.standard_normal((K, N)).astype(np.float32)
            Bp, Np = gemm.pack(B), gemm.padded_width(N)
            C = np.empty((M, Np), np.float32)
            C2 = np.empty((M, N), np.float32)
            reps = max(1, int(1e8 // (2 * M * K * N)))
            _ours(A, Bp, K, Np, C, 1)
            _blas(A, B, C2, 1)
            np.testing.assert_allclose(C[:, :N], C2, rtol=1e-4, atol=1e-3)
            t_ours, t_blas = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                _ours(A, Bp, K, Np, C, reps)
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _blas(A, B, C2, reps)
                t_blas.append(time.perf_counter() - t0)
            gf = 2.0 * M * K * N * reps / 1e9
            ours, blas = gf / np.median(t_ours), gf / np.median(t_blas)
            shape = f"{M}x{K}x{N}"
            print(f"{what:<32}{shape:>16}{ours:>17.1f}{blas:>14.1f}{ours / blas:>7.2f}x")
        for what, T, M, N in TN_SHAPES:
            A = rng.standard_normal((T, M)).astype(np.float32)
            B = np.zeros((T, gemm.padded_width(N)), np.float32)
            B[:, :N] = rng.standard_normal((T, N))
            C = memory.aligned((M, B.shape[1]), fill=0.0)
            C2 = np.empty((M, B.shape[1]), np.float32)
            reps = max(1, int(1e8 // (2 * M * T * N)))
            _ours_tn(A, B, C, 1)
            _blas(A.T, B, C2, 1)
            np.testing.assert_allclose(C, C2, rtol=1e-4, atol=1e-3)
            t_ours, t_blas = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                _ours_tn(A, B, C, reps)
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _blas(A.T, B, C2, reps)
                t_blas.append(time.perf_counter() - t0)
            gf = 2.0 * M * T * N * reps / 1e9
            ours, blas = gf / np.median(t_ours), gf / np.median(t_blas)
            shape = f"({T}x{M})'x{N}"
            print(f"{what:<32}{shape:>16}{ours:>17.1f}{blas:>14.1f}{ours / blas:>7.2f}x")


if __name__ == "__main__":
    main()
