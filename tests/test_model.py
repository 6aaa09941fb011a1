"""The model: config, initialisation, forward/backward, inference paths, artifact.

Runs on the NumPy reference backend (and the Numba ``cpu`` backend when it imports), with tiny
shapes so the slow reference stays fast.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.encoder import distinct_ids
from pipeline.errors import ConfigError, ModelFormatError
from pipeline.model import (
    FORMAT_VERSION,
    Model,
    ModelConfig,
    ensemble,
    expected_shapes,
    init_params,
)
from pipeline.optim import Adam
from pipeline.text import TokenIds, Tokenizer


def _available_backends() -> list[str]:
    names = ["reference"]
    try:
        import pipeline.kernels.cpu  # noqa: F401
    except Exception:
        return names
    return [*names, "cpu"]


BACKENDS = _available_backends()
CELLS = ["lstm", "gru", "rnn"]
WORDS = ["w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"]  # ids 2..9 once fitted


def _tokenizer() -> Tokenizer:
    # descending counts so "w<k>" gets id k
    return Tokenizer(num_words=50).fit([" ".join(w for w in WORDS[: k + 1]) for k in range(8)])


def _ragged(rng: np.random.Generator, lens, vocab: int) -> TokenIds:
    offsets = np.r_[0, np.cumsum(lens)]
    return TokenIds(offsets, rng.integers(1, vocab, size=offsets[-1]))


def _separable(n: int = 200, seed: int = 0) -> tuple[TokenIds, np.ndarray]:
    """Random sequences that contain token 5 (class 0) or token 6 (class 1) somewhere."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 9, n)
    y = rng.integers(0, 2, n)
    seqs = []
    for length, label in zip(lens, y, strict=True):
        s = rng.choice([2, 3, 4, 7, 8, 9], size=length)
        s[rng.integers(0, length)] = 5 if label == 0 else 6
        seqs.append(s)
    return TokenIds(np.r_[0, np.cumsum(lens)], np.concatenate(seqs)), y


def _cfg(**kw) -> ModelConfig:
    base = dict(
        cell="lstm", embed_dim=8, hidden_dim=8, vocab_size=10, classes=("neg", "pos"),
        bidirectional=False, pooling="last", dropout=0.0, max_len=256,
    )  # fmt: skip
    return ModelConfig(**{**base, **kw})


# --------------------------------------------------------------------------- config


def test_config_round_trip_and_derived_sizes():
    cfg = _cfg(cell="gru", bidirectional=True, pooling="last+max+mean", num_layers=2)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.modes == ("last", "max", "mean")
    assert cfg.feature_dim == 2 * 8 * 3 and cfg.num_outputs == 1
    assert _cfg(classes=("a", "b", "c")).num_outputs == 3
    assert ModelConfig.format_version == FORMAT_VERSION


@pytest.mark.parametrize(
    "bad",
    [
        {"cell": "transformer"},
        {"pooling": "min"},
        {"pooling": "max+last"},
        {"num_layers": 0},
        {"hidden_dim": 2.5},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"classes": ("only",)},
        {"classes": ("a", "a")},
        {"classes": "ab"},
        {"bidirectional": "yes"},
    ],
)
def test_config_rejects(bad):
    with pytest.raises(ConfigError):
        _cfg(**bad)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = _cfg().to_dict()
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**d, "colour": "red"})
    del d["cell"]
    with pytest.raises(ConfigError, match="cell"):
        ModelConfig.from_dict(d)


# --------------------------------------------------------------------------- init


def test_init_is_keras_like_and_seeded():
    cfg = _cfg(cell="lstm", bidirectional=True, vocab_size=50, hidden_dim=6, embed_dim=5)
    p = init_params(cfg, seed=3)
    assert {k: v.shape for k, v in p.items()} == expected_shapes(cfg)
    assert all(v.dtype == np.float32 for v in p.values())
    assert np.all(p["embedding"][0] == 0) and np.abs(p["embedding"]).max() <= 0.05
    H = 6
    for d in ("fwd", "bwd"):
        W_hh = p[f"l0.{d}.W_hh"].astype(np.float64)
        for g in range(4):
            block = W_hh[g * H : (g + 1) * H]
            np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
        b_ih = p[f"l0.{d}.b_ih"]
        np.testing.assert_array_equal(b_ih[H : 2 * H], 1.0)
        assert np.all(np.delete(b_ih, np.s_[H : 2 * H]) == 0) and np.all(p[f"l0.{d}.b_hh"] == 0)
        limit = np.sqrt(6 / (5 + H))  # Glorot per gate block [H, E]
        assert np.abs(p[f"l0.{d}.W_ih"]).max() <= limit
    again = init_params(cfg, seed=3)
    assert all(np.array_equal(p[k], again[k]) for k in p)
    assert not np.array_equal(p["out.W"], init_params(cfg, seed=4)["out.W"])
    gru = init_params(_cfg(cell="gru"), 0)
    assert np.all(gru["l0.fwd.b_ih"] == 0)


