"""Subnormals are flushed inside the kernels' threads and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit, prange

from pipeline.kernels import cpu, fpmode
from pipeline.kernels.fpmode import flush_subnormals, restore

TINY = np.array([1e-38], np.float32)  # normal; a quarter of it is subnormal


@njit(cache=False)
def _quarter_flushed_then_not(x):
    word = flush_subnormals()
    inside = x[0] * np.float32(0.25)
    restore(word)
    return inside, x[0] * np.float32(0.25)


@njit(parallel=True, cache=False)
def _quarters_everywhere(x, out):
    for i in prange(out.size):
        out[i] = x[0] * np.float32(0.25)


@pytest.mark.skipif(not fpmode._X86, reason="flushing is implemented for x86 only")
def test_flush_then_restore():
    inside, after = _quarter_flushed_then_not(TINY)
    assert inside == 0.0
    assert after == np.float32(2.5e-39)


def test_kernels_leave_every_thread_as_they_found_it():
    from kernel_cases import layer_params, ragged_batch

    p = layer_params("lstm", 4, 8, seed=0)
    offsets, ids, emb = ragged_batch([30, 2, 0, 17, 9, 25], 4, 20, seed=1)
    hs, cache = cpu.layer_forward("lstm", emb[ids], offsets, **p)
    cpu.layer_backward(cache, np.ones_like(hs))
    assert TINY[0] * np.float32(0.25) != 0  # this thread (NumPy)
    out = np.empty(64, np.float32)
    _quarters_everywhere(TINY, out)  # Numba's worker threads
    assert np.all(out == np.float32(2.5e-39))
