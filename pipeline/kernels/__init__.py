"""Recurrence kernels: one contract, three backends (``reference``, ``cpu``, ``cuda``).

Cells and parameter layout (PyTorch's, so weights interchange):

* ``lstm``: G=4 gates in order i, f, g, o.  c' = f*c + i*g,  h' = o*tanh(c')
* ``gru``:  G=3 gates in order r, z, n.     n = tanh(x_n + b_in + r*(W_hn h + b_hn)),
  h' = (1-z)*n + z*h  (the reset gate applies after the recurrent product)
* ``rnn``:  G=1, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)

One layer, one direction: ``W_ih`` float32[G*H, E], ``W_hh`` float32[G*H, H],
``b_ih`` float32[G*H], ``b_hh`` float32[G*H]. Initial states are zero.

Sequences are ragged, in token order: sequence ``i`` owns rows ``offsets[i]:offsets[i+1]``
of every per-token array (``offsets`` int64[n+1], starting at 0). A sequence of length 0
keeps h0 = 0. The reverse direction reads each sequence from its own last token to its
first; ``hs[tok]`` is then the reverse state after consuming tokens end..tok.

Every backend module exposes the same functions:

``layer_forward(cell, x, offsets, W_ih, W_hh, b_ih, b_hh, reverse=False, training=True,
rows=None, scale=None)``
    -> ``(hs, cache)``; ``x`` float32[nnz, E]; ``hs`` float32[nnz, H] (state after each token,
    token order); ``cache`` is opaque, for ``layer_backward`` (None when not training).
    With ``rows`` (int[nnz]), token ``k``'s input is ``x[rows[k]]`` and ``x`` holds only the
    distinct inputs, e.g. the embedding rows of a batch's distinct ids: the input
    projection is then done once per distinct row instead of once per token.
    With ``scale`` (float[nnz]), token ``k``'s input is ``scale[k] * x[rows[k]]`` (or
    ``scale[k] * x[k]``): explanations run a review's interpolated copies this way, one
    projection per distinct row whatever the number of copies.
``layer_backward(cache, dhs, d_final=None, weights=True, inputs=True, d_max=None)``
    -> ``(dx, dW_ih, dW_hh, db_ih, db_hh)``: gradients given ``dhs`` = dL/dhs float32[nnz, H]
    (None: zero) and ``d_final`` = dL/d(final state) float32[n, H], the gradient of what
    ``pool_forward(hs, offsets, "last", reverse)`` returns, added at each sequence's final
    step (ignored for empty sequences), and ``d_max`` float32[n, H], the gradient of
    ``pool_forward(hs, offsets, "max", reverse)``, added at the step holding each unit's
    maximum (the first one of ties, as ``pool_backward`` picks it). Each gives the same
    gradients as adding it into a dense ``dhs`` (``pool_backward(..., "last")`` or
    ``"max"``) without building one.
    ``dx`` has ``x``'s shape: with ``rows``, row ``u`` sums the gradients of the tokens
    that read it (``pipeline.kernels.rows``). ``weights`` False: only the inputs' gradient
    is wanted, and a backend may return None for ``dW_ih`` and ``dW_hh`` (the cpu one does);
    ``inputs`` False: ``dx`` is not wanted either, and may be None.
    When forward had a ``scale``, a sixth element ``dscale`` float32[nnz], the gradient
    with respect to each token's scale (its unscaled input . dL/d(its input)): summed over
    a path's copies, the tokens' integrated gradients; ``dx`` is then with respect to the
    unscaled ``x``.
``pool_forward(hs, offsets, mode, reverse=False)`` -> float32[n, H]
    ``mode``: ``last`` (forward: state at the sequence's last token; reverse: state at its
    first token, i.e. after the whole sequence), ``max`` or ``mean`` over its valid steps.
    Empty sequences give zeros.
``pool_backward(dfeat, hs, offsets, mode, reverse=False, out=None)`` -> dhs float32[nnz, H]
    (``max`` sends the gradient to the first step holding the maximum). With ``out`` (an
    array like ``hs``, e.g. the gradient of another pooling of the same states) the
    gradient is added into ``out``, which is returned: no second array, no extra sum.
``fold_table(cell, emb, W_ih, b_ih, b_hh)`` -> float32[V, G*H]
    ``emb @ W_ih.T + b_ih`` plus the part of ``b_hh`` that can be folded (all of it for lstm
    and rnn; the r and z parts for gru, whose ``b_hn`` sits inside the reset product).
``layer_infer(cell, table, ids, offsets, W_hh, b_hh, reverse, modes)`` -> float32[n, len(modes)*H]
    Inference from a folded table: each step is one table row plus the recurrent product.
    Features are concatenated in the order of ``modes`` (each one of last, max, mean).

Use ``get_backend(name)`` to obtain a backend module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import ConfigError, DeviceError

CELLS = {"lstm": 4, "gru": 3, "rnn": 1}
POOL_MODES = ("last", "max", "mean")
BACKENDS = ("reference", "cpu", "cuda")


def gates(cell: str) -> int:
    """Number of gate blocks G for ``cell`` (4 lstm, 3 gru, 1 rnn)."""
    try:
        return CELLS[cell]
    except KeyError:
        raise ConfigError(f"unknown cell {cell!r}: expected one of lstm, gru, rnn") from None


def get_backend(name: str) -> ModuleType:
    """The kernel module for ``name``: ``reference`` (NumPy), ``cpu`` (Numba) or ``cuda``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "cuda":
        from pipeline.kernels import cuda_available

        if not cuda_available():
            raise DeviceError("CUDA was requested but no CUDA GPU is available: use --device cpu")
    return importlib.import_module(f"pipeline.kernels.{name}")


def cuda_available() -> bool:
    """True when numba-cuda is installed and sees a GPU (or the simulator is on)."""
    try:
        from numba import cuda
    except Exception:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False
