"""Runtime settings: threads, the kernel backend, the process environment, the CLI's exit.

The one place rnnpipe reads its own environment variables and sets process-wide state.
This module imports nothing heavy (no NumPy, no Numba): the CLI imports it first and calls
``apply_defaults()`` before anything loads NumPy or Numba, which read their settings then.

Importing ``pipeline`` (or any module of it) never changes ``os.environ``; the ``rnnpipe``
command applies the defaults below at start, and a library user gets the same with::

    from pipeline import runtime
    runtime.apply_defaults()     # first thing, before NumPy and Numba are imported
    import numpy as np
    ...
    runtime.set_threads(2)       # Numba and BLAS together

Environment variables. The package reads each of its own here only, by the function named;
the last four are read outside the package, by the scripts named.

| variable | read by | meaning |
| --- | --- | --- |
| `RNNPIPE_THREAD_ENV` | `apply_defaults` | `0`: leave the thread pools' waits (`THREAD_ENV`) |
| `RNNPIPE_CPU_TUNING` | `apply_defaults` | `0`: leave Numba's CPU default (no 512-bit vectors) |
| `RNNPIPE_NUMBA_CPU_FEATURES` | `tune_cpu` | marks a `NUMBA_CPU_FEATURES` as rnnpipe's choice |
| `RNNPIPE_FAST_EXIT` | `leave` | `0`: the CLI exits through Python's full teardown |
| `RNNPIPE_RAY_NUMBA_CACHE_DIR` | `ray_numba_cache_dir` | each Ray actor's Numba cache goes in it |
| `RNNPIPE_RAY_VERBOSE` | `ray_verbose` | `1`: keep Ray's INFO logging and progress bars |
| `RNNPIPE_CUDA_THREADS` | `cuda_block_sizes` | threads per CUDA block (simulator only) |
| `RNNPIPE_CUDA_ROWS` | `cuda_block_sizes` | sequences per recurrence block (simulator only) |
| `RNNPIPE_CUDA_TILE` | `cuda_block_sizes` | edge of a matrix-product tile (simulator only) |
| `RNNPIPE_CUDA_SPLIT_K` | `cuda_block_sizes` | k per part of a split product (simulator only) |
| `RNNPIPE_DATA_DIR` | tests, benchmarks, `make_sample.py` | the folder holding the IMDB data |
| `RNNPIPE_CACHE_DIR` | `sample_data/make_sample.py` | where the downloaded IMDB archive is kept |
| `RNNPIPE_IMDB_URL` | `sample_data/make_sample.py` | a mirror of the IMDB archive |
| `RNNPIPE_IMDB_SHA256` | `sample_data/make_sample.py` | that mirror's archive's SHA-256 |

`RNNPIPE_NUMBA_CPU_FEATURES` is written beside the `NUMBA_CPU_FEATURES` that
`apply_defaults` chose for this CPU, so that a child process, which inherits both, can tell
that choice from a user's own and make its own for the CPU it runs on. `RNNPIPE_THREAD_ENV=0`
is what `peer_environment` sets for a benchmark's PyTorch peer. The `RNNPIPE_CUDA_*` sizes
are read under the CUDA simulator only (`NUMBA_ENABLE_CUDASIM=1`), so that tiny test inputs
span several blocks. Two more belong to the test suite's own child processes:
`RNNPIPE_CUDA_SIM_CHILD` (`test_kernels_cuda.py`'s simulator run) and
`RNNPIPE_TEST_KILL_AT_STEP` (`test_cli.py`'s kill-and-resume run).

The variables other libraries read, set by `apply_defaults` where the user has not:
`OPENBLAS_THREAD_TIMEOUT=4` and `OMP_WAIT_POLICY=PASSIVE` (see `THREAD_ENV`), and
`NUMBA_CPU_FEATURES` on AVX-512 hosts (see `wide_vectors`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import MutableMapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from pipeline.model import Model

__all__ = [
    "CPU_MARK",
    "DEVICES",
    "THREAD_ENV",
    "apply_defaults",
    "cuda_block_sizes",
    "cuda_simulator",
    "leave",
    "load_model",
    "numpy_for_numba_cuda",
    "peer_environment",
    "ray_numba_cache_dir",
    "ray_verbose",
    "resolve_backend",
    "set_threads",
    "tune_cpu",
    "wide_vectors",
]

THREAD_ENV_OFF = "RNNPIPE_THREAD_ENV"
CPU_TUNING_OFF = "RNNPIPE_CPU_TUNING"
# NUMBA_CPU_FEATURES as rnnpipe set it, so that a child process (which inherits both) can tell
# rnnpipe's setting, made for its parent's CPU, from a user's own.
CPU_MARK = "RNNPIPE_NUMBA_CPU_FEATURES"
FAST_EXIT_ENV = "RNNPIPE_FAST_EXIT"  # 0: leave through the interpreter's full teardown
RAY_NUMBA_CACHE_ENV = "RNNPIPE_RAY_NUMBA_CACHE_DIR"
RAY_VERBOSE_ENV = "RNNPIPE_RAY_VERBOSE"  # 1: leave Ray's INFO logging on
CUDA_BLOCK_ENV = "RNNPIPE_CUDA_"  # + THREADS, ROWS, TILE or SPLIT_K

# ------------------------------------------------------------------------------ environment

# Two thread pools take turns in every training step: OpenBLAS's (the large products) and
# Numba's OpenMP pool (the recurrences, pooling, Adam). By default each keeps its threads
# spinning after its work is done (OpenBLAS for about 2**28 cycles), stealing the cores
# from the other: on 2 cores that made a training step 3-4x slower. Sleeping at once costs
# a few microseconds per hand-over instead. Both are read when the libraries load, so they
# must be set before NumPy and Numba load; an explicit setting in the environment wins.
THREAD_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}

_applied: list[str] = []  # what apply_defaults set in os.environ (not the user's own)


def apply_defaults(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Set rnnpipe's runtime defaults in ``env`` (default: ``os.environ``); return the keys set.

    The thread hand-over (``THREAD_ENV``, unless ``RNNPIPE_THREAD_ENV=0``) and the CPU tuning
    (``tune_cpu``, unless ``RNNPIPE_CPU_TUNING=0``); a variable the user set is left alone.
    NumPy, OpenBLAS and Numba read these when they load: call this before importing them
    (the ``rnnpipe`` command does, at start). Later, the settings reach only child processes.
    Calling it again sets nothing new. Called after NumPy loaded, when it had to set
    OpenBLAS's hand-over, it warns (``RuntimeWarning``): that setting came too late.

    Example: ``runtime.apply_defaults()  # ['OPENBLAS_THREAD_TIMEOUT', 'OMP_WAIT_POLICY']``.
    """
    target = os.environ if env is None else env
    set_now: list[str] = []
    if target.get(THREAD_ENV_OFF, "1") != "0":
        for key, value in THREAD_ENV.items():
            if key not in target:
                target[key] = value
                set_now.append(key)
    # Numba reads NUMBA_CPU_FEATURES when it makes its code generator (its first compile or
    # cache load), so this too must run before anything imports Numba.
    if target.get(CPU_TUNING_OFF, "1") != "0":
        set_now += tune_cpu(target)
    if env is None:
        _applied.extend(k for k in set_now if k not in _applied)
        late = [k for k in set_now if k in THREAD_ENV and k.startswith("OPENBLAS")]
        if late and "numpy" in sys.modules:
            warnings.warn(
                "rnnpipe: runtime.apply_defaults() ran after NumPy was imported, so this "
                "process's OpenBLAS keeps its threads spinning after each product, taking "
                "cores from rnnpipe's kernels (explanations about 1.4x slower on 2 cores); "
                "call it before importing NumPy",
                RuntimeWarning,
                stacklevel=2,
            )
    return set_now


