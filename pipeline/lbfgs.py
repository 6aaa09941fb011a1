"""L-BFGS in place: the minimiser behind the n-gram head and its mix (``pipeline/ngrams.py``).

The head has one weight per n-gram bucket and class, 5 million for 8 classes on 20,000 IMDB
reviews. At that size the minimiser's own vector work outweighed the objective: a NumPy
two-loop recursion made a dozen 40 MB temporaries per iteration, each mapped fresh from the
kernel and faulted in page by page (40 % of the fit's processor time went to the system).
Here every vector lives in a buffer allocated once; each pass of the recursion is one Numba
loop that applies an update and takes the next inner product together; the curvature pairs
are kept in float32 (half the memory and traffic: 340 MB instead of 680 for that head; the
line search keeps every step a descent whatever their rounding); inner products add fixed
blocks in a fixed order, so the result does not depend on the thread count.

``fg(x, grad)`` returns the value at ``x`` and writes the gradient into ``grad``.
``reference_minimize`` is the NumPy specification (float64 pairs, the same steps).

Example::

    def fg(x, grad):
        grad[:] = A @ x - b
        return 0.5 * x @ A @ x - b @ x

    x = minimize(fg, np.zeros(2))
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

__all__ = ["direction", "dot", "minimize", "reference_direction", "reference_minimize"]

BLOCK = 1 << 14  # elements per partial sum of an inner product
ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * t * g.d
MIN_CURVATURE = 1e-12  # a pair with s.y at or below this is not kept

Objective = Callable[[np.ndarray, np.ndarray], float]


@numba.njit(cache=True, parallel=True)
def _update_dot(d, alpha, v, scale, u):  # pragma: no cover - compiled
    # d = (d + alpha * v) * scale in place; returns u . d (the new d), summed by fixed blocks
    n = d.size
    part = np.zeros((n + BLOCK - 1) // BLOCK)
    for k in numba.prange(part.size):
        acc = 0.0
        for i in range(k * BLOCK, min(n, (k + 1) * BLOCK)):
            t = (d[i] + alpha * v[i]) * scale
            d[i] = t
            acc += u[i] * t
        part[k] = acc
    return part.sum()


@numba.njit(cache=True, parallel=True)
def _dot(a, b):  # pragma: no cover - compiled
    n = a.size
    part = np.zeros((n + BLOCK - 1) // BLOCK)
    for k in numba.prange(part.size):
        acc = 0.0
        for i in range(k * BLOCK, min(n, (k + 1) * BLOCK)):
            acc += a[i] * b[i]
        part[k] = acc
    return part.sum()


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b for float arrays of one size, added in fixed blocks: the same bits for any thread
    count (BLAS splits by threads). Example: ``dot(w, w)``."""
    return float(_dot(a, b))


@numba.njit(cache=True, parallel=True)
def _curvature(x_new, x, g_new, g):  # pragma: no cover - compiled
    # (s . y, y . y) for s = x_new - x, y = g_new - g, without storing them
    n = x.size
    sy = np.zeros((n + BLOCK - 1) // BLOCK)
    yy = np.zeros_like(sy)
    for k in numba.prange(sy.size):
        a = 0.0
        b = 0.0
        for i in range(k * BLOCK, min(n, (k + 1) * BLOCK)):
            yi = g_new[i] - g[i]
            a += (x_new[i] - x[i]) * yi
            b += yi * yi
        sy[k] = a
        yy[k] = b
    return sy.sum(), yy.sum()


@numba.njit(cache=True, parallel=True)
def _store(x_new, x, g_new, g, s, y):  # pragma: no cover - compiled
    for i in numba.prange(x.size):
        s[i] = x_new[i] - x[i]
        y[i] = g_new[i] - g[i]


@numba.njit(cache=True, parallel=True)
def _step(x, t, d, out):  # pragma: no cover - compiled
    for i in numba.prange(x.size):
        out[i] = x[i] + t * d[i]


def direction(
    g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, yy: np.ndarray,
    slots: list[int], d: np.ndarray,
) -> float:  # fmt: skip
    """The L-BFGS direction -H g into ``d`` (float64[n]) from the pairs ``S[i]``, ``Y[i]``
    for i in ``slots`` (oldest first; ``rho[i]`` = 1 / s.y, ``yy[i]`` = y.y); returns g . d.
    2k + 1 passes over the vectors for k pairs, each an update fused with an inner product."""
    np.negative(g, out=d)
    k = len(slots)
    if k == 0:
        return -_dot(g, g)
    newest = slots[-1]
    alphas = np.empty(k)
    dot = _dot(S[newest], d)
    for j in range(k - 1, -1, -1):  # newest to oldest
        alphas[j] = rho[slots[j]] * dot
        if j:
            dot = _update_dot(d, -alphas[j], Y[slots[j]], 1.0, S[slots[j - 1]])
        else:  # the last update also scales by the newest pair's s.y / y.y
            gamma = 1.0 / (rho[newest] * yy[newest])
            dot = _update_dot(d, -alphas[j], Y[slots[j]], gamma, Y[slots[0]])
    for j in range(k):  # oldest to newest
        beta = rho[slots[j]] * dot
        after = Y[slots[j + 1]] if j + 1 < k else g
        dot = _update_dot(d, alphas[j] - beta, S[slots[j]], 1.0, after)
    return dot


def reference_direction(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """NumPy specification of ``direction``: the two-loop recursion on pairs (s, y), oldest
    first."""
    d = -np.asarray(g, np.float64)
    pairs = [(s.astype(np.float64), y.astype(np.float64)) for s, y in pairs]
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ d) / (s @ y)
        alphas.append(a)
        d -= a * y
    if pairs:
        s, y = pairs[-1]
        d *= (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas), strict=True):
        d += s * (a - (y @ d) / (s @ y))
    return d


