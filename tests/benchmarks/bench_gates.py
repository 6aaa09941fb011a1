"""Gate-math benchmark: one LSTM/GRU/RNN step's activations per sequence, at the vector width
rnnpipe picks (512-bit on AVX-512 CPUs) against Numba's default (256-bit there).

Run:

    python tests/benchmarks/bench_gates.py [--hidden 128] [--rounds 3]

``pipeline/__init__.py`` sets NUMBA_CPU_FEATURES to the host's own features minus LLVM's
"prefer-256-bit" tuning on CPUs with AVX-512 (``RNNPIPE_CPU_TUNING=0`` turns that off).
This script times the per-row gate kernels of ``pipeline.kernels.cpu`` (one thread, rows of
a [64, G*H] block in turn, data in cache: the recurrent product is left out) in child
processes with the setting on and off, alternating ``--rounds`` times, each child with its
own temporary Numba cache, and prints the median ns per row and the ratio. On a CPU without
AVX-512 both children compile the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child(hidden: int) -> None:
    sys.path.insert(0, str(REPO))
    from pipeline import runtime

    runtime.apply_defaults()  # before NumPy and Numba: their environment, as the CLI sets it

    # isort: split
    import numpy as np
    from numba import njit

    from pipeline.kernels import cpu

    @njit(cache=False, fastmath=True, error_model="numpy")
    def lstm(G, X, S, C, n):
        H = S.shape[1]
        for k in range(n):
            r = k % G.shape[0]
            cpu._lstm_row(G[r], X[r], S[r], C[r], H)

    @njit(cache=False, fastmath=True, error_model="numpy")
    def gru(G, X, S, HN, b, n):
        H = S.shape[1]
        for k in range(n):
            r = k % G.shape[0]
            cpu._gru_row(G[r], X[r], S[r], HN[r], b, H)

    @njit(cache=False, fastmath=True, error_model="numpy")
    def rnn(G, X, S, n):
        H = S.shape[1]
        for k in range(n):
            r = k % G.shape[0]
            cpu._rnn_row(G[r], X[r], S[r], H)

    H = hidden
    rng = np.random.default_rng(0)
    out = {}
    for cell, g in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        G = rng.standard_normal((64, g * H), dtype=np.float32)
        X = rng.standard_normal((64, g * H), dtype=np.float32)
        S = np.zeros((64, H), np.float32)
        aux = np.zeros((64, H), np.float32)
        b = np.zeros(H, np.float32)
        run = {
            "lstm": lambda n, G=G, X=X, S=S, aux=aux: lstm(G, X, S, aux, n),
            "gru": lambda n, G=G, X=X, S=S, aux=aux, b=b: gru(G, X, S, aux, b, n),
            "rnn": lambda n, G=G, X=X, S=S: rnn(G, X, S, n),
        }[cell]
        run(10)
        n = 100_000
        best = min(_timed(run, n) for _ in range(5))
        out[cell] = best / n * 1e9
    print(json.dumps(out))


def _timed(run, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.hidden)
        return
    results: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for tuning in ("1", "0"):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, RNNPIPE_CPU_TUNING=tuning, NUMBA_CACHE_DIR=cache)
                env.pop("NUMBA_CPU_FEATURES", None)
                env.pop("RNNPIPE_NUMBA_CPU_FEATURES", None)
                cmd = [sys.executable, __file__, "--child", "--hidden", str(args.hidden)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results[tuning].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        f"gate math per sequence and step, H={args.hidden}, one thread, median of "
        f"{args.rounds} alternating rounds (each the best of 5 x 100,000 rows)"
    )
    print(f"{'cell':<6}{'512-bit (rnnpipe) ns':>22}{'256-bit (default) ns':>22}{'speed-up':>10}")
    for cell in ("lstm", "gru", "rnn"):
        on = sorted(r[cell] for r in results["1"])[len(results["1"]) // 2]
        off = sorted(r[cell] for r in results["0"])[len(results["0"]) // 2]
        print(f"{cell:<6}{on:>22.0f}{off:>22.0f}{off / on:>9.2f}x")


if __name__ == "__main__":
    main()
