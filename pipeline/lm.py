"""The language-model head: predict each next token from the recurrent states, cheaply.

Pretraining (``pipeline.pretrain``) teaches the encoder to predict token t+1 from the
forward state after token t (and token t-1 from the backward state at t). A softmax over the
whole vocabulary would cost V dot products per token, far more than the recurrence itself;
the **sampled softmax** (Jean et al. 2015, "On Using Very Large Target Vocabulary") scores
each target against K words drawn once per batch from a unigram^0.75 distribution, with
every logit corrected by the log of its expected count in the sample so the estimate stays
consistent, and a sampled word that happens to be the row's own target left out
("accidental hit"). The head's products (states against the K candidates, and back) are
BLAS matrix products, the [N, K] softmax NumPy's vectorised exp, and the targets' own dot
products and gradient scatter Numba kernels; ``sampled_softmax_reference`` is the
specification they are tested against.

Held-out perplexity uses the full softmax (``full_softmax_nll``), in chunks of rows.

Example::

    sampler = UnigramSampler(counts, power=0.75)
    cand, log_q, tries = sampler.draw(rng, 256)
    loss, grads = sampled_softmax(h, y, W, b, cand, log_q, sampler.log_q_of(y, tries))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

__all__ = [
    "UnigramSampler",
    "full_softmax_nll",
    "sampled_softmax",
    "sampled_softmax_reference",
]


class UnigramSampler:
    """Draws distinct candidate words with probability proportional to count^power.

    Parameters: ``counts`` float[V] how often each id occurs (id 0, padding, is never
    drawn); ``power`` flattens the distribution (0.75 as in word2vec).

    ``draw(rng, k)`` returns k distinct ids (sorted) and, for each, the log of its expected
    number of occurrences in the draws it took (TensorFlow's unique-sampler correction:
    ``log(1 - (1 - q)^tries)``); ``log_q_of(ids, tries)`` gives the same for any ids.
    """

    def __init__(self, counts: np.ndarray, power: float = 0.75) -> None:
        w = np.asarray(counts, dtype=np.float64).copy()
        if w.ndim != 1 or w.size < 3:
            raise ValueError("counts must be a 1-D array over a vocabulary of at least 3 ids")
        w[0] = 0.0
        w = np.maximum(w, 0.0) ** power
        if w.sum() <= 0:
            raise ValueError("counts must not all be zero")
        self.q = w / w.sum()  # (V,) probability of one draw
        self.cdf = np.cumsum(self.q)
        self.cdf[-1] = 1.0

    def draw(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(``ids`` int32[k] sorted, ``log_q`` float32[k], ``tries``): k distinct ids."""
        k = min(k, int(np.count_nonzero(self.q)))
        seen: set[int] = set()
        tries = 0
        chunk = max(2 * k, 64)
        while len(seen) < k:
            draws = np.searchsorted(self.cdf, rng.random(chunk), side="right")
            for d in draws.tolist():
                tries += 1
                seen.add(d)
                if len(seen) == k:
                    break
        ids = np.array(sorted(seen), dtype=np.int32)
        return ids, self.log_q_of(ids, tries), tries

    def log_q_of(self, ids: np.ndarray, tries: int) -> np.ndarray:
        """float32 log of the expected count of each of ``ids`` in ``tries`` draws."""
        q = self.q[ids]
        expected = -np.expm1(tries * np.log1p(-np.minimum(q, 1 - 1e-12)))
        return np.log(np.maximum(expected, 1e-30)).astype(np.float32)


@dataclass
class SampledGrads:
    """The head's gradient: ``dh`` float[N, H]; ``rows`` int64[R] the vocabulary rows that
    have a gradient (the candidates and the targets, sorted, distinct); ``dW`` float[R, H]
    and ``db`` float[R] their gradients."""

    dh: np.ndarray
    rows: np.ndarray
    dW: np.ndarray
    db: np.ndarray


def sampled_softmax_reference(
    h: np.ndarray,
    targets: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    cand: np.ndarray,
    log_q_cand: np.ndarray,
    log_q_targets: np.ndarray,
) -> tuple[float, SampledGrads]:
    """The specification, in plain NumPy: mean over rows of the sampled-softmax loss.

    Row i's logits are ``[h_i . W[y_i] + b[y_i] - log_q(y_i)]`` followed by
    ``h_i . W[c] + b[c] - log_q(c)`` for every candidate c other than y_i; the loss is the
    cross-entropy with the first as the true class.

    Parameters: ``h`` float[N, H]; ``targets`` int[N]; ``W`` float[V, H]; ``b`` float[V];
    ``cand`` int[K] distinct; ``log_q_cand`` float[K]; ``log_q_targets`` float[N].
    Returns ``(loss, SampledGrads)``.
    """
    n = h.shape[0]
    t = np.einsum("nh,nh->n", h, W[targets]) + b[targets] - log_q_targets  # (N,)
    s = h @ W[cand].T + b[cand] - log_q_cand  # (N, K)
    hit = cand[None, :] == targets[:, None]
    s = np.where(hit, -np.inf, s)
    m = np.maximum(t, s.max(axis=1))
    e_t, e_s = np.exp(t - m), np.exp(s - m[:, None])
    z = e_t + e_s.sum(axis=1)
    loss = float(np.mean(np.log(z) + m - t))
    p_t, p_s = e_t / z, e_s / z[:, None]
    dt = (p_t - 1.0) / n  # d loss / d t_i
    ds = p_s / n  # d loss / d s_ik (zero at hits)
    dh = dt[:, None] * W[targets] + ds @ W[cand]
    rows = np.unique(np.concatenate([cand, targets]).astype(np.int64))
    pos = np.searchsorted(rows, cand)
    dW = np.zeros((rows.size, h.shape[1]), dtype=np.float64)
    db = np.zeros(rows.size, dtype=np.float64)
    np.add.at(dW, pos, ds.T @ h)
    np.add.at(db, pos, ds.sum(axis=0))
    tpos = np.searchsorted(rows, targets)
    np.add.at(dW, tpos, dt[:, None] * h)
    np.add.at(db, tpos, dt)
    return loss, SampledGrads(dh.astype(h.dtype), rows, dW.astype(h.dtype), db.astype(h.dtype))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _target_logits(h, targets, W, b, log_q_targets, out):  # pragma: no cover
    # out[i] = h_i . W[y_i] + b[y_i] - log_q(y_i), without gathering W[y] into a copy
    n, H = h.shape
    for i in numba.prange(n):
        y = targets[i]
        acc = np.float64(b[y]) - log_q_targets[i]
        for j in range(H):
            acc += np.float64(h[i, j]) * W[y, j]
        out[i] = acc


