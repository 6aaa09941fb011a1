"""rnnpipe: train recurrent sentiment classifiers on Parquet and score huge datasets with them."""

import os
from collections.abc import MutableMapping

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


def _wide_vectors() -> str | None:
    """This host's CPU features for Numba with 512-bit vectors preferred, or None to leave
    Numba's default (no AVX-512, or no host information).

    LLVM tunes Intel CPUs with AVX-512 to prefer 256-bit vectors ("prefer-256-bit"), a guard
    against the clock drop of older Xeons. The gate math of every recurrence step (rational
    tanh and sigmoid over G*H values) then runs at half width: on an AVX-512 Xeon (Emerald
    Rapids) 512-bit vectors made it 1.2-1.5x faster (``python tests/benchmarks/bench_gates.py``:
    LSTM H=128, 423 against 524 ns per sequence and step). The features are the host's own,
    so the code and Numba's cache still belong to this machine.
    """
    try:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features().flatten()
    except Exception:  # no LLVM host info: leave Numba to its defaults
        return None
    if "+avx512f" not in features.split(","):
        return None
    return features + ",-prefer-256-bit"


# NUMBA_CPU_FEATURES as rnnpipe set it, so that a child process (which inherits both) can tell
# rnnpipe's setting, made for its parent's CPU, from a user's own.
CPU_MARK = "RNNPIPE_NUMBA_CPU_FEATURES"


def _tune_cpu(env: MutableMapping[str, str]) -> list[str]:
    """Set ``NUMBA_CPU_FEATURES`` in ``env`` for this host (see ``_wide_vectors``); returns the
    keys set. A user's NUMBA_CPU_FEATURES or NUMBA_CPU_NAME is left alone; one inherited from
    an rnnpipe process is made again for this host (the parent may have run on another CPU:
    an environment passed on to another machine would otherwise compile for the wrong one).
    """
    inherited = env.get("NUMBA_CPU_FEATURES")
    ours = inherited is not None and inherited == env.get(CPU_MARK)
    if (inherited is not None and not ours) or "NUMBA_CPU_NAME" in env:
        return []  # the user chose
    features = _wide_vectors()
    if features is None:
        if ours:
            del env["NUMBA_CPU_FEATURES"], env[CPU_MARK]
        return []
    env["NUMBA_CPU_FEATURES"] = env[CPU_MARK] = features
    return ["NUMBA_CPU_FEATURES", CPU_MARK]


# Read when Numba makes its code generator (its first compile or cache load), so this too
# runs before anything imports Numba. RNNPIPE_CPU_TUNING=0 opts out.
if os.environ.get("RNNPIPE_CPU_TUNING", "1") != "0":
    THREAD_ENV_SET += _tune_cpu(os.environ)

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
