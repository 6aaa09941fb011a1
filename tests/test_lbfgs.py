"""The in-place L-BFGS (pipeline/lbfgs.py) against its NumPy specification: the fused
two-loop recursion, the block inner product, and whole fits."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from pipeline import lbfgs, ngrams
from pipeline.text import TokenIds


def _quadratic(A: np.ndarray, b: np.ndarray):
    def fg(x, grad):
        grad[:] = A @ x - b
        return 0.5 * x @ A @ x - b @ x

    return fg


def test_minimize_finds_a_quadratics_minimum():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])
    for minimize in (lbfgs.minimize, lbfgs.reference_minimize):
        x = minimize(_quadratic(A, b), np.zeros(2), tol=1e-14)
        np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
@pytest.mark.parametrize("n", [1, 7, 3 * lbfgs.BLOCK + 5])
def test_direction_matches_the_two_loop_recursion(k, n):
    rng = np.random.default_rng(k * 100 + n)
    memory = 5
    S = rng.normal(size=(memory, n)).astype(np.float32)
    Y = (S + 0.3 * rng.normal(size=(memory, n))).astype(np.float32)  # s.y > 0 mostly
    slots = [int(i) for i in rng.permutation(memory)[:k]]  # any rows, in any order
    sy = np.array([S[i].astype(np.float64) @ Y[i] for i in range(memory)])
    rho, yy = 1.0 / sy, np.array([Y[i].astype(np.float64) @ Y[i] for i in range(memory)])
    g, d = rng.normal(size=n), np.empty(n)
    slope = lbfgs.direction(g, S, Y, rho, yy, slots, d)
    want = lbfgs.reference_direction(g, [(S[i], Y[i]) for i in slots])
    np.testing.assert_allclose(d, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert slope == pytest.approx(g @ want, rel=1e-9)


def test_dot_adds_fixed_blocks_so_any_thread_count_gives_the_same_bits():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5 * lbfgs.BLOCK + 3), rng.normal(size=5 * lbfgs.BLOCK + 3)
    assert lbfgs.dot(a, b) == pytest.approx(a @ b, rel=1e-12)
    before = numba.get_num_threads()
    try:
        got = set()
        for t in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(t)
            got.add(lbfgs.dot(a, b))
    finally:
        numba.set_num_threads(before)
    assert len(got) == 1


@pytest.mark.parametrize("classes", [2, 4])
def test_a_head_fit_reaches_the_references_minimum(classes):
    rng = np.random.default_rng(classes)
    lengths = rng.integers(0, 30, 300)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    tokens = TokenIds(offsets, rng.integers(0, 60, offsets[-1]).astype(np.int32))
    y = (tokens.ids[offsets[:-1].clip(max=offsets[-1] - 1)] + lengths) % classes
    problem = ngrams.HeadProblem.build(tokens, y, classes, order=2, bits=12, C=1.0, scale="sqrt")
    x0 = np.zeros(problem.r.size + problem.r.shape[1])
    got = lbfgs.minimize(problem.objective, x0, tol=1e-13, max_iter=2000)
    want = lbfgs.reference_minimize(problem.objective, x0, tol=1e-13, max_iter=2000)
    scratch = np.empty_like(x0)
    f_got, f_want = problem.objective(got, scratch), problem.objective(want, scratch)
    assert f_got == pytest.approx(f_want, rel=1e-9)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    assert np.abs(scratch).max() < 1e-3  # the gradient at the minimum
