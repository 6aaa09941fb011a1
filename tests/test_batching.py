"""Length bucketing and stratified splits (``pipeline/batching.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.batching import (
    group_split,
    length_bucketed_batches,
    sorted_batches,
    stratified_split,
)
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


def test_group_split_never_shares_a_group_and_keeps_both_classes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 31, 300)  # films with 1 to 30 reviews, like IMDB
    groups = np.repeat(np.arange(300), sizes)
    y = (rng.random(groups.size) < np.repeat(rng.random(300), sizes)).astype(np.int64)
    train, valid = group_split(groups.astype(str), y, 0.2, seed=0)
    assert not set(groups[train]) & set(groups[valid])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.arange(y.size))
    for c in (0, 1):  # each class keeps its share as far as whole groups allow
        share = (y[valid] == c).sum() / (y == c).sum()
        assert 0.17 < share <= 0.2
    again = group_split(groups.astype(str), y, 0.2, seed=0)
    np.testing.assert_array_equal(again[1], valid)
    assert not np.array_equal(group_split(groups.astype(str), y, 0.2, seed=1)[1], valid)


def test_group_split_gives_a_rare_class_its_smallest_group():
    # class 1 lives only in one big group: no group fits under the share, so it is forced
    groups = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 5 + ["d"] * 3)
    y = np.array([0] * 20 + [1] * 5 + [1, 0, 0])
    train, valid = group_split(groups, y, 0.1, seed=0)
    assert set(y[valid]) == {0, 1} and set(y[train]) == {0, 1}
    assert not set(groups[train]) & set(groups[valid])


def test_group_split_rejects_bad_input():
    with pytest.raises(ConfigError, match="two groups"):
        group_split(np.array(["a", "a"]), np.array([0, 1]), 0.5, 0)
    with pytest.raises(ConfigError):
        group_split(np.array(["a", "b"]), np.array([0, 1]), 0.0, 0)
