"""Numba CPU backend: the recurrence kernels of ``pipeline.kernels`` (see its docstring).

How it is fast:

* Sequences are sorted by length and dealt to blocks of at most 128, the same number per
  thread (``_plan``), each block run by one thread. Within a block the sequences still
  running at step ``t`` are a prefix, so their recurrent product is one small matrix
  product ``S[r0:r1] @ W_hh.T`` (``pipeline.kernels.gemm``: ``W_hh`` packed once per call
  and hot in cache, no BLAS inside ``prange``), and nothing is ever computed for padding,
  because there is none. The whole time loop runs inside one parallel kernel call.
* The input projection of every token is one large product before the loop (training) or
  a row of a folded ``[V, G*H]`` table (inference: the embedding is folded into ``W_ih``).
* The gate math of a step is one parallel Numba kernel over the running sequences, with a
  rational tanh (and sigmoid from it) that vectorises; ``np.tanh``/``np.exp`` are scalar
  library calls in Numba builds without SVML and would dominate the step.
* Backward keeps the input side's gate gradients in token order and forms ``dW_ih`` with
  one large product at the end. ``dW_hh`` is summed inside the kernel: each block stages
  its tokens' gate gradients and previous states while they are in cache and adds them,
  128 tokens at a time, into a ``dW_hh`` of its own (``gemm.gemm_tn``); the blocks' sums
  are added in a fixed order at the end. No atomics, no scatter: results are
  bit-identical from run to run. Its threads flush float32 subnormals to zero while they run
  (``pipeline.kernels.fpmode``): gradients fading over long sequences reach that range,
  which x86 CPUs compute slowly (LSTM training 1.15x faster, scratch A/B).

The kernels call no BLAS, and the large products around them run on NumPy's BLAS with the
same thread count as Numba (``pipeline.runtime.set_threads`` sets both), so the two
thread pools never multiply.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from pipeline.kernels import POOL_MODES, gates
from pipeline.kernels.checks import (
    accumulator,
    check_input_weights,
    check_per_sequence,
    check_recurrent,
    foldable_bias,
)
from pipeline.kernels.fpmode import flush_subnormals, restore
from pipeline.kernels.gemm import gemm as _gemm
from pipeline.kernels.gemm import gemm_tn as _gemm_tn
from pipeline.kernels.gemm import pack as _pack
from pipeline.kernels.gemm import padded_width as _padded_width
from pipeline.kernels.memory import aligned as _aligned
from pipeline.kernels.memory import prefetch_read, prefetch_write
from pipeline.kernels.rows import check_rows, check_scale, sum_by_row

F32 = np.float32
_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_CELL_ID = {"lstm": 0, "gru": 1, "rnn": 2}
# fastmath for backward without "reassoc": with it, a process that compiled _backward and
# one that loaded it from Numba's cache computed gradients differing in their last bits
# (LLVM reordered products differently in the two code paths); without it the bits agree,
# at no measurable cost (its loops are elementwise, no reductions to reorder)
_BACKWARD_MATH = {"nnan", "ninf", "nsz", "arcp", "afn", "contract"}
_MODE_ID = {"last": 0, "max": 1, "mean": 2}


@njit(cache=True, fastmath=True, inline="always")
def _tanh(x):
    # Rational approximation (|error| < 4e-7 on float32), branch-free so loops vectorise.
    c = min(max(x, -_CLAMP), _CLAMP)
    x2 = c * c
    p = _A13 * x2 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    p = p * c
    q = _B6 * x2 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return p / q


@njit(cache=True, fastmath=True, inline="always")
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)


# ---------------------------------------------------------------------------------------
# Per-row gate math. Simple loops over contiguous rows, so LLVM vectorises them.
# g: this step's recurrent product h @ W_hh.T for the row (overwritten with activations),
# x: the row's input projection, h/c: its states (updated in place).
# ---------------------------------------------------------------------------------------


@njit(cache=True, fastmath=True, error_model="numpy")
def _lstm_row(g, x, h, c, H):
    # sigmoid(z) = 0.5 + 0.5 tanh(z / 2). One loop per run of like gates (i and f, then g,
    # then o): 13-21 % faster than one loop over all four choosing the formula per element,
    # with bit-identical results (scratch A/B, 64 rows of H=128, one thread).
    # Loops over views that start at 0 vectorise where offset indexing (g[H + j]) did not.
    gif = g[: 2 * H]
    xif = x[: 2 * H]
    for k in range(2 * H):
        gif[k] = _HALF + _HALF * _tanh(_HALF * (gif[k] + xif[k]))
    gg = g[2 * H : 3 * H]
    xg = x[2 * H : 3 * H]
    for j in range(H):
        gg[j] = _tanh(gg[j] + xg[j])
    go = g[3 * H :]
    xo = x[3 * H :]
    for j in range(H):
        go[j] = _HALF + _HALF * _tanh(_HALF * (go[j] + xo[j]))
    gi = g[:H]
    gf = g[H : 2 * H]
    for j in range(H):
        cn = gf[j] * c[j] + gi[j] * gg[j]
        c[j] = cn
        h[j] = go[j] * _tanh(cn)


@njit(cache=True, fastmath=True, error_model="numpy")
def _gru_row(g, x, h, hn, b_hn, H):
    # hn: (H,) receives W_hn h + b_hn, which backward needs
    for k in range(2 * H):
        g[k] = _HALF + _HALF * _tanh(_HALF * (g[k] + x[k]))
    r = g[:H]
    z = g[H : 2 * H]
    gn = g[2 * H :]
    xn = x[2 * H :]
    for j in range(H):
        hnj = gn[j] + b_hn[j]
        hn[j] = hnj
        n = _tanh(xn[j] + r[j] * hnj)
        gn[j] = n
        h[j] = (_ONE - z[j]) * n + z[j] * h[j]


@njit(cache=True, fastmath=True, error_model="numpy")
def _rnn_row(g, x, h, H):
    for j in range(H):
        h[j] = _tanh(g[j] + x[j])


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _tok_at(starts, lens, r, t, reverse):
    if reverse:
        return starts[r] + lens[r] - 1 - t
    return starts[r] + t


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def _forward(
    cell, xsrc, rowmap, WhhP, b_hn, starts, lens, blocks, reverse, S_h, S_c, Gb, hs, acts, aux,
    pool, scale, bias,
):  # fmt: skip
    # Slots are grouped in blocks, each sorted by length (descending), one thread a block:
    # at step t the block's running rows are a prefix, so their recurrent product is one
    # small matrix product on W_hh, which stays in cache across the block's steps.
    # WhhP: W_hh.T packed for gemm; S_h, S_c (n, H): states per slot
    # Gb (n, Np): scratch, Np = G*H rounded up to gemm's panels
    # hs (nnz, H), acts (nnz, G*H), aux (nnz, H): stores for backward (size 0 at inference)
    # pool (2, n, H): running max and sum (size 0 when not needed)
    # scale (nnz,): each token's input scale, or size 0 for none; with it, xsrc holds the
    # rows' projections without bias, and a step's input is scale * row + bias (G*H,)
    H = S_h.shape[1]
    GH = xsrc.shape[1]
    Np = Gb.shape[1]
    store = hs.shape[0] > 0
    dopool = pool.shape[0] > 0
    hn_tmp = np.empty((blocks.shape[0], H), np.float32)
    scaled = scale.shape[0] > 0
    xb_all = np.empty((blocks.shape[0] if scaled else 0, GH), np.float32)
    for bi in prange(blocks.shape[0] - 1):
        r0 = blocks[bi]
        r1 = blocks[bi + 1]
        if r1 == r0:
            continue
        T = lens[r0]
        for t in range(T):
            while lens[r1 - 1] <= t:  # rows that ended drop off the end of the block
                r1 -= 1
            _gemm(S_h, r0, r1, WhhP, H, Np, Gb)
            for r in range(r0, r1):
                tok = _tok_at(starts, lens, r, t, reverse)
                row = tok if rowmap.shape[0] == 0 else rowmap[tok]
                if t + 1 < lens[r]:  # the row's next input and stores, while this step runs
                    nxt = tok - 1 if reverse else tok + 1
                    prefetch_read(xsrc, nxt if rowmap.shape[0] == 0 else rowmap[nxt])
                    if store:
                        prefetch_write(hs, nxt)
                        if cell != 2:
                            prefetch_write(acts, nxt)
                            prefetch_write(aux, nxt)
                g = Gb[r, :GH]
                x = xsrc[row]
                if scaled:
                    xb = xb_all[bi]
                    s = scale[tok]
                    for j in range(GH):
                        xb[j] = s * x[j] + bias[j]
                    x = xb
                h = S_h[r]
                if cell == 0:
                    _lstm_row(g, x, h, S_c[r], H)
                    if store:
                        aux[tok, :] = S_c[r]
                elif cell == 1:
                    hn = aux[tok] if store else hn_tmp[bi]
                    _gru_row(g, x, h, hn, b_hn, H)
                else:
                    _rnn_row(g, x, h, H)
                if store:
                    hs[tok, :] = h
                    if cell != 2:
                        acts[tok, :] = g
                if dopool:
                    if t == 0:
                        pool[0, r, :] = h
                        pool[1, r, :] = h
                    else:
                        for j in range(H):
                            pool[0, r, j] = max(pool[0, r, j], h[j])
                            pool[1, r, j] += h[j]


# A block's step scratch is rows x G*H floats: 256 KB for 128 LSTM rows of H=128, which
# stays in L2 with W_hh between the product and the gate math; 512 rows a block spilled
# it (scoring batches of 1,024 reviews: 128-row blocks 1.07-1.10x faster, same outputs).
_BLOCK_ROWS = 128


def _plan(offsets: np.ndarray):
    """Slots for the kernels: sequences sorted by length, dealt to blocks of at most
    ``_BLOCK_ROWS`` sequences, the same number of blocks for every thread.

    Returns ``(perm, lens_s, starts_s, blocks)``: slot ``r`` holds sequence ``perm[r]``;
    block ``b`` is slots ``blocks[b]:blocks[b+1]``, sorted by length (descending). Dealing
    the sorted sequences in a snake order gives every block the same mix of lengths.
    """
    lens = np.diff(offsets)
    n = lens.size
    order = np.argsort(-lens, kind="stable")
    threads = numba.get_num_threads()
    nb = max(1, min(threads * -(-n // (threads * _BLOCK_ROWS)), n))
    rank = np.arange(n)
    rnd, pos = np.divmod(rank, nb)
    block_of = np.where(rnd % 2 == 0, pos, nb - 1 - pos)
    slot_order = np.lexsort((rank, block_of))  # by block, then by rank (length descending)
    perm = order[slot_order]
    counts = np.bincount(block_of, minlength=nb)
    blocks = np.zeros(nb + 1, np.int64)
    np.cumsum(counts, out=blocks[1:])
    lens_s = np.ascontiguousarray(lens[perm])
    starts_s = np.ascontiguousarray(offsets[:-1][perm])
    return perm, lens_s, starts_s, blocks


def _as32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32)


def _check(cell, W_ih, W_hh, b_ih, b_hh, E=None):
    G, H = check_recurrent(cell, W_hh, b_hh)
    if W_ih is not None:
        check_input_weights(cell, W_ih, b_ih, G, H, W_ih.shape[1] if E is None else E)
    return G, H


def _folded_bias(cell: str, b_ih: np.ndarray, b_hh: np.ndarray) -> np.ndarray:
    return b_ih + foldable_bias(cell, b_hh)  # b_hn stays inside gru's reset product


def _b_hn(cell: str, b_hh: np.ndarray, H: int) -> np.ndarray:
    return np.ascontiguousarray(b_hh[2 * H :]) if cell == "gru" else np.zeros(H, F32)


class _Cache:
    __slots__ = (
        "cell",
        "x",
        "offsets",
        "W_ih",
        "W_hh",
        "reverse",
        "plan",
        "hs",
        "acts",
        "aux",
        "rows",
        "scale",
        "proj",
    )


def _run(
    cell, xsrc, rowmap, offsets, W_hh, b_hh, reverse, need_pool, store_nnz, scale=None, bias=None
):
    """Run the recurrence; returns (S_h, pool, hs, acts, aux, plan). With ``scale``, token
    k's input is ``scale[k] * xsrc[row] + bias``."""
    G, H = gates(cell), W_hh.shape[1]
    n = offsets.size - 1
    plan = _plan(offsets)
    _, lens_s, starts_s, blocks = plan
    WhhP = _pack(W_hh.T)  # W_hh.T (H, G*H) in gemm's panels
    # rows the step's vector loops read and write start on cache lines (memory.aligned)
    S_h = _aligned((n, H), 0.0)
    S_c = _aligned((n if cell == "lstm" else 0, H), 0.0)
    Gb = _aligned((n, _padded_width(G * H)))
    pool = np.empty((2, n, H), F32) if need_pool else np.empty((0, 0, 0), F32)
    hs = np.empty((store_nnz, H), F32)
    acts = np.empty((store_nnz if cell != "rnn" else 0, G * H), F32)
    aux = np.empty((store_nnz if cell != "rnn" else 0, H), F32)
    _forward(
        _CELL_ID[cell],
        xsrc,
        rowmap,
        WhhP,
        _b_hn(cell, b_hh, H),
        starts_s,
        lens_s,
        blocks,
        reverse,
        S_h,
        S_c,
        Gb,
        hs,
        acts,
        aux,
        pool,
        np.empty(0, F32) if scale is None else scale,
        np.empty(0, F32) if bias is None else bias,
    )
    return S_h, pool, hs, acts, aux, plan


