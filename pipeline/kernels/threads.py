"""One thread count for Numba and BLAS together.

The CPU kernels do their own small products (``pipeline.kernels.gemm``) inside ``prange``
and call no BLAS there; the large products outside the kernels (the input projection, the
weight gradients) use NumPy's BLAS. The two run one after the other, so each may use every
thread it is given, and ``set_threads`` gives both the same count: Numba's threads and
BLAS's threads never multiply.
"""

from __future__ import annotations

from functools import lru_cache

import numba
from threadpoolctl import ThreadpoolController

from pipeline.errors import ConfigError


@lru_cache(maxsize=1)
def _blas_libs():
    """The BLAS libraries loaded in this process (NumPy's), found once."""
    import numpy  # noqa: F401  (loads NumPy's BLAS)

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


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
    for lib in _blas_libs():
        lib.set_num_threads(n)
    return n
