"""The word n-gram head: a linear classifier over the distinct word n-grams of a review,
whose logits are added to the recurrent model's.

A recurrent layer reads words in order but summarises a review in a few hundred numbers; a
linear model over which n-grams occur remembers every phrase it was trained on. On IMDB
films the model never saw, the two err on different reviews, and their sum beats either
(docs/accuracy.md). The head is NBSVM's recipe (Wang & Manning 2012, "Baselines and
Bigrams"): each distinct n-gram of orders 1..N present in a review is a binary feature,
scaled by its naive-Bayes log-count ratio r (how much more often it occurs in one class's
reviews than in the others'), and logistic regression with an L2 penalty is fitted on those
scaled features by L-BFGS (``pipeline.lbfgs``). A review's sum is divided by the square root
of its number of distinct n-grams (``row_scale``): summed as they are, weights fitted on long
reviews left a short sentence to the bias. N-grams of token ids are hashed into 2^bits
buckets, so the head needs no n-gram vocabulary: 2^22 for a binary model (16 MB of weights;
2^21 buckets cost about 0.2 points on IMDB held-out films), fewer for many classes
(``table_bits``).

``train`` fits the head on the rows the recurrent model trained on, then one mix on the
validation rows: logits = a * recurrent + b * head + c minimising the cross-entropy (a, b > 0;
it replaces the temperature: T = 1/a). The saved model holds::

    ngram.W  [2^bits, C']   r * weight * unit * (b / a)      (unit: ``HeadProblem.unit``)
    ngram.b  [C']           (b * bias + c) / a

so its logits are the recurrent model's plus ``head_logits``, before the temperature.
Every kernel here runs on the CPU (``reference_*`` are their NumPy specifications), on any
backend: the head costs a hash and a sum per n-gram, against a recurrence per token.

Example::

    head = fit_head(train_tokens, y_train, n_classes=2, order=2, bits=22, scale="sqrt")
    z = head_logits(features(valid_tokens, 2, 22), head.W, head.b, "sqrt")      # [n, 1]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numba
import numpy as np

from pipeline.config import MAX_NGRAMS, NGRAM_BITS, NGRAM_BITS_RANGE
from pipeline.lbfgs import dot, minimize
from pipeline.metrics import cross_entropy
from pipeline.text import TokenIds
from pipeline.text.scan import FNV_PRIME, GOLDEN, mix64, ngram_hash

__all__ = [
    "Features",
    "Head",
    "HeadProblem",
    "Mix",
    "attach",
    "features",
    "fit_head",
    "fit_mix",
    "head_logits",
    "row_scale",
    "table_bits",
    "token_shares",
]

TABLE_FLOATS = 1 << 23  # a head's weights at most (32 MB): 2^22 buckets for up to 2 outputs
SMOOTHING = 1.0  # added to every n-gram's count per class (Laplace), as NBSVM does
PENALTY_C = 1.0  # C of the L2-penalised loss C * sum(losses) + |w|^2 / 2 (sklearn's meaning)


class Features(NamedTuple):
    """Each review's distinct n-gram buckets, ascending: ``offsets`` int64[n+1], ``buckets``
    int32[nnz]."""

    offsets: np.ndarray
    buckets: np.ndarray


@dataclass
class Head:
    """A fitted head: ``order`` N, ``bits``, ``W`` float32[2^bits, C'] (zero for buckets no
    training review had), ``b`` float32[C'], ``scale`` what divides a review's sum of ``W``
    (``row_scale``)."""

    order: int
    bits: int
    W: np.ndarray
    b: np.ndarray
    scale: str


@dataclass(frozen=True)
class Mix:
    """logits = (recurrent + beta * head + shift) / temperature, fitted on validation rows."""

    temperature: float = 1.0
    beta: float = 1.0
    shift: tuple[float, ...] = ()


# ---------------------------------------------------------------------------------------------
# Hashed n-grams
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _bucket(ids, j, o, shift):  # pragma: no cover - compiled
    # the n-gram ids[j:j+o]'s hash; its top bits pick the bucket
    return np.int32(ngram_hash(ids, j, o) >> np.uint64(shift))


@numba.njit(cache=True, parallel=True)
def _row_buckets(ids, offsets, order, shift, starts, out, counts):  # pragma: no cover
    # each row's n-gram buckets into out[starts[i]:], sorted, duplicates dropped in place
    for i in numba.prange(offsets.size - 1):
        a, e, k = offsets[i], offsets[i + 1], starts[i]
        for o in range(1, order + 1):
            for j in range(a, e - o + 1):
                out[k] = _bucket(ids, j, o, shift)
                k += 1
        seg = out[starts[i] : k]
        seg.sort()
        m = 0
        for j in range(seg.size):
            if m == 0 or seg[j] != seg[m - 1]:
                seg[m] = seg[j]
                m += 1
        counts[i] = m


@numba.njit(cache=True, parallel=True)
def _compact(out, starts, offsets, buckets):  # pragma: no cover - compiled
    for i in numba.prange(offsets.size - 1):
        m = offsets[i + 1] - offsets[i]
        buckets[offsets[i] : offsets[i + 1]] = out[starts[i] : starts[i] + m]


def table_bits(outputs: int) -> int:
    """The bucket bits of a head with ``outputs`` logits: 22 for a binary model, fewer for
    many classes, so the table stays within ``TABLE_FLOATS``. Example: ``table_bits(3) == 21``."""
    return min(NGRAM_BITS, (TABLE_FLOATS // outputs).bit_length() - 1)


def _occurrences(lengths: np.ndarray, order: int) -> np.ndarray:
    """int64[n]: how many n-grams of orders 1..order each row holds."""
    return sum(np.maximum(lengths - (o - 1), 0) for o in range(1, order + 1))


def _check(order: int, bits: int) -> None:
    low, high = NGRAM_BITS_RANGE
    if not 1 <= order <= MAX_NGRAMS or not low <= bits <= high:
        raise ValueError(
            f"n-gram order must be in 1..{MAX_NGRAMS} and bits in {low}..{high}, "
            f"got {order}, {bits}"
        )


def features(tokens: TokenIds, order: int, bits: int) -> Features:
    """The distinct buckets of every review's n-grams of orders 1..``order`` (an n-gram is
    its token ids in order; one never spans two reviews). Example:
    ``features(model.encode(texts), 2, 22).buckets``."""
    _check(order, bits)
    lengths = tokens.lengths
    starts = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(_occurrences(lengths, order), out=starts[1:])
    out = np.empty(int(starts[-1]), np.int32)
    counts = np.zeros(len(tokens), np.int64)
    _row_buckets(tokens.ids, tokens.offsets, order, 64 - bits, starts, out, counts)
    offsets = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    buckets = np.empty(int(offsets[-1]), np.int32)
    _compact(out, starts, offsets, buckets)
    return Features(offsets, buckets)


def reference_buckets(tokens: TokenIds, order: int, bits: int) -> list[np.ndarray]:
    """NumPy specification of ``features``: every n-gram occurrence's bucket, per review, in
    order (orders 1..N, positions ascending within each order)."""
    out = []
    with np.errstate(over="ignore"):
        for i in range(len(tokens)):
            seq = tokens[i].astype(np.uint64)
            parts = []
            for o in range(1, order + 1):
                m = max(seq.size - o + 1, 0)
                h = np.full(m, o, np.uint64) * GOLDEN
                for t in range(o):
                    h = (h ^ seq[t : t + m]) * FNV_PRIME
                parts.append((mix64.py_func(h) >> np.uint64(64 - bits)).astype(np.int32))
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
    return out


# ---------------------------------------------------------------------------------------------
# Sums over a review's n-grams and over an n-gram's reviews
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def _row_sums(offsets, cols, V, out):  # pragma: no cover - compiled
    # also the transposed product: by columns, (col_offsets, rows_by_col) are the "rows"
    for i in numba.prange(offsets.size - 1):
        for j in range(offsets[i], offsets[i + 1]):
            for k in range(V.shape[1]):
                out[i, k] += V[cols[j], k]


def row_sums(offsets: np.ndarray, cols: np.ndarray, V: np.ndarray) -> np.ndarray:
    """float64[n, K]: each row's sum of ``V[cols[j]]`` over its entries (a sparse binary
    matrix times V)."""
    out = np.zeros((offsets.size - 1, V.shape[1]))
    _row_sums(offsets, cols, np.ascontiguousarray(V), out)
    return out


def reference_row_sums(offsets: np.ndarray, cols: np.ndarray, V: np.ndarray) -> np.ndarray:
    out = np.zeros((offsets.size - 1, V.shape[1]))
    np.add.at(out, np.repeat(np.arange(offsets.size - 1), np.diff(offsets)), V[cols])
    return out


def row_scale(offsets: np.ndarray, scale: str) -> np.ndarray:
    """float64[n]: what multiplies each review's sum over its distinct buckets (``offsets``
    of ``Features``): 1 / sqrt(their number) for "sqrt" (1 for an empty review), else 1.

    The square root keeps a head's logits on one scale whatever the length: summed as is,
    weights fitted on IMDB reviews (325 distinct n-grams on average) left a 20-word sentence
    to the bias (the IMDB head called 80-94 % of SST-2's sentences positive).
    Example: ``row_scale(f.offsets, "sqrt")``.
    """
    counts = np.maximum(np.diff(offsets), 1).astype(np.float64)
    return 1.0 / np.sqrt(counts) if scale == "sqrt" else np.ones_like(counts)


def head_logits(feats: Features, W: np.ndarray, b: np.ndarray, scale: str) -> np.ndarray:
    """float64[n, C']: the head's logits, ``b`` plus the sum of ``W`` over each review's
    buckets times its ``row_scale``."""
    sums = row_sums(feats.offsets, feats.buckets, W)
    return sums * row_scale(feats.offsets, scale)[:, None] + b


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def nb_ratios(counts: np.ndarray) -> np.ndarray:
    """float64[U, K]: naive-Bayes log-count ratios from ``counts`` [U, C] (reviews of each
    class holding each n-gram), each smoothed; K = 1 for two classes (class 1 against class
    0), else each class against the rest. Example: ``nb_ratios(np.array([[1.0, 3.0]]))``."""
    p = counts + SMOOTHING
    if counts.shape[1] == 2:
        q, p = p[:, :1], p[:, 1:]
    else:
        q = counts.sum(axis=1, keepdims=True) - counts + SMOOTHING
    return np.log(p / p.sum(axis=0)) - np.log(q / q.sum(axis=0))


@numba.njit(cache=True, parallel=True)
def _penalised_grads(col_offsets, rows_by_col, dz, r, w, C, out):  # pragma: no cover
    # out[:U*K] = C * r * (X^T dz) + w, by columns of X
    U, K = r.shape
    for u in numba.prange(U):
        for k in range(K):
            acc = 0.0
            for j in range(col_offsets[u], col_offsets[u + 1]):
                acc += dz[rows_by_col[j], k]
            out[u * K + k] = C * acc * r[u, k] + w[u, k]


@numba.njit(cache=True)
def _rows_by_column(offsets, cols, col_offsets, out):  # pragma: no cover - compiled
    # each column's rows, ascending (a counting sort of the entries by column)
    at = col_offsets[:-1].copy()
    for i in range(offsets.size - 1):
        for j in range(offsets[i], offsets[i + 1]):
            out[at[cols[j]]] = i
            at[cols[j]] += 1


@dataclass
class HeadProblem:
    """The head's training problem on one set of reviews: the distinct buckets they hold
    (``used``, ascending) as columns 0..U-1 of a binary matrix stored by rows (``offsets``,
    ``cols``) and by columns (``col_offsets``, ``rows_by_col``), the ratios ``r`` [U, K],
    labels ``y``, the penalty's ``C``, each row's feature scale ``s`` (``row_scale`` times
    ``unit``, so an average review's features stay near 1 and ``C`` keeps its meaning at
    any length) and ``unit`` (sqrt of the mean distinct n-grams per row; 1 without a scale)."""

    used: np.ndarray
    offsets: np.ndarray
    cols: np.ndarray
    col_offsets: np.ndarray
    rows_by_col: np.ndarray
    r: np.ndarray
    y: np.ndarray
    C: float
    s: np.ndarray
    unit: float
    rw: np.ndarray = field(repr=False)  # scratch [U, K] for r * w, reused by objective

    @classmethod
    def build(
        cls, tokens: TokenIds, y: np.ndarray, n_classes: int, order: int, bits: int, C: float,
        scale: str,
    ) -> HeadProblem:  # fmt: skip
        feats = features(tokens, order, bits)
        y = np.asarray(y, dtype=np.int64)
        per_bucket = np.bincount(feats.buckets, minlength=1 << bits)
        used = np.flatnonzero(per_bucket)  # the buckets some review holds, ascending
        column = np.cumsum(per_bucket > 0) - 1  # bucket -> its column among the used
        cols = column[feats.buckets]
        col_offsets = np.zeros(used.size + 1, np.int64)
        np.cumsum(per_bucket[used], out=col_offsets[1:])
        rows_by_col = np.empty(cols.size, np.int64)
        _rows_by_column(feats.offsets, cols, col_offsets, rows_by_col)
        rows = np.repeat(np.arange(len(tokens)), np.diff(feats.offsets))
        counts = np.bincount(cols * n_classes + y[rows], minlength=used.size * n_classes)
        r = nb_ratios(counts.reshape(used.size, n_classes).astype(np.float64))
        s = row_scale(feats.offsets, scale)
        unit = float(np.sqrt(np.mean(1.0 / s**2))) if len(tokens) else 1.0
        rw = np.empty_like(r)
        return cls(used, feats.offsets, cols, col_offsets, rows_by_col, r, y, C, s * unit, unit, rw)

    def objective(self, x: np.ndarray, grad: np.ndarray) -> float:
        """C * (summed cross-entropy) + |w|^2 / 2 at x = (w [U, K] flat, bias [K]); its
        gradient goes into ``grad``. The logits are ``b + s * sum(r * w)`` over each review's
        columns."""
        U, K = self.r.shape
        w, bias = x[: U * K].reshape(U, K), x[U * K :]
        np.multiply(self.r, w, out=self.rw)
        s = self.s[:, None]
        z = row_sums(self.offsets, self.cols, self.rw) * s + bias
        per_row, dz = cross_entropy(z, self.y)
        _penalised_grads(self.col_offsets, self.rows_by_col, dz * s, self.r, w, self.C, grad)
        grad[U * K :] = self.C * dz.sum(axis=0)
        w_flat = x[: U * K]
        return self.C * float(per_row.sum()) + 0.5 * dot(w_flat, w_flat)


def fit_head(
    tokens: TokenIds, y: np.ndarray, n_classes: int, order: int, bits: int, scale: str,
    C: float = PENALTY_C,
) -> Head:  # fmt: skip
    """The head fitted on ``tokens`` (as the model reads them) and labels ``y`` (int [n]),
    each review's sum scaled by ``row_scale(.., scale)``.

    Only the buckets some review holds get a weight; the rest stay zero. Deterministic.
    Example: ``fit_head(tokens, y, 2, order=2, bits=22, scale="sqrt").W.shape  # (4194304, 1)``.
    """
    problem = HeadProblem.build(tokens, y, n_classes, order, bits, C, scale)
    U, K = problem.r.shape
    x = minimize(problem.objective, np.zeros(U * K + K))
    W = np.zeros((1 << bits, K), np.float32)
    W[problem.used] = problem.r * x[: U * K].reshape(U, K) * problem.unit
    return Head(order, bits, W, x[U * K :].astype(np.float32), scale)


def fit_mix(y: np.ndarray, recurrent: np.ndarray, head: np.ndarray) -> Mix:
    """The mix of two models' logits [n, C'] that minimises the cross-entropy of
    a * recurrent + b * head + c on held-out rows ``y`` (a, b > 0). Example:
    ``fit_mix(y_valid, rnn_logits, head_logits).beta``."""
    y = np.asarray(y, dtype=np.int64)
    zr, zh = np.asarray(recurrent, np.float64), np.asarray(head, np.float64)
    K = zr.shape[1]

    def fg(x: np.ndarray, grad: np.ndarray) -> float:
        a, b = np.exp(x[0]), np.exp(x[1])
        per_row, dz = cross_entropy(a * zr + b * zh + x[2:], y)
        grad[:] = [a * (dz * zr).sum(), b * (dz * zh).sum(), *dz.sum(axis=0)]
        return float(per_row.sum())

    x = minimize(fg, np.zeros(2 + K), tol=1e-10)
    a, b = float(np.exp(x[0])), float(np.exp(x[1]))
    return Mix(1.0 / a, b / a, tuple(float(c) / a for c in x[2:]))


def attach(model: Any, head: Head, mix: Mix) -> Any:
    """``model`` (a single or ensemble recurrent model, no head) with ``head`` mixed in: its
    config records the head and the mix's temperature, ``ngram.W``/``ngram.b`` the head
    scaled by the mix. Example: ``attach(refit, fit_head(...), fit_mix(...))``."""
    config = dataclasses.replace(
        model.config, ngrams=head.order, ngram_bits=head.bits, ngram_scale=head.scale,
        temperature=mix.temperature,
    )  # fmt: skip
    shift = np.asarray(mix.shift or np.zeros(head.b.size), np.float64)
    dtype = model.params["embedding"].dtype  # float64 on the reference backend's checks
    params = {
        **model.params,
        "ngram.W": (head.W * mix.beta).astype(dtype),
        "ngram.b": (mix.beta * head.b.astype(np.float64) + shift).astype(dtype),
    }
    return type(model)(config, params, tokenizer=model.tokenizer, backend=model.backend)


# ---------------------------------------------------------------------------------------------
# Attributions
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def _shares(ids, offsets, order, shift, starts, W, coef, sqrt_scale, out):  # pragma: no cover
    # a bucket's weight toward the row's class (coef . W[g]), times the row's scale, is split
    # equally among its occurrences in the review, and each occurrence's part among its tokens
    for i in numba.prange(offsets.size - 1):
        a, e = offsets[i], offsets[i + 1]
        n = starts[i + 1] - starts[i]
        b = np.empty(n, np.int32)
        pos = np.empty(n, np.int64)
        length = np.empty(n, np.int64)
        k = 0
        for o in range(1, order + 1):
            for j in range(a, e - o + 1):
                b[k], pos[k], length[k] = _bucket(ids, j, o, shift), j, o
                k += 1
        perm = np.argsort(b, kind="mergesort")
        scale = 1.0
        if sqrt_scale and n > 0:  # 1 / sqrt(distinct buckets), as row_scale
            distinct = 1
            for q in range(1, n):
                distinct += b[perm[q]] != b[perm[q - 1]]
            scale = 1.0 / np.sqrt(distinct)
        s = 0
        while s < n:
            t = s
            g = b[perm[s]]
            while t < n and b[perm[t]] == g:
                t += 1
            weight = 0.0
            for c in range(W.shape[1]):
                weight += coef[i, c] * W[g, c]
            part = scale * weight / (t - s)
            for q in range(s, t):
                m = perm[q]
                for u in range(length[m]):
                    out[pos[m] + u] += part / length[m]
            s = t


def token_shares(
    tokens: TokenIds, order: int, bits: int, W: np.ndarray, coef: np.ndarray, scale: str
) -> np.ndarray:
    """float64[nnz]: each token's share of the head's logit toward ``coef`` [n, C'] (the
    row's f = coef . logits): a bucket's weight times the review's ``row_scale`` split
    equally among its occurrences in the review, each occurrence's among its tokens. A row's
    shares add up to f(review) - f(no n-grams).
    Example: ``token_shares(tokens, 2, 22, model.params["ngram.W"], coef, "sqrt")``."""
    _check(order, bits)
    starts = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(_occurrences(tokens.lengths, order), out=starts[1:])
    out = np.zeros(tokens.nnz)
    coef = np.ascontiguousarray(coef, dtype=np.float64)
    _shares(tokens.ids, tokens.offsets, order, 64 - bits, starts, W, coef, scale == "sqrt", out)
    return out


def reference_token_shares(
    tokens: TokenIds, order: int, bits: int, W: np.ndarray, coef: np.ndarray, scale: str
) -> np.ndarray:
    """NumPy specification of ``token_shares``."""
    out = np.zeros(tokens.nnz)
    for i, occurrences in enumerate(reference_buckets(tokens, order, bits)):
        spans = [(j, o) for o in range(1, order + 1) for j in range(tokens[i].size - o + 1)]
        times = {g: int((occurrences == g).sum()) for g in set(occurrences.tolist())}
        f = 1 / np.sqrt(max(len(times), 1)) if scale == "sqrt" else 1.0
        for g, (j, o) in zip(occurrences.tolist(), spans, strict=True):
            out[tokens.offsets[i] + j : tokens.offsets[i] + j + o] += (
                f * coef[i] @ W[g] / times[g] / o
            )
    return out