def test_model_rejects_params_that_do_not_fit():
    cfg = _cfg()
    params = init_params(cfg, 0)
    params["l0.fwd.W_hh"] = params["l0.fwd.W_hh"][:, :4]
    with pytest.raises(ConfigError, match="W_hh"):
        Model(cfg, params, backend="reference")
    with pytest.raises(ConfigError):
        Model(cfg, backend="tpu")


# --------------------------------------------------------------------------- gradients


def _numeric_grad_check(model: Model, tokens: TokenIds, y: np.ndarray, class_weights=None):
    model.params = {k: v.astype(np.float64) for k, v in model.params.items()}
    # non-zero biases so every gate path carries gradient
    rng = np.random.default_rng(9)
    for k in model.params:
        if ".b_" in k or k == "out.b":
            model.params[k] += rng.normal(scale=0.3, size=model.params[k].shape)

    def loss_and_grads():
        # the same seed every call: identical dropout masks, so the loss is a smooth function
        return model.loss_and_grads(tokens, y, class_weights, rng=np.random.default_rng(0))

    loss, grads = loss_and_grads()
    assert set(grads) == set(model.params)
    eps = 1e-6
    for name, p in model.params.items():
        assert grads[name].shape == p.shape and grads[name].dtype == np.float64
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up, _ = loss_and_grads()
            p[i] = old - eps
            down, _ = loss_and_grads()
            p[i] = old
            numeric[i] = (up - down) / (2 * eps)
        if name == "embedding":
            numeric[0] = 0  # the pad row is frozen by design
        scale = max(np.abs(numeric).max(), 1e-3)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-6 * scale + 1e-9, err_msg=name)
    return loss


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_bidirectional_last_max(cell):
    rng = np.random.default_rng(1)
    cfg = ModelConfig(
        cell=cell, embed_dim=3, hidden_dim=2, bidirectional=True, pooling="last+max",
        vocab_size=7, classes=("a", "b"), dropout=0.0,
    )  # fmt: skip
    model = Model(cfg, backend="reference", seed=2)
    tokens = _ragged(rng, [3, 0, 1, 5, 2], 7)
    tokens = TokenIds(tokens.offsets, np.where(np.arange(tokens.nnz) == 2, 0, tokens.ids))  # a pad
    _numeric_grad_check(model, tokens, np.array([0, 1, 1, 0, 1]))


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_two_layers_multiclass_weighted_dropout(cell):
    rng = np.random.default_rng(2)
    cfg = ModelConfig(
        cell=cell, embed_dim=3, hidden_dim=2, num_layers=2, bidirectional=True,
        pooling="max+mean", vocab_size=6, classes=("a", "b", "c"), dropout=0.3,
    )  # fmt: skip
    model = Model(cfg, backend="reference", seed=3)
    tokens = _ragged(rng, [4, 1, 0, 3], 6)
    _numeric_grad_check(model, tokens, np.array([2, 0, 1, 2]), np.array([0.5, 1.0, 2.0]))


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_word_embedding_and_weight_dropout(cell):
    rng = np.random.default_rng(4)
    cfg = ModelConfig(
        cell=cell, embed_dim=3, hidden_dim=2, bidirectional=True, pooling="last+mean",
        vocab_size=6, classes=("a", "b"), word_dropout=0.3, embed_dropout=0.4, weight_drop=0.3,
        dropout=0.0,
    )  # fmt: skip
    model = Model(cfg, backend="reference", seed=4)
    tokens = _ragged(rng, [5, 1, 0, 4], 6)
    _numeric_grad_check(model, tokens, np.array([1, 0, 1, 0]))


