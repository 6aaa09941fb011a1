"""Token attributions of a batch, through the model's own kernels: the arithmetic behind
``rnnpipe explain`` (``pipeline.explain`` streams files and writes reports around it).

Three methods, each giving every token the model saw a number toward one class (the
predicted one unless another is asked for):

* ``ig``, integrated gradients (Sundararajan et al. 2017): the token's embedding times the
  average gradient of the class's logit along the straight path from an all-zero input (the
  padding embedding, every position kept) to the review. Many copies of a batch's reviews
  run through the kernels at once: copy k has every token's embedding scaled by its alpha
  (the kernels' per-token input scale, so the input projection runs once per distinct
  word, not once per copy), and the gradient of a token's scale, x . df/dx at alpha * x,
  is the integrand. The attributions add up to f(review) - f(baseline) (completeness);
  each row carries how far they miss it (``gap``, relative).
* ``grad``: gradient times input, one forward and backward pass.
* ``occlusion``: f(review) - f(review without the token), the model-agnostic check.

f is the logit of the class (for a binary model the single logit, negated for the negative
class), before the temperature: a temperature rescales every attribution alike.

**The integral.** ``steps`` Gauss-Legendre nodes over [0, 1], as Captum integrates by
default, and both ends. Where a model max-pools its states, f along the path is not smooth:
a unit's maximum moves from token to token, and for about half of IMDB reviews the state
flips within a few thousandths of alpha (f' peaking at hundreds of times its mean), which
no fixed rule of 32 nodes resolves (median gap 2.3 % on 1,000 held-out reviews, 90th
percentile 75 %). A review whose gap exceeds ``tolerance`` is therefore refined: f and f'
(the sum of its tokens' integrands) are known at every alpha evaluated, so under the
trapezoid rule over those alphas each interval's share of the gap is known exactly
(the trapezoid of f' against the change of f); the worst intervals get their midpoints
evaluated, and round again, until the gap is within ``tolerance`` or the review has
``_MAX_STEPS_FACTOR`` x ``steps`` alphas. The review then keeps whichever of the two rules
(Gauss-Legendre, the refined trapezoid) misses less; the reported gap is that rule's own.

Example::

    exp = attributions(model, model.encode(texts), targets=None)
    exp.values[exp.offsets[0]:exp.offsets[1]]      # the first review's tokens
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pipeline import ngrams
from pipeline.config import METHODS
from pipeline.errors import ConfigError
from pipeline.model import Model
from pipeline.text import TokenIds

__all__ = ["Explanation", "attributions"]

F32 = np.float32

# interpolated token rows per forward + backward pass: bounds memory (the default model
# peaks near 550 MB explaining with ig); on random IMDB reviews 1 << 15 ran ig 1.06x and
# grad 1.05x as fast as 1 << 14, and 1 << 16 about 1.15x but peaked near 800 MB
_ROWS_PER_PASS = 1 << 15
# A refinement round adds the midpoints of a review's intervals that miss most: up to
# _NEW_PER_ROUND of them, those missing at least _WITHIN times the worst one's share. On
# 300 held-out IMDB reviews (tolerance 1 %): 16 and 0.1 gave a median gap of 0.41 % for 52
# alphas a review on average in 32 rounds; 4 and 0.5, 51 alphas but 186 rounds (1.06x
# the time); Gauss-Legendre pieces of 4 nodes cut around the steepest interval, 70 alphas.
_NEW_PER_ROUND = 16
_WITHIN = 0.1
_MAX_STEPS_FACTOR = 8  # a review stops refining at this many times ``steps`` alphas
_ABS_FLOOR = 1e-4  # a gap this small (in logit units) is float32 noise: no refinement


@dataclass
class Explanation:
    """Attributions of a batch: ``values`` float32[nnz] in token order (``offsets`` the
    tokens' int64[n+1]); ``target`` int[n] the class each row is explained toward; ``f_x`` and
    ``f_base`` float64[n] the class's logit for the review and the baseline (ig); ``gap``
    float32[n] |sum(values) - (f_x - f_base)| / |f_x - f_base| (ig; NaN otherwise);
    ``evaluations`` int32[n] the forward and backward passes each row took (ig: the alphas
    of its path, both ends included)."""

    values: np.ndarray
    offsets: np.ndarray
    target: np.ndarray
    f_x: np.ndarray
    f_base: np.ndarray
    gap: np.ndarray
    evaluations: np.ndarray | None = None


def _coefficients(model: Model, target: np.ndarray) -> np.ndarray:
    """(n, C') with f = sum(coef * logits): +-1 on a binary model's logit, else one-hot."""
    if model.config.binary:
        return np.where(target == 1, 1.0, -1.0)[:, None]
    coef = np.zeros((target.size, model.config.num_outputs))
    coef[np.arange(target.size), target] = 1.0
    return coef


def _quiet(model: Model) -> Model:
    """The model without its training-time regularisers (the same parameters)."""
    cfg = dataclasses.replace(
        model.config, dropout=0.0, word_dropout=0.0, embed_dropout=0.0, weight_drop=0.0
    )
    return Model(cfg, model.params, backend=model.backend)


# ---------------------------------------------------------------------------------------------
# Copies along the path, through the kernels
# ---------------------------------------------------------------------------------------------


def _passes(lengths: np.ndarray) -> list[np.ndarray]:
    """Reviews in passes of at most ``_ROWS_PER_PASS`` token rows (one review at least),
    ``lengths`` being each review's rows (its length times its copies), taken in order of
    length: a pass's sequences then end at about the same step, so the kernels' blocks keep
    all their rows running (grad 1.1x, ig 1.2x faster than consecutive reviews)."""
    order = np.argsort(lengths, kind="stable")
    out, start, acc = [], 0, 0
    for k, length in enumerate(lengths[order].tolist()):
        if acc and acc + length > _ROWS_PER_PASS:
            out.append(order[start:k])
            start, acc = k, 0
        acc += length
    if start < lengths.size:
        out.append(order[start:])
    return out


@dataclass
class _Copies:
    """What a set of copies gave: per copy ``f`` (the class's logit) and ``slope`` (the sum of
    its tokens' integrands, f' along the path), and ``grads`` float64, copy c's tokens at
    ``offsets[c]:offsets[c + 1]``."""

    f: np.ndarray
    slope: np.ndarray
    grads: np.ndarray
    offsets: np.ndarray


def _evaluate(
    quiet: Model,
    tokens: TokenIds,
    counts: np.ndarray,
    alphas: np.ndarray,
    targets: np.ndarray,
    offset: np.ndarray | None = None,
) -> _Copies:
    """Run ``counts[i]`` copies of review i (consecutive in ``alphas``, a review's copies in
    one pass), each with every token's embedding scaled by its alpha: one forward and one
    backward pass per batch of copies. ``targets[i]`` < 0: review i's predicted class, read
    from the logits of its copy at alpha 1 (plus ``offset[i]``, the logits of a part of the
    model outside the kernels) before the backward pass (filled in place)."""
    lens = tokens.lengths
    copy_review = np.repeat(np.arange(len(tokens)), counts)
    copy_off = np.zeros(copy_review.size + 1, np.int64)
    np.cumsum(lens[copy_review], out=copy_off[1:])
    first = np.r_[0, np.cumsum(counts)]  # review i's copies: first[i]:first[i + 1]
    out = _Copies(np.empty(alphas.size), np.empty(alphas.size), np.empty(copy_off[-1]), copy_off)
    for group in _passes(lens * counts):
        group = group[counts[group] > 0]
        if group.size == 0:
            continue
        copies = np.concatenate([np.arange(first[i], first[i + 1]) for i in group])
        batch = tokens.take(copy_review[copies])
        scale = np.repeat(alphas[copies], batch.lengths).astype(np.float32)
        logits, cache = quiet.forward(batch, training=True, input_scale=scale)
        z = logits.astype(np.float64)
        # the batch holds the copies in ``copies``' order: review group[k]'s from at[k]
        at = np.r_[0, np.cumsum(counts[group])]
        unknown = np.flatnonzero(targets[group] < 0)
        if unknown.size:  # the argmax of the probabilities, whatever the temperature
            last = z[[at[k] + _copy_at(alphas, first, group[k], 1.0) for k in unknown]]
            if offset is not None:
                last = last + offset[group[unknown]]
            picked = (last[:, 0] > 0).astype(np.int64) if quiet.config.binary else last.argmax(1)
            targets[group[unknown]] = picked
        coefs = _coefficients(quiet, targets[copy_review[copies]])
        out.f[copies] = (z * coefs).sum(axis=1)
        grads = quiet.backward(cache, coefs, sparse_embedding=True, weights=False)
        g = grads["input_scale"].astype(np.float64)
        out.slope[copies] = _segment_sums(g, batch.offsets)
        for k, i in enumerate(group.tolist()):
            a, b = first[i], first[i + 1]
            src = int(batch.offsets[at[k]])
            out.grads[copy_off[a] : copy_off[b]] = g[src : src + copy_off[b] - copy_off[a]]
    return out


def _copy_at(alphas: np.ndarray, first: np.ndarray, review: int, alpha: float) -> int:
    """The position among review ``review``'s copies of its copy at ``alpha``."""
    hits = np.flatnonzero(alphas[first[review] : first[review + 1]] == alpha)
    if hits.size == 0:
        raise ValueError(f"review {review} has no copy at alpha {alpha} to read its class from")
    return int(hits[0])


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    sums = np.zeros(offsets.size - 1)
    ran = offsets[1:] > offsets[:-1]
    if values.size:
        sums[ran] = np.add.reduceat(values, offsets[:-1][ran])
    return sums


# ---------------------------------------------------------------------------------------------
# Integrated gradients: Gauss-Legendre, refined where a path needs it
# ---------------------------------------------------------------------------------------------


@dataclass
class _Path:
    """One review's path: every alpha evaluated (ascending), f and f' there, its tokens'
    integrands (float32, one array per alpha), and the integral chosen so far."""

    alphas: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)
    slope: list[float] = field(default_factory=list)
    grads: list[np.ndarray] = field(default_factory=list)
    values: np.ndarray | None = None  # float64 per token
    gap: float = 0.0  # sum(values) - (f(1) - f(0))

    def add(self, alpha: float, f: float, slope: float, grads: np.ndarray) -> None:
        k = bisect.bisect(self.alphas, alpha)
        for seq, v in ((self.alphas, alpha), (self.f, f), (self.slope, slope)):
            seq.insert(k, v)
        self.grads.insert(k, grads)

    def misses(self) -> np.ndarray:
        """Per interval between evaluated alphas: the trapezoid of f' minus the change of f,
        that interval's exact share of the trapezoid rule's gap."""
        a, f, s = (np.asarray(v) for v in (self.alphas, self.f, self.slope))
        return np.diff(a) * (s[:-1] + s[1:]) / 2 - np.diff(f)

    def trapezoid(self) -> tuple[np.ndarray, float]:
        """The trapezoid rule over every alpha evaluated: each token's integral, and its
        gap (the intervals' misses summed)."""
        ends = np.asarray(self.alphas)[[0, *range(len(self.alphas)), -1]]
        weights = (ends[2:] - ends[:-2]) / 2  # (a[k+1] - a[k-1]) / 2, halved at the ends
        values = weights @ np.asarray(self.grads, dtype=np.float64)
        return values, float(self.misses().sum())


def _needs_more(gap: float, diff: float, tolerance: float) -> bool:
    return abs(gap) > max(tolerance * abs(diff), _ABS_FLOOR)


def _integrated_gradients(
    quiet: Model, tokens: TokenIds, targets: np.ndarray, steps: int, tolerance: float,
    offset: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Each token's integral [nnz], and per review f(1), f(0), the gap (absolute, signed)
    and the alphas evaluated (``targets`` filled in place, see ``_evaluate``)."""
    n, lens = len(tokens), tokens.lengths
    x, w = np.polynomial.legendre.leggauss(steps)
    nodes, weights = (x + 1) / 2, w / 2
    first = np.r_[nodes, 0.0, 1.0]  # the ends weigh nothing in Gauss-Legendre's rule
    m = first.size
    got = _evaluate(quiet, tokens, np.full(n, m), np.tile(first, n), targets, offset)
    paths = [_Path() for _ in range(n)]
    f1 = got.f[m - 1 :: m].copy()
    f0 = got.f[m - 2 :: m].copy()
    for i, path in enumerate(paths):
        g = got.grads[got.offsets[i * m] : got.offsets[(i + 1) * m]].reshape(m, lens[i])
        path.values = weights @ g[:steps]
        path.gap = float(path.values.sum()) - (f1[i] - f0[i])
        if lens[i] and tolerance > 0 and _needs_more(path.gap, f1[i] - f0[i], tolerance):
            for k in np.argsort(first):
                c = i * m + k
                path.add(float(first[k]), float(got.f[c]), float(got.slope[c]), g[k].astype(F32))
    cap = _MAX_STEPS_FACTOR * steps
    refining = [i for i in range(n) if paths[i].alphas]
    while refining:
        todo, alphas = [], []
        for i in refining:
            path = paths[i]
            miss = path.misses()
            if len(path.alphas) >= cap or not _needs_more(miss.sum(), f1[i] - f0[i], tolerance):
                continue
            worst = np.argsort(-np.abs(miss), kind="stable")[:_NEW_PER_ROUND]
            worst = worst[np.abs(miss[worst]) >= _WITHIN * np.abs(miss).max()]
            a = np.asarray(path.alphas)
            todo.append(i)
            alphas.append((a[worst] + a[worst + 1]) / 2)  # each interval's midpoint
        if not todo:
            break
        counts = np.zeros(n, np.int64)
        counts[todo] = [a.size for a in alphas]
        got = _evaluate(quiet, tokens, counts, np.concatenate(alphas), targets)
        c = 0
        for i, new in zip(todo, alphas, strict=True):
            for alpha in new.tolist():
                g = got.grads[got.offsets[c] : got.offsets[c + 1]].astype(F32)
                paths[i].add(alpha, float(got.f[c]), float(got.slope[c]), g)
                c += 1
        refining = todo
    values = np.zeros(tokens.nnz)
    gaps, evaluations = np.zeros(n), np.full(n, m, np.int32)
    for i, path in enumerate(paths):
        if path.alphas:  # the trapezoid over every alpha, unless Gauss-Legendre missed less
            evaluations[i] = len(path.alphas)
            trap, gap = path.trapezoid()
            if abs(gap) < abs(path.gap):
                path.values, path.gap = trap, gap
        values[tokens.offsets[i] : tokens.offsets[i + 1]] = path.values
        gaps[i] = path.gap
    return values, f1, f0, gaps, evaluations


# ---------------------------------------------------------------------------------------------
# The public entry
# ---------------------------------------------------------------------------------------------


def _occlusion(model: Model, tokens: TokenIds, coef: np.ndarray) -> np.ndarray:
    """f(x) - f(x without token t), every token of every row (the reviews with one token
    left out each run through the inference path)."""
    values = np.zeros(tokens.nnz, dtype=np.float64)
    for i in range(len(tokens)):
        seq = tokens[i]
        L = seq.size
        if L == 0:
            continue
        keep = ~np.eye(L, dtype=bool)  # row t: every token but t
        ids = np.concatenate([seq[None, :].repeat(L, axis=0)[keep], seq])
        offsets = np.r_[np.arange(L + 1) * (L - 1), L * (L - 1) + L]
        z = model.predict_logits(TokenIds(offsets, ids)).astype(np.float64)
        f = z @ coef[i]
        values[tokens.offsets[i] : tokens.offsets[i + 1]] = f[-1] - f[:-1]
    return values


def _composite(
    model: Model, tokens: TokenIds, targets: np.ndarray | None, method: str, steps: int,
    tolerance: float,
) -> Explanation:  # fmt: skip
    """An ensemble's or a model with an n-gram head: f is the mean of the recurrent
    members' plus the head's, so is every token's attribution (toward the whole model's
    class). The head is linear in which n-grams occur: each token gets its exact share
    (``pipeline.ngrams.token_shares``), and its baseline is the review without n-grams.
    A single recurrent model's pass finds the class itself, its logits plus the head's."""
    cfg, head = model.config, None
    if cfg.ngrams:
        W, b = model.params["ngram.W"], model.params["ngram.b"].astype(np.float64)
        feats = ngrams.features(tokens, cfg.ngrams, cfg.ngram_bits)
        head = ngrams.head_logits(feats, W, b, cfg.ngram_scale)
    if targets is None and cfg.members > 1:  # the mean of the members' logits decides
        targets = model.predict_proba(tokens).argmax(axis=1)
    parts = [_recurrent(m, tokens, targets, method, steps, tolerance, head)
             for m in model.members()]  # fmt: skip
    targets = parts[0].target
    k = len(parts)
    values = sum(p.values.astype(np.float64) for p in parts) / k
    f_x = sum(p.f_x for p in parts) / k
    f_base = sum(p.f_base for p in parts) / k
    if head is not None:
        coef = _coefficients(model, targets)
        values += ngrams.token_shares(tokens, cfg.ngrams, cfg.ngram_bits, W, coef, cfg.ngram_scale)
        f_x = f_x + (head * coef).sum(axis=1)
        f_base = f_base + coef @ b
    gap = parts[0].gap
    if method == "ig":
        diff = f_x - f_base
        missed = _segment_sums(values, tokens.offsets) - diff
        gap = (np.abs(missed) / np.maximum(np.abs(diff), 1e-9)).astype(np.float32)
        gap[tokens.lengths == 0] = 0.0
    evaluations = sum(p.evaluations for p in parts)
    return Explanation(values.astype(np.float32), tokens.offsets, parts[0].target, f_x, f_base,
                       gap, evaluations)  # fmt: skip


def attributions(
    model: Model,
    tokens: TokenIds,
    targets: np.ndarray | None = None,
    method: str = "ig",
    steps: int = 32,
    tolerance: float = 0.01,
) -> Explanation:
    """Attributions of every token of ``tokens`` (already truncated, as ``model.encode``
    gives them) toward ``targets`` (int class per row; None: the predicted class).

    ``steps``: ig's Gauss-Legendre nodes for every row; ``tolerance``: rows whose relative
    completeness gap exceeds it get more nodes where their path needs them (0: never).

    Example: ``attributions(model, model.encode(texts), method="grad").values``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: expected ig, grad or occlusion")
    n = len(tokens)
    if method == "occlusion":
        chosen = model.predict_proba(tokens).argmax(axis=1) if targets is None else targets
        chosen = np.array(chosen, dtype=np.int64)
        coef = _coefficients(model, chosen)
        values = _occlusion(model, tokens, coef)
        f_x = (model.predict_logits(tokens).astype(np.float64) * coef).sum(axis=1)
        evaluations = (tokens.lengths + 1).astype(np.int32)
        nan = np.full(n, np.nan)
        return Explanation(values.astype(np.float32), tokens.offsets, chosen, f_x, nan,
                           nan.astype(np.float32), evaluations)  # fmt: skip
    if model.config.members > 1 or model.config.ngrams > 0:
        return _composite(model, tokens, targets, method, steps, tolerance)
    return _recurrent(model, tokens, targets, method, steps, tolerance)


def _recurrent(
    model: Model, tokens: TokenIds, targets: np.ndarray | None, method: str, steps: int,
    tolerance: float, offset: np.ndarray | None = None,
) -> Explanation:  # fmt: skip
    """ig or grad of one recurrent model, through the kernels (``offset``: see
    ``_evaluate``)."""
    n = len(tokens)
    chosen = np.full(n, -1, np.int64) if targets is None else np.array(targets, dtype=np.int64)
    nan = np.full(n, np.nan)
    quiet = _quiet(model)
    if method == "grad":
        got = _evaluate(quiet, tokens, np.ones(n, np.int64), np.ones(n), chosen, offset)
        values = got.grads.astype(np.float32)
        return Explanation(values, tokens.offsets, chosen, got.f, nan, nan.astype(np.float32),
                           np.ones(n, np.int32))  # fmt: skip
    values, f_x, f_base, gaps, evaluations = _integrated_gradients(
        quiet, tokens, chosen, steps, tolerance, offset
    )
    gap = (np.abs(gaps) / np.maximum(np.abs(f_x - f_base), 1e-9)).astype(np.float32)
    gap[tokens.lengths == 0] = 0.0
    return Explanation(values.astype(np.float32), tokens.offsets, chosen, f_x, f_base, gap,
                       evaluations)  # fmt: skip