def peer_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: ``os.environ``) without what ``apply_defaults`` set in this
    process, and with ``RNNPIPE_THREAD_ENV=0``: for a child process that must see the
    environment as the user had it (a benchmark's PyTorch peer, whose own thread pools would
    otherwise wait differently).

    Example: ``subprocess.run(cmd, env=runtime.peer_environment())``.
    """
    out = dict(os.environ if env is None else env)
    for key in _applied:
        out.pop(key, None)
    out[THREAD_ENV_OFF] = "0"
    return out


def wide_vectors() -> str | None:
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


def tune_cpu(env: MutableMapping[str, str]) -> list[str]:
    """Set ``NUMBA_CPU_FEATURES`` in ``env`` for this host (see ``wide_vectors``); returns the
    keys set. A user's NUMBA_CPU_FEATURES or NUMBA_CPU_NAME is left alone; one inherited from
    an rnnpipe process is made again for this host (the parent may have run on another CPU:
    an environment passed on to another machine would otherwise compile for the wrong one).
    """
    inherited = env.get("NUMBA_CPU_FEATURES")
    ours = inherited is not None and inherited == env.get(CPU_MARK)
    if (inherited is not None and not ours) or "NUMBA_CPU_NAME" in env:
        return []  # the user chose
    features = wide_vectors()
    if features is None:
        if ours:
            del env["NUMBA_CPU_FEATURES"], env[CPU_MARK]
        return []
    env["NUMBA_CPU_FEATURES"] = env[CPU_MARK] = features
    return ["NUMBA_CPU_FEATURES", CPU_MARK]


# ---------------------------------------------------------------------------------- threads


@lru_cache(maxsize=1)
def _blas_libs():
    """The BLAS libraries loaded in this process (NumPy's), found once."""
    import numpy  # noqa: F401  (loads NumPy's BLAS)
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


def set_threads(n: int | None) -> int:
    """Use ``n`` threads for Numba kernels and for NumPy's BLAS (None or 0: all cores).

    The CPU kernels do their own small products (``pipeline.kernels.gemm``) inside
    ``prange`` and call no BLAS there; the large products outside the kernels (the input
    projection, the weight gradients) use NumPy's BLAS. The two run one after the other, so
    each may use every thread it is given: giving both the same count means Numba's threads
    and BLAS's threads never multiply.

    Returns the thread count in force. Raises ``ConfigError`` for a count out of range.

    Example: ``set_threads(2)  # 2``.
    """
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n is None or n == 0:
        n = limit
    if not 1 <= n <= limit:
        raise ConfigError(f"--threads must be between 1 and {limit}, got {n}")
    numba.set_num_threads(n)
    for lib in _blas_libs():
        lib.set_num_threads(n)
    return n


# ---------------------------------------------------------------------------------- backend

DEVICES = ("cpu", "cuda", "auto")


def resolve_backend(device: str) -> str:
    """The kernel backend for a device choice (``--device``, or a job's ``device``).

    ``cpu``: the Numba CPU kernels; ``cuda``: the CUDA kernels, DeviceError when there is no
    GPU or no numba-cuda (the ``cuda`` extra, which they are written for); ``auto``: ``cuda``
    when a GPU and the CUDA kernels are both present, else ``cpu``. Raises DeviceError for
    any other value.

    Example: ``resolve_backend("auto")  # 'cpu' on a machine without a GPU``.
    """
    if device == "cpu":
        return "cpu"
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: expected cpu, cuda or auto")
    from pipeline.kernels import cuda_available

    gpu = cuda_available()
    kernels = importlib.util.find_spec("numba_cuda") is not None
    if gpu and kernels:
        return "cuda"
    if device == "auto":
        return "cpu"
    if not gpu:
        raise DeviceError(
            "device 'cuda' needs a CUDA GPU and none is available here: use cpu or auto"
        )
    raise DeviceError(
        "device 'cuda' needs numba-cuda for rnnpipe's CUDA kernels: pip install 'rnnpipe[cuda]'"
    )


def load_model(path: str | Path, device: str = "cpu") -> Model:
    """The model at ``path`` on the backend ``device`` resolves to (see ``resolve_backend``).

    The backend is bound now, so a device that cannot run fails here rather than at the
    first batch. Raises ModelFormatError for a broken model, DeviceError for the device.

    Example: ``model = load_model("model/", "auto")``.
    """
    from pipeline.model import Model

    model = Model.load(path, backend=resolve_backend(device))
    model.kernels  # noqa: B018  (binds the backend: imports its kernel module)
    return model


def cuda_simulator() -> bool:
    """Whether numba-cuda runs kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_block_sizes(defaults: dict[str, int]) -> dict[str, int]:
    """The CUDA kernels' block sizes: ``defaults`` on a GPU; under the simulator each may be
    made smaller with ``RNNPIPE_CUDA_<NAME>`` so tiny test inputs span several blocks.

    They are not read on a GPU because compiled kernels are cached on disk and the cache
    does not record the values of such constants.

    Example: ``cuda_block_sizes({"THREADS": 128, "ROWS": 4})``.
    """
    if not cuda_simulator():
        return dict(defaults)
    return {
        name: max(1, int(os.environ.get(CUDA_BLOCK_ENV + name, default)))
        for name, default in defaults.items()
    }


def numpy_for_numba_cuda() -> None:
    """Restore ``np.row_stack`` where NumPy no longer has it, for numba-cuda's sake.

    numba-cuda (0.30.4 and before) registers a typing overload for np.row_stack when its
    CUDA target is first used, and NumPy 2.5 removed that alias of np.vstack: every kernel
    launch then fails with AttributeError (NVIDIA/numba-cuda#907, which upstream does not
    plan to fix). Restoring the alias, only where it is missing, lets the same install run.
    Called by ``pipeline.kernels.cuda`` when it is imported, i.e. when the CUDA backend is
    bound (``get_backend("cuda")``); a process on the CPU backend keeps NumPy as it is.
    """
    import numpy as np

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack  # noqa: NPY201


# -------------------------------------------------------------------------------------- ray


def ray_numba_cache_dir() -> str | None:
    """``$RNNPIPE_RAY_NUMBA_CACHE_DIR``: the folder under which each Ray actor gets a Numba
    cache of its own, or None (unset or empty: the shared cache next to the sources)."""
    return os.environ.get(RAY_NUMBA_CACHE_ENV) or None


def ray_verbose() -> bool:
    """Whether ``RNNPIPE_RAY_VERBOSE`` asks to keep Ray's INFO logging and progress bars."""
    return os.environ.get(RAY_VERBOSE_ENV, "") not in ("", "0")


# ------------------------------------------------------------------------------------- exit


def leave(code: object) -> None:
    """Exit at once with ``code`` after atexit handlers and a flush (the CLI's fast exit).

    When the command is done, the process leaves without the interpreter's teardown: atexit
    handlers run (Ray's shutdown, logging's flush) and stdout/stderr are flushed, then
    ``os._exit`` skips freeing every module, the model and Numba's compiled code one object
    at a time, which took about 0.3 s of a 1.5 s ``rnnpipe score`` on one row. Outputs are
    complete and renamed before the command returns, so nothing is lost.

    Returns (and lets Python exit as usual) when ``RNNPIPE_FAST_EXIT=0``, for a message code
    (``sys.exit("message")``: Python prints it), or while other non-daemon threads still run.
    """
    if os.environ.get(FAST_EXIT_ENV, "1") == "0":
        return
    if code is None:
        code = 0
    if isinstance(code, bool) or not isinstance(code, int):
        return
    main_thread = threading.main_thread()
    if any(t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return  # Python waits for them; so do we
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(code)
