"""Optimizers, clipping and schedules (``pipeline/optim.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.optim import (
    SGD,
    Adam,
    LRSchedule,
    RowGrad,
    WeightAverage,
    clip_global_norm,
    make_optimizer,
)


def _params(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "embedding": rng.normal(size=(6, 3)).astype(dtype),
        "l0.fwd.W_ih": rng.normal(size=(4, 3)).astype(dtype),
        "out.b": rng.normal(size=(2,)).astype(dtype),
    }


def _grads(step, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return {k: rng.normal(size=v.shape).astype(dtype) for k, v in _params(dtype).items()}


def test_adam_matches_hand_computed_steps():
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    params = _params(np.float64)
    opt = Adam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expect = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t in range(1, 4):
        g = _grads(t, np.float64)
        opt.step(g)
        for k in expect:
            if k == "l0.fwd.W_ih":  # only matrices other than the embedding decay
                expect[k] *= 1 - lr * wd
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            # torch adds eps to sqrt(v)/sqrt(bc2), which equals sqrt(v_hat) + eps
            expect[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    for k in expect:
        np.testing.assert_allclose(params[k], expect[k], rtol=1e-12, atol=1e-14)
    assert opt.step_count == 3


def test_adam_first_step_moves_each_weight_by_lr():
    # with bias correction the first step is lr * sign(g) (up to eps)
    params = {"w": np.zeros((3, 2), np.float32)}
    g = {"w": np.array([[1, -2], [3e-3, -4e3], [0.5, 7]], np.float32)}
    Adam(params, lr=0.1).step(g)
    np.testing.assert_allclose(params["w"], -0.1 * np.sign(g["w"]), rtol=1e-4)


def test_adam_matches_torch_if_available():
    torch = pytest.importorskip("torch")
    params = _params()
    ours = Adam(params, lr=0.01, weight_decay=0.05)
    tparams = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in params.items()}
    groups = [
        {"params": [tparams["l0.fwd.W_ih"]], "weight_decay": 0.05},
        {"params": [tparams["embedding"], tparams["out.b"]], "weight_decay": 0.0},
    ]
    theirs = torch.optim.AdamW(groups, lr=0.01)
    for t in range(1, 6):
        g = _grads(t)
        ours.step(g)
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        theirs.step()
    for k, p in tparams.items():
        np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_updates_are_in_place():
    params = _params()
    ids = {k: id(v) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    opt = Adam(params)
    opt.step(_grads(1))
    assert {k: id(v) for k, v in params.items()} == ids
    assert all(not np.array_equal(params[k], before[k]) for k in params)


def test_sgd_momentum_by_hand():
    params = {"w": np.array([1.0, -1.0])}
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step({"w": np.array([1.0, 2.0])})  # buf = g
    np.testing.assert_allclose(params["w"], [0.9, -1.2])
    opt.step({"w": np.array([1.0, 0.0])})  # buf = 0.9*[1, 2] + [1, 0] = [1.9, 1.8]
    np.testing.assert_allclose(params["w"], [0.9 - 0.19, -1.2 - 0.18])


def test_state_dict_resumes_bit_identically():
    straight = _params()
    opt = Adam(straight, lr=0.01, weight_decay=0.01)
    for t in range(1, 5):
        opt.step(_grads(t))

    resumed = _params()
    first = Adam(resumed, lr=0.01, weight_decay=0.01)
    for t in range(1, 3):
        first.step(_grads(t))
    saved_params = {k: v.copy() for k, v in resumed.items()}
    saved_state = first.state_dict()
    fresh_params = {k: v.copy() for k, v in saved_params.items()}
    second = Adam(fresh_params, lr=0.01, weight_decay=0.01)
    second.load_state_dict(saved_state)
    assert second.step_count == 2
    for t in range(3, 5):
        second.step(_grads(t))
    for k in straight:
        np.testing.assert_array_equal(straight[k], fresh_params[k])


def test_load_state_dict_refuses_other_shapes():
    opt = Adam(_params())
    state = opt.state_dict()
    state["m/out.b"] = np.zeros(5, np.float32)
    with pytest.raises(ConfigError, match="out.b"):
        opt.load_state_dict(state)
    with pytest.raises(ConfigError):
        SGD(_params()).load_state_dict(Adam(_params()).state_dict())


def test_clip_global_norm():
    grads = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    norm = clip_global_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    assert total == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-4)
    # below the limit: untouched
    grads = {"a": np.array([0.3, 0.4])}
    assert clip_global_norm(grads, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(grads["a"], [0.3, 0.4])


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=0.01, weight_decay=0.1,
                                                  decay_filter=lambda n, a: a.ndim == 2),
                                   lambda p: SGD(p, lr=0.05, momentum=0.9)])  # fmt: skip
def test_row_gradient_updates_like_its_dense_form(make):
    # the embedding's gradient as rows: the same bits as the zero-filled dense gradient, for
    # touched and untouched rows alike (moments decay, decay and momentum move every row)
    dense_params, sparse_params = _params(), _params()
    dense, sparse = make(dense_params), make(sparse_params)
    for step in range(4):
        grads = _grads(step)
        rows = np.array([[0, 4], [5], [], [1, 2, 3]][step], np.int64)
        values = grads["embedding"][rows]
        rg = RowGrad(rows, values, (6, 3))
        grads["embedding"] = rg.dense()
        dense.step(grads)
        sparse.step({**grads, "embedding": rg})
        for name in dense_params:
            assert np.array_equal(dense_params[name], sparse_params[name]), (step, name)
    for key, a in dense.state_dict().items():
        assert np.array_equal(a, sparse.state_dict()[key]), key


def test_row_gradient_checks_and_clipping():
    rg = RowGrad(np.array([2, 0]), np.array([[3.0, 0.0], [0.0, 4.0]], np.float32), (5, 2))
    want = np.zeros((5, 2), np.float32)
    want[2], want[0] = [3.0, 0.0], [0.0, 4.0]
    assert np.array_equal(rg.dense(), want)
    assert rg.where().tolist() == [1, -1, 0, -1, -1]
    norm = clip_global_norm({"e": rg, "b": np.array([12.0], np.float32)}, 6.5)
    assert norm == pytest.approx(13.0)
    np.testing.assert_allclose(rg.values, [[1.5, 0.0], [0.0, 2.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="lie in"):
        RowGrad(np.array([5]), np.zeros((1, 2)), (5, 2))
    with pytest.raises(ValueError, match="distinct"):
        RowGrad(np.array([1, 1]), np.zeros((2, 2)), (5, 2))
    with pytest.raises(ValueError, match="values"):
        RowGrad(np.array([1]), np.zeros((1, 3)), (5, 2))
    opt = Adam({"e": np.zeros((4, 2), np.float32)})
    with pytest.raises(ValueError, match="shaped"):
        opt.step({"e": rg})
    assert opt.step_count == 0  # a refused step changes nothing


def test_schedules():
    s = LRSchedule(1.0, warmup_steps=4, kind="constant")
    assert [s(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    s = LRSchedule(1.0, warmup_steps=0, kind="linear", total_steps=10, floor=0.1)
    assert s(0) == 1.0 and s(5) == pytest.approx(0.55) and s(10) == pytest.approx(0.1)
    assert s(50) == pytest.approx(0.1)
    s = LRSchedule(2.0, warmup_steps=2, kind="cosine", total_steps=12)
    assert s(0) == 1.0 and s(2) == 2.0
    assert s(7) == pytest.approx(1.0) and s(12) == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        LRSchedule(1.0, kind="cosine", total_steps=0)
    with pytest.raises(ConfigError):
        LRSchedule(1.0, kind="step")


def test_make_optimizer():
    assert isinstance(make_optimizer("AdamW", _params(), 1e-3, 0.01), Adam)
    assert isinstance(make_optimizer("sgd", _params(), 1e-3), SGD)
    with pytest.raises(ConfigError):
        make_optimizer("rmsprop", _params(), 1e-3)
    with pytest.raises(ConfigError):
        Adam(_params(), lr=-1)


def test_weight_average_by_hand_and_swap():
    params = _params(np.float64)
    start = {k: v.copy() for k, v in params.items()}
    avg = WeightAverage(params, decay=0.99)
    expected = {k: v.copy() for k, v in params.items()}
    for step in range(1, 40):
        for v in params.values():
            v += 1.0  # a parameter that moves by 1 each step
        d = min(0.99, (1 + step) / (10 + step))  # the warm-up decay, then 0.99
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * params[k]
        avg.update(step)
    for k in params:
        np.testing.assert_allclose(avg.average[k], expected[k], rtol=1e-12)
        assert np.all(avg.average[k] < params[k]) and np.all(avg.average[k] > start[k])
    now = {k: v.copy() for k, v in params.items()}
    avg.swap()
    for k in params:
        np.testing.assert_array_equal(params[k], expected[k])
    avg.swap()
    for k in params:
        np.testing.assert_array_equal(params[k], now[k])
    again = WeightAverage(params, decay=0.99)
    again.load_state_dict(avg.state_dict())
    for k in params:
        np.testing.assert_array_equal(again.average[k], avg.average[k])
    with pytest.raises(ConfigError):
        WeightAverage(params, decay=1.0)


def test_per_parameter_scales_and_freezing():
    params = _params(np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = Adam(params, lr=0.01)
    frozen = {"embedding": 0.0, "l0.fwd.W_ih": 0.5}
    opt.step(_grads(0, np.float64), scales=frozen)
    np.testing.assert_array_equal(params["embedding"], before["embedding"])  # frozen
    assert not opt.state["m"]["embedding"].any() and opt.updates["embedding"] == 0
    # Adam's first step moves every weight by lr (times its scale)
    np.testing.assert_allclose(
        np.abs(params["l0.fwd.W_ih"] - before["l0.fwd.W_ih"]), 0.005, rtol=1e-5
    )
    np.testing.assert_allclose(np.abs(params["out.b"] - before["out.b"]), 0.01, rtol=1e-4)
    # unfrozen later, the embedding's first update is a first step too (its own bias
    # correction), not a step scaled for the optimizer's global count
    for step in range(1, 4):
        opt.step(_grads(step, np.float64), scales=frozen)
    emb = params["embedding"].copy()
    opt.step(_grads(9, np.float64))
    np.testing.assert_allclose(np.abs(params["embedding"] - emb), 0.01, rtol=1e-4)
    assert opt.updates == {"embedding": 1, "l0.fwd.W_ih": 5, "out.b": 5}
    again = Adam(_params(np.float64), lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert again.updates == opt.updates and again.step_count == 5
