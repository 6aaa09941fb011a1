"""What the kernel benchmarks time: shapes, synthetic batches and layers, and callables.

Used by ``bench_kernels.py`` and ``bench_gpu.py`` (and checked by ``tests/test_kernels_cpu.py``):
``infer_fn`` and ``train_fn`` run one batch of inference or of forward + backward as the
scorer and the trainer do; ``product_fn`` and ``train_product_fn`` run only their matrix
products, on the CPU kernel's own plan and small-product routine, the floor under the real
step. Not part of the ``pipeline`` package: ``rnnpipe bench`` needs none of it
(``pipeline/bench.py``). The products-only loops read the CPU kernel's internals
(``cpu._plan``, ``cpu._STAGE``) on purpose: they must repeat its loop exactly.

Example::

    shape = Shape("gru", 128, 128)
    offsets, ids = make_batch(synthetic_lengths(shape.batch), shape.vocab)
    seconds = time_infer(shape, offsets, ids, make_layer(shape))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from pipeline.bench import median_time, synthetic_lengths
from pipeline.kernels import gates, get_backend
from pipeline.kernels.gemm import gemm as _gemm
from pipeline.kernels.gemm import gemm_tn as _gemm_tn
from pipeline.kernels.memory import aligned

__all__ = [
    "Shape",
    "infer_fn",
    "make_batch",
    "make_layer",
    "product_fn",
    "recurrent_flops",
    "synthetic_lengths",
    "time_infer",
    "time_train",
    "train_fn",
    "train_product_fn",
]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: cell, embedding and hidden sizes, batch size, vocabulary size."""

    cell: str = "lstm"
    embed_dim: int = 128
    hidden_dim: int = 128
    batch: int = 256
    vocab: int = 20002


def make_batch(lengths: np.ndarray, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and random token ids (2..vocab-1) for sequences of ``lengths``."""
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.random.default_rng(seed).integers(2, vocab, offsets[-1]).astype(np.int32)
    return offsets, ids


def make_layer(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters of one layer (and an embedding) of ``shape``."""
    G, E, H = gates(shape.cell), shape.embed_dim, shape.hidden_dim
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.uniform(-0.05, 0.05, (shape.vocab, E)).astype(np.float32),
        "W_ih": rng.normal(0, 1 / np.sqrt(E), (G * H, E)).astype(np.float32),
        "W_hh": rng.normal(0, 1 / np.sqrt(H), (G * H, H)).astype(np.float32),
        "b_ih": np.zeros(G * H, np.float32),
        "b_hh": np.zeros(G * H, np.float32),
    }


def infer_fn(shape: Shape, offsets, ids, params, backend: str = "cpu") -> Callable[[], object]:
    """One batch of folded-table inference (last-state features), as a callable."""
    be = get_backend(backend)
    table = be.fold_table(shape.cell, params["emb"], params["W_ih"], params["b_ih"], params["b_hh"])
    W_hh, b_hh = params["W_hh"], params["b_hh"]
    return lambda: be.layer_infer(shape.cell, table, ids, offsets, W_hh, b_hh, False, ("last",))


def product_fn(shape: Shape, offsets, params) -> Callable[[], object]:
    """The recurrent products of one inference batch alone, as a callable: the CPU kernel's
    plan (length-sorted blocks, one per thread) and its step loop with the same shrinking
    active set, each step's ``S[r0:r1] @ W_hh.T`` with the kernel's own small-product
    routine (``pipeline.kernels.gemm``), and no gate math. Timed beside ``infer_fn`` it shows
    how fast the kernel's products run by themselves; the states are fixed random values
    (speed does not depend on them)."""
    from pipeline.kernels import cpu, gemm

    _, lens_s, _, blocks = cpu._plan(np.ascontiguousarray(offsets, dtype=np.int64))
    H = shape.hidden_dim
    GH = gates(shape.cell) * H
    WhhP = gemm.pack(params["W_hh"].T)
    rng = np.random.default_rng(0)
    S = aligned((lens_s.size, H))  # 64-byte aligned, as the kernel's arrays are
    S[...] = rng.uniform(-1, 1, S.shape)
    wide = aligned((lens_s.size, gemm.padded_width(GH)))

    def run():
        _products_only(lens_s, blocks, S, WhhP, wide)

    run.state = (S, wide[:, :GH], lens_s)  # for tests: fixed states, products, slot lengths
    return run


@njit(parallel=True, cache=True)
def _products_only(lens, blocks, S, WhhP, out):
    # the step loop of cpu._forward without its gate math
    H = S.shape[1]
    Np = out.shape[1]
    for bi in prange(blocks.shape[0] - 1):
        r0 = blocks[bi]
        r1 = blocks[bi + 1]
        if r1 == r0:
            continue
        for t in range(lens[r0]):
            while lens[r1 - 1] <= t:
                r1 -= 1
            _gemm(S, r0, r1, WhhP, H, Np, out)


