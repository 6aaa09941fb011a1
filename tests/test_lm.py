"""The language-model head (``pipeline/lm.py``): sampled softmax against its NumPy
specification and finite differences, the candidate sampler, the full softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.lm import (
    UnigramSampler,
    full_softmax_nll,
    sampled_softmax,
    sampled_softmax_reference,
)


def _case(dtype=np.float64, n=40, v=50, h=6, k=12, seed=0, hits=3):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(v, h)).astype(dtype)
    b = rng.normal(size=v).astype(dtype)
    states = rng.normal(size=(n, h)).astype(dtype)
    y = rng.integers(1, v, n)
    sampler = UnigramSampler(np.arange(v, dtype=float) + 1)
    cand, log_q, tries = sampler.draw(rng, k)
    y[:hits] = cand[:hits]  # accidental hits: a row whose target was also sampled
    return states, y, W, b, cand, log_q, sampler.log_q_of(y, tries)


def test_reference_by_hand_for_one_row():
    h = np.array([[1.0, 2.0]])
    W = np.array([[0, 0], [0.5, -1.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([0.0, 0.1, 0.2, 0.3])
    cand, lq = np.array([2, 3]), np.array([-1.0, -2.0])
    y, lqy = np.array([1]), np.array([-0.5])
    t = 1 * 0.5 + 2 * -1.0 + 0.1 + 0.5
    s = np.array([1.0 + 0.2 + 1.0, 2.0 + 0.3 + 2.0])
    expected = math.log(math.exp(t) + np.exp(s).sum()) - t
    loss, g = sampled_softmax_reference(h, y, W, b, cand, lq, lqy)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert g.rows.tolist() == [1, 2, 3]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_path_matches_the_reference(dtype, tol):
    args = _case(dtype)
    loss_ref, ref = sampled_softmax_reference(*args)
    loss, fast = sampled_softmax(*args)
    assert loss == pytest.approx(loss_ref, rel=tol)
    assert np.array_equal(fast.rows, ref.rows)
    for name in ("dh", "dW", "db"):
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=tol, err_msg=name)


def test_reference_gradients_match_finite_differences():
    states, y, W, b, cand, lq, lqy = _case(n=12, v=20, h=4, k=6, seed=3)
    loss, g = sampled_softmax_reference(states, y, W, b, cand, lq, lqy)
    eps = 1e-6

    def numeric(array):
        out = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            old = array[i]
            array[i] = old + eps
            up = sampled_softmax_reference(states, y, W, b, cand, lq, lqy)[0]
            array[i] = old - eps
            down = sampled_softmax_reference(states, y, W, b, cand, lq, lqy)[0]
            array[i] = old
            out[i] = (up - down) / (2 * eps)
        return out

    np.testing.assert_allclose(g.dh, numeric(states), atol=1e-7)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    dW[g.rows], db[g.rows] = g.dW, g.db
    np.testing.assert_allclose(dW, numeric(W), atol=1e-7)  # rows outside have no gradient
    np.testing.assert_allclose(db, numeric(b), atol=1e-7)


def test_an_accidental_hit_takes_no_part():
    # one row whose target was also sampled (column 0): that column takes no softmax share,
    # so its logit's correction cannot change the loss, and the others' can
    states, y, W, b, cand, lq, lqy = _case(n=1, hits=1)
    base, g = sampled_softmax(states, y, W, b, cand, lq, lqy)
    moved = lq.copy()
    moved[0] -= 3.0
    assert sampled_softmax(states, y, W, b, cand, moved, lqy)[0] == base
    moved[1] -= 3.0
    assert sampled_softmax(states, y, W, b, cand, moved, lqy)[0] != base
    assert np.all(np.isfinite(g.dh))


def test_no_rows():
    states, y, W, b, cand, lq, lqy = _case(n=0, hits=0)
    loss, g = sampled_softmax(states, y, W, b, cand, lq, lqy)
    assert loss == 0.0 and g.dh.shape == (0, 6)


def test_sampler_draws_distinct_ids_by_frequency():
    counts = np.array([1e9, 10.0, 1000.0, 100.0, 1.0] + [5.0] * 95)
    sampler = UnigramSampler(counts, power=0.75)
    assert sampler.q[0] == 0.0  # padding is never drawn
    rng = np.random.default_rng(0)
    ids, log_q, tries = sampler.draw(rng, 10)
    assert ids.size == 10 and np.unique(ids).size == 10 and np.all(np.diff(ids) > 0)
    assert 0 not in ids and tries >= 10
    expected = 1 - (1 - sampler.q[ids]) ** tries
    np.testing.assert_allclose(np.exp(log_q), expected, rtol=1e-5)
    hits = np.zeros(counts.size)
    for _ in range(300):
        hits[sampler.draw(rng, 3)[0]] += 1
    assert hits[2] > hits[3] > hits[1]  # more frequent words are drawn more often


def test_full_softmax_nll_by_direct_computation():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(30, 5)), rng.normal(size=30)
    h, y = rng.normal(size=(7, 5)), rng.integers(1, 30, 7)
    logits = h @ W[1:].T + b[1:]  # padding (id 0) is never a word
    expected = float(np.sum(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(7), y - 1]))
    assert full_softmax_nll(h, y, W, b, chunk=3) == pytest.approx(expected, rel=1e-10)
