"""rnnpipe: train recurrent sentiment classifiers on Parquet and score huge datasets with them."""

import os

# Two thread pools take turns in every training step: OpenBLAS's (the large products) and
# Numba's OpenMP pool (the recurrences, pooling, Adam). By default each keeps its threads
# spinning after its work is done (OpenBLAS for about 2**28 cycles), stealing the cores
# from the other: on 2 cores that made a training step 3-4x slower. Sleeping at once costs
# a few microseconds per hand-over instead. Both are read when the libraries load, so this
# must run before NumPy and Numba do; an explicit setting in the environment wins.
# RNNPIPE_THREAD_ENV=0 opts out (benchmarks use it to run a peer such as PyTorch untouched).
THREAD_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
THREAD_ENV_SET: list[str] = []  # the ones this import set (not the user's own)
if os.environ.get("RNNPIPE_THREAD_ENV", "1") != "0":
    THREAD_ENV_SET = [k for k in THREAD_ENV if k not in os.environ]
    for _k in THREAD_ENV_SET:
        os.environ[_k] = THREAD_ENV[_k]

from pipeline.errors import (  # noqa: E402
    ConfigError,
    DeviceError,
    InputError,
    ModelFormatError,
    RnnpipeError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "InputError",
    "ModelFormatError",
    "RnnpipeError",
    "__version__",
]
