"""Length bucketing and stratified splits (``pipeline/batching.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.batching import length_bucketed_batches, sorted_batches, stratified_split
from pipeline.errors import ConfigError


def test_bucketed_batches_cover_every_row_once_and_are_deterministic():
    lengths = np.random.default_rng(0).integers(0, 300, 1000)
    a = length_bucketed_batches(lengths, 32, np.random.default_rng(7), bucket_width_factor=5)
    b = length_bucketed_batches(lengths, 32, np.random.default_rng(7), bucket_width_factor=5)
    c = length_bucketed_batches(lengths, 32, np.random.default_rng(8), bucket_width_factor=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.arange(1000))
    assert max(len(x) for x in a) == 32


def test_bucketing_groups_similar_lengths():
    lengths = np.random.default_rng(1).integers(1, 500, 3200)
    bucketed = length_bucketed_batches(lengths, 32, np.random.default_rng(0), 50)
    random = length_bucketed_batches(lengths, 32, np.random.default_rng(0), 1)

    def spread(batches):
        return np.mean([np.ptp(lengths[b]) for b in batches])

    assert spread(bucketed) < spread(random) / 5


def test_sorted_batches():
    batches = sorted_batches(np.array([3, 1, 2, 0, 5]), 2)
    assert [b.tolist() for b in batches] == [[3, 1], [2, 0], [4]]
    with pytest.raises(ConfigError):
        sorted_batches(np.array([1]), 0)


def test_stratified_split_keeps_class_shares():
    y = np.array([0] * 80 + [1] * 20 + [2] * 3)
    train, valid = stratified_split(y, 0.1, seed=0)
    assert np.intersect1d(train, valid).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.arange(y.size))
    assert np.bincount(y[valid]).tolist() == [8, 2, 1]
    again = stratified_split(y, 0.1, seed=0)
    np.testing.assert_array_equal(again[1], valid)
    assert not np.array_equal(stratified_split(y, 0.1, seed=1)[1], valid)


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ConfigError):
        stratified_split(np.array([0, 1]), 1.0, 0)
