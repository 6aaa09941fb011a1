"""The Numba CPU backend against the NumPy reference: every cell, direction and pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kernel_cases import layer_params, ragged_batch

from pipeline.kernels import checks, cpu, reference
from pipeline.runtime import set_threads

CELLS = ["lstm", "gru", "rnn"]
MODES = ["last", "max", "mean"]
# ragged on purpose: empty, one token, long, and sizes that leave blocks uneven
LENGTHS = [0, 1, 37, 5, 0, 12, 3, 1, 20, 7, 9]


def _grads(backend, cell, p, x, offsets, reverse, mode, R):
    hs, cache = backend.layer_forward(cell, x, offsets, **p, reverse=reverse, training=True)
    feat = backend.pool_forward(hs, offsets, mode, reverse)
    dhs = backend.pool_backward(R, hs, offsets, mode, reverse)
    return hs, feat, backend.layer_backward(cache, dhs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_forward_and_gradients_match_reference(cell, reverse, mode):
    E, H, V = 6, 5, 30
    p = layer_params(cell, E, H, seed=1)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=2)
    x = emb[ids]
    R = np.random.default_rng(3).normal(size=(len(LENGTHS), H)).astype(np.float32)
    hs_c, f_c, g_c = _grads(cpu, cell, p, x, offsets, reverse, mode, R)
    hs_r, f_r, g_r = _grads(reference, cell, p, x, offsets, reverse, mode, R)
    np.testing.assert_allclose(hs_c, hs_r, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(f_c, f_r, atol=2e-5, rtol=1e-4)
    for name, a, b in zip(["dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], g_c, g_r, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_several_blocks_per_thread(cell, monkeypatch):
    # Large batches are split into blocks of at most _BLOCK_ROWS sequences, several per
    # thread; with blocks of 2, the 11 sequences span 6+ blocks (empty ones included).
    E, H, V = 6, 5, 30
    p = layer_params(cell, E, H, seed=31)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=32)
    R = np.random.default_rng(33).normal(size=(len(LENGTHS), H)).astype(np.float32)
    table = cpu.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])

    def infer():
        return cpu.layer_infer(cell, table, ids, offsets, p["W_hh"], p["b_hh"], True, MODES)

    whole = infer()
    monkeypatch.setattr(cpu, "_BLOCK_ROWS", 2)
    assert cpu._plan(offsets)[3].size - 1 >= 6
    np.testing.assert_array_equal(infer(), whole)  # a row's steps never depend on its block
    hs_c, f_c, g_c = _grads(cpu, cell, p, emb[ids], offsets, True, "max", R)
    hs_r, f_r, g_r = _grads(reference, cell, p, emb[ids], offsets, True, "max", R)
    np.testing.assert_allclose(hs_c, hs_r, atol=2e-5, rtol=1e-4)
    for name, a, b in zip(["dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], g_c, g_r, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("backend", [cpu, reference])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_and_max_gradients_need_no_dense_array(backend, cell, reverse):
    # layer_backward(cache, dhs, d_final, d_max=) == layer_backward(cache, dhs + the last-
    # and max-pool gradients), bit for bit, with and without a dense part
    E, H, V = 6, 5, 30
    p = layer_params(cell, E, H, seed=41)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=42)
    rng = np.random.default_rng(43)
    d_final, d_mean, d_max = (rng.normal(size=(len(LENGTHS), H)).astype(np.float32) for _ in "fam")
    hs, cache = backend.layer_forward(cell, emb[ids], offsets, **p, reverse=reverse)
    last = backend.pool_backward(d_final, hs, offsets, "last", reverse)
    mean = backend.pool_backward(d_mean, hs, offsets, "mean", reverse)
    top = backend.pool_backward(d_max, hs, offsets, "max", reverse)
    cases = [
        ((last,), dict(dhs=None, d_final=d_final)),
        ((mean + last,), dict(dhs=mean, d_final=d_final)),
        ((top,), dict(dhs=None, d_max=d_max)),
        ((mean + top,), dict(dhs=mean, d_max=d_max)),
        ((mean + last + top,), dict(dhs=mean, d_final=d_final, d_max=d_max)),
    ]
    for dense_args, given in cases:
        dense = backend.layer_backward(cache, *dense_args)
        final = backend.layer_backward(cache, **given)
        for name, a, b in zip(
            ["dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], dense, final, strict=True
        ):
            msg = f"{name} {sorted(given)}"
            if len(given) < 3:
                np.testing.assert_array_equal(a, b, err_msg=msg)
            else:  # three terms at a final step: summed in another order, a rounding apart
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=msg)
    with pytest.raises(ValueError, match="d_final"):
        backend.layer_backward(cache, None, d_final[:2])
    with pytest.raises(ValueError, match="d_max"):
        backend.layer_backward(cache, None, d_max=d_max[:, :2])
    with pytest.raises(ValueError, match="dhs"):
        backend.layer_backward(cache, hs[:3])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_inputs_only_backward_gives_the_same_dx_and_biases(cell, reverse):
    # weights=False (explanations) skips dW_ih and dW_hh: dx and the biases' gradients are
    # the same bits as the full backward's, over batches long enough to stage dW_hh
    E, H, V = 6, 5, 40
    p = layer_params(cell, E, H, seed=51)
    offsets, ids, emb = ragged_batch(LENGTHS + [300, 129], E, V, seed=52)
    hs, cache = cpu.layer_forward(cell, emb[ids], offsets, **p, reverse=reverse)
    dhs = np.random.default_rng(53).normal(size=hs.shape).astype(np.float32)
    full = cpu.layer_backward(cache, dhs)
    dx, dW_ih, dW_hh, db_ih, db_hh = cpu.layer_backward(cache, dhs, weights=False)
    assert dW_ih is None and dW_hh is None
    fast = {"dx": dx, "db_ih": db_ih, "db_hh": db_hh}
    for name, a in zip(("dx", "db_ih", "db_hh"), (full[0], full[3], full[4]), strict=True):
        b = fast[name]
        np.testing.assert_array_equal(a, b, err_msg=name)


def _grads_rows(backend, cell, p, x, rows, offsets, reverse, R):
    hs, cache = backend.layer_forward(cell, x, offsets, **p, reverse=reverse, rows=rows)
    dhs = backend.pool_backward(R, hs, offsets, "mean", reverse)
    return hs, backend.layer_backward(cache, dhs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_distinct_rows_input_matches_reference(cell, reverse):
    # x holds the batch's distinct embedding rows; tokens read them through rows (repeats,
    # and rows no token reads, on purpose)
    E, H, V = 6, 5, 150
    p = layer_params(cell, E, H, seed=21)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=22)
    rows = ids.astype(np.int64)
    R = np.random.default_rng(23).normal(size=(len(LENGTHS), H)).astype(np.float32)
    hs_c, g_c = _grads_rows(cpu, cell, p, emb, rows, offsets, reverse, R)
    hs_r, g_r = _grads_rows(reference, cell, p, emb, rows, offsets, reverse, R)
    np.testing.assert_allclose(hs_c, hs_r, atol=2e-5, rtol=1e-4)
    assert g_c[0].shape == emb.shape
    for name, a, b in zip(["dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], g_c, g_r, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3, err_msg=name)
    # the same as feeding every token its own row, with dx summed per row
    hs_t, g_t = _grads_rows(cpu, cell, p, emb[ids], None, offsets, reverse, R)
    np.testing.assert_allclose(hs_c, hs_t, atol=1e-6)
    folded = np.zeros_like(emb)
    np.add.at(folded, rows, g_t[0])
    np.testing.assert_allclose(g_c[0], folded, atol=1e-5, rtol=1e-5)
    unread = np.setdiff1d(np.arange(V), rows)
    assert unread.size and not g_c[0][unread].any()
    for a, b in zip(g_c[1:], g_t[1:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("distinct_rows", [False, True])
def test_input_scale_matches_reference(cell, reverse, distinct_rows):
    # explanations scale each token's input (a review's copies along the integration path):
    # states, every gradient and dscale as the reference computes them
    E, H, V = 6, 5, 150
    p = layer_params(cell, E, H, seed=25)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=26)
    nnz = int(offsets[-1])
    scale = np.random.default_rng(27).uniform(-0.2, 1.2, nnz).astype(np.float32)
    scale[:3] = 0.0  # the baseline's copy
    x, rows = (emb, ids.astype(np.int64)) if distinct_rows else (emb[ids], None)
    dhs = np.random.default_rng(28).normal(size=(nnz, H)).astype(np.float32)
    out = {}
    for name, K in (("cpu", cpu), ("reference", reference)):
        hs, cache = K.layer_forward(cell, x, offsets, **p, reverse=reverse, rows=rows, scale=scale)
        out[name] = (hs, *K.layer_backward(cache, dhs))
    names = ["hs", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dscale"]
    assert len(out["cpu"]) == len(names) and out["cpu"][6].shape == (nnz,)
    for name, a, b in zip(names, out["cpu"], out["reference"], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3, err_msg=name)
    assert np.abs(out["cpu"][6]).max() > 0
    # what explanations ask for: dscale alone (the gate gradients then never leave a
    # scratch row per block), the same bits
    _, cache = cpu.layer_forward(cell, x, offsets, **p, reverse=reverse, rows=rows, scale=scale)
    only = cpu.layer_backward(cache, dhs, weights=False, inputs=False)
    assert only[0] is None and only[1] is None and only[2] is None
    np.testing.assert_array_equal(only[5], out["cpu"][6])
    np.testing.assert_array_equal(only[3], out["cpu"][4])  # the biases' too
    np.testing.assert_array_equal(only[4], out["cpu"][5])
    # scale 1 everywhere is the plain layer: same states, same gradients
    ones = np.ones(nnz, np.float32)
    hs1, c1 = cpu.layer_forward(cell, x, offsets, **p, reverse=reverse, rows=rows, scale=ones)
    hs0, c0 = cpu.layer_forward(cell, x, offsets, **p, reverse=reverse, rows=rows)
    np.testing.assert_allclose(hs1, hs0, atol=1e-6)
    for a, b in zip(cpu.layer_backward(c1, dhs)[:5], cpu.layer_backward(c0, dhs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"rows": np.array([0, 5])}, "rows must lie in"),
        ({"rows": np.array([0.0, 1.0])}, "1-D integer"),
        ({"scale": np.ones(3, np.float32)}, "one per token"),
        ({"scale": np.array([1.0, np.nan])}, "finite"),
    ],
)
def test_distinct_rows_and_scales_are_checked(kw, message):
    p = layer_params("rnn", 3, 4, seed=24)
    x = np.ones((5, 3), np.float32)
    offsets = np.array([0, 2], np.int64)
    for K in (cpu, reference):
        with pytest.raises(ValueError, match=message):
            K.layer_forward("rnn", x[:2] if "scale" in kw else x, offsets, **p, **kw)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_infer_matches_reference(cell, reverse):
    E, H, V = 6, 5, 30
    p = layer_params(cell, E, H, seed=4)
    offsets, ids, emb = ragged_batch(LENGTHS, E, V, seed=5)
    modes = ("last", "max", "mean")
    t_c = cpu.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])
    t_r = reference.fold_table(cell, emb, p["W_ih"], p["b_ih"], p["b_hh"])
    np.testing.assert_allclose(t_c, t_r, atol=1e-5)
    out_c = cpu.layer_infer(cell, t_c, ids, offsets, p["W_hh"], p["b_hh"], reverse, modes)
    out_r = reference.layer_infer(cell, t_r, ids, offsets, p["W_hh"], p["b_hh"], reverse, modes)
    np.testing.assert_allclose(out_c, out_r, atol=2e-5, rtol=1e-4)
    # and the training path pooled the same way gives the same features
    hs, _ = cpu.layer_forward(cell, emb[ids], offsets, **p, reverse=reverse, training=False)
    pooled = np.concatenate([cpu.pool_forward(hs, offsets, m, reverse) for m in modes], axis=1)
    np.testing.assert_allclose(out_c, pooled, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batches(cell):
    H = 4
    p = layer_params(cell, 3, H, seed=6)
    for lengths in ([], [0, 0]):
        offsets = np.zeros(len(lengths) + 1, np.int64)
        x = np.zeros((0, 3), np.float32)
        hs, cache = cpu.layer_forward(cell, x, offsets, **p)
        assert hs.shape == (0, H)
        dx, dWi, dWh, dbi, dbh = cpu.layer_backward(cache, hs)
        assert dx.shape == (0, 3) and not dWh.any() and not dbi.any()
        table = cpu.fold_table(cell, np.ones((5, 3), np.float32), p["W_ih"], p["b_ih"], p["b_hh"])
        out = cpu.layer_infer(cell, table, np.zeros(0, np.int32), offsets, p["W_hh"], p["b_hh"],
                              False, ("last", "mean"))  # fmt: skip
        assert out.shape == (len(lengths), 2 * H) and not out.any()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("distinct_rows", [False, True])
def test_bit_identical_run_to_run(cell, distinct_rows):
    E, H, V = 8, 16, 50
    p = layer_params(cell, E, H, seed=7)
    lengths = np.random.default_rng(8).integers(0, 60, 40)
    offsets, ids, emb = ragged_batch(lengths, E, V, seed=9)
    R = np.random.default_rng(10).normal(size=(lengths.size, H)).astype(np.float32)
    if distinct_rows:  # the per-row gradient sums must be as repeatable as the rest
        runs = [_grads_rows(cpu, cell, p, emb, ids, offsets, True, R) for _ in range(2)]
        (hs1, g1), (hs2, g2) = runs
    else:
        runs = [_grads(cpu, cell, p, emb[ids], offsets, True, "max", R) for _ in range(2)]
        (hs1, f1, g1), (hs2, f2, g2) = runs
        assert np.array_equal(f1, f2)
    assert np.array_equal(hs1, hs2)
    for a, b in zip(g1, g2, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", [cpu, reference])
@pytest.mark.parametrize("reverse", [False, True])
def test_pool_backward_adds_into_out(backend, reverse):
    H = 6
    offsets, ids, emb = ragged_batch(np.array(LENGTHS), H, 40, seed=31)
    hs = emb[ids]
    rng = np.random.default_rng(32)
    grads = {m: rng.normal(size=(len(LENGTHS), H)).astype(np.float32) for m in MODES}
    out = backend.pool_backward(grads["last"], hs, offsets, "last", reverse)
    for mode in ("max", "mean"):
        assert backend.pool_backward(grads[mode], hs, offsets, mode, reverse, out=out) is out
    want = sum(reference.pool_backward(grads[m], hs, offsets, m, reverse) for m in MODES)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out must"):
        backend.pool_backward(grads["max"], hs, offsets, "max", reverse, out=out[:-1])


@pytest.mark.parametrize("reverse", [False, True])
def test_mean_pool_backward_zeroes_rows_no_sequence_covers(reverse):
    # mean pooling writes its rows without zero-filling first when the sequences cover all
    # of hs (the contract); offsets that leave rows uncovered get zeros there, not garbage
    H = 5
    offsets, ids, emb = ragged_batch(np.array(LENGTHS), H, 40, seed=33)
    hs = np.concatenate([emb[ids], np.full((3, H), 7.0, np.float32)])  # 3 rows no one owns
    dfeat = np.random.default_rng(34).normal(size=(len(LENGTHS), H)).astype(np.float32)
    for offs, rows in ((offsets, hs), (offsets + 3, hs)):  # uncovered rows at the end, start
        got = cpu.pool_backward(dfeat, rows, offs, "mean", reverse)
        s, e = offs[0], offs[-1]
        want = np.zeros_like(rows)
        want[s:e] = reference.pool_backward(dfeat, rows[s:e], offs - s, "mean", reverse)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_does_not_read_uninitialised_scratch(cell, monkeypatch):
    # layer_backward allocates its per-token gate gradients without zeroing them, because
    # the kernel writes every row: with float scratch pre-filled with NaN, nothing changes
    E, H, V = 8, 16, 50
    p = layer_params(cell, E, H, seed=21)
    offsets, ids, emb = ragged_batch(np.array(LENGTHS), E, V, seed=22)
    R = np.random.default_rng(23).normal(size=(len(LENGTHS), H)).astype(np.float32)
    want = _grads(cpu, cell, p, emb[ids], offsets, True, "mean", R)  # also compiles first
    empty = np.empty

    def nan_empty(shape, dtype=float, *args, **kwargs):
        out = empty(shape, dtype, *args, **kwargs)
        if np.dtype(dtype).kind == "f":
            out.fill(np.nan)
        return out

    monkeypatch.setattr(np, "empty", nan_empty)
    got = _grads(cpu, cell, p, emb[ids], offsets, True, "mean", R)
    for a, b in zip(want[2], got[2], strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_does_not_change_results(cell):
    import numba

    E, H, V = 8, 16, 50
    p = layer_params(cell, E, H, seed=11)
    lengths = np.random.default_rng(12).integers(0, 40, 33)
    offsets, ids, emb = ragged_batch(lengths, E, V, seed=13)
    R = np.random.default_rng(14).normal(size=(lengths.size, H)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        set_threads(1)
        one = _grads(cpu, cell, p, emb[ids], offsets, False, "mean", R)
        set_threads(numba.config.NUMBA_NUM_THREADS)
        many = _grads(cpu, cell, p, emb[ids], offsets, False, "mean", R)
    finally:
        set_threads(before)
    np.testing.assert_allclose(one[0], many[0], atol=1e-5)
    for a, b in zip(one[2], many[2], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


_CACHE_CHILD = """
import hashlib, sys
sys.path.insert(0, {tests!r})
import numpy as np
from kernel_cases import layer_params, ragged_batch
from pipeline.kernels import cpu
digest = hashlib.sha256()
for cell in ("lstm", "gru", "rnn"):
    p = layer_params(cell, 6, 5, seed=51)
    offsets, ids, emb = ragged_batch([0, 1, 37, 5, 12, 3], 6, 30, seed=52)
    hs, cache = cpu.layer_forward(cell, emb[ids], offsets, **p, reverse=cell == "gru")
    dhs = np.random.default_rng(53).normal(size=hs.shape).astype(np.float32)
    for g in cpu.layer_backward(cache, dhs):
        digest.update(g.tobytes())
