"""One thread count for Numba and BLAS together, and single-threaded BLAS inside kernels.

The CPU kernels call BLAS (``np.dot`` in Numba, which goes through SciPy's BLAS) from inside
``prange``: that BLAS must run on one thread, or Numba's threads and BLAS's threads multiply
and the machine thrashes. The large products outside the kernels use NumPy's BLAS with the
same thread count as Numba.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache

import numba
from threadpoolctl import ThreadpoolController

from pipeline.errors import ConfigError


@lru_cache(maxsize=1)
def _controllers():
    """(controller, kernel BLAS libs, other BLAS libs), found once per process."""
    import numpy  # noqa: F401  (loads NumPy's BLAS)
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that Numba's np.dot calls)

    ctl = ThreadpoolController()
    scipy_dir = os.path.dirname(os.path.dirname(scipy.__file__))
    kernel, other = [], []
    for lib in ctl.lib_controllers:
        if lib.user_api != "blas":
            continue
        (kernel if lib.filepath.startswith(os.path.join(scipy_dir, "scipy")) else other).append(lib)
    shared = any(k.filepath == o.filepath for k in kernel for o in other)
    if kernel and not shared:
        for lib in kernel:
            lib.set_num_threads(1)
    return ctl, kernel, other, shared or not kernel


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Hold the BLAS that kernels call to one thread for the duration of the block."""
    ctl, _, _, needs_limit = _controllers()
    if not needs_limit:
        yield  # SciPy's BLAS is its own library, already held to one thread for good
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def set_threads(n: int | None) -> int:
    """Use ``n`` threads for Numba kernels and for NumPy's BLAS (None or 0: all cores).

    Returns the thread count in force. Raises ``ConfigError`` for a count out of range.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if n is None or n == 0:
        n = limit
    if not 1 <= n <= limit:
        raise ConfigError(f"--threads must be between 1 and {limit}, got {n}")
    numba.set_num_threads(n)
    _, _, other, _ = _controllers()
    for lib in other:
        lib.set_num_threads(n)
    return n
