"""Classification metrics: accuracy, per-class F1, ROC AUC, log loss, confusion, calibration.

Everything takes true labels as class indices (int[n]) and predicted probabilities as
float[n, C] (rows summing to 1, column ``k`` for class ``k``; for a binary model column 1
is the positive class). ``evaluate_probs`` bundles them into one JSON-serialisable dict,
which the trainer writes to ``metrics.json`` and ``rnnpipe evaluate`` prints.

Example::

    from pipeline.metrics import evaluate_probs
    report = evaluate_probs(np.array([0, 1, 1]), probs, ("negative", "positive"))
    report["accuracy"], report["roc_auc"]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "accuracy",
    "confusion_matrix",
    "cross_entropy",
    "evaluate_probs",
    "expected_calibration_error",
    "f1_macro",
    "fit_temperature",
    "log_loss",
    "precision_recall_f1",
    "roc_auc",
    "sigmoid",
    "log_softmax",
]


def _labels(y: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {y.shape} {y.dtype}")
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64, copy=False)


def _probs(probs: np.ndarray, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] < 2:
        raise ValueError(f"probs must be [n={n}, C>=2], got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contain NaN or infinite values")
    return probs


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of ``y_pred`` equal to ``y_true`` (NaN when empty).

    Example: ``accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]))`` is 2/3.
    """
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return float(np.mean(y_true == y_pred)) if y_true.size else math.nan


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """int64[C, C] counts: row = true class, column = predicted class.

    Example: ``confusion_matrix([0, 1, 1], [0, 1, 0], 2)`` is ``[[1, 0], [1, 1]]``.
    """
    y_true, y_pred = _labels(y_true, n_classes), _labels(y_pred, n_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (float64[C]) and support (int64[C]).

    A ratio with a zero denominator is 0 (sklearn's ``zero_division=0``): a class never
    predicted has precision 0, a class never present recall 0.

    Example::

        p, r, f1, support = precision_recall_f1(y, y_hat, 3)
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores.

    Example: ``f1_macro([0, 1, 1], [0, 1, 0], 2)`` is (2/3 + 2/3) / 2.
    """
    return float(np.mean(precision_recall_f1(y_true, y_pred, n_classes)[2]))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (1 = positive), from ranks.

    Equals the probability that a random positive scores above a random negative, ties
    counting one half (Mann-Whitney U with average ranks). NaN when only one class is present.

    Example: ``roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])`` is 0.75.
    """
    y = _labels(y_true, 2)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped to [eps, 1-eps].

    Example: ``log_loss([1], [[0.2, 0.8]])`` is -log(0.8).
    """
    y = _labels(y_true)
    p = _probs(probs, y.size)
    if y.size == 0:
        return math.nan
    _labels(y, p.shape[1])
    p_true = np.clip(p[np.arange(y.size), y], eps, 1 - eps)
    return float(-np.mean(np.log(p_true)))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (Guo et al. 2017).

    Confidences (the largest probability of each row) go into ``n_bins`` equal-width bins
    (lo, hi]; ECE = sum over bins of (bin size / n) * |accuracy(bin) - mean confidence(bin)|.

    Example: ``expected_calibration_error([0, 1], [[0.9, 0.1], [0.8, 0.2]])`` is
    0.5*|1-0.9| + 0.5*|0-0.8| = 0.45.
    """
    y = _labels(y_true)
    p = _probs(probs, y.size)
    if y.size == 0:
        return math.nan
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin k holds conf in (k/n_bins, (k+1)/n_bins]; a confidence of exactly 0 goes to bin 0
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_correct = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.sum(np.abs(sum_correct - sum_conf)) / y.size)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, computed without overflow for any float."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log of the softmax of each row of ``z`` [n, C], shifted by the row's maximum."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cross-entropy float64[n] and its gradient by the logits [n, C'], for
    logits [n, C'] (C' = 1: a sigmoid's single logit, binary cross-entropy computed stably;
    else softmax) and class indices ``y`` [n]. Example: ``loss = cross_entropy(z, y)[0].mean()``.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if z.shape[1] == 1:
        z1 = z[:, 0]
        per_row = np.maximum(z1, 0) - z1 * y + np.log1p(np.exp(-np.abs(z1)))
        return per_row, (sigmoid(z1) - y)[:, None]
    logp = log_softmax(z)
    dz = np.exp(logp)
    dz[np.arange(y.size), y] -= 1.0
    return -logp[np.arange(y.size), y], dz


def _nll_at_scale(y: np.ndarray, z: np.ndarray, a: float) -> float:
    """Mean cross-entropy of logits ``z`` [n, C'] multiplied by ``a`` (C' = 1: sigmoid)."""
    return float(np.mean(cross_entropy(z * a, y)[0]))


def fit_temperature(y_true: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T > 0 that minimises the cross-entropy of ``logits / T`` on held-out
    rows (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one number that
    makes the scores mean what they say without changing any prediction's order.

    Parameters: ``y_true`` int class indices [n]; ``logits`` [n, C'] as the model returns
    them (C' = 1 for a binary model's single logit). The loss is convex in 1/T; a golden-
    section search finds its minimum to 1e-6 over T in [0.25, 10]: a wider range only
    lets a separable validation set push every score to 0 or 1.

    Returns T (1.0 for no rows). Raises ValueError for inconsistent shapes.

    Example: ``T = fit_temperature(y_valid, model.predict_logits(valid_tokens))``.
    """
    y = _labels(y_true)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits must be [n={y.size}, C'], got shape {z.shape}")
    if y.size == 0:
        return 1.0
    lo, hi = math.log(1 / 10), math.log(4.0)  # search log(1/T): the loss is unimodal there
    ratio = (math.sqrt(5) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = _nll_at_scale(y, z, math.exp(c)), _nll_at_scale(y, z, math.exp(d))
    while hi - lo > 1e-6:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = _nll_at_scale(y, z, math.exp(c))
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = _nll_at_scale(y, z, math.exp(d))
    return float(1.0 / math.exp((lo + hi) / 2))


def _finite_or_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def evaluate_probs(
    y_true_idx: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict:
    """Every metric for predicted ``probs`` [n, C] against true class indices, as a JSON dict.

    Keys: ``n``, ``accuracy``, ``f1_macro``, ``log_loss``, ``ece``, ``per_class`` (name ->
    precision, recall, f1, support), ``confusion_matrix`` (rows true, columns predicted, in the
    order of ``classes``), ``classes``, and ``roc_auc`` for binary problems (probability of
    class 1 as the score; None when only one class is present). Undefined values are None.

    Raises ValueError for inconsistent shapes or labels outside the classes.

    Example::

        evaluate_probs(np.array([0, 1]), np.array([[0.7, 0.3], [0.4, 0.6]]), ["neg", "pos"])
    """
    classes = [str(c) for c in classes]
    y = _labels(y_true_idx, len(classes))
    p = _probs(probs, y.size)
    if p.shape[1] != len(classes):
        raise ValueError(f"probs have {p.shape[1]} columns for {len(classes)} classes")
    y_pred = p.argmax(axis=1) if y.size else np.zeros(0, np.int64)
    precision, recall, f1, support = precision_recall_f1(y, y_pred, len(classes))
    report: dict = {
        "n": int(y.size),
        "accuracy": _finite_or_none(accuracy(y, y_pred)),
        "f1_macro": float(np.mean(f1)),
        "log_loss": _finite_or_none(log_loss(y, p)),
        "ece": _finite_or_none(expected_calibration_error(y, p)),
        "classes": classes,
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, y_pred, len(classes)).tolist(),
    }
    if len(classes) == 2:
        report["roc_auc"] = _finite_or_none(roc_auc(y, p[:, 1]))
    return report
