"""Minibatch assembly: length-bucketed shuffled batches, sorted inference batches, splits.

Sequences are ragged and never padded, but a batch still costs as much as its longest
sequence on a parallel kernel (threads finishing early sit idle), so batches group reviews
of similar length. For training, the order stays random: shuffle, sort by length only
within chunks of a few dozen batches, then shuffle the batch order. Truncation to
``max_len`` (keeping the last tokens) is ``TokenIds.truncate``.

Example::

    rng = np.random.default_rng(0)
    for idx in length_bucketed_batches(tokens.lengths, 64, rng):
        batch = tokens.take(idx)
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["group_split", "length_bucketed_batches", "sorted_batches", "stratified_split"]


def length_bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    bucket_width_factor: int = 50,
) -> list[np.ndarray]:
    """Shuffled batches of row indices, each holding sequences of similar length.

    Parameters: ``lengths`` int[n] sequence lengths; ``batch_size`` rows per batch (the last
    batch of each chunk may be smaller); ``rng`` the only source of randomness (same state,
    same batches); ``bucket_width_factor`` how many batches form one chunk that is sorted by
    length (1 keeps batches random in length, larger is more uniform but less random).

    Returns a list of int64 index arrays covering every row exactly once.

    Raises ConfigError for a batch size or factor below 1.

    Example::

        batches = length_bucketed_batches(np.array([5, 1, 9, 2]), 2, np.random.default_rng(0))
    """
    if batch_size < 1 or bucket_width_factor < 1:
        raise ConfigError(
            f"batch size and bucket width factor must be >= 1, got {batch_size}, "
            f"{bucket_width_factor}"
        )
    lengths = np.asarray(lengths)
    perm = rng.permutation(lengths.size)
    chunk = batch_size * bucket_width_factor
    batches = []
    for start in range(0, perm.size, chunk):
        part = perm[start : start + chunk]
        # stable sort: ties keep the shuffled order, so equal lengths still mix
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[k : k + batch_size] for k in range(0, part.size, batch_size))
    order = rng.permutation(len(batches))
    return [batches[k].astype(np.int64, copy=False) for k in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices sorted by length and cut into batches (inference: no randomness needed).

    Example: ``sorted_batches(np.array([3, 1, 2]), 2)`` is ``[array([1, 2]), array([0])]``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable").astype(np.int64)
    return [order[k : k + batch_size] for k in range(0, order.size, batch_size)]


def stratified_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, valid) index arrays, keeping each class's share in both.

    Each class with ``count`` rows sends ``round(frac * count)`` of them, chosen at random with
    ``seed``, to validation, at least one when the class has two or more rows and
    ``frac`` > 0 (a class with a single row stays in training). Both arrays come back sorted.

    Raises ConfigError when ``frac`` is outside [0, 1).

    Example::

        train_idx, valid_idx = stratified_split(np.array([0, 0, 1, 1, 1, 0]), 0.34, seed=0)
    """
    if not 0 <= frac < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {frac}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    valid = []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        k = int(round(frac * rows.size))
        if frac > 0 and rows.size >= 2:
            k = min(max(k, 1), rows.size - 1)
        valid.append(rng.permutation(rows)[:k])
    valid_idx = np.sort(np.concatenate(valid)) if valid else np.zeros(0, np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[valid_idx] = False
    return np.flatnonzero(mask).astype(np.int64), valid_idx.astype(np.int64)


def group_split(
    groups: np.ndarray, y: np.ndarray, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, valid) index arrays so that no group is on both sides.

    For data where rows come in groups that share words a model could memorise (the reviews
    of one film, the posts of one user), a random split rewards that memory and overstates
    accuracy on new groups. Whole groups go to validation, visited in an order fixed by
    ``seed``; a group is taken when it keeps every class at or under ``frac`` of its rows, so
    each class's share is kept as far as the groups' sizes allow. A class that would
    otherwise have no validation row gets its smallest group. Both arrays come back sorted.

    Parameters: ``groups`` a key per row (any type ``np.unique`` sorts); ``y`` int class
    index per row; ``frac`` in (0, 1); ``seed``.

    Raises ConfigError for a ``frac`` outside (0, 1) or fewer than two groups.

    Example::

        train_idx, valid_idx = group_split(np.array(["a", "a", "b", "c"]), np.array([0, 1, 0, 1]),
                                           0.5, seed=0)
    """
    if not 0 < frac < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {frac}")
    y = np.asarray(y, dtype=np.int64)
    keys, g = np.unique(np.asarray(groups), return_inverse=True)
    g = g.reshape(-1)
    n_groups, n_classes = keys.size, int(y.max()) + 1 if y.size else 0
    if n_groups < 2:
        raise ConfigError(f"a group split needs at least two groups, found {n_groups}")
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)  # rows of each class per group
    np.add.at(counts, (g, y), 1)
    target = frac * counts.sum(axis=0)  # (C,) validation rows wanted per class
    taken = np.zeros(n_groups, dtype=bool)
    have = np.zeros(n_classes, dtype=np.int64)
    for k in np.random.default_rng(seed).permutation(n_groups):
        if np.all(have + counts[k] <= target):
            taken[k] = True
            have += counts[k]
    for c in range(n_classes):
        if have[c] == 0 and counts[:, c].sum() >= 2:
            candidates = np.flatnonzero((counts[:, c] > 0) & ~taken)
            if candidates.size:
                k = candidates[np.argmin(counts[candidates].sum(axis=1))]
                taken[k] = True
                have += counts[k]
    valid = taken[g]
    return np.flatnonzero(~valid).astype(np.int64), np.flatnonzero(valid).astype(np.int64)
