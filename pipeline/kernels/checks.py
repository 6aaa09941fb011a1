"""Argument checks shared by the kernel backends: the boundary layer of every kernel call.

Each backend's public functions validate and coerce their arguments here once (shapes,
dtypes, offsets, pooling modes) before any kernel sees them, so the backends accept and
refuse the same inputs with the same messages. Shapes follow the contract in
``pipeline/kernels/__init__.py``. Every check raises ValueError naming the argument and
what was expected (ConfigError for an unknown cell or pooling mode).

Example::

    from pipeline.kernels import checks
    G, H = checks.check_recurrent("lstm", W_hh, b_hh)
    checks.check_input_weights("lstm", W_ih, b_ih, G, H, x.shape[1])
    offsets = checks.check_offsets(offsets, x.shape[0])
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.kernels import POOL_MODES, gates

__all__ = [
    "accumulator",
    "check_infer_args",
    "check_input_weights",
    "check_mode",
    "check_offsets",
    "check_per_sequence",
    "check_recurrent",
    "float_dtype",
    "foldable_bias",
    "hs_gradient",
    "max_steps",
]


def float_dtype(*arrays: np.ndarray) -> np.dtype:
    """The common floating dtype of ``arrays``; ValueError if any is not floating."""
    for a in arrays:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"expected floating arrays, got dtype {a.dtype}")
    return np.result_type(*arrays)


def check_offsets(offsets: np.ndarray, nnz: int) -> np.ndarray:
    """``offsets`` as int64[n+1], checked to start at 0, never decrease and end at ``nnz``."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"offsets must be 1-D with n+1 >= 1 entries, got shape {offsets.shape}")
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be an integer array (int64), got dtype {offsets.dtype}")
    offsets = offsets.astype(np.int64, copy=False)
    if offsets[0] != 0:
        raise ValueError(f"offsets must start at 0, got {offsets[0]}")
    if offsets[-1] != nnz:
        raise ValueError(
            f"offsets must end at nnz={nnz} (rows of the per-token array), got {offsets[-1]}"
        )
    if np.any(np.diff(offsets) < 0):
        bad = int(np.flatnonzero(np.diff(offsets) < 0)[0])
        raise ValueError(f"offsets must be non-decreasing: offsets[{bad + 1}] < offsets[{bad}]")
    return offsets


def check_recurrent(cell: str, W_hh: np.ndarray, b_hh: np.ndarray) -> tuple[int, int]:
    """(G, H) from ``W_hh [G*H, H]`` and ``b_hh [G*H]``, checked against ``cell``."""
    G = gates(cell)
    if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1]:
        raise ValueError(f"W_hh must be [G*H, H] with G={G} for {cell}, got shape {W_hh.shape}")
    H = W_hh.shape[1]
    if b_hh.shape != (G * H,):
        raise ValueError(f"b_hh must be [G*H]=[{G * H}] for {cell} with H={H}, got {b_hh.shape}")
    return G, H


def check_input_weights(
    cell: str, W_ih: np.ndarray, b_ih: np.ndarray, G: int, H: int, E: int
) -> None:
    """``W_ih [G*H, E]`` and ``b_ih [G*H]`` checked for ``cell`` with hidden size ``H``."""
    if W_ih.shape != (G * H, E):
        raise ValueError(f"W_ih must be [G*H, E]=[{G * H}, {E}] for {cell}, got {W_ih.shape}")
    if b_ih.shape != (G * H,):
        raise ValueError(f"b_ih must be [G*H]=[{G * H}] for {cell}, got {b_ih.shape}")


def check_mode(mode: str) -> None:
    """ConfigError unless ``mode`` is a pooling mode (last, max or mean)."""
    if mode not in POOL_MODES:
        raise ConfigError(f"unknown pool mode {mode!r}: expected one of {', '.join(POOL_MODES)}")