def layer_forward(
    cell, x, offsets, W_ih, W_hh, b_ih, b_hh, reverse=False, training=True, rows=None,
    scale=None,
):  # fmt: skip
    """One recurrent layer over ragged sequences; see ``pipeline.kernels`` for the contract.

    Returns ``(hs, cache)``: ``hs`` float32[nnz, H], the state after every token. With
    ``rows``, the input projection runs once per row of ``x`` (each distinct input), and
    the kernel reads token k's projection from row ``rows[k]``. With ``scale``, token k's
    projection is ``scale[k]`` times its row's (projected once) plus the bias.
    """
    x, W_ih, W_hh, b_ih, b_hh = map(_as32, (x, W_ih, W_hh, b_ih, b_hh))
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    _check(cell, W_ih, W_hh, b_ih, b_hh, E=x.shape[1])
    if rows is None:
        rowmap, nnz = np.empty(0, np.int64), x.shape[0]
    else:
        rowmap = check_rows(rows, x.shape[0])
        nnz = rowmap.size
    xproj = np.matmul(x, W_ih.T, out=_aligned((x.shape[0], W_ih.shape[0])))  # all steps at once
    bias = _folded_bias(cell, b_ih, b_hh)
    if scale is None:
        xproj += bias
    else:  # the kernel adds the bias after each token's scale
        scale = _as32(check_scale(scale, nnz))
    _, _, hs, acts, aux, plan = _run(
        cell, xproj, rowmap, offsets, W_hh, b_hh, reverse, False, nnz, scale, bias
    )
    cache = None
    if training:
        cache = _Cache()
        cache.cell, cache.x, cache.offsets = cell, x, offsets
        cache.W_ih, cache.W_hh, cache.reverse = W_ih, W_hh, reverse
        cache.plan, cache.hs, cache.acts, cache.aux = plan, hs, acts, aux
        cache.rows = None if rows is None else rowmap
        cache.scale, cache.proj = scale, (xproj if scale is not None else None)
    return hs, cache


