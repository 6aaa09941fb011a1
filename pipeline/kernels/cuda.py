"""CUDA backend (numba-cuda): the recurrence kernels of ``pipeline.kernels`` on an NVIDIA GPU.

Same functions, signatures and semantics as ``reference`` and ``cpu`` (see the contract in
``pipeline/kernels/__init__.py``). Inputs and outputs are host NumPy arrays; each call copies
its inputs to the GPU and its results back. Float inputs may also be numba device arrays
(``cuda.to_device(table)``), which are used in place: keeping a model's folded table and
``W_hh`` on the device saves their copy on every scoring batch.

How it is fast:

* The input projection ``x @ W_ih.T + b`` of every token is one large tiled product
  (``_mm_kernel``) before the recurrence; at inference the embedding is folded in, so each
  step reads one row of the ``[V, G*H]`` table by token id.
* The recurrence is one persistent kernel launch per layer call, not one per step. Sequences
  are sorted by length (longest first) and each thread block owns ``ROWS`` of them: it loops
  over the time steps itself, keeping its rows' states in shared memory and synchronising
  only its own threads between steps, so no sequence waits for another block and there is no
  per-step launch from Python. In the forward pass each thread owns a hidden unit for all
  ``ROWS`` rows of its block: every ``W_hh`` word it loads feeds ``ROWS`` rows from
  registers (1.43x faster lstm scoring on an H200 than one thread per row and unit), with
  all ``G`` gates of the unit fused with their activation; ``W_hh`` is read transposed so
  that the threads of adjacent units read adjacent words. Backward keeps one thread per
  (row, unit). Padding never exists:
  a block runs as many steps as its longest row, and sorted rows end at about the same time.
* Backward is the same loop in reverse, one launch: the per-token gate gradients are stored,
  and the weight gradients are large products at the end (split over the token axis, the
  parts summed in a fixed order). Every output has one writer and a fixed summation order:
  no atomics, so results are bit-identical from run to run.

Known limits of this first version: ``W_hh`` is read from global memory (L1/L2) at every
step rather than held in shared memory or registers; the matrix product computes one output
per thread (no register blocking, no tensor cores); every call copies its arrays between host
and device; an lstm's hidden size is at most 1536 (the shared state must fit 48 KiB).

Block sizes (``THREADS``, ``ROWS``, ``TILE``, and ``SPLIT_K`` for the parts of a product
split over k) are fixed on a GPU; under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) they
can be made small with ``RNNPIPE_CUDA_THREADS``, ``RNNPIPE_CUDA_ROWS``, ``RNNPIPE_CUDA_TILE``
and ``RNNPIPE_CUDA_SPLIT_K`` (``pipeline.runtime.cuda_block_sizes``) so tiny test inputs span
several blocks.
They are not read on a GPU because compiled kernels are cached on disk and the cache does
not record the values of such constants.

Example::

    from pipeline.kernels import get_backend
    be = get_backend("cuda")            # DeviceError without a GPU
    hs, cache = be.layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih, b_hh)
    dx, dW_ih, dW_hh, db_ih, db_hh = be.layer_backward(cache, dhs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline import runtime
from pipeline.kernels import gates
from pipeline.kernels.checks import (
    accumulator,
    check_infer_args,
    check_input_weights,
    check_mode,
    check_offsets,
    check_recurrent,
    foldable_bias,
    hs_gradient,
)
from pipeline.kernels.rows import check_rows, check_scale, sum_by_row

# This module is imported when the CUDA backend is bound (get_backend("cuda")): only then is
# NumPy given back the np.row_stack that numba-cuda needs, before its CUDA target is used.
runtime.numpy_for_numba_cuda()

from numba import cuda, float32  # noqa: E402

__all__ = [
    "fold_table",
    "layer_backward",
    "layer_forward",
    "layer_infer",
    "pool_backward",
    "pool_forward",
]

F32 = np.float32
SIMULATOR = runtime.cuda_simulator()
# fixed on a GPU; smaller under the simulator with RNNPIPE_CUDA_<NAME> (runtime.cuda_block_sizes)
_BLOCKS = runtime.cuda_block_sizes({"THREADS": 128, "ROWS": 4, "TILE": 16, "SPLIT_K": 512})
THREADS = _BLOCKS["THREADS"]  # threads per block of 1-D kernels, and
# threads along the hidden units of a recurrence block
ROWS = _BLOCKS["ROWS"]  # sequences per recurrence block
TILE = _BLOCKS["TILE"]  # edge of a matrix-product tile
SPLIT_K = _BLOCKS["SPLIT_K"]  # k per part when a product splits over k
SHARED_BYTES = 48 * 1024  # dynamic shared memory a block may use without opting in

_ZERO = F32(0.0)
_ONE = F32(1.0)
_CELL_ID = {"lstm": 0, "gru": 1, "rnn": 2}
_MODE_ID = {"last": 0, "max": 1, "mean": 2}


# --------------------------------------------------------------------------- device math


@cuda.jit(device=True, cache=True)
def _sigmoid(a):
    # exp(-a) overflows to inf for very negative a, and 1 / (1 + inf) is the right 0.
    return _ONE / (_ONE + math.exp(-a))


# --------------------------------------------------------------------------- kernels


@cuda.jit(cache=True)
def _mm_kernel(A, B, bias, trans_a, trans_b, kchunk, C):
    # C (S, M, N): part z of op(A) @ op(B), summing k in [z*kchunk, (z+1)*kchunk);
    # op(A) is A (M, K) or A.T for A (K, M), op(B) is B (K, N) or B.T for B (N, K).
    # bias (N,) or empty: added once, to part 0.
    # Shared tiles [m, k] of op(A) and [k, n] of op(B), rows padded to TILE + 1 words so
    # the transposed writes do not hit one bank. (Dynamic shared memory: the simulator's
    # static shared arrays are not thread-safe to allocate.)
    sh = cuda.shared.array(0, float32)
    P = TILE + 1
    sb0 = TILE * P
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n0 = cuda.blockIdx.x * TILE
    m0 = cuda.blockIdx.y * TILE
    z = cuda.blockIdx.z
    M = C.shape[1]
    N = C.shape[2]
    K = A.shape[0] if trans_a else A.shape[1]
    k_begin = z * kchunk
    k_end = min(K, k_begin + kchunk)
    acc = _ZERO
    for k0 in range(k_begin, k_end, TILE):
        # Each load walks the stored array's last axis with threadIdx.x, so it coalesces.
        if trans_a:
            k = k0 + ty
            m = m0 + tx
            sh[tx * P + ty] = A[k, m] if (k < k_end and m < M) else _ZERO
        else:
            m = m0 + ty
            k = k0 + tx
            sh[ty * P + tx] = A[m, k] if (k < k_end and m < M) else _ZERO
        if trans_b:
            n = n0 + ty
            k = k0 + tx
            sh[sb0 + tx * P + ty] = B[n, k] if (k < k_end and n < N) else _ZERO
        else:
            k = k0 + ty
            n = n0 + tx
            sh[sb0 + ty * P + tx] = B[k, n] if (k < k_end and n < N) else _ZERO
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sh[ty * P + kk] * sh[sb0 + kk * P + tx]
        cuda.syncthreads()
    m = m0 + ty
    n = n0 + tx
    if m < M and n < N:
        if z == 0 and bias.shape[0] > 0:
            acc += bias[n]
        C[z, m, n] = acc


@cuda.jit(cache=True)
def _sum_parts_kernel(parts, out):
    # out (M, N) = parts[0] + parts[1] + ... in this order, so the sum is reproducible
    i = cuda.grid(1)
    N = out.shape[1]
    if i < out.shape[0] * N:
        m = i // N
        n = i - m * N
        s = parts[0, m, n]
        for z in range(1, parts.shape[0]):
            s += parts[z, m, n]
        out[m, n] = s


@cuda.jit(cache=True)
def _forward_kernel(cell, reverse, xsrc, rowmap, W_T, b_hn, seq, state, hs, acts, aux, modes, out):
    # One block runs ROWS sequences (slots) through all their steps; each thread owns hidden
    # units (j = threadIdx.x, + blockDim.x, ...) for all ROWS rows, so every W_hh word it
    # loads serves ROWS rows from registers.
    # xsrc (rows, G*H): input projections with the folded bias (training) or the folded table
    # rowmap (nnz,): the xsrc row of each token (its id), or empty: the row is the token
    # W_T (H, G*H): W_hh transposed; b_hn (H,): gru's b_hn (zeros for other cells)
    # seq (3, n) int64: start, length and original index of each slot, longest first
    # state (3, n, H): lstm cell state, running max, running sum of each slot
    # hs (nnz, H), acts (nnz, G*H), aux (nnz, H): saved for backward (empty at inference);
    #   aux is lstm's c or gru's W_hn h + b_hn
    # modes (m,), out (n, m*H): pooled features at inference (empty when training)
    H = W_T.shape[0]
    G = W_T.shape[1] // H
    n = seq.shape[1]
    TJ = cuda.blockDim.x
    tx = cuda.threadIdx.x
    r0 = cuda.blockIdx.x * ROWS
    T = seq[1, r0]  # slots are sorted, so the first row of the block is its longest
    store = hs.shape[0] > 0
    keep = acts.shape[0] > 0
    infer = out.shape[0] > 0
    sh = cuda.shared.array(0, float32)  # (2, ROWS, H): each row's state before/after a step
    acc = cuda.local.array((4, ROWS), float32)  # unrolled: lives in registers
    for m in range(tx, ROWS * H, TJ):
        sh[m] = _ZERO
    cuda.syncthreads()
    for t in range(T):
        cur = (t % 2) * ROWS * H
        nxt = ROWS * H - cur
        for j in range(tx, H, TJ):
            for q in range(ROWS):
                acc[0, q] = _ZERO
                acc[1, q] = _ZERO
                acc[2, q] = _ZERO
                acc[3, q] = _ZERO
            for k in range(H):
                w0 = W_T[k, j]
                w1 = W_T[k, H + j] if G > 1 else _ZERO
                w2 = W_T[k, 2 * H + j] if G > 1 else _ZERO
                w3 = W_T[k, 3 * H + j] if G > 3 else _ZERO
                for q in range(ROWS):
                    hk = sh[cur + q * H + k]  # one address per warp: a broadcast
                    acc[0, q] += hk * w0
                    acc[1, q] += hk * w1
                    acc[2, q] += hk * w2
                    acc[3, q] += hk * w3
            for q in range(ROWS):
                r = r0 + q
                L = seq[1, r] if r < n else 0
                if t < L:  # no continue: the loop over ROWS unrolls, acc stays in registers
                    start = seq[0, r]
                    tok = start + L - 1 - t if reverse else start + t
                    row = rowmap[tok] if rowmap.shape[0] > 0 else tok
                    if cell == 0:
                        ig = _sigmoid(xsrc[row, j] + acc[0, q])
                        fg = _sigmoid(xsrc[row, H + j] + acc[1, q])
                        gg = math.tanh(xsrc[row, 2 * H + j] + acc[2, q])
                        og = _sigmoid(xsrc[row, 3 * H + j] + acc[3, q])
                        c = fg * state[0, r, j] + ig * gg
                        state[0, r, j] = c
                        h = og * math.tanh(c)
                        if keep:
                            acts[tok, j] = ig
                            acts[tok, H + j] = fg
                            acts[tok, 2 * H + j] = gg
                            acts[tok, 3 * H + j] = og
                            aux[tok, j] = c
                    elif cell == 1:
                        rg = _sigmoid(xsrc[row, j] + acc[0, q])
                        zg = _sigmoid(xsrc[row, H + j] + acc[1, q])
                        hn = acc[2, q] + b_hn[j]
                        ng = math.tanh(xsrc[row, 2 * H + j] + rg * hn)
                        h = (_ONE - zg) * ng + zg * sh[cur + q * H + j]
                        if keep:
                            acts[tok, j] = rg
                            acts[tok, H + j] = zg
                            acts[tok, 2 * H + j] = ng
                            aux[tok, j] = hn
                    else:
                        h = math.tanh(xsrc[row, j] + acc[0, q])
                    sh[nxt + q * H + j] = h
                    if store:
                        hs[tok, j] = h
                    if infer:
                        if t == 0:
                            state[1, r, j] = h
                            state[2, r, j] = h
                        else:
                            state[1, r, j] = max(state[1, r, j], h)
                            state[2, r, j] += h
                        if t == L - 1:
                            i = seq[2, r]
                            for mi in range(modes.shape[0]):
                                mode = modes[mi]
                                if mode == 0:
                                    v = h
                                elif mode == 1:
                                    v = state[1, r, j]
                                else:
                                    v = state[2, r, j] / np.float32(L)
                                out[i, mi * H + j] = v
        cuda.syncthreads()
    if infer:
        for q in range(ROWS):
            r = r0 + q
            if r < n and seq[1, r] == 0:
                i = seq[2, r]
                for mi in range(modes.shape[0]):
                    for j in range(tx, H, TJ):
                        out[i, mi * H + j] = _ZERO


@cuda.jit(cache=True)
def _backward_kernel(cell, reverse, W_hh, seq, dhs, hs, acts, aux, carry, dGx, dGh):
    # The forward loop in reverse, one block per blockDim.y slots, as _forward_kernel.
    # carry (2, n, H): lstm's dL/dc and gru's z*dL/dh flowing back from the later step
    # dGx (nnz, G*H): dL/d(input projection) per token; dGh (nnz, G*H): dL/d(W_hh h + b_hh)
    #   per token (the same array as dGx for lstm and rnn, where the two are equal)
    GH = W_hh.shape[0]
    H = W_hh.shape[1]
    n = seq.shape[1]
    TJ = cuda.blockDim.x
    R = cuda.blockDim.y
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    r0 = cuda.blockIdx.x * R
    r = r0 + ty
    L = seq[1, r] if r < n else 0
    start = seq[0, r] if r < n else 0
    T = seq[1, r0]
    sh = cuda.shared.array(0, float32)  # (2, R, G*H): dGh of the later step and this one
    for m in range(tx, GH, TJ):
        sh[ty * GH + m] = _ZERO
        sh[R * GH + ty * GH + m] = _ZERO
    cuda.syncthreads()
    for it in range(T):
        t = T - 1 - it
        cur = (it % 2) * R * GH
        nxt = R * GH - cur
        if t < L:
            tok = start + L - 1 - t if reverse else start + t
            prev = tok + 1 if reverse else tok - 1  # the token consumed before tok (t > 0)
            for j in range(tx, H, TJ):
                # dL/dh at this step: from the loss, from gru's z*h path and through W_hh
                d = dhs[tok, j] + carry[1, r, j]
                for m in range(GH):
                    d += sh[cur + ty * GH + m] * W_hh[m, j]
                if cell == 0:
                    ig = acts[tok, j]
                    fg = acts[tok, H + j]
                    gg = acts[tok, 2 * H + j]
                    og = acts[tok, 3 * H + j]
                    cp = aux[prev, j] if t > 0 else _ZERO
                    tc = math.tanh(aux[tok, j])
                    dc = carry[0, r, j] + d * og * (_ONE - tc * tc)
                    di = dc * gg * ig * (_ONE - ig)
                    df = dc * cp * fg * (_ONE - fg)
                    dg = dc * ig * (_ONE - gg * gg)
                    do = d * tc * og * (_ONE - og)
                    carry[0, r, j] = dc * fg
                    dGx[tok, j] = di
                    dGx[tok, H + j] = df
                    dGx[tok, 2 * H + j] = dg
                    dGx[tok, 3 * H + j] = do
                    sh[nxt + ty * GH + j] = di
                    sh[nxt + ty * GH + H + j] = df
                    sh[nxt + ty * GH + 2 * H + j] = dg
                    sh[nxt + ty * GH + 3 * H + j] = do
                elif cell == 1:
                    rg = acts[tok, j]
                    zg = acts[tok, H + j]
                    ng = acts[tok, 2 * H + j]
                    hn = aux[tok, j]
                    hp = hs[prev, j] if t > 0 else _ZERO
                    dn = d * (_ONE - zg) * (_ONE - ng * ng)
                    dz = d * (hp - ng) * zg * (_ONE - zg)
                    dr = dn * hn * rg * (_ONE - rg)
                    carry[1, r, j] = d * zg
                    dGx[tok, j] = dr
                    dGx[tok, H + j] = dz
                    dGx[tok, 2 * H + j] = dn
                    dGh[tok, j] = dr
                    dGh[tok, H + j] = dz
                    dGh[tok, 2 * H + j] = dn * rg
                    sh[nxt + ty * GH + j] = dr
                    sh[nxt + ty * GH + H + j] = dz
                    sh[nxt + ty * GH + 2 * H + j] = dn * rg
                else:
                    hv = hs[tok, j]
                    da = d * (_ONE - hv * hv)
                    dGx[tok, j] = da
                    sh[nxt + ty * GH + j] = da
        cuda.syncthreads()


@cuda.jit(cache=True)
def _fill_zero_kernel(a):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = _ZERO


@cuda.jit(cache=True)
def _transpose_kernel(A, out):
    # out (N, M) = A (M, N).T
    i = cuda.grid(1)
    N = A.shape[1]
    if i < A.shape[0] * N:
        m = i // N
        out[i - m * N, m] = A[m, i - m * N]


@cuda.jit(cache=True)
def _prev_states_kernel(hs, seq, reverse, out):
    # out (nnz, H): the state before each token (zeros at each sequence's first step)
    i = cuda.grid(1)
    H = hs.shape[1]
    n = seq.shape[1]
    if i < n * H:
        r = i // H
        j = i - r * H
        start = seq[0, r]
        L = seq[1, r]
        for k in range(L):
            tok = start + k
            first = (k == L - 1) if reverse else (k == 0)
            if first:
                out[tok, j] = _ZERO
            else:
                out[tok, j] = hs[tok + 1, j] if reverse else hs[tok - 1, j]


@cuda.jit(cache=True)
def _pool_fwd_kernel(hs, offsets, mode, reverse, out):
    # out (n, H): one thread per (sequence, unit)
    i = cuda.grid(1)
    H = hs.shape[1]
    n = offsets.shape[0] - 1
    if i < n * H:
        s = i // H
        j = i - s * H
        a = offsets[s]
        e = offsets[s + 1]
        v = _ZERO
        if e > a:
            if mode == 0:
                v = hs[a, j] if reverse else hs[e - 1, j]
            elif mode == 1:
                v = hs[a, j]
                for tok in range(a + 1, e):
                    v = max(v, hs[tok, j])
            else:
                for tok in range(a, e):
                    v += hs[tok, j]
                v = v / np.float32(e - a)
        out[s, j] = v


@cuda.jit(cache=True)
def _pool_bwd_kernel(dfeat, hs, offsets, mode, reverse, dhs):
    # adds into dhs (nnz, H): one thread per (sequence, unit) owns that column's tokens
    i = cuda.grid(1)
    H = hs.shape[1]
    n = offsets.shape[0] - 1
    if i < n * H:
        s = i // H
        j = i - s * H
        a = offsets[s]
        e = offsets[s + 1]
        if e > a:
            if mode == 0:
                tok = a if reverse else e - 1
                dhs[tok, j] += dfeat[s, j]
            elif mode == 1:
                best = a
                for tok in range(a + 1, e):
                    if hs[tok, j] > hs[best, j]:  # strict: the first maximum keeps it
                        best = tok
                dhs[best, j] += dfeat[s, j]
            else:
                g = dfeat[s, j] / np.float32(e - a)
                for tok in range(a, e):
                    dhs[tok, j] += g


# --------------------------------------------------------------------------- host helpers


def _blocks(count: int, per_block: int) -> int:
    return (count + per_block - 1) // per_block


def _dev(a, name: str):
    """``a`` on the device as float32: numba device arrays pass through, host arrays are copied."""
    if hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__"):
        d = a if hasattr(a, "copy_to_host") else cuda.as_cuda_array(a)
        if d.dtype != F32:
            raise ValueError(f"{name} is a device array of {d.dtype}, expected float32")
        return d
    return cuda.to_device(np.ascontiguousarray(a, dtype=F32))


def _host_float(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a floating array, got dtype {a.dtype}")
    return a


def _float_arg(a, name: str):
    """Device arrays as they are (for their shape), anything else as a checked host array."""
    if hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__"):
        return a
    return _host_float(a, name)


def _zeros(shape: tuple[int, ...]):
    """A float32 device array of zeros, filled on the device (no host buffer, no copy)."""
    out = cuda.device_array(shape, F32)
    if out.size:
        _fill_zero_kernel[_blocks(out.size, THREADS), THREADS](out.reshape(out.size))
    return out


def _matmul(
    A, B, trans_a: bool = False, trans_b: bool = False, bias=None, splits: int | None = None
):
    """``op(A) @ op(B) (+ bias)`` on device arrays, float32; the result stays on the device.

    ``splits`` parts along k (default: enough to fill the GPU when the output is small),
    each part its own block column, summed afterwards in a fixed order.
    """
    M = A.shape[1] if trans_a else A.shape[0]
    K = A.shape[0] if trans_a else A.shape[1]
    N = B.shape[0] if trans_b else B.shape[1]
    if (B.shape[1] if trans_b else B.shape[0]) != K:
        raise ValueError(f"matmul: inner sizes differ ({K} and {B.shape})")
    gm, gn = _blocks(M, TILE), _blocks(N, TILE)
    if splits is None:
        # a small output (a weight gradient) over many tokens would use a handful of blocks
        splits = max(1, min(_blocks(K, SPLIT_K), 1024 // max(1, gm * gn)))
    splits = max(1, min(splits, max(1, K)))
    kchunk = _blocks(max(K, 1), splits)
    kchunk = _blocks(kchunk, TILE) * TILE  # whole tiles per part
    splits = _blocks(max(K, 1), kchunk)
    parts = cuda.device_array((splits, M, N), F32)
    bias = cuda.device_array(0, F32) if bias is None else bias
    if M and N:
        _mm_kernel[(gn, gm, splits), (TILE, TILE), 0, 2 * TILE * (TILE + 1) * 4](
            A, B, bias, int(trans_a), int(trans_b), kchunk, parts
        )
    if splits == 1:
        return parts[0]
    out = cuda.device_array((M, N), F32)
    if M and N:
        _sum_parts_kernel[_blocks(M * N, THREADS), THREADS](parts, out)
    return out


def _colsum(A):
    """Column sums of a device array (K, N) as a device (N,), in a fixed order."""
    ones = cuda.to_device(np.ones((A.shape[0], 1), F32))
    return _matmul(ones, A, trans_a=True)[0]


def _plan(offsets: np.ndarray):
    """Slots sorted by length, longest first: device int64[3, n] of (start, length, index)."""
    lens = np.diff(offsets)
    order = np.argsort(-lens, kind="stable")
    seq = np.stack([offsets[:-1][order], lens[order], order]).astype(np.int64)
    return cuda.to_device(np.ascontiguousarray(seq))


def _recurrent_block(cell: str, H: int, n: int) -> tuple[int, int]:
    """(threads along units, rows) of a recurrence block; both kernels' shared state fits."""
    GH = gates(cell) * H
    rows = min(ROWS, SHARED_BYTES // (2 * GH * 4))
    if rows < 1:
        raise ValueError(
            f"{cell} with hidden size {H} is too large for the CUDA backend: its "
            f"{2 * GH * 4} bytes of shared state per sequence exceed {SHARED_BYTES}"
        )
    return min(H, THREADS), max(1, min(rows, n))


def _b_hn(cell: str, b_hh: np.ndarray, H: int) -> np.ndarray:
    # gru's b_hn sits inside the reset product, so the step adds it; other cells fold it all
    return np.ascontiguousarray(b_hh[2 * H :], F32) if cell == "gru" else np.zeros(H, F32)


def _recur(cell, reverse, xsrc, rowmap, W_hh_d, b_hh, seq_d, nnz, keep, modes):
    """Run ``_forward_kernel`` over all slots of ``seq_d``.

    ``xsrc`` device (rows, G*H) with ``rowmap`` device int64 ids (or empty: row = token);
    ``keep`` saves what backward needs; ``modes`` non-empty means inference: pooled features
    come back in ``out`` and no per-token state is stored. Returns device (hs, acts, aux, out).
    """
    G, H = gates(cell), W_hh_d.shape[1]
    n = seq_d.shape[1]
    keep = keep and cell != "rnn"  # rnn's backward needs only hs
    hs = cuda.device_array((0 if modes else nnz, H), F32)
    acts = cuda.device_array((nnz if keep else 0, G * H), F32)
    aux = cuda.device_array((nnz if keep else 0, H), F32)
    mode_ids = np.array([_MODE_ID[m] for m in modes], np.int64)
    out = cuda.device_array((n if modes else 0, mode_ids.size * H), F32)
    if n:
        W_T = cuda.device_array((H, G * H), F32)
        _transpose_kernel[_blocks(G * H * H, THREADS), THREADS](W_hh_d, W_T)
        tj, _ = _recurrent_block(cell, H, n)
        _forward_kernel[_blocks(n, ROWS), tj, 0, 2 * ROWS * H * 4](
            _CELL_ID[cell],
            int(reverse),
            xsrc,
            rowmap,
            W_T,
            cuda.to_device(_b_hn(cell, b_hh, H)),
            seq_d,
            _zeros((3, n, H)),
            hs,
            acts,
            aux,
            cuda.to_device(mode_ids),
            out,
        )
    return hs, acts, aux, out


def _check_layer(cell, x, offsets, W_ih, W_hh, b_ih, b_hh):
    """Validated (x, offsets, G, H) for ``layer_forward``; raises like the reference."""
    G, H = check_recurrent(cell, _float_arg(W_hh, "W_hh"), _host_float(b_hh, "b_hh"))
    _recurrent_block(cell, H, 1)  # before any copy: H must fit the kernels' shared memory
    x = _float_arg(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must be [nnz, E], got shape {x.shape}")
    W_ih = _float_arg(W_ih, "W_ih")
    check_input_weights(cell, W_ih, _host_float(b_ih, "b_ih"), G, H, x.shape[1])
    return x, check_offsets(offsets, x.shape[0]), G, H


# --------------------------------------------------------------------------- layer


@dataclass(frozen=True)
class _Cache:
    """What ``layer_backward`` needs, on the device; per-token arrays in token order."""

    cell: str
    reverse: bool
    x: object  # (nnz, E)
    W_ih: object  # (G*H, E)
    W_hh: object  # (G*H, H)
    seq: object  # (3, n) int64 slots, see _plan
    hs: object  # (nnz, H)
    acts: object  # (nnz, G*H) gate activations (empty for rnn)
    aux: object  # (nnz, H) lstm's c or gru's W_hn h + b_hn (empty for rnn)
    rows: np.ndarray | None = None  # layer_forward's rows, to fold dx back onto them
    n_x: int = 0  # rows of the x that layer_forward was given
    offsets: np.ndarray | None = None  # (n+1,) int64 on the host, for layer_backward's d_final
    scale: np.ndarray | None = None  # layer_forward's scale (host): x holds the scaled inputs
    x_in: np.ndarray | None = None  # (nnz, E) host: each token's input before its scale


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
    """Run one recurrent layer in one direction over ragged sequences, on the GPU.

    Parameters: ``cell`` one of lstm, gru, rnn; ``x`` [nnz, E] in token order, or with
    ``rows`` (int[nnz]) the distinct inputs, token k reading ``x[rows[k]]`` (gathered on
    the host here: the GPU's input projection is cheap beside the copies); ``offsets``
    int64[n+1]; ``W_ih`` [G*H, E], ``W_hh`` [G*H, H], ``b_ih``, ``b_hh`` [G*H] (PyTorch's
    layout); ``reverse`` reads each sequence from its last token; ``training`` keeps on the
    device what ``layer_backward`` needs; ``scale`` (float[nnz]) multiplies each token's
    input (applied on the host, like ``rows``).

    Returns ``(hs, cache)``: ``hs`` float32[nnz, H], the state after each token, and the
    cache (None unless training).

    Raises ConfigError for an unknown cell, ValueError for inconsistent shapes or dtypes,
    or for a hidden size too large for shared memory (lstm H > 1536).

    Example::

        hs, cache = layer_forward("gru", x, np.array([0, 2, 5]), W_ih, W_hh, b_ih, b_hh)
    """
    n_x = 0
    if rows is not None:
        x = _host_float(x, "x")
        if x.ndim != 2:
            raise ValueError(f"x must be [rows, E], got shape {x.shape}")
        n_x = x.shape[0]
        rows = check_rows(rows, n_x)
        x = x[rows]
    x_in = None
    if scale is not None:
        x_in = _host_float(x, "x")
        scale = check_scale(scale, x_in.shape[0] if x_in.ndim == 2 else -1).astype(F32)
        x = x_in * scale[:, None]
    x, offsets, G, H = _check_layer(cell, x, offsets, W_ih, W_hh, b_ih, b_hh)
    nnz = x.shape[0]
    b_ih, b_hh = np.asarray(b_ih, F32), np.asarray(b_hh, F32)
    x_d = _dev(x, "x")
    W_ih_d = _dev(W_ih, "W_ih")
    # the input projection does not depend on the state: one product over all tokens
    bias = cuda.to_device((b_ih + foldable_bias(cell, b_hh)).astype(F32))
    xproj = _matmul(x_d, W_ih_d, trans_b=True, bias=bias)  # (nnz, G*H)
    seq_d = _plan(offsets)
    W_hh_d = _dev(W_hh, "W_hh")
    no_rows = cuda.device_array(0, np.int64)
    hs, acts, aux, _ = _recur(cell, reverse, xproj, no_rows, W_hh_d, b_hh, seq_d, nnz, training, ())
    cache = None
    if training:
        cache = _Cache(
            cell, bool(reverse), x_d, W_ih_d, W_hh_d, seq_d, hs, acts, aux, rows, n_x, offsets,
            scale, x_in,
        )  # fmt: skip
    return hs.copy_to_host(), cache


def layer_backward(
    cache: _Cache,
    dhs: np.ndarray | None,
    d_final: np.ndarray | None = None,
    weights: bool = True,
    inputs: bool = True,
    d_max: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full backpropagation through time for one ``layer_forward`` call, on the GPU.

    Parameters: ``cache`` from ``layer_forward(..., training=True)``; ``dhs`` [nnz, H] = dL/dhs
    (None: zero); ``d_final`` [n, H] = dL/d(final state), added at each sequence's final step,
    and ``d_max`` [n, H] = dL/d(max-pooled state), added at each unit's maximum (both here
    on the host, into the dense ``dhs`` that is copied to the GPU); ``weights`` is
    accepted for the common contract, and the weights' gradients are computed anyway (so
    is ``dx`` whatever ``inputs``).

    Returns ``(dx, dW_ih, dW_hh, db_ih, db_hh)``, float32 host arrays shaped like x, W_ih,
    W_hh, b_ih, b_hh, and ``dscale`` [nnz] sixth when forward had a ``scale``.
    Bit-identical from run to run (no atomics, fixed summation order).

    Raises ValueError when ``cache`` is None or ``dhs``, ``d_final`` or ``d_max`` has the
    wrong shape.

    Example::

        hs, cache = layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih, b_hh)
        dx, dW_ih, dW_hh, db_ih, db_hh = layer_backward(cache, np.ones_like(hs))
    """
    if cache is None:
        raise ValueError("layer_backward needs the cache of layer_forward(..., training=True)")
    cell = cache.cell
    nnz, H = cache.hs.shape
    GH = cache.W_hh.shape[0]
    n = cache.seq.shape[1]
    if dhs is not None:
        dhs = _host_float(dhs, "dhs")
    hs = cache.hs.copy_to_host() if d_max is not None else None
    dhs = hs_gradient(dhs, d_final, cache.offsets, cache.reverse, (nnz, H), F32, d_max, hs)
    dhs_d = _dev(dhs, "dhs")
    # every token is one row's step, and the kernel writes all G*H of its entries
    dGx = cuda.device_array((nnz, GH), F32)
    dGh = cuda.device_array((nnz, GH), F32) if cell == "gru" else dGx
    if n:
        tj, rows = _recurrent_block(cell, H, n)
        _backward_kernel[_blocks(n, rows), (tj, rows), 0, 2 * rows * GH * 4](
            _CELL_ID[cell],
            int(cache.reverse),
            cache.W_hh,
            cache.seq,
            dhs_d,
            cache.hs,
            cache.acts,
            cache.aux,
            _zeros((2, n, H)),
            dGx,
            dGh,
        )
    hprev = cuda.device_array((nnz, H), F32)
    if n * H:
        _prev_states_kernel[_blocks(n * H, THREADS), THREADS](
            cache.hs, cache.seq, int(cache.reverse), hprev
        )
    dx = _matmul(dGx, cache.W_ih)  # (nnz, E)
    dW_ih = _matmul(dGx, cache.x, trans_a=True)  # (G*H, E)
    dW_hh = _matmul(dGh, hprev, trans_a=True)  # (G*H, H)
    db_ih = _colsum(dGx)
    db_hh = _colsum(dGh)
    dx, dW_ih, dW_hh, db_ih, db_hh = (a.copy_to_host() for a in (dx, dW_ih, dW_hh, db_ih, db_hh))
    dscale = None
    if cache.scale is not None:  # dx is the scaled inputs' gradient
        dscale = (dx.astype(np.float64) * cache.x_in).sum(axis=1).astype(F32)
        dx = dx * cache.scale[:, None]
    if cache.rows is not None:
        dx = sum_by_row(dx, cache.rows, cache.n_x)
    if dscale is not None:
        return dx, dW_ih, dW_hh, db_ih, db_hh, dscale
    return dx, dW_ih, dW_hh, db_ih, db_hh


# --------------------------------------------------------------------------- pooling


def _pool_args(hs, offsets, mode):
    check_mode(mode)
    hs = _host_float(hs, "hs")
    if hs.ndim != 2:
        raise ValueError(f"hs must be [nnz, H], got shape {hs.shape}")
    return hs, check_offsets(offsets, hs.shape[0])


def pool_forward(
    hs: np.ndarray, offsets: np.ndarray, mode: str, reverse: bool = False
) -> np.ndarray:
    """One feature vector per sequence from its per-token states, on the GPU.

    Parameters: ``hs`` [nnz, H]; ``offsets`` int64[n+1]; ``mode`` last, max or mean;
    ``reverse`` the direction that produced ``hs`` (``last`` is then the first token's state).

    Returns float32[n, H]; empty sequences give zeros.

    Raises ConfigError for an unknown mode, ValueError for inconsistent shapes.

    Example::

        feat = pool_forward(hs, np.array([0, 3, 3, 4]), "max")  # feat[1] is all zeros
    """
    hs, offsets = _pool_args(hs, offsets, mode)
    n, H = offsets.size - 1, hs.shape[1]
    out = cuda.device_array((n, H), F32)
    if n * H:
        _pool_fwd_kernel[_blocks(n * H, THREADS), THREADS](
            _dev(hs, "hs"), cuda.to_device(offsets), _MODE_ID[mode], int(reverse), out
        )
    return out.copy_to_host()


def pool_backward(
    dfeat: np.ndarray,
    hs: np.ndarray,
    offsets: np.ndarray,
    mode: str,
    reverse: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of ``pool_forward`` with respect to ``hs``, on the GPU.

    Parameters: ``dfeat`` [n, H] = dL/dfeat; ``hs``, ``offsets``, ``mode``, ``reverse`` as
    given to ``pool_forward``. ``max`` sends each column's gradient to the first (lowest
    index) step holding the maximum. ``out``: a float32 host array of ``hs``'s shape to add
    the gradient into (e.g. another pooling's gradient).

    Returns float32 dhs [nnz, H] (``out`` itself when given); tokens of no pooled step get
    zeros (keep ``out``'s values).

    Raises ConfigError for an unknown mode, ValueError for inconsistent shapes.

    Example::

        dhs = pool_backward(np.ones((2, H)), hs, np.array([0, 3, 5]), "mean")
    """
    hs, offsets = _pool_args(hs, offsets, mode)
    n, H = offsets.size - 1, hs.shape[1]
    dfeat = _host_float(dfeat, "dfeat")
    if dfeat.shape != (n, H):
        raise ValueError(f"dfeat must be [n, H]=[{n}, {H}], got {dfeat.shape}")
    dhs = _zeros(hs.shape) if out is None else cuda.to_device(accumulator(out, hs.shape))
    if n * H:
        _pool_bwd_kernel[_blocks(n * H, THREADS), THREADS](
            _dev(dfeat, "dfeat"),
            _dev(hs, "hs"),
            cuda.to_device(offsets),
            _MODE_ID[mode],
            int(reverse),
            dhs,
        )
    if out is None:
        return dhs.copy_to_host()
    dhs.copy_to_host(out)
    return out


# --------------------------------------------------------------------------- inference


def fold_table(
    cell: str, emb: np.ndarray, W_ih: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
) -> np.ndarray:
    """The embedding folded into the input projection, computed on the GPU.

    Parameters: ``emb`` [V, E]; ``W_ih`` [G*H, E]; ``b_ih``, ``b_hh`` [G*H].

    Returns float32[V, G*H] = ``emb @ W_ih.T + b_ih`` plus all of ``b_hh`` for lstm and rnn,
    only its r and z parts for gru.

    Raises ConfigError for an unknown cell, ValueError for inconsistent shapes.

    Example::

        table = fold_table("lstm", emb, W_ih, b_ih, b_hh)  # table[ids] replaces emb[ids] @ W_ih.T
    """
    G = gates(cell)
    emb = _host_float(emb, "emb")
    W_ih, b_ih, b_hh = (
        _host_float(a, k) for a, k in ((W_ih, "W_ih"), (b_ih, "b_ih"), (b_hh, "b_hh"))
    )
    if emb.ndim != 2:
        raise ValueError(f"emb must be [V, E], got shape {emb.shape}")
    if W_ih.ndim != 2 or W_ih.shape[0] % G != 0:
        raise ValueError(f"W_ih must be [G*H, E] with G={G} for {cell}, got {W_ih.shape}")
    H = W_ih.shape[0] // G
    check_input_weights(cell, W_ih, b_ih, G, H, emb.shape[1])
    if b_hh.shape != (G * H,):
        raise ValueError(f"b_hh must be [G*H]=[{G * H}] for {cell}, got {b_hh.shape}")
    bias = (b_ih.astype(F32) + foldable_bias(cell, b_hh.astype(F32))).astype(F32)
    table = _matmul(_dev(emb, "emb"), _dev(W_ih, "W_ih"), trans_b=True, bias=cuda.to_device(bias))
    return table.copy_to_host()


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
    """Inference from a folded table straight to pooled features, on the GPU.

    Parameters: ``table`` [V, G*H] from ``fold_table`` (a host array, or a numba device array
    kept across calls); ``ids`` int[nnz] in [0, V); ``offsets`` int64[n+1]; ``W_hh`` [G*H, H];
    ``b_hh`` [G*H] (the full bias); ``reverse`` the direction; ``modes`` a tuple of pool
    modes, e.g. ``("last",)`` or ``("last", "max")``.

    Returns float32[n, len(modes)*H], the features of each mode concatenated in order.

    Raises ConfigError for an unknown cell or mode, ValueError for inconsistent shapes or ids
    outside the table.

    Example::

        feats = layer_infer("gru", table, ids, offsets, W_hh, b_hh, False, ("last", "mean"))
    """
    W_hh = _float_arg(W_hh, "W_hh")
    b_hh = _host_float(b_hh, "b_hh")
    G, H = check_recurrent(cell, W_hh, b_hh)
    _recurrent_block(cell, H, 1)  # before any copy: H must fit the kernels' shared memory
    table = _float_arg(table, "table")
    ids, offsets = check_infer_args(cell, table, ids, offsets, modes, G, H)
    n = offsets.size - 1
    if n == 0:
        return np.zeros((0, len(modes) * H), F32)
    ids_d = cuda.to_device(np.ascontiguousarray(ids, dtype=np.int64))
    table_d, W_hh_d = _dev(table, "table"), _dev(W_hh, "W_hh")
    seq_d = _plan(offsets)
    _, _, _, out = _recur(cell, reverse, table_d, ids_d, W_hh_d, b_hh, seq_d, 0, False, modes)
    return out.copy_to_host()
