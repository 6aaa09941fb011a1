"""Tests for pipeline.kernels.reference, the NumPy specification of the recurrence kernels.

The reference is checked against things that do not share its code: central finite
differences (float64), a dense [B, T, E] batched loop written here, PyTorch when it is
installed, and its own reverse/forward and folded/unfolded symmetries.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.kernels import CELLS, POOL_MODES
from pipeline.kernels import reference as ref

RAGGED = [0, 1, 5, 3]  # includes an empty and a one-token sequence


def offsets_of(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def make_params(cell: str, E: int, H: int, rng: np.random.Generator, dtype=np.float64):
    """W_ih, W_hh, b_ih, b_hh with a scale that keeps gates away from saturation."""
    G = CELLS[cell]
    W_ih = rng.normal(0, 0.6, (G * H, E))
    W_hh = rng.normal(0, 0.6, (G * H, H))
    b_ih = rng.normal(0, 0.3, G * H)
    b_hh = rng.normal(0, 0.3, G * H)
    return tuple(a.astype(dtype) for a in (W_ih, W_hh, b_ih, b_hh))


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def reverse_permutation(offsets: np.ndarray) -> np.ndarray:
    """Index that reverses the tokens inside every sequence (its own inverse)."""
    perm = np.arange(offsets[-1])
    for s in range(offsets.size - 1):
        perm[offsets[s] : offsets[s + 1]] = perm[offsets[s] : offsets[s + 1]][::-1]
    return perm


# --------------------------------------------------------------------------- 1. gradients


@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradients_match_finite_differences(cell, reverse, mode):
    rng = np.random.default_rng(zlib.crc32(f"{cell}-{reverse}-{mode}".encode()))
    E, H = 3, 3
    offsets = offsets_of(RAGGED)
    x = rng.normal(0, 1.0, (offsets[-1], E))
    params = list(make_params(cell, E, H, rng))
    R = rng.normal(0, 1.0, (len(RAGGED), H))

    def loss(x, W_ih, W_hh, b_ih, b_hh):
        hs, _ = ref.layer_forward(cell, x, offsets, W_ih, W_hh, b_ih, b_hh, reverse, False)
        return float(np.sum(ref.pool_forward(hs, offsets, mode, reverse) * R))

    hs, cache = ref.layer_forward(cell, x, offsets, *params, reverse=reverse)
    if mode == "max":
        # FD-safe only if no column's maximum is within reach of a 1e-6 nudge of the runner-up
        for s in range(len(RAGGED)):
            seq = np.sort(hs[offsets[s] : offsets[s + 1]], axis=0)
            if seq.shape[0] > 1:
                assert np.min(seq[-1] - seq[-2]) > 1e-4, "near-tie in max pooling: change seed"
    dhs = ref.pool_backward(R, hs, offsets, mode, reverse)
    grads = ref.layer_backward(cache, dhs)

    inputs = [x, *params]
    eps = 1e-6
    for k, (name, arr, grad) in enumerate(
        zip(["dx", "dW_ih", "dW_hh", "db_ih", "db_hh"], inputs, grads, strict=True)
    ):
        assert grad.shape == arr.shape and grad.dtype == np.float64, name
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
    assert np.abs(grads[0]).sum() > 0  # the comparison was not between two zero arrays


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_input_scale_gradients_match_finite_differences(cell, reverse):
    # token k reads scale[k] * x[rows[k]]: dscale (what explanations sum) and dx (onto the
    # shared rows) against central differences of the same loss
    rng = np.random.default_rng(zlib.crc32(f"scale-{cell}-{reverse}".encode()))
    E, H = 3, 3
    offsets = offsets_of(RAGGED)
    nnz = int(offsets[-1])
    x = rng.normal(0, 1.0, (4, E))
    rows = rng.integers(0, 4, nnz)
    scale = rng.uniform(0.1, 1.0, nnz)
    params = list(make_params(cell, E, H, rng))
    R = rng.normal(0, 1.0, (nnz, H))

    def loss(x, scale):
        hs, _ = ref.layer_forward(cell, x, offsets, *params, reverse, False, rows, scale)
        return float(np.sum(hs * R))

    _, cache = ref.layer_forward(cell, x, offsets, *params, reverse=reverse, rows=rows, scale=scale)
    out = ref.layer_backward(cache, R)
    assert len(out) == 6
    eps = 1e-6
    for name, k, grad in (("dx", 0, out[0]), ("dscale", 1, out[5])):
        arrs = [x, scale]
        assert grad.shape == arrs[k].shape, name
        numeric = np.zeros_like(arrs[k])
        for idx in np.ndindex(arrs[k].shape):
            plus, minus = [a.copy() for a in arrs], [a.copy() for a in arrs]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
        assert np.abs(grad).sum() > 0
    # the weights' gradients are those of feeding every token its scaled input
    _, plain = ref.layer_forward(cell, x[rows] * scale[:, None], offsets, *params, reverse)
    for a, b in zip(out[1:5], ref.layer_backward(plain, R)[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_pool_backward_max_takes_first_of_tied_steps():
    hs = np.array([[1.0, 2.0], [3.0, 2.0], [3.0, 0.0]], dtype=np.float32)
    offsets = np.array([0, 3], dtype=np.int64)
    for reverse in (False, True):
        dhs = ref.pool_backward(np.array([[10.0, 20.0]]), hs, offsets, "max", reverse)
        np.testing.assert_array_equal(dhs, [[0, 20], [10, 0], [0, 0]])
        assert dhs.dtype == np.float32


# --------------------------------------------------------------------------- 2. dense loop


def dense_forward(cell, X, W_ih, W_hh, b_ih, b_hh, reverse):
    """[B, T, E] -> [B, T, H], written independently of the reference, batch at once."""
    B, T, _ = X.shape
    H = W_hh.shape[1]
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    out = np.zeros((B, T, H))
    for t in range(T - 1, -1, -1) if reverse else range(T):
        gi = X[:, t] @ W_ih.T + b_ih  # (B, G*H)
        gh = h @ W_hh.T + b_hh
        if cell == "lstm":
            i, f, g, o = np.split(gi + gh, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        elif cell == "gru":
            ir, iz, inn = np.split(gi, 3, axis=1)
            hr, hz, hn = np.split(gh, 3, axis=1)
            r, z = sigmoid(ir + hr), sigmoid(iz + hz)
            n = np.tanh(inn + r * hn)
            h = (1 - z) * n + z * h
        else:
            h = np.tanh(gi + gh)
        out[:, t] = h
    return out


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_equal_lengths_match_dense_batched_loop(cell, reverse):
    rng = np.random.default_rng(7)
    B, T, E, H = 3, 6, 5, 4
    X = rng.normal(0, 1.0, (B, T, E))
    params = make_params(cell, E, H, rng)
    offsets = offsets_of([T] * B)
    hs, _ = ref.layer_forward(cell, X.reshape(B * T, E), offsets, *params, reverse=reverse)
    expected = dense_forward(cell, X, *params, reverse)
    np.testing.assert_allclose(hs.reshape(B, T, H), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_matches_torch(cell):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    B, T, E, H = 3, 6, 5, 4
    X = rng.normal(0, 1.0, (B, T, E))
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    net = module(E, H, batch_first=True, bidirectional=True).double()
    fwd = [net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0]
    bwd = [
        net.weight_ih_l0_reverse,
        net.weight_hh_l0_reverse,
        net.bias_ih_l0_reverse,
        net.bias_hh_l0_reverse,
    ]
    with torch.no_grad():
        out, _ = net(torch.from_numpy(X))
    out = out.numpy()  # (B, T, 2H): forward states then reverse states
    offsets = offsets_of([T] * B)
    for reverse, weights, half in ((False, fwd, slice(0, H)), (True, bwd, slice(H, 2 * H))):
        params = [w.detach().numpy() for w in weights]
        hs, _ = ref.layer_forward(cell, X.reshape(B * T, E), offsets, *params, reverse=reverse)
        np.testing.assert_allclose(hs.reshape(B, T, H), out[:, :, half], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- 3. folded table


@pytest.mark.parametrize("modes", [("last",), ("max",), ("mean",), ("last", "max"), POOL_MODES])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_layer_infer_matches_forward_then_pool(cell, reverse, modes):
    rng = np.random.default_rng(3)
    V, E, H = 9, 4, 3
    lengths = [0, 1, 5, 3, 7]
    offsets = offsets_of(lengths)
    ids = rng.integers(0, V, offsets[-1]).astype(np.int32)
    ids[:2] = [0, 1]  # the reserved padding and out-of-vocabulary ids are ordinary rows here
    emb = rng.normal(0, 1.0, (V, E)).astype(np.float32)
    W_ih, W_hh, b_ih, b_hh = make_params(cell, E, H, rng, np.float32)

    table = ref.fold_table(cell, emb, W_ih, b_ih, b_hh)
    assert table.shape == (V, CELLS[cell] * H) and table.dtype == np.float32
    feats = ref.layer_infer(cell, table, ids, offsets, W_hh, b_hh, reverse, modes)
    assert feats.shape == (len(lengths), len(modes) * H) and feats.dtype == np.float32

    hs, _ = ref.layer_forward(cell, emb[ids], offsets, W_ih, W_hh, b_ih, b_hh, reverse, False)
    expected = np.concatenate([ref.pool_forward(hs, offsets, m, reverse) for m in modes], axis=1)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(feats[0], 0)  # the empty sequence


def test_fold_table_keeps_gru_b_hn_out():
    rng = np.random.default_rng(5)
    V, E, H = 4, 3, 2
    emb = rng.normal(size=(V, E))
    W_ih, _, b_ih, b_hh = make_params("gru", E, H, rng)
    table = ref.fold_table("gru", emb, W_ih, b_ih, b_hh)
    base = emb @ W_ih.T + b_ih
    np.testing.assert_allclose(table[:, : 2 * H], base[:, : 2 * H] + b_hh[: 2 * H])
    np.testing.assert_allclose(table[:, 2 * H :], base[:, 2 * H :])
    W_ih, _, b_ih, b_hh = make_params("lstm", E, H, rng)
    np.testing.assert_allclose(
        ref.fold_table("lstm", emb, W_ih, b_ih, b_hh), emb @ W_ih.T + b_ih + b_hh
    )


# --------------------------------------------------------------------------- 4. reverse


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_reverse_equals_forward_on_reversed_sequences(cell):
    rng = np.random.default_rng(13)
    E, H = 4, 3
    offsets = offsets_of(RAGGED)
    x = rng.normal(size=(offsets[-1], E))
    params = make_params(cell, E, H, rng)
    perm = reverse_permutation(offsets)

    hs_rev, cache_rev = ref.layer_forward(cell, x, offsets, *params, reverse=True)
    hs_fwd, cache_fwd = ref.layer_forward(cell, x[perm], offsets, *params, reverse=False)
    np.testing.assert_allclose(hs_rev, hs_fwd[perm], rtol=1e-12, atol=1e-14)

    # "last" of the reverse direction is the state after its whole sequence
    np.testing.assert_allclose(
        ref.pool_forward(hs_rev, offsets, "last", reverse=True),
        ref.pool_forward(hs_fwd, offsets, "last", reverse=False),
        rtol=1e-12,
        atol=1e-14,
    )

    dhs = rng.normal(size=hs_rev.shape)
    g_rev = ref.layer_backward(cache_rev, dhs)
    g_fwd = ref.layer_backward(cache_fwd, dhs[perm])
    np.testing.assert_allclose(g_rev[0], g_fwd[0][perm], rtol=1e-10, atol=1e-12)
    for a, b in zip(g_rev[1:], g_fwd[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- 5. empty


@pytest.mark.parametrize("lengths", [[], [0, 0, 0]])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_empty_batch_and_all_empty_sequences(cell, lengths):
    rng = np.random.default_rng(0)
    E, H, V = 3, 2, 5
    offsets = offsets_of(lengths)
    x = np.zeros((0, E), dtype=np.float32)
    W_ih, W_hh, b_ih, b_hh = make_params(cell, E, H, rng, np.float32)
    n = len(lengths)

    hs, cache = ref.layer_forward(cell, x, offsets, W_ih, W_hh, b_ih, b_hh)
    assert hs.shape == (0, H) and hs.dtype == np.float32
    for mode in POOL_MODES:
        for reverse in (False, True):
            feat = ref.pool_forward(hs, offsets, mode, reverse)
            assert feat.shape == (n, H)
            np.testing.assert_array_equal(feat, 0)
            assert ref.pool_backward(np.ones((n, H)), hs, offsets, mode, reverse).shape == (0, H)
    dx, dW_ih, dW_hh, db_ih, db_hh = ref.layer_backward(cache, np.zeros((0, H), np.float32))
    assert dx.shape == (0, E)
    for g, p in ((dW_ih, W_ih), (dW_hh, W_hh), (db_ih, b_ih), (db_hh, b_hh)):
        assert g.shape == p.shape and g.dtype == np.float32
        np.testing.assert_array_equal(g, 0)

    table = ref.fold_table(cell, rng.normal(size=(V, E)).astype(np.float32), W_ih, b_ih, b_hh)
    ids = np.zeros(0, dtype=np.int32)
    feats = ref.layer_infer(cell, table, ids, offsets, W_hh, b_hh, False, ("last", "mean"))
    assert feats.shape == (n, 2 * H)
    np.testing.assert_array_equal(feats, 0)


# --------------------------------------------------------------------------- contract details


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_float32_in_float32_out_and_no_cache_at_inference(cell):
    rng = np.random.default_rng(1)
    E, H = 3, 2
    offsets = offsets_of(RAGGED)
    x = rng.normal(size=(offsets[-1], E)).astype(np.float32)
    params = make_params(cell, E, H, rng, np.float32)
    hs, cache = ref.layer_forward(cell, x, offsets, *params, training=False)
    assert hs.dtype == np.float32 and cache is None
    hs, cache = ref.layer_forward(cell, x, offsets, *params)
    assert all(g.dtype == np.float32 for g in ref.layer_backward(cache, np.ones_like(hs)))
    with pytest.raises(ValueError, match="training=True"):
        ref.layer_backward(None, hs)


def test_saturating_inputs_stay_finite():
    rng = np.random.default_rng(2)
    E, H = 3, 2
    offsets = offsets_of([4])
    x = (rng.normal(size=(4, E)) * 1e4).astype(np.float32)
    for cell in CELLS:
        params = make_params(cell, E, H, rng, np.float32)
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # stable sigmoid
            hs, cache = ref.layer_forward(cell, x, offsets, *params)
            grads = ref.layer_backward(cache, np.ones_like(hs))
        assert np.all(np.isfinite(hs)) and np.all(np.abs(hs) <= 1)
        assert all(np.all(np.isfinite(g)) for g in grads)


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(4)
    E, H = 3, 2
    offsets = offsets_of([2, 1])
    x = rng.normal(size=(3, E))
    W_ih, W_hh, b_ih, b_hh = make_params("lstm", E, H, rng)

    with pytest.raises(ConfigError, match="unknown cell"):
        ref.layer_forward("lstn", x, offsets, W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="W_hh"):
        ref.layer_forward("gru", x, offsets, W_ih, W_hh, b_ih, b_hh)  # lstm-sized weights
    with pytest.raises(ValueError, match="W_ih"):
        ref.layer_forward("lstm", x, offsets, W_ih[:, :2], W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="b_ih"):
        ref.layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih[:-1], b_hh)
    with pytest.raises(ValueError, match="b_hh"):
        ref.layer_forward("lstm", x, offsets, W_ih, W_hh, b_ih, b_hh[:-1])
    with pytest.raises(ValueError, match="x must be"):
        ref.layer_forward("lstm", x[0], offsets, W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="end at nnz=3"):
        ref.layer_forward("lstm", x, offsets_of([2, 2]), W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="start at 0"):
        ref.layer_forward("lstm", x, np.array([1, 3]), W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="non-decreasing"):
        ref.layer_forward("lstm", x, np.array([0, 2, 1, 3]), W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="integer"):
        ref.layer_forward("lstm", x, offsets.astype(float), W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="floating"):
        ref.layer_forward("lstm", x.astype(int), offsets, W_ih, W_hh, b_ih, b_hh)

    hs, cache = ref.layer_forward("lstm", x, offsets.astype(np.int32), W_ih, W_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="dhs"):
        ref.layer_backward(cache, hs[:2])
    with pytest.raises(ConfigError, match="unknown pool mode"):
        ref.pool_forward(hs, offsets, "min")
    with pytest.raises(ValueError, match="dfeat"):
        ref.pool_backward(np.ones((3, H)), hs, offsets, "last")

    table = ref.fold_table("lstm", rng.normal(size=(4, E)), W_ih, b_ih, b_hh)
    ids = np.array([0, 1, 3])
    with pytest.raises(ValueError, match="modes"):
        ref.layer_infer("lstm", table, ids, offsets, W_hh, b_hh, False, "last")
    with pytest.raises(ConfigError, match="unknown pool mode"):
        ref.layer_infer("lstm", table, ids, offsets, W_hh, b_hh, False, ("last", "sum"))
    with pytest.raises(ValueError, match=r"ids\[2\]=4"):
        ref.layer_infer("lstm", table, np.array([0, 1, 4]), offsets, W_hh, b_hh, False, ("last",))
    with pytest.raises(ValueError, match="table"):
        ref.layer_infer("lstm", table[:, :-1], ids, offsets, W_hh, b_hh, False, ("last",))