# ---------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_BACKWARD_MATH, error_model="numpy")
def _lstm_row_bwd(dh, dc, a, cs, cp, gx, H):
    # dh (H,): dL/dh_t; dc (H,): dL/dc_t from step t+1, becomes dL/dc_{t-1}
    # a: activations i f g o; cs: c_t; cp: c_{t-1} (zeros at t = 0); gx: gate gradients
    ai, af, ag, ao = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
    gi, gf, gg, go = gx[:H], gx[H : 2 * H], gx[2 * H : 3 * H], gx[3 * H :]
    for j in range(H):
        tc = _tanh(cs[j])
        dcj = dc[j] + dh[j] * ao[j] * (_ONE - tc * tc)
        gi[j] = dcj * ag[j] * ai[j] * (_ONE - ai[j])
        gf[j] = dcj * cp[j] * af[j] * (_ONE - af[j])
        gg[j] = dcj * ai[j] * (_ONE - ag[j] * ag[j])
        go[j] = dh[j] * tc * ao[j] * (_ONE - ao[j])
        dc[j] = dcj * af[j]


@njit(cache=True, fastmath=_BACKWARD_MATH, error_model="numpy")
def _gru_row_bwd(dh, a, hn, hp, gx, gh, dd, H):
    # dd (H,): receives dL/dh_{t-1} through the z*h path
    ar, az, an = a[:H], a[H : 2 * H], a[2 * H :]
    xr, xz, xn = gx[:H], gx[H : 2 * H], gx[2 * H :]
    hr, hz, hnn = gh[:H], gh[H : 2 * H], gh[2 * H :]
    for j in range(H):
        dn = dh[j] * (_ONE - az[j]) * (_ONE - an[j] * an[j])
        dz = dh[j] * (hp[j] - an[j]) * az[j] * (_ONE - az[j])
        dr = dn * hn[j] * ar[j] * (_ONE - ar[j])
        dd[j] = dh[j] * az[j]
        xr[j] = dr
        xz[j] = dz
        xn[j] = dn
        hr[j] = dr
        hz[j] = dz
        hnn[j] = dn * ar[j]