def train_product_fn(shape: Shape, offsets, ids, params) -> Callable[[], object]:
    """The matrix products of one training step alone, as a callable: the floor under
    ``train_fn`` if all else in the step (gate math, pooling, gathers, sums, allocations)
    cost nothing.

    The same products as the CPU backend, on the same shapes: the input projection of the
    batch's distinct rows, ``dW_ih`` and ``dx`` with NumPy's BLAS; the forward step
    products and the backward ``dS @ W_hh`` step products on the kernel's plan (its
    length-sorted blocks and shrinking active set) with its small-product routine; and
    ``dW_hh`` in 128-token windows per block with ``gemm_tn``, as the backward kernel stages
    them. Operands are fixed random values (speed does not depend on them)."""
    from pipeline.encoder import distinct_ids
    from pipeline.kernels import cpu, gemm

    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    _, lens_s, _, blocks = cpu._plan(offsets)
    n, nb = lens_s.size, blocks.size - 1
    H, E = shape.hidden_dim, shape.embed_dim
    GH = gates(shape.cell) * H
    W_ih, W_hh = params["W_ih"], params["W_hh"]
    rows = distinct_ids(ids, shape.vocab)[0].size
    rng = np.random.default_rng(0)

    def draw(*dims):  # on 64-byte boundaries, as the kernels' arrays are
        out = aligned(dims)
        out[...] = rng.uniform(-1, 1, dims)
        return out

    x, dr = draw(rows, E), draw(rows, GH)
    S, D = draw(n, H), draw(n, GH)
    fwd_out = aligned((n, gemm.padded_width(GH)))
    dS = aligned((n, gemm.padded_width(H)))
    stage = (draw(nb, cpu._STAGE, GH), draw(nb, cpu._STAGE, gemm.padded_width(H)))
    dW = aligned((nb, GH, gemm.padded_width(H)), 0.0)

    def run():
        x @ W_ih.T
        _products_only(lens_s, blocks, S, gemm.pack(W_hh.T), fwd_out)
        _backward_products_only(lens_s, blocks, D, gemm.pack(W_hh), stage[0], stage[1], dS, dW)
        dr.T @ x
        dr @ W_ih

    run.state = (D, dS, stage, dW, lens_s, blocks)  # for tests
    return run


@njit(parallel=True, cache=True)
def _backward_products_only(lens, blocks, D, WP, SG, SH, dS, dW):
    # the products of cpu._backward without its gate math or staging copies: per step
    # (t >= 1) the running rows' D @ W_hh, and every 128 staged tokens dW += SG.T @ SH
    GH = D.shape[1]
    Np = dS.shape[1]
    KS = SG.shape[1]
    for bi in prange(blocks.shape[0] - 1):
        r0 = blocks[bi]
        r1 = blocks[bi + 1]
        if r1 == r0:
            continue
        ks = 0
        for t in range(lens[r0] - 1, 0, -1):
            ra = r0
            while ra < r1 and lens[ra] > t:
                ra += 1
            for _ in range(r0, ra):
                if ks == KS:
                    _gemm_tn(SG[bi], 0, ks, GH, SH[bi], Np, dW[bi])
                    ks = 0
                ks += 1
            _gemm(D, r0, ra, WP, GH, Np, dS)
        _gemm_tn(SG[bi], 0, ks, GH, SH[bi], Np, dW[bi])


def train_fn(shape: Shape, offsets, ids, params, backend: str = "cpu") -> Callable[[], object]:
    """One batch of forward + backward as the trainer runs it (``Model.forward/backward``:
    the batch's distinct embedding rows, the layer reading them through ``rows``,
    last-state pooling, the embedding's gradient as the rows the trainer hands to the
    optimizer), as a callable."""
    from pipeline.encoder import distinct_ids, skip_padding
    from pipeline.optim import RowGrad

    be = get_backend(backend)
    n, H = offsets.size - 1, shape.hidden_dim
    dfeat = np.ones((n, H), np.float32) / n

    def step():
        distinct, rows = distinct_ids(ids, shape.vocab)
        x = params["emb"][distinct]
        hs, cache = be.layer_forward(
            shape.cell,
            x,
            offsets,
            params["W_ih"],
            params["W_hh"],
            params["b_ih"],
            params["b_hh"],
            rows=rows,
        )
        be.pool_forward(hs, offsets, "last")
        dx = be.layer_backward(cache, None, dfeat)[0]  # last-state gradient, as Model does
        k = skip_padding(distinct)
        RowGrad(distinct[k:], dx[k:], params["emb"].shape)

    return step


def time_infer(shape: Shape, offsets, ids, params, backend: str = "cpu", repeats: int = 5):
    """Median seconds of folded-table inference (last-state features) on one batch."""
    return median_time(infer_fn(shape, offsets, ids, params, backend), repeats=repeats)


def time_train(shape: Shape, offsets, ids, params, backend: str = "cpu", repeats: int = 5):
    """Median seconds of forward + backward (embedding lookup, layer, last-state pooling)."""
    return median_time(train_fn(shape, offsets, ids, params, backend), repeats=repeats)


def recurrent_flops(shape: Shape, tokens: int) -> float:
    """FLOPs of the recurrent product alone: 2*G*H*H per real token."""
    return 2.0 * gates(shape.cell) * shape.hidden_dim**2 * tokens
