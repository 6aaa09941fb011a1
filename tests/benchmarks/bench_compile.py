"""Numba compile and cache-load time of the CPU kernels, each in a fresh process.

    python tests/benchmarks/bench_compile.py [--repeats 3]

Cold: an empty NUMBA_CACHE_DIR, so every kernel compiles (forward, backward, pooling and
folded inference for lstm, gru and rnn, both directions). Warm: the same again with the
cache that run left behind, so every kernel loads from it. Prints the median seconds of
the kernel calls alone (the imports are timed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, time
t0 = time.perf_counter()
from pipeline import runtime
runtime.apply_defaults()  # as the CLI runs: Numba compiles for this CPU's features
import numpy as np
from pipeline.kernels import cpu
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
offsets = np.array([0, 3, 3, 8], np.int64)
t0 = time.perf_counter()
for cell, G in (("lstm", 4), ("gru", 3), ("rnn", 1)):
    E, H, V = 4, 3, 10
    x = rng.normal(size=(8, E)).astype(np.float32)
    W_ih = rng.normal(size=(G * H, E)).astype(np.float32)
    W_hh = rng.normal(size=(G * H, H)).astype(np.float32)
    b = np.zeros(G * H, np.float32)
    for rev in (False, True):
        hs, cache = cpu.layer_forward(cell, x, offsets, W_ih, W_hh, b, b, reverse=rev)
        for mode in ("last", "max", "mean"):
            f = cpu.pool_forward(hs, offsets, mode, rev)
            dhs = cpu.pool_backward(np.ones_like(f), hs, offsets, mode, rev)
        cpu.layer_backward(cache, dhs)
        table = cpu.fold_table(cell, rng.normal(size=(V, E)).astype(np.float32), W_ih, b, b)
        ids = rng.integers(0, V, 8)
        cpu.layer_infer(cell, table, ids, offsets, W_hh, b, rev, ("last", "max", "mean"))
print(json.dumps({"import": t_import, "kernels": time.perf_counter() - t0}))
"""


def run(cache_dir: str) -> dict[str, float]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    res = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache))
            warm.append(run(cache))
    for name, rows in (("cold (compile)", cold), ("warm (cache)", warm)):
        imp = np.median([r["import"] for r in rows])
        ker = np.median([r["kernels"] for r in rows])
        print(f"{name:<16} import {imp:6.2f} s   first call of every kernel {ker:6.2f} s")


if __name__ == "__main__":
    main()
