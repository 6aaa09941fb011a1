"""The recurrent step's small matrix product against NumPy: shapes, row ranges, padding."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.kernels import gemm


def _product(A, m0, m1, B, out_rows=None, fill=np.nan):
    K, N = B.shape
    Np = gemm.padded_width(N)
    C = np.full((out_rows or A.shape[0], Np), fill, np.float32)
    gemm.gemm(A, m0, m1, gemm.pack(B), K, Np, C)
    return C


@pytest.mark.parametrize(
    "M,K,N",
    [
        (1, 1, 1),
        (5, 3, 7),
        (gemm.ROWS + 1, 16, gemm.NB),
        (13, 128, 512),
        (40, 33, 200),
        (2, 512, 128),
    ],
)
def test_matches_numpy(M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = _product(A, 0, M, B)
    exact = A.astype(np.float64) @ B.astype(np.float64)
    # float32 sums of K terms: the error grows like sqrt(K) times the terms' size
    np.testing.assert_allclose(C[:, :N], exact, atol=4e-6 * np.sqrt(K) * np.abs(exact).max())
    assert (C[:, N:] == 0).all()  # the padding columns hold zeros, not stale values


def test_writes_only_rows_m0_to_m1():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((20, 24)).astype(np.float32)
    B = rng.standard_normal((24, 50)).astype(np.float32)
    C = _product(A, 3, 11, B)
    assert np.isnan(C[:3]).all() and np.isnan(C[11:]).all()
    np.testing.assert_allclose(C[3:11, :50], A[3:11] @ B, rtol=1e-5, atol=1e-5)


def test_a_row_does_not_depend_on_its_neighbours():
    # The kernels group rows into blocks that depend on the thread count and shrink as
    # sequences end; a row's product must be the same bits in any grouping.
    rng = np.random.default_rng(1)
    A = rng.standard_normal((17, 128)).astype(np.float32)
    B = rng.standard_normal((128, 96)).astype(np.float32)
    whole = _product(A, 0, 17, B)
    for m0, m1 in [(0, 1), (5, 6), (4, 17), (16, 17), (2, 9)]:
        part = _product(A, m0, m1, B)
        np.testing.assert_array_equal(part[m0:m1], whole[m0:m1])


def _tn(A, k0, k1, B, C0):
    C = C0.copy()
    gemm.gemm_tn(A, k0, k1, C.shape[0], B, B.shape[1], C)
    return C


@pytest.mark.parametrize(
    "Kx,M,Np,k0,k1",
    [
        (1, 1, gemm.NB, 0, 1),
        (10, 5, gemm.NB, 2, 9),
        (300, 512, 2 * gemm.NB, 0, 300),
        (40, gemm.ROWS + 1, 3 * gemm.NB, 7, 40),
        (129, 384, 2 * gemm.NB, 1, 128),
    ],
)
def test_tn_adds_the_transposed_product(Kx, M, Np, k0, k1):
    rng = np.random.default_rng(Kx * 7 + M)
    A = rng.standard_normal((Kx, M)).astype(np.float32)
    B = rng.standard_normal((Kx, Np)).astype(np.float32)
    C0 = rng.standard_normal((M, Np)).astype(np.float32)
    C = _tn(A, k0, k1, B, C0)
    exact = C0.astype(np.float64) + A[k0:k1].astype(np.float64).T @ B[k0:k1].astype(np.float64)
    K = k1 - k0
    np.testing.assert_allclose(C, exact, atol=4e-6 * np.sqrt(K + 1) * np.abs(exact).max())


def test_tn_sums_in_order_of_k_whatever_the_split():
    # The backward kernel adds staged tokens in batches whose size is a tuning choice: any
    # split of the k range, and any subset of C's rows, must give the same bits.
    rng = np.random.default_rng(3)
    A = rng.standard_normal((50, 20)).astype(np.float32)
    B = rng.standard_normal((50, gemm.NB)).astype(np.float32)
    C0 = rng.standard_normal((20, gemm.NB)).astype(np.float32)
    whole = _tn(A, 0, 50, B, C0)
    for cut in (1, 13, 49):
        split = _tn(A, cut, 50, B, _tn(A, 0, cut, B, C0))
        np.testing.assert_array_equal(split, whole)
    part = C0[5:11].copy()
    gemm.gemm_tn(np.ascontiguousarray(A[:, 5:11]), 0, 50, 6, B, gemm.NB, part)
    np.testing.assert_array_equal(part, whole[5:11])
    np.testing.assert_array_equal(_tn(A, 9, 9, B, C0), C0)  # an empty range adds nothing


def test_other_tile_shape_is_correct_too():
    # Without AVX-512 the tile is 8-float vectors, 6 rows by 2: run that build in a child
    # (the tile is chosen once per process from the CPU Numba compiles for).
    code = (
        "import numpy as np; from pipeline.kernels import gemm;"
        "assert gemm.LANES == 8, gemm.LANES;"
        "rng = np.random.default_rng(0);"
        "A = rng.standard_normal((15, 40)).astype(np.float32);"
        "B = rng.standard_normal((40, 37)).astype(np.float32);"
        "Np = gemm.padded_width(37); C = np.zeros((15, Np), np.float32);"
        "gemm.gemm(A, 0, 15, gemm.pack(B), 40, Np, C);"
        "np.testing.assert_allclose(C[:, :37], A @ B, rtol=1e-5, atol=1e-4);"
        "G = rng.standard_normal((40, 15)).astype(np.float32);"
        "S = np.zeros((40, Np), np.float32); S[:, :37] = B;"
        "D = np.ones((15, Np), np.float32); gemm.gemm_tn(G, 3, 40, 15, S, Np, D);"
        "np.testing.assert_allclose(D, 1 + G[3:].T @ S[3:], rtol=1e-5, atol=1e-4); print('ok')"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