@numba.njit(cache=True)
def _target_grads(h, targets, tpos, dt, dh, W, dW, db):  # pragma: no cover
    # dh_i += dt_i * W[y_i] (rows independent) and the scatter-add of dt_i * h_i into the
    # targets' rows, serial so sums land in a fixed order
    n, H = h.shape
    for i in range(n):
        y, r, g = targets[i], tpos[i], dt[i]
        for j in range(H):
            dh[i, j] += g * W[y, j]
            dW[r, j] += g * h[i, j]
        db[r] += g


def sampled_softmax(
    h: np.ndarray,
    targets: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    cand: np.ndarray,
    log_q_cand: np.ndarray,
    log_q_targets: np.ndarray,
) -> tuple[float, SampledGrads]:
    """``sampled_softmax_reference``, fast: BLAS for the two candidate products, NumPy's
    vectorised ``exp`` over the [N, K] block, Numba for the targets' dot products and their
    scatter-add. Same arguments and results (to float32 rounding).

    Example: ``loss, g = sampled_softmax(h, y, W, b, cand, log_q, log_q_of_targets)``.
    """
    n = h.shape[0]
    dtype = h.dtype
    h = np.ascontiguousarray(h)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if n == 0:
        rows = np.unique(cand)
        return 0.0, SampledGrads(
            np.zeros_like(h), rows, np.zeros((rows.size, h.shape[1]), dtype), np.zeros(rows.size)
        )
    Wc = W[cand]  # (K, H)
    s = h @ Wc.T  # (N, K)
    s += (b[cand] - log_q_cand).astype(dtype)
    t = np.empty(n, dtype=np.float64)
    _target_logits(h, targets, W, b, np.asarray(log_q_targets, np.float64), t)
    # an accidental hit (a candidate that is the row's own target) takes no part
    at = np.minimum(np.searchsorted(cand, targets), cand.size - 1)
    hit = np.flatnonzero(cand[at] == targets)
    s[hit, at[hit]] = -np.inf
    m = np.maximum(s.max(axis=1).astype(np.float64), t)  # (N,)
    s -= m[:, None].astype(dtype)
    np.exp(s, out=s)
    e_t = np.exp(t - m)
    z = s.sum(axis=1, dtype=np.float64) + e_t
    loss = float(np.mean(np.log(z) + m - t))
    s *= (1.0 / (n * z))[:, None].astype(dtype)  # now dL/ds, the softmax scaled by 1/N
    dt = (e_t / z - 1.0) / n
    dh = s @ Wc  # (N, H)
    rows = np.unique(np.concatenate([cand, targets]))
    dW = np.zeros((rows.size, h.shape[1]), dtype=dtype)
    db = np.zeros(rows.size, dtype=dtype)
    pos = np.searchsorted(rows, cand)  # candidates are distinct: plain assignment
    dW[pos] = s.T @ h
    db[pos] = s.sum(axis=0)
    _target_grads(h, targets, np.searchsorted(rows, targets), dt, dh, W, dW, db)
    return loss, SampledGrads(dh, rows, dW, db)


def full_softmax_nll(
    h: np.ndarray, targets: np.ndarray, W: np.ndarray, b: np.ndarray, chunk: int = 2048
) -> float:
    """Summed negative log-likelihood of ``targets`` under the full softmax over all V words
    (``exp`` of the mean is the perplexity). Padding (id 0) is excluded from the softmax.

    Example: ``math.exp(full_softmax_nll(h, y, W, b) / y.size)``.
    """
    total = 0.0
    for start in range(0, h.shape[0], chunk):
        hc = np.asarray(h[start : start + chunk], dtype=np.float64)
        logits = hc @ W[1:].T.astype(np.float64) + b[1:]  # (n, V-1): ids 1..V-1
        m = logits.max(axis=1)
        lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
        yc = targets[start : start + chunk]
        total += float(np.sum(lse - logits[np.arange(yc.size), yc - 1]))
    return total if math.isfinite(total) else math.inf