def check_infer_args(cell, table, ids, offsets, modes, G, H):
    """Validated ``(ids, offsets)`` for ``layer_infer``: ``table [V, G*H]``, ``ids`` 1-D
    integers inside the table, ``offsets`` over the ids, ``modes`` a non-empty tuple."""
    if table.ndim != 2 or table.shape[1] != G * H:
        raise ValueError(f"table must be [V, G*H]=[V, {G * H}] for {cell}, got {table.shape}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        bad = int(np.flatnonzero((ids < 0) | (ids >= table.shape[0]))[0])
        raise ValueError(f"ids[{bad}]={ids[bad]} is outside the table of {table.shape[0]} rows")
    offsets = check_offsets(offsets, ids.size)
    if isinstance(modes, str) or len(modes) == 0:
        raise ValueError(f"modes must be a non-empty tuple like ('last',), got {modes!r}")
    for mode in modes:
        check_mode(mode)
    return ids, offsets


def foldable_bias(cell: str, b_hh: np.ndarray) -> np.ndarray:
    """The part of ``b_hh`` that can be added to the input projection once per token.

    All of it for lstm and rnn; for gru only the r and z parts, since b_hn sits inside the
    reset product r*(W_hn h + b_hn) and so must stay in the recurrent step.
    """
    folded = b_hh.copy()
    if cell == "gru":
        H = b_hh.shape[0] // 3
        folded[2 * H :] = 0
    return folded


def accumulator(out, shape: tuple[int, ...]):
    """``out`` checked as an array a backend adds into (``pool_backward(..., out=)``): a
    C-contiguous float32 NumPy array of ``shape``; ValueError otherwise."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 NumPy array")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    return out


def max_steps(hs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int64[n, H]: the token holding each sequence's maximum of each unit of ``hs``
    [nnz, H], the first (lowest index) where several do; -1 for empty sequences."""
    best = np.full((offsets.size - 1, hs.shape[1]), -1, np.int64)
    for s in range(offsets.size - 1):
        start, end = offsets[s], offsets[s + 1]
        if end > start:
            best[s] = start + hs[start:end].argmax(axis=0)  # argmax takes the first
    return best


def hs_gradient(
    dhs, d_final, offsets, reverse: bool, shape: tuple[int, int], dtype, d_max=None, hs=None
):
    """``layer_backward``'s gradient arguments checked and merged into one dense dL/dhs of
    ``shape`` [nnz, H] (a new array when ``d_final`` or ``d_max`` is given): ``d_final``
    [n, H] is added at each non-empty sequence's final step, ``d_max`` [n, H] at the step
    holding each unit's maximum of ``hs`` (``max_steps``). ValueError on a wrong shape."""
    if dhs is None:
        dhs = np.zeros(shape, dtype)
    else:
        dhs = np.asarray(dhs)
        if dhs.shape != tuple(shape):
            raise ValueError(f"dhs must be [nnz, H]={list(shape)} like hs, got {dhs.shape}")
        dhs = dhs.astype(dtype, copy=d_final is not None or d_max is not None)
    n = offsets.size - 1
    if d_final is not None:
        d_final = check_per_sequence(d_final, "d_final", n, shape[1])
        ends = offsets[:-1] if reverse else offsets[1:] - 1
        ran = offsets[1:] > offsets[:-1]
        dhs[ends[ran]] += d_final[ran].astype(dtype, copy=False)
    if d_max is not None:
        d_max = check_per_sequence(d_max, "d_max", n, shape[1])
        best = max_steps(np.asarray(hs), offsets)
        seq, unit = np.nonzero(best >= 0)
        dhs[best[seq, unit], unit] += d_max[seq, unit].astype(dtype, copy=False)
    return dhs


def check_per_sequence(a, name: str, n: int, H: int) -> np.ndarray:
    """``a`` as an array of shape [n, H] (one row per sequence); ValueError otherwise."""
    a = np.asarray(a)
    if a.shape != (n, H):
        raise ValueError(f"{name} must be [n, H]=[{n}, {H}], got {a.shape}")
    return a
