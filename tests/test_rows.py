"""Summing per-token gradients onto the distinct rows they read, against np.add.at."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.kernels.rows import _group_order, check_rows, sum_by_row


def test_sum_by_row_matches_add_at_and_leaves_unread_rows_zero():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 40, 500)
    rows[rows == 7] = 8  # row 7: read by no token
    per_token = rng.normal(size=(500, 6)).astype(np.float32)
    want = np.zeros((40, 6))
    np.add.at(want, rows, per_token.astype(np.float64))
    got = sum_by_row(per_token, rows, 40)
    assert got.dtype == np.float32 and got.shape == (40, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not got[7].any()
    assert np.array_equal(got, sum_by_row(per_token, rows, 40))  # same bits again
    assert sum_by_row(per_token[:0], rows[:0], 3).shape == (3, 6)


def test_group_order_is_a_stable_argsort():
    rows = np.random.default_rng(1).integers(0, 30, 2000)
    ptr = np.zeros(31, np.int64)
    np.cumsum(np.bincount(rows, minlength=30), out=ptr[1:])
    assert np.array_equal(_group_order(rows, ptr), np.argsort(rows, kind="stable"))


def test_check_rows():
    assert check_rows([0, 2, 2], 3).dtype == np.int64
    with pytest.raises(ValueError, match="lie in"):
        check_rows([3], 3)
    with pytest.raises(ValueError, match="1-D integer"):
        check_rows([[0]], 3)
