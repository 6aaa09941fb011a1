"""Throughput of this machine (``rnnpipe bench``): score generated reviews with a model.

``run_machine_bench`` scores generated reviews (IMDB-like lengths) with a random-weight model
of the given size and reports reviews/s, tokens/s and GFLOP/s of the recurrent product, with
the machine's matrix-product rate measured in the same run, so GFLOP/s can be read against
it. What only the benchmark scripts use lives beside them in ``tests/benchmarks/``
(``kernel_timing.py``: the kernel benchmarks' shapes, layers and products-only loops); the
comparison with PyTorch is ``tests/benchmarks/bench_kernels.py``. ``machine_line`` and
``peer_env`` stay here for the benchmark scripts that import them from this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from pipeline import runtime
from pipeline.kernels import gates


def peer_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a peer's benchmark process (PyTorch), without rnnpipe's settings:
    ``pipeline.runtime.peer_environment``, under the name ``bench_score.py`` and
    ``bench_train.py`` import."""
    return runtime.peer_environment(env)


def machine_line() -> str:
    """The CPU's name and the OpenBLAS variables that pick its kernels, for benchmark headers."""
    name = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {k: os.environ.get(k, "<unset>") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return f"{name}; " + " ".join(f"{k}={v}" for k, v in env.items())


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def synthetic_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Review lengths shaped like IMDB's (log-normal, median about 174 tokens)."""
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(np.log(174), 0.75, n)).astype(np.int64)


def matmul_fn(m: int, k: int, n: int) -> tuple[Callable[[], object], float]:
    """``(fn, flops)``: ``fn()`` runs float32 (m,k)x(k,n) products worth about 0.2 GFLOP
    with NumPy's BLAS at its current threads; ``flops`` is what one call does."""
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    inner = max(1, int(2e8 // (2 * m * k * n)))

    def run():
        for _ in range(inner):
            np.matmul(a, b, out=out)

    return run, 2.0 * m * k * n * inner


def matmul_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """GFLOP/s of a float32 (m,k)x(k,n) product with NumPy's BLAS at its current threads."""
    run, flops = matmul_fn(m, k, n)
    return flops / median_time(run, repeats=repeats) / 1e9


def generated_reviews(n: int, seed: int = 0, words: int = 30000):
    """``n`` generated reviews (Zipf-distributed made-up words, IMDB-like lengths)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(words)])
    lens = synthetic_lengths(n, seed)
    ranks = np.minimum(rng.zipf(1.2, int(lens.sum())), words) - 1
    tokens = vocab[ranks]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    texts = [" ".join(tokens[offsets[i] : offsets[i + 1]]) for i in range(n)]  # setup only
    return pa.array(texts, pa.large_string())


def run_machine_bench(
    cell: str = "lstm",
    embed_dim: int = 128,
    hidden_dim: int = 128,
    rows: int = 4096,
    repeats: int = 3,
    backend: str = "cpu",
) -> dict[str, float | int | str]:
    """Score ``rows`` generated reviews with a random-weight model; the figures of this machine.

    Returns reviews/s and tokens/s end to end (tokenize + score, in memory) and for the
    kernels alone, GFLOP/s of the recurrent product, and the matrix-product rate of NumPy's
    BLAS measured in the same run.

    Example: ``run_machine_bench("gru", 128, 128, rows=2048)``.
    """
    import numba

    from pipeline.model import Model, ModelConfig
    from pipeline.text import Tokenizer

    texts = generated_reviews(rows)
    tok = Tokenizer(num_words=20000).fit(texts)
    config = ModelConfig(
        cell=cell,
        embed_dim=embed_dim,
        hidden_dim=hidden_dim,
        vocab_size=tok.vocab_size,
        max_len=256,
        bidirectional=False,
        pooling="last",
        dropout=0.0,
    )
    model = Model(config, tokenizer=tok, backend=backend, seed=0)
    tokens = model.encode(texts)
    t_kernel = median_time(lambda: model.predict_proba(tokens), repeats=repeats)
    t_e2e = median_time(lambda: model.predict_proba(model.encode(texts)), repeats=repeats)
    G, H = gates(cell), hidden_dim
    return {
        "cell": cell,
        "embed_dim": embed_dim,
        "hidden_dim": hidden_dim,
        "backend": backend,
        "threads": numba.get_num_threads(),
        "reviews": rows,
        "tokens": tokens.nnz,
        "reviews_per_s": rows / t_e2e,
        "tokens_per_s": tokens.nnz / t_e2e,
        "kernel_reviews_per_s": rows / t_kernel,
        "kernel_gflops": 2.0 * G * H * H * tokens.nnz / t_kernel / 1e9,
        "matmul_gflops": matmul_rate(256, H, G * H),
    }
