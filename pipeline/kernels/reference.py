"""Pure NumPy recurrence kernels: the executable specification of the kernel contract.

Slow and obviously right: a Python loop over sequences and over steps, NumPy vector math
per step. The Numba (``cpu``) and CUDA (``cuda``) backends are tested against this module;
see ``pipeline/kernels/__init__.py`` for the contract every backend implements.

Everything is computed in the floating dtype of the inputs: float32 in normal use, float64
when tests check gradients by finite differences.

Example::

    from pipeline.kernels import reference as ref
    hs, cache = ref.layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih, b_hh)
    feat = ref.pool_forward(hs, offsets, "last")
    dhs = ref.pool_backward(dfeat, hs, offsets, "last")
    dx, dW_ih, dW_hh, db_ih, db_hh = ref.layer_backward(cache, dhs)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.kernels import gates
from pipeline.kernels.checks import (
    check_infer_args,
    check_input_weights,
    check_mode,
    check_offsets,
    check_recurrent,
    float_dtype,
    foldable_bias,
    hs_gradient,
    max_steps,
)
from pipeline.kernels.rows import check_rows, check_scale

__all__ = [
    "fold_table",
    "layer_backward",
    "layer_forward",
    "layer_infer",
    "pool_backward",
    "pool_forward",
]


# --------------------------------------------------------------------------- cell math


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function that never overflows: exp only ever sees -|a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _step(
    cell: str,
    xw: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    W_hh: np.ndarray,
    b_hh: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One recurrence step of ``cell``.

    ``xw`` (G*H,) is the input projection W_ih x + b_ih; ``h``, ``c`` (H,) the previous states
    (``c`` is only used by lstm). Returns ``(h', c', acts, ghn)``: ``acts`` (G*H,) are the gate
    activations (lstm i,f,g,o; gru r,z,n; rnn h'), ``ghn`` (H,) is W_hn h + b_hn (gru only,
    None otherwise), all of which backward needs.
    """
    H = h.shape[0]
    gh = W_hh @ h + b_hh  # (G*H,)
    if cell == "lstm":
        a = xw + gh
        i = _sigmoid(a[0:H])
        f = _sigmoid(a[H : 2 * H])
        g = np.tanh(a[2 * H : 3 * H])
        o = _sigmoid(a[3 * H : 4 * H])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return h_new, c_new, np.concatenate([i, f, g, o]), None
    if cell == "gru":
        r = _sigmoid(xw[0:H] + gh[0:H])
        z = _sigmoid(xw[H : 2 * H] + gh[H : 2 * H])
        ghn = gh[2 * H : 3 * H]
        n = np.tanh(xw[2 * H : 3 * H] + r * ghn)
        h_new = (1 - z) * n + z * h
        return h_new, c, np.concatenate([r, z, n]), ghn
    # rnn
    h_new = np.tanh(xw + gh)
    return h_new, c, h_new, None


