"""Cache-line-aligned arrays and prefetch hints for the CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from pipeline.kernels import gemm, memory


@pytest.mark.parametrize("shape", [(0,), (3, 5), (7, 128), (2, 3, 4)])
def test_aligned_arrays_start_on_cache_lines(shape):
    for _ in range(5):  # NumPy's own arrays land at varying offsets; these never do
        a = memory.aligned(shape, fill=1.5)
        assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % 64 == 0  # an empty array has no data
        assert (a == 1.5).all()
    assert gemm.pack(np.ones((3, 5), np.float32)).ctypes.data % 64 == 0


@njit(cache=True)
def _touch_every_row(A, out):
    for i in range(A.shape[0]):
        memory.prefetch_read(A, i)
        memory.prefetch_write(out, i)
        for j in range(A.shape[1]):
            out[i, j] = 2 * A[i, j]


@pytest.mark.parametrize("shape", [(5, 128), (3, 1), (4, 0), (0, 8), (2, 1000)])
def test_prefetch_is_only_a_hint(shape):
    # every width, including rows shorter than a cache line and empty ones; results unchanged
    A = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    out = np.zeros(shape, np.float32)
    _touch_every_row(A, out)
    np.testing.assert_array_equal(out, 2 * A)