_LANES = 16  # float64 partial sums of _dot: two AVX-512 registers


@njit(cache=True, fastmath=_BACKWARD_MATH, error_model="numpy", inline="always")
def _dot(a, b, lanes):
    # a . b (float32) summed in float64, in _LANES interleaved partial sums: a fixed order
    # that still vectorises (a single running sum cannot without reassociation)
    for k in range(_LANES):
        lanes[k] = 0.0
    n = a.shape[0]
    j = 0
    while j + _LANES <= n:
        for k in range(_LANES):
            lanes[k] += np.float64(a[j + k]) * np.float64(b[j + k])
        j += _LANES
    total = 0.0
    for k in range(_LANES):
        total += lanes[k]
    while j < n:
        total += np.float64(a[j]) * np.float64(b[j])
        j += 1
    return total


@njit(parallel=True, cache=True, error_model="numpy")
def _max_steps(hs, starts, lens, best):
    # best (n, H): the token holding slot r's maximum of each unit (see _first_max)
    for r in prange(starts.shape[0]):
        if lens[r] > 0:
            _first_max(hs, starts[r], starts[r] + lens[r], best[r])


@njit(parallel=True, cache=True, fastmath=_BACKWARD_MATH, error_model="numpy")
def _backward(cell, W_hhP, starts, lens, blocks, reverse, dhs, hs, acts, aux, dGx, dS, dC, Dd,
              Db, acc, zeros, weights, scaling, pick):  # fmt: skip
    # W_hhP: W_hh (G*H, H) packed for gemm
    # dhs (nnz, H): dL/dh per token, or (0, H) for none
    # dS (n, Np): dL/dh of every slot from the later steps (columns H: are gemm's padding),
    # holding dL/d(final state) before the first step back
    # dC (n, H): same for lstm's c; Dd (n, H): gru's direct z*dh term
    # Db (n, G*H): gate gradients on the recurrent side
    # dGx (nnz, G*H): input-side gate gradients per token, for the products at the end,
    # or (nb, G*H) when only dscale needs them: each block's one row, used and forgotten
    # acc: per block, zeroed: dW (nb, G*H, Np) receives dW_hh (columns H: stay 0) and db
    # (nb, G*H, float64) the recurrent-side bias gradient; SG (nb, KS, G*H) and SH (nb, KS, Np)
    # stage a block's gate gradients and previous states, KS tokens at a time, for
    # dW += SG.T @ SH while they are still in cache; weights False skips dW (dx only)
    # scaling: scale (nnz,) each token's input scale (size 0: none), proj (rows, G*H) the
    # unscaled projections forward read through rowmap (size 0: row = token); dscale (nnz,)
    # receives dL/d scale = dGx . proj, then dGx is scaled (the gradient of the unscaled
    # row); dbx (nb, G*H, float64) receives the unscaled dGx summed (gru's input bias)
    # pick: best (n, H) the token holding each slot's maximum of each unit, dmax (n, H)
    # dL/d(that maximum), added to dh at that token's step (size 0: none): max pooling's
    # gradient without a dense dhs
    dW, db, SG, SH = acc
    best, dmax = pick
    picking = best.shape[0] > 0
    scale, proj, rowmap, dscale, dbx = scaling
    scaled = scale.shape[0] > 0
    H = zeros.shape[0]
    has_dhs = dhs.shape[0] > 0
    keep = dGx.shape[0] == hs.shape[0]  # else one scratch row per block (dscale only)
    GH = Db.shape[1]
    Np = dS.shape[1]
    KS = SG.shape[1]
    for bi in prange(blocks.shape[0] - 1):
        r0 = blocks[bi]
        r1 = blocks[bi + 1]
        if r1 == r0:
            continue
        fp = flush_subnormals()
        T = lens[r0]
        dh = np.empty(H, np.float32)
        lanes = np.empty(_LANES, np.float64)
        sg, sh, dWb, dbb = SG[bi], SH[bi], dW[bi], db[bi]
        ks = 0
        for t in range(T - 1, -1, -1):
            ra = r0
            while ra < r1 and lens[ra] > t:
                ra += 1
            for r in range(r0, ra):
                tok = _tok_at(starts, lens, r, t, reverse)
                prev = tok + 1 if reverse else tok - 1
                if t > 0:  # what the row's next step (t - 1) reads and writes
                    if has_dhs:
                        prefetch_read(dhs, prev)
                    if keep:
                        prefetch_write(dGx, prev)
                    if cell != 2:
                        prefetch_read(acts, prev)
                        prefetch_read(aux, prev)
                    if t > 1:
                        before = prev + 1 if reverse else prev - 1
                        prefetch_read(hs, before)
                        if cell == 0:
                            prefetch_read(aux, before)
                if picking:  # dh = dS + (dhs + picked): a dense dhs's very sums
                    bb, dm = best[r], dmax[r]
                    if has_dhs:
                        for j in range(H):
                            dh[j] = dS[r, j] + (dhs[tok, j] + (dm[j] if bb[j] == tok else _ZERO))
                    else:
                        for j in range(H):
                            dh[j] = dS[r, j] + (dm[j] if bb[j] == tok else _ZERO)
                elif has_dhs:
                    for j in range(H):
                        dh[j] = dS[r, j] + dhs[tok, j]
                else:
                    for j in range(H):
                        dh[j] = dS[r, j]
                gx = dGx[tok] if keep else dGx[bi]
                if cell == 0:
                    cp = aux[prev] if t > 0 else zeros
                    _lstm_row_bwd(dh, dC[r], acts[tok], aux[tok], cp, gx, H)
                    Db[r, :] = gx
                elif cell == 1:
                    for j in range(H):
                        dh[j] += Dd[r, j]
                    hp = hs[prev] if t > 0 else zeros
                    _gru_row_bwd(dh, acts[tok], aux[tok], hp, gx, Db[r], Dd[r], H)
                else:
                    for j in range(H):
                        hv = hs[tok, j]
                        gx[j] = dh[j] * (_ONE - hv * hv)
                    Db[r, :] = gx
                if scaled:
                    src = proj[np.int64(tok) if rowmap.shape[0] == 0 else rowmap[tok]]
                    dscale[tok] = _dot(gx, src, lanes)
                    if cell == 1:
                        dbxb = dbx[bi]
                        for j in range(GH):
                            dbxb[j] += gx[j]
                    if keep:  # the unscaled row's gradient, for dx and dW_ih
                        s = scale[tok]
                        for j in range(GH):
                            gx[j] *= s
                g = Db[r]
                for j in range(GH):
                    dbb[j] += g[j]
                if weights and t > 0:  # h_{t-1} = 0 at t = 0 adds nothing to dW_hh
                    if ks == KS:
                        _gemm_tn(sg, 0, ks, GH, sh, Np, dWb)
                        ks = 0
                    sg[ks, :] = g
                    sh[ks, :H] = hs[prev]
                    ks += 1
            if t > 0:
                _gemm(Db, r0, ra, W_hhP, GH, Np, dS)
        if weights:
            _gemm_tn(sg, 0, ks, GH, sh, Np, dWb)
        restore(fp)