def minimize(
    fg: Objective, x0: np.ndarray, max_iter: int = 300, tol: float = 1e-7, memory: int = 8
) -> np.ndarray:
    """L-BFGS (two-loop recursion, Armijo backtracking) on a smooth function: ``fg(x, grad)``
    returns the value and writes the gradient into ``grad``. Stops when an iteration lowers
    the value by under ``tol`` relative, or no step lowers it. Returns float64[n].
    Deterministic for any thread count."""
    n = np.size(x0)
    x, x_new = np.array(x0, dtype=np.float64).ravel(), np.empty(n)
    g, g_new, d = np.empty(n), np.empty(n), np.empty(n)
    S, Y = np.empty((memory, n), np.float32), np.empty((memory, n), np.float32)
    rho, yy = np.zeros(memory), np.zeros(memory)
    slots: list[int] = []  # the kept pairs' rows of S and Y, oldest first
    f = fg(x, g)
    for _ in range(max_iter):
        slope = direction(g, S, Y, rho, yy, slots, d)
        if not slope < 0:  # not a descent direction: start the memory again
            slots = []
            slope = direction(g, S, Y, rho, yy, slots, d)
        step = 1.0 if slots else 1.0 / max(1.0, float(max(g.max(), -g.min())))
        for _ in range(50):
            _step(x, step, d, x_new)
            f_new = fg(x_new, g_new)
            if f_new <= f + ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            break  # no step lowers the value: at the minimum within float precision
        sy, y2 = _curvature(x_new, x, g_new, g)
        if sy > MIN_CURVATURE:
            if len(slots) == memory:
                slot = slots.pop(0)
            else:
                slot = (slots[-1] + 1) % memory if slots else 0
            _store(x_new, x, g_new, g, S[slot], Y[slot])
            rho[slot], yy[slot] = 1.0 / sy, y2
            slots.append(slot)
        done = f - f_new <= tol * max(1.0, abs(f))
        x, x_new, g, g_new, f = x_new, x, g_new, g, f_new
        if done:
            break
    return x


def reference_minimize(
    fg: Objective, x0: np.ndarray, max_iter: int = 300, tol: float = 1e-7, memory: int = 8
) -> np.ndarray:
    """NumPy specification of ``minimize`` (float64 pairs, a fresh array per vector)."""
    x = np.array(x0, dtype=np.float64).ravel()
    g = np.empty_like(x)
    f = fg(x, g)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(max_iter):
        d = reference_direction(g, pairs)
        slope = g @ d
        if not slope < 0:
            pairs, d, slope = [], -g, -(g @ g)
        step = 1.0 if pairs else 1.0 / max(1.0, float(np.abs(g).max()))
        g_new = np.empty_like(x)
        for _ in range(50):
            x_new = x + step * d
            f_new = fg(x_new, g_new)
            if f_new <= f + ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            break
        s, y = x_new - x, g_new - g
        if s @ y > MIN_CURVATURE:
            pairs = [*pairs[-(memory - 1) :], (s, y)]
        done = f - f_new <= tol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x