@pytest.mark.parametrize("name", ["word_dropout", "embed_dropout", "weight_drop"])
def test_training_regularisers_act_in_training_only(name):
    tokens = _ragged(np.random.default_rng(7), [6, 3, 8, 5], 10)
    plain = Model(_cfg(bidirectional=True), backend="reference", seed=1)
    noisy = Model(_cfg(bidirectional=True, **{name: 0.5}), plain.params, backend="reference")
    a, _ = plain.forward(tokens, training=True, rng=np.random.default_rng(0))
    b, _ = noisy.forward(tokens, training=True, rng=np.random.default_rng(0))
    assert not np.allclose(a, b)  # the regulariser changed the training pass
    c, _ = noisy.forward(tokens, training=False)
    assert np.array_equal(c, plain.forward(tokens, training=False)[0])  # and not inference
    assert np.array_equal(noisy.predict_proba(tokens), plain.predict_proba(tokens))


def test_configs_saved_without_the_regularisers_still_load():
    d = _cfg().to_dict()
    for name in ("word_dropout", "embed_dropout", "weight_drop"):
        del d[name]
    assert ModelConfig.from_dict(d) == _cfg()


@pytest.mark.parametrize("backend", _available_backends())
def test_sparse_embedding_gradient_is_the_dense_one_by_rows(backend):
    from pipeline.optim import RowGrad

    model = Model(_cfg(dropout=0.2, bidirectional=True), backend=backend, seed=5)
    tokens = _ragged(np.random.default_rng(6), [3, 0, 5, 2], 10)
    ids = tokens.ids.copy()
    ids[[0, 4]] = 0  # padding ids in the batch: their row never learns
    tokens, y = TokenIds(tokens.offsets, ids), np.array([0, 1, 1, 0])
    _, dense = model.loss_and_grads(tokens, y, rng=np.random.default_rng(0))
    _, sparse = model.loss_and_grads(tokens, y, rng=np.random.default_rng(0), sparse_embedding=True)
    emb = sparse["embedding"]
    assert isinstance(emb, RowGrad) and 0 not in emb.rows and emb.rows.size > 2
    assert emb.values.dtype == dense["embedding"].dtype
    assert np.array_equal(emb.dense(), dense["embedding"])
    for name in dense:
        if name != "embedding":
            assert np.array_equal(sparse[name], dense[name]), name


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the Numba cpu backend does not import")
@pytest.mark.parametrize("cell", CELLS)
def test_cpu_backend_gradients_match_reference(cell):
    cfg = ModelConfig(
        cell=cell, embed_dim=4, hidden_dim=3, num_layers=2, bidirectional=True,
        pooling="last+max+mean", vocab_size=9, classes=("a", "b", "c"), dropout=0.0,
    )  # fmt: skip
    tokens = _ragged(np.random.default_rng(4), [0, 1, 6, 2, 9], 9)
    y = np.array([0, 1, 2, 2, 1])
    ref = Model(cfg, backend="reference", seed=6)
    cpu = Model(cfg, {k: v.copy() for k, v in ref.params.items()}, backend="cpu")
    loss_ref, g_ref = ref.loss_and_grads(tokens, y)
    loss_cpu, g_cpu = cpu.loss_and_grads(tokens, y)
    assert loss_cpu == pytest.approx(loss_ref, rel=1e-5)
    for k in g_ref:
        assert g_cpu[k].dtype == np.float32
        np.testing.assert_allclose(g_cpu[k], g_ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_loss_values_by_hand():
    cfg = _cfg(classes=("a", "b", "c"))
    model = Model(cfg, backend="reference", seed=0)
    tokens = _ragged(np.random.default_rng(0), [2, 3], 10)
    logits, _ = model.forward(tokens, training=False)
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    y = np.array([2, 0])
    loss, _ = model.loss_and_grads(tokens, y)
    assert loss == pytest.approx(-(logp[0, 2] + logp[1, 0]) / 2, rel=1e-6)
    w = np.array([1.0, 1.0, 3.0])
    loss_w, _ = model.loss_and_grads(tokens, y, w)
    assert loss_w == pytest.approx(-(3 * logp[0, 2] + logp[1, 0]) / 4, rel=1e-6)


def test_binary_loss_is_stable_for_huge_logits():
    cfg = _cfg()
    params = init_params(cfg, 0)
    params["out.b"][:] = 200.0
    model = Model(cfg, params, backend="reference")
    tokens = _ragged(np.random.default_rng(0), [2, 2], 10)
    loss, grads = model.loss_and_grads(tokens, np.array([0, 1]))
    assert loss == pytest.approx(100.0, rel=1e-3)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_distinct_ids_map_every_token_to_its_row():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, 500).astype(np.int32)
    distinct, rows = distinct_ids(ids, 25)
    np.testing.assert_array_equal(distinct, np.unique(ids))
    np.testing.assert_array_equal(distinct[rows], ids)
    assert rows.dtype == np.int64
    empty, no_rows = distinct_ids(ids[:0], 25)
    assert empty.size == 0 and no_rows.size == 0