_STAGE = 128  # tokens a block stages before adding them to its dW_hh


def layer_backward(cache, dhs, d_final=None, weights=True, inputs=True, d_max=None):
    """Backpropagation through time for one layer; returns (dx, dW_ih, dW_hh, db_ih, db_hh),
    and ``dscale`` [nnz] sixth when the forward pass had a ``scale``.

    ``dhs`` [nnz, H] or None; ``d_final`` [n, H] or None (see ``pipeline.kernels``): it
    starts each slot's running gradient, so no dense [nnz, H] array is built for it;
    ``d_max`` [n, H] or None: added at each unit's maximum as its step runs, likewise.
    ``weights`` False: only ``dx`` (and the biases') is computed, ``dW_ih`` and ``dW_hh``
    are None (explanations need the inputs' gradient only); ``inputs`` False: ``dx`` is
    None too (explanations with an input scale need only ``dscale``)."""
    if cache is None:
        raise ValueError("layer_backward needs the cache of layer_forward(..., training=True)")
    cell, x, W_ih, W_hh = cache.cell, cache.x, cache.W_ih, cache.W_hh
    G, H = gates(cell), W_hh.shape[1]
    nnz, n = cache.hs.shape[0], cache.offsets.size - 1
    if dhs is None:
        dhs = np.empty((0, H), F32)
    else:
        dhs = _as32(dhs)
        if dhs.shape != (nnz, H):
            raise ValueError(f"dhs must be [nnz, H]=[{nnz}, {H}] like hs, got {dhs.shape}")
    perm, lens_s, starts_s, blocks = cache.plan
    nb, GH, Np = blocks.size - 1, G * H, _padded_width(H)
    scaled = cache.scale is not None
    # _backward writes every token's row of dGx: no zeroing (17 MB for a GRU batch of 64
    # IMDB reviews). An explanation's scales need each row only while its token is stepped
    # (dscale and gru's input bias are summed in the kernel): one scratch row per block
    # then, which spares writing and reading 1.5 KB per token and direction (gru, H=128)
    keep = weights or inputs or not scaled
    dGx = np.empty((nnz if keep else nb, GH), F32)
    dS = _aligned((n, Np), 0.0)  # columns past H: gemm's padding
    if d_final is not None:
        d_final = _as32(check_per_sequence(d_final, "d_final", n, H))
        dS[:, :H] = d_final[perm]  # empty sequences' slots never run: theirs is ignored
    pick = (np.empty((0, H), np.int64), np.empty((0, H), F32))
    if d_max is not None:
        d_max = _as32(check_per_sequence(d_max, "d_max", n, H))
        best = np.empty((n, H), np.int64)
        _max_steps(cache.hs, starts_s, lens_s, best)
        pick = (best, np.ascontiguousarray(d_max[perm]))
    dC = _aligned((n if cell == "lstm" else 0, H), 0.0)
    Dd = np.zeros((n if cell == "gru" else 0, H), F32)
    Db = _aligned((n, GH))
    # dW_hh is summed per block inside the kernel, from staged rows still in cache: the
    # product over all tokens afterwards ran at about 96 GFLOP/s and had to build every
    # token's previous state first
    dscale = np.empty(nnz if scaled else 0, F32)
    scaling = (
        cache.scale if scaled else np.empty(0, F32),
        cache.proj if scaled else np.empty((0, GH), F32),
        cache.rows if scaled and cache.rows is not None else np.empty(0, np.int64),
        dscale,
        np.zeros((nb if scaled and cell == "gru" else 0, GH), np.float64),
    )
    # without the weights' gradients, the dW and staging blocks shrink to 1x1 (never used)
    wGH, wNp, wS = (GH, Np, _STAGE) if weights else (1, 1, 1)
    acc = (
        _aligned((nb, wGH, wNp), 0.0),
        np.zeros((nb, GH), np.float64),  # thousands of terms a block, summed in order
        _aligned((nb, wS, wGH)),
        _aligned((nb, wS, wNp), 0.0),  # columns past H stay 0
    )
    _backward(
        _CELL_ID[cell],
        _pack(W_hh),
        starts_s,
        lens_s,
        blocks,
        cache.reverse,
        dhs,
        cache.hs,
        cache.acts,
        cache.aux,
        dGx,
        dS,
        dC,
        Dd,
        Db,
        acc,
        np.zeros(H, F32),
        weights,
        scaling,
        pick,
    )
    # blocks summed in a fixed order: the same bits run after run
    dW_hh = np.ascontiguousarray(acc[0].sum(axis=0)[:, :H]) if weights else None
    db_rec = acc[1].sum(axis=0).astype(F32)
    db_x = None
    if scaled:  # gru's input bias takes every token's unscaled share
        db_x = scaling[4].sum(axis=0).astype(F32) if cell == "gru" else None
    if cache.rows is not None and (weights or inputs):
        dGx = sum_by_row(dGx, cache.rows, x.shape[0])  # (rows of x, G*H)
    dW_ih = dGx.T @ x if weights else None
    dx = dGx @ W_ih if inputs else None
    if cell == "gru":
        # b_hn is not folded into b_ih: its gradient is the recurrent side's
        db_ih = dGx.sum(axis=0, dtype=F32) if db_x is None else db_x
        db_hh = db_rec
    else:
        # lstm and rnn add both biases to the same pre-activation: one sum serves both
        db_ih, db_hh = db_rec, db_rec.copy()
    if scaled:
        return dx, dW_ih, dW_hh, db_ih, db_hh, dscale
    return dx, dW_ih, dW_hh, db_ih, db_hh


