"""Rows that repeat, or lie inside, other rows: kept on one side of a validation split.

SST-2's training rows are phrases cut from its sentences; review and post collections hold
the same text twice (a review posted again, a retweet). A random split puts a phrase in
validation and its sentence in training, so validation rewards memory: on SST-2 it said
93 % where unseen sentences give 85 %, and the temperature and the n-gram head's mix fitted
on it overconfident. ``containment_groups`` finds, for every row, the row that heads it:

* a row's **container** is the first row, in the order "more tokens first, then lower
  index", whose tokens hold the row's tokens as one contiguous run (an identical row counts);
  a row with no container, or no token, heads itself;
* following containers from any row ends at its **head**; rows with one head form a group,
  which ``batching.group_split`` keeps whole.

Tokens are words as the tokenizer reads them (a vocabulary of every word, fitted on the rows
themselves, so ids equal exactly when words do). A container must hold the row's *anchor*, the
run of ``min(3, length)`` tokens whose hash is smallest in the row: only rows that hold some
row's anchor are indexed, then each candidate is compared token for token. Memory is the ids
(4 bytes a token) and the anchors' occurrences; time is about one tokenizer fit and encode.

Example::

    heads = containment_groups(["a good film", "good film", "bad"])   # -> [0, 0, 2]
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numba
import numpy as np

from pipeline.text import TokenIds, Tokenizer
from pipeline.text.scan import ngram_hash

__all__ = ["ANCHOR", "containment_groups", "reference_containment_groups"]

ANCHOR = 3  # tokens in an anchor: rarer than a word, still inside most short phrases


@numba.njit(cache=True, parallel=True)
def _anchors(ids, offsets, keys, where):  # pragma: no cover - compiled
    for r in numba.prange(offsets.size - 1):
        s, n = offsets[r], offsets[r + 1] - offsets[r]
        o = min(ANCHOR, n)
        best, at = np.uint64(0), -1
        for j in range(n - o + 1 if n else 0):
            k = ngram_hash(ids, s + j, o)
            if at < 0 or k < best:
                best, at = k, j
        keys[r], where[r] = best, at


@numba.njit(cache=True, parallel=True)
def _hits(ids, offsets, anchors, orders, counts, out, fill):  # pragma: no cover - compiled
    # every place a row holds some row's anchor: (anchor index, row, position), two passes
    # (count, then fill at the row's offset) so the rows run in parallel
    for r in numba.prange(offsets.size - 1):
        s, n = offsets[r], offsets[r + 1] - offsets[r]
        c = counts[r] if fill else 0
        for o in range(1, ANCHOR + 1):
            if not orders[o]:
                continue
            for j in range(n - o + 1):
                k = ngram_hash(ids, s + j, o)
                a = np.searchsorted(anchors, k)
                if a < anchors.size and anchors[a] == k:
                    if fill:
                        out[c, 0], out[c, 1], out[c, 2] = a, r, j
                    c += 1
        if not fill:
            counts[r] = c


@numba.njit(cache=True, parallel=True)
def _containers(ids, offsets, rank, anchor, where, hit_start, hits, parent):  # pragma: no cover
    # hits of one anchor are sorted by their row's rank: the first that holds the row wins
    for r in numba.prange(offsets.size - 1):
        s, n = offsets[r], offsets[r + 1] - offsets[r]
        parent[r] = r
        if n == 0:
            continue
        a, p = anchor[r], where[r]
        for h in range(hit_start[a], hit_start[a + 1]):
            c, q = hits[h, 1], hits[h, 2]
            if rank[c] >= rank[r]:
                break
            start, m = offsets[c] + q - p, offsets[c + 1] - offsets[c]
            if q < p or q - p + n > m:
                continue
            same = True
            for t in range(n):
                if ids[start + t] != ids[s + t]:
                    same = False
                    break
            if same:
                parent[r] = c
                break


def _ids(texts: Any) -> TokenIds:
    return Tokenizer(num_words=None).fit(texts).encode(texts)


def _ranks(lengths: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(lengths.size), -lengths))  # more tokens first, then index
    rank = np.empty(lengths.size, np.int64)
    rank[order] = np.arange(lengths.size)
    return rank


def _heads(parent: np.ndarray) -> np.ndarray:
    while True:  # a container always ranks before its row: this ends
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def containment_groups(texts: Any) -> np.ndarray:
    """int64[n]: each row's head, the index of the row its group is named after (see the
    module's docstring). ``texts``: anything ``Tokenizer.fit`` takes. Example:
    ``containment_groups(["a good film", "good film", "bad"])`` is ``[0, 0, 2]``."""
    tokens = _ids(texts)
    ids, offsets = tokens.ids, tokens.offsets.astype(np.int64)
    n = offsets.size - 1
    lengths = np.diff(offsets)
    keys, where = np.zeros(n, np.uint64), np.zeros(n, np.int64)
    _anchors(ids, offsets, keys, where)
    has = lengths > 0
    anchors = np.unique(keys[has])
    orders = np.zeros(ANCHOR + 1, np.bool_)
    orders[np.minimum(lengths[has], ANCHOR)] = True
    counts = np.zeros(n, np.int64)
    _hits(ids, offsets, anchors, orders, counts, np.zeros((0, 3), np.int64), False)
    start = np.concatenate(([0], np.cumsum(counts)[:-1])) if n else counts
    hits = np.zeros((int(counts.sum()), 3), np.int64)
    _hits(ids, offsets, anchors, orders, start, hits, True)
    rank = _ranks(lengths)
    hits = hits[np.lexsort((rank[hits[:, 1]], hits[:, 0]))]
    hit_start = np.searchsorted(hits[:, 0], np.arange(anchors.size + 1))
    anchor = np.searchsorted(anchors, keys)
    parent = np.zeros(n, np.int64)
    _containers(ids, offsets, rank, anchor, where, hit_start, hits, parent)
    return _heads(parent)


def reference_containment_groups(texts: Any) -> np.ndarray:
    """The specification, row against row in Python (small inputs): ``containment_groups``
    must equal it."""
    tokens = _ids(texts)
    rows = [tokens.ids[a:b].tolist() for a, b in pairwise(tokens.offsets)]
    rank = _ranks(np.array([len(r) for r in rows], np.int64))
    by_rank = np.argsort(rank)
    parent = np.arange(len(rows))
    for r, row in enumerate(rows):
        n = len(row)
        for c in by_rank[: rank[r]] if n else ():
            if any(rows[c][s : s + n] == row for s in range(len(rows[c]) - n + 1)):
                parent[r] = c
                break
    return _heads(parent)
