"""Seeded layer parameters and ragged batches shared by the kernel backend tests."""

from __future__ import annotations

import numpy as np

from pipeline.kernels import gates


def layer_params(cell: str, E: int, H: int, seed: int, scale: float = 0.4) -> dict:
    """Random float32 ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh`` of one layer of ``cell``."""
    G = gates(cell)
    rng = np.random.default_rng(seed)
    p = {
        "W_ih": rng.normal(0, scale, (G * H, E)),
        "W_hh": rng.normal(0, scale, (G * H, H)),
        "b_ih": rng.normal(0, 0.3, G * H),
        "b_hh": rng.normal(0, 0.3, G * H),
    }
    return {k: v.astype(np.float32) for k, v in p.items()}


def ragged_batch(lengths, E: int, V: int, seed: int):
    """``(offsets, ids, emb)`` for sequences of ``lengths`` over a vocabulary of ``V``."""
    rng = np.random.default_rng(seed)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(0, V, offsets[-1]).astype(np.int32)
    emb = rng.normal(0, 1.0, (V, E)).astype(np.float32)
    return offsets, ids, emb