# ---------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, error_model="numpy")
def _pool_fwd(hs, offsets, mode, reverse, out):
    H = hs.shape[1]
    for i in prange(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        if e == s:
            for j in range(H):
                out[i, j] = 0.0
            continue
        if mode == 0:
            tok = s if reverse else e - 1
            for j in range(H):
                out[i, j] = hs[tok, j]
        elif mode == 1:
            for j in range(H):
                out[i, j] = hs[s, j]
            for tok in range(s + 1, e):
                for j in range(H):
                    out[i, j] = max(out[i, j], hs[tok, j])
        else:
            for j in range(H):
                out[i, j] = 0.0
            for tok in range(s, e):
                for j in range(H):
                    out[i, j] += hs[tok, j]
            inv = np.float32(1.0) / np.float32(e - s)
            for j in range(H):
                out[i, j] *= inv


@njit(cache=True, error_model="numpy", inline="always")
def _first_max(hs, s, e, best):
    # best (H,): the token of s:e holding each unit's maximum, the first one of ties
    # (lowest index, either direction); found row by row (a column-wise scan strides
    # through hs and took 2-3x as long)
    H = hs.shape[1]
    top = hs[s].copy()
    for j in range(H):
        best[j] = s
    for tok in range(s + 1, e):
        for j in range(H):
            if hs[tok, j] > top[j]:
                top[j] = hs[tok, j]
                best[j] = tok


@njit(parallel=True, cache=True, error_model="numpy")
def _pool_bwd(dfeat, hs, offsets, mode, reverse, assign, dhs):
    # assign (mean only): write every token's row instead of adding, so dhs needs no zeros
    H = hs.shape[1]
    for i in prange(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        if e == s:
            continue
        if mode == 0:
            tok = s if reverse else e - 1
            for j in range(H):
                dhs[tok, j] += dfeat[i, j]
        elif mode == 1:
            best = np.empty(H, np.int64)
            _first_max(hs, s, e, best)
            for j in range(H):
                dhs[best[j], j] += dfeat[i, j]
        else:
            inv = np.float32(1.0) / np.float32(e - s)
            for tok in range(s, e):
                if assign:
                    for j in range(H):
                        dhs[tok, j] = dfeat[i, j] * inv
                else:
                    for j in range(H):
                        dhs[tok, j] += dfeat[i, j] * inv


def _mode_id(mode: str) -> int:
    if mode not in _MODE_ID:
        raise ValueError(f"unknown pooling mode {mode!r}: expected one of {POOL_MODES}")
    return _MODE_ID[mode]


def pool_forward(hs, offsets, mode, reverse=False):
    """Pool every sequence's states: ``last``, ``max`` or ``mean``; zeros for empty ones."""
    hs = _as32(hs)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.empty((offsets.size - 1, hs.shape[1]), F32)
    _pool_fwd(hs, offsets, _mode_id(mode), reverse, out)
    return out


def pool_backward(dfeat, hs, offsets, mode, reverse=False, out=None):
    """Gradient of ``pool_forward`` with respect to ``hs``; added into ``out`` when given."""
    hs = _as32(hs)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    mid = _mode_id(mode)
    # mean writes every token's row (offsets cover all of hs): no zero fill, which cost
    # about as much as the kernel (4 MB a direction for the default model's batches)
    covers = offsets.size > 1 and offsets[0] == 0 and offsets[-1] == hs.shape[0]
    assign = out is None and mid == _MODE_ID["mean"] and covers
    if assign:
        dhs = np.empty_like(hs)
    else:
        dhs = np.zeros_like(hs) if out is None else accumulator(out, hs.shape)
    _pool_bwd(_as32(dfeat), hs, offsets, mid, reverse, assign, dhs)
    return dhs


# ---------------------------------------------------------------------------------------
# Inference from a folded table
# ---------------------------------------------------------------------------------------


def fold_table(cell, emb, W_ih, b_ih, b_hh):
    """``emb @ W_ih.T`` plus the foldable biases: float32[V, G*H], made once per model load."""
    emb, W_ih, b_ih, b_hh = map(_as32, (emb, W_ih, b_ih, b_hh))
    table = np.matmul(emb, W_ih.T, out=_aligned((emb.shape[0], W_ih.shape[0])))
    table += _folded_bias(cell, b_ih, b_hh)
    return table


@njit(parallel=True, cache=True)
def _finish_pool(S_h, pool, lens_s, order, modes, out):
    n, H = S_h.shape
    for r in prange(n):
        i = order[r]
        L = lens_s[r]
        for m in range(modes.shape[0]):
            base = m * H
            mode = modes[m]
            for j in range(H):
                if L == 0:
                    v = np.float32(0.0)
                elif mode == 0:
                    v = S_h[r, j]
                elif mode == 1:
                    v = pool[0, r, j]
                else:
                    v = pool[1, r, j] / np.float32(L)
                out[i, base + j] = v


def layer_infer(cell, table, ids, offsets, W_hh, b_hh, reverse, modes):
    """Pooled features straight from token ids and a folded table; float32[n, len(modes)*H]."""
    table, W_hh, b_hh = map(_as32, (table, W_hh, b_hh))
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    G, H = _check(cell, None, W_hh, b_hh, b_hh)
    if table.ndim != 2 or table.shape[1] != G * H:
        raise ValueError(f"{cell}: table must be (V, {G * H}), got {table.shape}")
    mode_ids = np.array([_mode_id(m) for m in modes], np.int64)
    n = offsets.size - 1
    out = np.empty((n, mode_ids.size * H), F32)
    if n == 0:
        return out
    need_pool = bool(np.any(mode_ids != 0))
    S_h, pool, _, _, _, plan = _run(cell, table, ids, offsets, W_hh, b_hh, reverse, need_pool, 0)
    order, lens_s, _, _ = plan
    if not need_pool:
        pool = np.zeros((2, 1, 1), F32)
    _finish_pool(S_h, pool, lens_s, order, mode_ids, out)
    return out