def test_dropout_changes_training_forward_only():
    cfg = _cfg(dropout=0.5, num_layers=2)
    model = Model(cfg, backend="reference", seed=0)
    tokens = _ragged(np.random.default_rng(0), [3, 4], 10)
    a, _ = model.forward(tokens, training=True, rng=np.random.default_rng(1))
    b, _ = model.forward(tokens, training=True, rng=np.random.default_rng(2))
    c, _ = model.forward(tokens, training=True, rng=np.random.default_rng(1))
    assert not np.allclose(a, b) and np.array_equal(a, c)
    e1, _ = model.forward(tokens, training=False)
    e2, _ = model.forward(tokens, training=False)
    np.testing.assert_array_equal(e1, e2)
    with pytest.raises(ValueError):
        model.forward(tokens, training=True)


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_learns_a_separable_task(cell, backend):
    tokens, y = _separable()
    model = Model(_cfg(cell=cell), backend=backend, seed=0)
    opt = Adam(model.params, lr=0.03)
    rng = np.random.default_rng(0)
    acc = 0.0
    for _ in range(15):
        for idx in np.array_split(rng.permutation(len(y)), 6):
            _, grads = model.loss_and_grads(tokens.take(idx), y[idx])
            opt.step(grads)
        model.clear_cache()
        acc = float(np.mean(model.predict_proba(tokens).argmax(1) == y))
        if acc == 1.0:
            break
    assert acc == 1.0


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fast_path_matches_general_forward(cell, bidirectional, backend):
    cfg = _cfg(
        cell=cell, bidirectional=bidirectional, pooling="last+max+mean", classes=("a", "b", "c")
    )
    model = Model(cfg, backend=backend, seed=5)
    tokens = _ragged(np.random.default_rng(0), [0, 1, 7, 3, 12, 2], 10)
    fast = model.predict_proba(tokens, batch_size=4)  # one layer: folded tables
    logits, _ = model.forward(tokens, training=False)
    z = logits.astype(np.float64)
    slow = np.exp(z - z.max(1, keepdims=True))
    slow /= slow.sum(1, keepdims=True)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast.dtype == np.float32 and fast.shape == (6, 3)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_predict_proba_keeps_input_order_whatever_the_batch(num_layers):
    model = Model(_cfg(num_layers=num_layers), backend="reference", seed=1)
    tokens = _ragged(np.random.default_rng(3), [5, 1, 9, 0, 3, 7, 2], 10)
    full = model.predict_proba(tokens, batch_size=1024)
    for bs in (1, 3):
        np.testing.assert_allclose(model.predict_proba(tokens, batch_size=bs), full, atol=1e-6)
    one = np.stack([model.predict_proba(tokens.take(np.array([i])))[0] for i in range(7)])
    np.testing.assert_allclose(one, full, atol=1e-6)
    np.testing.assert_allclose(full.sum(1), 1.0, rtol=1e-6)
    assert model.predict_proba(tokens.take(np.zeros(0, np.int64))).shape == (0, 2)


_PROPERTY_MODEL = Model(
    _cfg(cell="gru", bidirectional=True, pooling="last+mean"), backend="reference"
)