print(sum(cpu._backward.stats.cache_hits.values()), digest.hexdigest())
"""


def test_gradients_are_the_same_bits_compiled_or_loaded_from_cache(tmp_path):
    # A process that compiles the backward kernel and one that loads it from Numba's cache
    # must compute the same gradients: reruns, checkpoints and resumes rely on it. (With
    # fastmath's "reassoc" in the backward kernels they differed in the last bits.)
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = _CACHE_CHILD.format(tests=str(Path(__file__).parent))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-2000:]
        hits, digest = out.stdout.split()
        runs.append((int(hits), digest))
    assert runs[0][0] == 0 and runs[1][0] > 0  # compiled, then loaded from the cache
    assert runs[0][1] == runs[1][1]


def test_fast_tanh_is_accurate():
    x = np.linspace(-20, 20, 200_001, dtype=np.float32)
    out = np.empty_like(x)
    _apply_tanh(x, out)
    assert np.abs(out - np.tanh(x.astype(np.float64))).max() < 1e-6


def _apply_tanh(x, out):
    from numba import njit

    @njit
    def run(x, out):
        for i in range(x.size):
            out[i] = cpu._tanh(x[i])

    run(x, out)


def _kernel_timing(monkeypatch):
    """tests/benchmarks/kernel_timing.py, where the benchmarks' products-only loops live."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "benchmarks"))
    import kernel_timing

    return kernel_timing