def _step_backward(
    cell: str,
    dh: np.ndarray,
    dc: np.ndarray,
    acts: np.ndarray,
    ghn: np.ndarray | None,
    h_prev: np.ndarray,
    c_prev: np.ndarray,
    c: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward through one ``_step``.

    ``dh``, ``dc`` (H,) are dL/dh', dL/dc' (all sources). Returns ``(dxw, dgh, dh_direct,
    dc_prev)``: gradients w.r.t. the input projection ``xw`` and the recurrent pre-activation
    ``gh = W_hh h + b_hh`` (both (G*H,)), the part of dL/dh that does not pass through W_hh
    (gru's z*h term; zero otherwise), and dL/dc (lstm; zero otherwise).
    """
    H = dh.shape[0]
    zero = np.zeros_like(dh)
    if cell == "lstm":
        i, f, g, o = acts[0:H], acts[H : 2 * H], acts[2 * H : 3 * H], acts[3 * H : 4 * H]
        tc = np.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        da = np.concatenate(
            [
                dc * g * i * (1 - i),  # d a_i
                dc * c_prev * f * (1 - f),  # d a_f
                dc * i * (1 - g * g),  # d a_g
                dh * tc * o * (1 - o),  # d a_o
            ]
        )
        # a = xw + gh, so both receive the same gradient
        return da, da, zero, dc * f
    if cell == "gru":
        r, z, n = acts[0:H], acts[H : 2 * H], acts[2 * H : 3 * H]
        dn_pre = dh * (1 - z) * (1 - n * n)  # d(xw_n + r*ghn)
        dr_pre = dn_pre * ghn * r * (1 - r)
        dz_pre = dh * (h_prev - n) * z * (1 - z)
        dxw = np.concatenate([dr_pre, dz_pre, dn_pre])
        dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r])
        return dxw, dgh, dh * z, zero
    # rnn: acts is h' itself
    da = dh * (1 - acts * acts)
    return da, da, zero, zero


def _steps(start: int, end: int, reverse: bool) -> range:
    """Token indices of one sequence in processing order."""
    return range(end - 1, start - 1, -1) if reverse else range(start, end)


# --------------------------------------------------------------------------- layer


@dataclass(frozen=True)
class _Cache:
    """What ``layer_backward`` needs; every per-token array is in token order."""

    cell: str
    reverse: bool
    x: np.ndarray  # (nnz, E) each token's input
    offsets: np.ndarray  # (n+1,) int64
    W_ih: np.ndarray  # (G*H, E)
    W_hh: np.ndarray  # (G*H, H)
    h_prev: np.ndarray  # (nnz, H) state before consuming each token
    c_prev: np.ndarray  # (nnz, H) lstm cell state before each token (zeros otherwise)
    c: np.ndarray  # (nnz, H) lstm cell state after each token (zeros otherwise)
    acts: np.ndarray  # (nnz, G*H) gate activations
    ghn: np.ndarray  # (nnz, H) gru W_hn h + b_hn (zeros otherwise)
    rows: np.ndarray | None = None  # layer_forward's rows, to fold dx back onto them
    n_x: int = 0  # rows of the x that layer_forward was given
    scale: np.ndarray | None = None  # layer_forward's scale: x holds the scaled inputs
    x_in: np.ndarray | None = None  # (nnz, E) each token's input before its scale
    hs: np.ndarray | None = None  # (nnz, H) state after each token (d_max's maxima)


def layer_forward(
    cell: str,
    x: np.ndarray,
    offsets: np.ndarray,
    W_ih: np.ndarray,
    W_hh: np.ndarray,
    b_ih: np.ndarray,
    b_hh: np.ndarray,
    reverse: bool = False,
    training: bool = True,
    rows: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, _Cache | None]:
    """Run one recurrent layer in one direction over ragged sequences.

    Parameters: ``cell`` one of lstm, gru, rnn; ``x`` [nnz, E] inputs in token order, or
    with ``rows`` (int[nnz]) the distinct inputs, token k reading ``x[rows[k]]``;
    ``offsets`` int64[n+1] (sequence i owns rows offsets[i]:offsets[i+1]); ``W_ih`` [G*H, E],
    ``W_hh`` [G*H, H], ``b_ih`` and ``b_hh`` [G*H] in PyTorch's layout; ``reverse`` reads each
    sequence from its last token to its first; ``training`` keeps what backward needs;
    ``scale`` (float[nnz]) multiplies each token's input (``layer_backward`` then also
    returns the gradient with respect to it).

    Returns ``(hs, cache)``: ``hs`` [nnz, H], the state after each token (for ``reverse``, after
    consuming tokens end..tok), and the cache for ``layer_backward`` (None unless training).

    Raises ConfigError for an unknown cell, ValueError for inconsistent shapes or dtypes.

    Example::

        hs, cache = layer_forward("gru", x, np.array([0, 2, 5]), W_ih, W_hh, b_ih, b_hh)
    """
    x, W_ih, W_hh, b_ih, b_hh = (np.asarray(a) for a in (x, W_ih, W_hh, b_ih, b_hh))
    dtype = float_dtype(x, W_ih, W_hh, b_ih, b_hh)
    G, H = check_recurrent(cell, W_hh, b_hh)
    if x.ndim != 2:
        raise ValueError(f"x must be [nnz, E], got shape {x.shape}")
    n_x = x.shape[0]
    if rows is not None:
        rows = check_rows(rows, n_x)
        x = x[rows]  # the specification: every token's own input row
    nnz, E = x.shape
    check_input_weights(cell, W_ih, b_ih, G, H, E)
    offsets = check_offsets(offsets, nnz)
    x, W_ih, W_hh, b_ih, b_hh = (a.astype(dtype, copy=False) for a in (x, W_ih, W_hh, b_ih, b_hh))
    x_in = None
    if scale is not None:
        scale = check_scale(scale, nnz).astype(dtype)
        x_in, x = x, x * scale[:, None]

    # The input projection does not depend on the state: one product over all tokens.
    xw = x @ W_ih.T + b_ih  # (nnz, G*H)

    hs = np.zeros((nnz, H), dtype=dtype)
    h_prev = np.zeros((nnz, H), dtype=dtype)
    c_prev = np.zeros((nnz, H), dtype=dtype)
    cs = np.zeros((nnz, H), dtype=dtype)
    acts = np.zeros((nnz, G * H), dtype=dtype)
    ghns = np.zeros((nnz, H), dtype=dtype)
    for s in range(offsets.size - 1):
        h = np.zeros(H, dtype=dtype)
        c = np.zeros(H, dtype=dtype)
        for tok in _steps(offsets[s], offsets[s + 1], reverse):
            h_prev[tok], c_prev[tok] = h, c
            h, c, acts[tok], ghn = _step(cell, xw[tok], h, c, W_hh, b_hh)
            hs[tok], cs[tok] = h, c
            if ghn is not None:
                ghns[tok] = ghn
    if not training:
        return hs, None
    cache = _Cache(
        cell, bool(reverse), x, offsets, W_ih, W_hh, h_prev, c_prev, cs, acts, ghns, rows, n_x,
        scale, x_in, hs,
    )  # fmt: skip
    return hs, cache


def layer_backward(
    cache: _Cache,
    dhs: np.ndarray | None,
    d_final: np.ndarray | None = None,
    weights: bool = True,
    inputs: bool = True,
    d_max: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full backpropagation through time for one ``layer_forward`` call.

    Parameters: ``cache`` from ``layer_forward(..., training=True)``; ``dhs`` [nnz, H], dL/dhs
    (None: zero); ``d_final`` [n, H], dL/d(final state) of each sequence, which is the state
    ``pool_forward(..., "last")`` returns: added at the sequence's final step; ``d_max``
    [n, H], dL/d ``pool_forward(..., "max")``: added at the step holding each unit's
    maximum, as ``pool_backward(..., "max")`` sends it; ``weights``
    False allows a backend to skip the weights' gradients, ``inputs`` False the inputs'
    (the oracle computes them anyway).

    Returns ``(dx, dW_ih, dW_hh, db_ih, db_hh)`` with the shapes of x, W_ih, W_hh, b_ih, b_hh,
    in the dtype of the forward computation; when forward had a ``scale``, a sixth, its
    gradient ``dscale`` [nnz] (token k's: its input before the scale . dL/d(its input)).

    Raises ValueError when ``cache`` is None (forward ran with training=False) or ``dhs`` or
    ``d_final`` or ``d_max`` has the wrong shape.

    Example::

        hs, cache = layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih, b_hh)
        dx, dW_ih, dW_hh, db_ih, db_hh = layer_backward(cache, np.ones_like(hs))
    """
    if cache is None:
        raise ValueError("layer_backward needs the cache of layer_forward(..., training=True)")
    nnz, H = cache.h_prev.shape
    dtype = cache.x.dtype
    dhs = hs_gradient(dhs, d_final, cache.offsets, cache.reverse, (nnz, H), dtype, d_max, cache.hs)
    GH = cache.W_hh.shape[0]

    # Per-token gradients w.r.t. the input projection and the recurrent pre-activation;
    # the weight gradients are then one product each over all tokens.
    dxw = np.zeros((nnz, GH), dtype=dtype)
    dgh = np.zeros((nnz, GH), dtype=dtype)
    offsets = cache.offsets
    for s in range(offsets.size - 1):
        dh_next = np.zeros(H, dtype=dtype)  # dL/dh flowing back from the later step
        dc_next = np.zeros(H, dtype=dtype)
        # walk the steps in the opposite order to forward
        for tok in reversed(_steps(offsets[s], offsets[s + 1], cache.reverse)):
            dh = dhs[tok] + dh_next
            dxw[tok], dgh[tok], dh_direct, dc_next = _step_backward(
                cache.cell,
                dh,
                dc_next,
                cache.acts[tok],
                cache.ghn[tok],
                cache.h_prev[tok],
                cache.c_prev[tok],
                cache.c[tok],
            )
            dh_next = dh_direct + cache.W_hh.T @ dgh[tok]

    dx = dxw @ cache.W_ih  # (nnz, E), with respect to each token's (scaled) input
    dscale = None
    if cache.scale is not None:
        dscale = (dx * cache.x_in).sum(axis=1)
        dx = dx * cache.scale[:, None]  # with respect to the input before the scale
    if cache.rows is not None:
        folded = np.zeros((cache.n_x, dx.shape[1]), dtype=dx.dtype)  # (n_x, E), like x
        np.add.at(folded, cache.rows, dx)  # each row: the sum over the tokens that read it
        dx = folded
    dW_ih = dxw.T @ cache.x  # (G*H, E)
    dW_hh = dgh.T @ cache.h_prev  # (G*H, H)
    db_ih = dxw.sum(axis=0)
    db_hh = dgh.sum(axis=0)
    if dscale is not None:
        return dx, dW_ih, dW_hh, db_ih, db_hh, dscale
    return dx, dW_ih, dW_hh, db_ih, db_hh


# --------------------------------------------------------------------------- pooling


def _check_pool_args(
    hs: np.ndarray, offsets: np.ndarray, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    check_mode(mode)
    hs = np.asarray(hs)
    if hs.ndim != 2:
        raise ValueError(f"hs must be [nnz, H], got shape {hs.shape}")
    float_dtype(hs)
    return hs, check_offsets(offsets, hs.shape[0])


def pool_forward(
    hs: np.ndarray, offsets: np.ndarray, mode: str, reverse: bool = False
) -> np.ndarray:
    """One feature vector per sequence from its per-token states.

    Parameters: ``hs`` [nnz, H] from ``layer_forward``; ``offsets`` int64[n+1]; ``mode``:
    ``last`` (forward: state at the last token; reverse: state at the first token, which is
    the state after the whole sequence), ``max`` (elementwise over the valid steps) or ``mean``;
    ``reverse`` says which direction produced ``hs``.

    Returns [n, H] in the dtype of ``hs``; empty sequences give zeros.

    Raises ConfigError for an unknown mode, ValueError for inconsistent shapes.

    Example::

        feat = pool_forward(hs, np.array([0, 3, 3, 4]), "max")  # feat[1] is all zeros
    """
    hs, offsets = _check_pool_args(hs, offsets, mode)
    n = offsets.size - 1
    feat = np.zeros((n, hs.shape[1]), dtype=hs.dtype)
    for s in range(n):
        start, end = offsets[s], offsets[s + 1]
        if end == start:
            continue
        seq = hs[start:end]  # (L, H)
        if mode == "last":
            feat[s] = seq[0] if reverse else seq[-1]
        elif mode == "max":
            feat[s] = seq.max(axis=0)
        else:
            feat[s] = seq.sum(axis=0) / (end - start)
    return feat


def pool_backward(
    dfeat: np.ndarray,
    hs: np.ndarray,
    offsets: np.ndarray,
    mode: str,
    reverse: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of ``pool_forward`` w.r.t. ``hs``.

    Parameters: ``dfeat`` [n, H] = dL/dfeat; ``hs``, ``offsets``, ``mode``, ``reverse`` as
    given to ``pool_forward``. ``max`` sends each column's gradient to the first step holding
    the maximum, first meaning the lowest token index in either direction. ``out``: an array
    of ``hs``'s shape and dtype to add the gradient into (e.g. another pooling's gradient).

    Returns dhs [nnz, H] in the dtype of ``hs`` (``out`` itself when given); tokens of no
    pooled step get zeros (keep ``out``'s values).

    Raises ConfigError for an unknown mode, ValueError for inconsistent shapes.

    Example::

        dhs = pool_backward(np.ones((2, H)), hs, np.array([0, 3, 5]), "mean")
    """
    hs, offsets = _check_pool_args(hs, offsets, mode)
    n = offsets.size - 1
    dfeat = np.asarray(dfeat)
    if dfeat.shape != (n, hs.shape[1]):
        raise ValueError(f"dfeat must be [n, H]=[{n}, {hs.shape[1]}], got {dfeat.shape}")
    dfeat = dfeat.astype(hs.dtype, copy=False)
    if out is None:
        dhs = np.zeros_like(hs)
    elif not isinstance(out, np.ndarray) or out.shape != hs.shape or out.dtype != hs.dtype:
        raise ValueError(f"out must be a {hs.dtype} array of shape {hs.shape}")
    else:
        dhs = out
    first_max = max_steps(hs, offsets) if mode == "max" else None
    for s in range(n):
        start, end = offsets[s], offsets[s + 1]
        if end == start:
            continue
        if mode == "last":
            dhs[start if reverse else end - 1] += dfeat[s]
        elif mode == "max":
            dhs[first_max[s], np.arange(hs.shape[1])] += dfeat[s]
        else:
            dhs[start:end] += dfeat[s] / (end - start)
    return dhs


# --------------------------------------------------------------------------- inference


def fold_table(
    cell: str, emb: np.ndarray, W_ih: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
) -> np.ndarray:
    """The embedding folded into the input projection: one row per vocabulary id.

    Parameters: ``emb`` [V, E]; ``W_ih`` [G*H, E]; ``b_ih``, ``b_hh`` [G*H].

    Returns [V, G*H] = ``emb @ W_ih.T + b_ih`` plus all of ``b_hh`` for lstm and rnn, plus only
    its r and z parts for gru (``b_hn`` stays inside the reset product).

    Raises ConfigError for an unknown cell, ValueError for inconsistent shapes.

    Example::

        table = fold_table("lstm", emb, W_ih, b_ih, b_hh)  # table[ids] replaces emb[ids] @ W_ih.T
    """
    emb, W_ih, b_ih, b_hh = (np.asarray(a) for a in (emb, W_ih, b_ih, b_hh))
    dtype = float_dtype(emb, W_ih, b_ih, b_hh)
    G = gates(cell)
    if emb.ndim != 2:
        raise ValueError(f"emb must be [V, E], got shape {emb.shape}")
    if W_ih.ndim != 2 or W_ih.shape[0] % G != 0:
        raise ValueError(f"W_ih must be [G*H, E] with G={G} for {cell}, got {W_ih.shape}")
    H = W_ih.shape[0] // G
    check_input_weights(cell, W_ih, b_ih, G, H, emb.shape[1])
    if b_hh.shape != (G * H,):
        raise ValueError(f"b_hh must be [G*H]=[{G * H}] for {cell}, got {b_hh.shape}")
    emb, W_ih, b_ih, b_hh = (a.astype(dtype, copy=False) for a in (emb, W_ih, b_ih, b_hh))
    return emb @ W_ih.T + b_ih + foldable_bias(cell, b_hh)


def layer_infer(
    cell: str,
    table: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    W_hh: np.ndarray,
    b_hh: np.ndarray,
    reverse: bool,
    modes: tuple[str, ...],
) -> np.ndarray:
    """Inference from a folded table straight to pooled features.

    Parameters: ``table`` [V, G*H] from ``fold_table``; ``ids`` int[nnz] in [0, V);
    ``offsets`` int64[n+1]; ``W_hh`` [G*H, H]; ``b_hh`` [G*H] (the full bias: this function
    adds back only the part ``fold_table`` left out); ``reverse`` the direction; ``modes`` a
    tuple of pool modes, e.g. ``("last",)`` or ``("last", "max")``.

    Returns [n, len(modes)*H]: the features of each mode, concatenated in the order of
    ``modes``; equal to ``pool_forward(layer_forward(emb[ids], ...))`` up to rounding.

    Raises ConfigError for an unknown cell or mode, ValueError for inconsistent shapes or ids
    outside the table.

    Example::

        feats = layer_infer("gru", table, ids, offsets, W_hh, b_hh, False, ("last", "mean"))
    """
    table, W_hh, b_hh = (np.asarray(a) for a in (table, W_hh, b_hh))
    dtype = float_dtype(table, W_hh, b_hh)
    G, H = check_recurrent(cell, W_hh, b_hh)
    ids, offsets = check_infer_args(cell, table, ids, offsets, modes, G, H)
    table, W_hh, b_hh = (a.astype(dtype, copy=False) for a in (table, W_hh, b_hh))

    # The table already holds the folded bias; the step adds back only the rest (gru's b_hn).
    b_rest = b_hh - foldable_bias(cell, b_hh)
    hs = np.zeros((ids.size, H), dtype=dtype)
    for s in range(offsets.size - 1):
        h = np.zeros(H, dtype=dtype)
        c = np.zeros(H, dtype=dtype)
        for tok in _steps(offsets[s], offsets[s + 1], reverse):
            h, c, _, _ = _step(cell, table[ids[tok]], h, c, W_hh, b_rest)
            hs[tok] = h
    feats = [pool_forward(hs, offsets, mode, reverse) for mode in modes]
    return np.concatenate(feats, axis=1)