@settings(max_examples=25, deadline=None)
@given(
    lens=st.lists(st.integers(0, 12), min_size=1, max_size=12),
    batch_size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_predictions_do_not_depend_on_batching(lens, batch_size, seed):
    tokens = _ragged(np.random.default_rng(seed), lens, 10)
    whole = _PROPERTY_MODEL.predict_proba(tokens, batch_size=1024)
    batched = _PROPERTY_MODEL.predict_proba(tokens, batch_size=batch_size)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    perm = np.random.default_rng(seed).permutation(len(lens))
    shuffled = _PROPERTY_MODEL.predict_proba(tokens.take(perm), batch_size=batch_size)
    np.testing.assert_allclose(shuffled, whole[perm], rtol=1e-5, atol=1e-6)


def test_clear_cache_refreshes_folded_tables():
    model = Model(_cfg(), backend="reference", seed=1)
    tokens = _ragged(np.random.default_rng(3), [5, 2], 10)
    before = model.predict_proba(tokens)
    model.params["embedding"] *= 3.0
    assert np.array_equal(model.predict_proba(tokens), before)  # stale by design
    model.clear_cache()
    assert not np.allclose(model.predict_proba(tokens), before)


def test_encode_truncates_keeping_the_last_tokens():
    tok = _tokenizer()
    model = Model(_cfg(max_len=3, vocab_size=tok.vocab_size), tokenizer=tok, backend="reference")
    enc = model.encode(["w2 w3 w4 w5 w6", "w9"])
    assert enc[0].tolist() == [4, 5, 6] and enc[1].tolist() == [9]


# --------------------------------------------------------------------------- artifact


def _saved(tmp_path, **kw):
    tok = _tokenizer()
    cfg = _cfg(vocab_size=tok.vocab_size, **kw)
    model = Model(cfg, tokenizer=tok, backend="reference", seed=4)
    path = model.save(tmp_path / "model", training={"epochs": 1}, metrics={"accuracy": 0.5})
    return model, path


@pytest.mark.parametrize("kw", [{}, {"cell": "gru", "bidirectional": True, "pooling": "max+mean"}])
def test_save_load_round_trip_bit_for_bit(tmp_path, kw):
    model, path = _saved(tmp_path, classes=("negative", "neutral", "positive"), **kw)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "vocab.json", "weights.npz"]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["metrics"] == {"accuracy": 0.5}
    assert config["tokenizer"]["num_words"] == 50 and config["training"] == {"epochs": 1}
    loaded = Model.load(path, backend="reference")
    assert loaded.config == model.config
    assert loaded.tokenizer.words == model.tokenizer.words
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    tokens = model.encode(["w2 w3 w9", "", "w4 unknown w5 w5"])
    np.testing.assert_array_equal(loaded.predict_proba(tokens), model.predict_proba(tokens))
    assert loaded.fingerprint() == model.fingerprint()
    loaded.params["out.b"][0] += 1e-3
    assert loaded.fingerprint() != model.fingerprint()


def _rewrite_weights(path, change):
    with np.load(path / "weights.npz") as npz:
        weights = {k: npz[k] for k in npz.files}
    change(weights)
    np.savez(path / "weights.npz", **weights)


def test_load_refuses_other_format_version(tmp_path):
    _, path = _saved(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="format_version"):
        Model.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.pop("l0.fwd.W_hh"), "'l0.fwd.W_hh' is missing"),
        (lambda w: w.update({"out.W": w["out.W"][:, :-1]}), "'out.W' has shape"),
        (lambda w: w.update({"l0.bwd.W_hh": w["l0.fwd.W_hh"]}), "unexpected weight 'l0.bwd.W_hh'"),
        (lambda w: w.update({"out.b": w["out.b"].astype(np.float64)}), "float32"),
        (lambda w: w["embedding"].__setitem__((3, 1), np.nan), "NaN"),
    ],
)
def test_load_refuses_bad_weights(tmp_path, change, message):
    _, path = _saved(tmp_path)
    _rewrite_weights(path, change)
    with pytest.raises(ModelFormatError, match=message) as info:
        Model.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_refuses_broken_directories(tmp_path):
    with pytest.raises(ModelFormatError, match="not a model directory"):
        Model.load(tmp_path / "nowhere")
    with pytest.raises(ModelFormatError, match="config.json"):
        Model.load(tmp_path)
    _, path = _saved(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "vocab_size": 99}))
    with pytest.raises(ModelFormatError, match="vocab_size"):
        Model.load(path)
    (path / "config.json").write_text(json.dumps({**config, "cell": "lstmx"}))
    with pytest.raises(ModelFormatError, match="cell"):
        Model.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        Model.load(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "weights.npz").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="weights.npz"):
        Model.load(path)


def test_load_refuses_pickled_weights(tmp_path):
    _, path = _saved(tmp_path)
    _rewrite_weights(path, lambda w: w.update({"out.b": np.array([{"x": 1}], dtype=object)}))
    with pytest.raises(ModelFormatError):
        Model.load(path)