def test_benchmark_product_loop_multiplies_every_running_row(monkeypatch):
    # product_fn times the kernel's step loop with the gate math left out: it must do the
    # same products, so each row that runs at least one step ends as S[r] @ W_hh.T
    bench = _kernel_timing(monkeypatch)

    shape = bench.Shape("gru", embed_dim=4, hidden_dim=6, batch=7, vocab=11)
    params = {"W_hh": np.random.default_rng(0).normal(size=(18, 6)).astype(np.float32)}
    lengths = np.array([3, 0, 1, 5, 2, 0, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    run = bench.product_fn(shape, offsets, params)
    run()
    S, out, lens_s = run.state
    ran = lens_s > 0
    np.testing.assert_allclose(out[ran], S[ran] @ params["W_hh"].T, rtol=1e-5, atol=1e-5)
    assert ran.sum() == 5


def test_benchmark_training_products_are_the_backward_kernels_products(monkeypatch):
    # train_product_fn times a training step's products alone: per block, the running
    # rows' D @ W_hh at every step t >= 1, and dW_hh from every staged token (one per row
    # and step t >= 1) in windows of the kernel's stage size
    from pipeline.kernels.cpu import _STAGE

    bench = _kernel_timing(monkeypatch)

    shape = bench.Shape("lstm", embed_dim=4, hidden_dim=3, batch=6, vocab=11)
    rng = np.random.default_rng(1)
    params = {
        k: rng.normal(size=s).astype(np.float32) for k, s in (("W_ih", (12, 4)), ("W_hh", (12, 3)))
    }
    lengths = np.array([3, 0, 1, 200, 2, 0])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(1, 11, offsets[-1])
    run = bench.train_product_fn(shape, offsets, ids, params)
    D, dS, (SG, SH), dW, lens_s, blocks = run.state
    run()
    many = lens_s >= 2  # rows in at least one backward step product
    np.testing.assert_allclose(dS[many, :3], D[many] @ params["W_hh"], rtol=1e-5, atol=1e-5)
    staged = [
        int(np.maximum(lens_s[blocks[b] : blocks[b + 1]] - 1, 0).sum())
        for b in range(blocks.size - 1)
    ]
    assert max(staged) > _STAGE  # the 200-step row fills a window and starts another
    for b, count in enumerate(staged):
        full, rest = divmod(count, _STAGE)
        want = full * (SG[b].T @ SH[b]) + SG[b, :rest].T @ SH[b, :rest]
        np.testing.assert_allclose(dW[b], want, rtol=1e-4, atol=1e-3)


def test_max_steps_pick_the_first_maximum():
    # what d_max is added at: ties go to the lowest token index, empty sequences get -1
    hs = np.array([[1, 4], [3, 0], [3, 4], [2, 1], [5, 5]], np.float32)
    offsets = np.array([0, 4, 4, 5], np.int64)
    want = [[1, 0], [-1, -1], [4, 4]]
    np.testing.assert_array_equal(checks.max_steps(hs, offsets), want)
    lens = np.diff(offsets)
    best = np.full((3, 2), -1, np.int64)
    cpu._max_steps(hs, offsets[:-1].copy(), lens, best)
    np.testing.assert_array_equal(best, want)