def test_failed_save_leaves_nothing(tmp_path):
    tok = _tokenizer()
    model = Model(_cfg(vocab_size=tok.vocab_size), tokenizer=tok, backend="reference")
    with pytest.raises(ValueError):  # NaN is not valid JSON: fails mid-save
        model.save(tmp_path / "model", metrics={"loss": float("nan")})
    assert not (tmp_path / "model").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):
        Model(_cfg(), backend="reference").save(tmp_path / "m2")  # no tokenizer


def test_config_dataclass_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _cfg().cell = "gru"  # type: ignore[misc]


def test_temperature_divides_the_logits_and_survives_save_load(tmp_path):
    model = Model(_cfg(classes=("a", "b", "c")), tokenizer=_tokenizer(), seed=3)
    tokens = _ragged(np.random.default_rng(2), [4, 1, 6], 10)
    z = model.predict_logits(tokens)
    hot = Model(dataclasses.replace(model.config, temperature=2.0), model.params,
                tokenizer=model.tokenizer)  # fmt: skip
    expected = np.exp(z / 2.0) / np.exp(z / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(hot.predict_proba(tokens), expected, rtol=1e-5)
    assert not np.allclose(hot.predict_proba(tokens), model.predict_proba(tokens))
    hot.save(tmp_path / "m")
    back = Model.load(tmp_path / "m")
    assert back.config.temperature == 2.0
    np.testing.assert_array_equal(back.predict_proba(tokens), hot.predict_proba(tokens))
    with pytest.raises(ConfigError, match="temperature"):
        _cfg(temperature=0.0)


def test_weights_that_overflow_are_a_run_error_not_a_crash():
    from pipeline.errors import RunError

    cfg = _cfg(classes=("a", "b", "c"))
    params = init_params(cfg, seed=0)
    # finite weights whose logits overflow: +/-inf for every class, so inf - inf in softmax
    params["out.W"][:] = 3e38 * np.sign(np.random.default_rng(1).normal(size=cfg.feature_dim))
    params["out.b"][:] = 3.3e38
    model = Model(cfg, params, tokenizer=_tokenizer())
    with pytest.raises(RunError, match="not finite"), np.errstate(all="ignore"):
        model.predict_proba(_ragged(np.random.default_rng(0), [3, 2, 5, 1, 4, 6, 2, 3], 10))


def test_an_ensemble_scores_the_mean_of_its_members(tmp_path):
    cfg = ModelConfig(vocab_size=30, embed_dim=6, hidden_dim=5, temperature=1.5)
    a, b = Model(cfg, seed=1), Model(cfg, seed=2)
    both = ensemble([a, b])
    assert both.config.members == 2 and set(both.params) == set(a.params) | {
        f"m1.{k}" for k in b.params
    }
    tokens = TokenIds(np.array([0, 4, 4, 9]), np.arange(1, 10) % 29 + 1)
    z = [m.predict_logits(tokens).astype(np.float64) for m in (both, a, b)]
    np.testing.assert_allclose(z[0], (z[1] + z[2]) / 2, rtol=1e-6, atol=1e-7)
    assert np.array_equal(both.predict_proba(tokens)[:, 1] > 0.5, z[0][:, 0] > 0)
    assert all(m.params["embedding"] is p.params["embedding"]
               for m, p in zip(both.members(), (a, b), strict=True))  # fmt: skip
    # a single model's config and fingerprint carry no trace of ensembles
    assert "members" not in cfg.to_dict() and ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="training pass"):
        both.forward(tokens, training=False)
    with pytest.raises(ConfigError, match="one model config"):
        ensemble([a, Model(dataclasses.replace(cfg, hidden_dim=4))])
    with pytest.raises(ConfigError, match="members"):
        ModelConfig(members=0)
    # the format keeps every member, and refuses one missing
    tok = Tokenizer(num_words=28).fit(["w" + str(i) for i in range(40)])
    both.tokenizer = tok
    both.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    assert loaded.fingerprint() == both.fingerprint()
    np.testing.assert_array_equal(loaded.predict_logits(tokens), both.predict_logits(tokens))
    with np.load(tmp_path / "m" / "weights.npz") as npz:
        kept = {k: npz[k] for k in npz.files if k != "m1.out.W"}
    np.savez(tmp_path / "m" / "weights.npz", **kept)
    with pytest.raises(ModelFormatError, match="m1.out.W"):
        Model.load(tmp_path / "m")
