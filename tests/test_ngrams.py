"""The word n-gram head (pipeline/ngrams.py): hashed n-grams, sums, the fit and the mix
against their NumPy specifications and finite differences, and the head inside a model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import lbfgs, ngrams
from pipeline.attribution import attributions
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model import Model, ensemble
from pipeline.text import TokenIds, Tokenizer


def ragged(seed: int, lengths=(0, 1, 2, 3, 7, 0, 40, 5), vocab: int = 9) -> TokenIds:
    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return TokenIds(offsets, rng.integers(0, vocab, offsets[-1]).astype(np.int32))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("bits", [8, 20])
def test_features_are_each_reviews_distinct_buckets_as_the_reference_hashes_them(order, bits):
    tokens = ragged(order)
    got = ngrams.features(tokens, order, bits)
    want = ngrams.reference_buckets(tokens, order, bits)
    for i in range(len(tokens)):
        assert want[i].size == sum(max(tokens.lengths[i] - o + 1, 0) for o in range(1, order + 1))
        row = got.buckets[got.offsets[i] : got.offsets[i + 1]]
        np.testing.assert_array_equal(row, np.unique(want[i]))
    assert got.buckets.dtype == np.int32 and got.buckets.max() < 1 << bits


def test_the_hash_is_part_of_the_model_format():
    # saved models hold weights at these buckets: a changed hash would silently give every
    # saved head's weights to other n-grams (a new hash needs a new model format version)
    tokens = TokenIds(np.array([0, 3]), np.array([2, 7, 30001], np.int32))
    want = [2074960, 1817249, 2342800, 123559, 2528965]  # "2", "7", "30001", "2 7", "7 30001"
    assert ngrams.reference_buckets(tokens, 2, 22)[0].tolist() == want
    assert ngrams.features(tokens, 2, 22).buckets.tolist() == sorted(want)


def test_an_ngram_never_spans_two_reviews_and_order_matters():
    one = TokenIds(np.array([0, 2]), np.array([3, 4], np.int32))
    split = TokenIds(np.array([0, 1, 2]), np.array([3, 4], np.int32))
    swapped = TokenIds(np.array([0, 2]), np.array([4, 3], np.int32))
    pair = set(ngrams.features(one, 2, 20).buckets.tolist())
    assert len(pair) == 3  # "3", "4", "3 4"
    assert set(ngrams.features(split, 2, 20).buckets.tolist()) == pair - {
        b for b in pair if b not in ngrams.features(split, 1, 20).buckets
    }
    assert set(ngrams.features(swapped, 2, 20).buckets.tolist()) != pair


def test_row_sums_match_the_reference():
    tokens = ragged(3)
    f = ngrams.features(tokens, 2, 8)
    V = np.random.default_rng(0).normal(size=(256, 3))
    np.testing.assert_allclose(
        ngrams.row_sums(f.offsets, f.buckets, V),
        ngrams.reference_row_sums(f.offsets, f.buckets, V),
        rtol=1e-12,
    )


def _dense_objective(problem: ngrams.HeadProblem, x: np.ndarray, scale: str) -> float:
    """The objective written out with a dense matrix: the specification of ``objective``.
    With "sqrt", row i's features are sqrt(mean n / n_i) for its n_i distinct n-grams."""
    U, K = problem.r.shape
    X = np.zeros((problem.offsets.size - 1, U))
    rows = np.repeat(np.arange(X.shape[0]), np.diff(problem.offsets))
    X[rows, problem.cols] = 1.0
    if scale == "sqrt":
        n = np.maximum(X.sum(axis=1), 1)
        X *= np.sqrt(n.mean() / n)[:, None]
    w, b = x[: U * K].reshape(U, K), x[U * K :]
    z = X @ (problem.r * w) + b
    if K == 1:
        loss = np.logaddexp(0, z[:, 0]) - problem.y * z[:, 0]
    else:
        loss = np.logaddexp.reduce(z, axis=1) - z[np.arange(z.shape[0]), problem.y]
    return problem.C * loss.sum() + 0.5 * (w * w).sum()


@pytest.mark.parametrize("scale", ["none", "sqrt"])
@pytest.mark.parametrize("classes", [2, 3])
def test_the_heads_objective_and_gradient_match_the_dense_form_and_finite_differences(
    classes, scale
):
    tokens = ragged(5, lengths=(4, 0, 6, 3, 9, 2, 5, 1), vocab=6)
    y = np.arange(len(tokens)) % classes
    problem = ngrams.HeadProblem.build(tokens, y, classes, order=2, bits=10, C=0.7, scale=scale)
    U, K = problem.r.shape
    assert K == (1 if classes == 2 else classes)
    x = np.random.default_rng(1).normal(size=U * K + K)
    g, scratch = np.full_like(x, np.nan), np.empty_like(x)
    f = problem.objective(x, g)
    assert f == pytest.approx(_dense_objective(problem, x, scale), rel=1e-12)
    eps = 1e-6
    for j in np.random.default_rng(2).choice(x.size, 12, replace=False):
        e = np.zeros_like(x)
        e[j] = eps
        fd = (problem.objective(x + e, scratch) - problem.objective(x - e, scratch)) / (2 * eps)
        assert g[j] == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_nb_ratios_follow_wang_and_manning():
    counts = np.array([[0.0, 3.0], [2.0, 0.0], [1.0, 1.0]])
    p, q = counts[:, 1] + 1, counts[:, 0] + 1
    want = np.log(p / p.sum()) - np.log(q / q.sum())
    np.testing.assert_allclose(ngrams.nb_ratios(counts)[:, 0], want)
    three = np.array([[4.0, 0.0, 1.0], [0.0, 2.0, 2.0]])
    rest = three.sum(axis=1, keepdims=True) - three + 1
    np.testing.assert_allclose(
        ngrams.nb_ratios(three),
        np.log((three + 1) / (three + 1).sum(0)) - np.log(rest / rest.sum(0)),
    )


def _separable(n: int = 200, seed: int = 0) -> tuple[TokenIds, np.ndarray]:
    """Reviews of random filler words (ids 4..49) where the bigram (2, 3) means positive
    and (3, 2) negative: the words alone say nothing, their order everything."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    rows = []
    for label in y:
        words = rng.integers(4, 50, rng.integers(3, 12)).tolist()
        at = int(rng.integers(0, len(words) + 1))
        rows.append(words[:at] + ([2, 3] if label else [3, 2]) + words[at:])
    offsets = np.r_[0, np.cumsum([len(r) for r in rows])]
    return TokenIds(offsets, np.concatenate(rows).astype(np.int32)), y


def test_the_fitted_head_reads_word_order_from_bigrams():
    tokens, y = _separable()
    test_tokens, test_y = _separable(seed=1)
    for order, least, most in ((1, 0.0, 0.7), (2, 0.98, 1.0)):
        head = ngrams.fit_head(tokens, y, 2, order, bits=16, scale="sqrt")
        z = ngrams.head_logits(ngrams.features(test_tokens, order, 16), head.W, head.b, "sqrt")
        acc = float(((z[:, 0] > 0) == test_y).mean())
        assert least <= acc <= most, (order, acc)
    assert np.count_nonzero(head.W) <= np.unique(ngrams.features(tokens, 2, 16).buckets).size


def test_the_mix_finds_weights_that_generated_the_labels():
    rng = np.random.default_rng(0)
    zr, zh = rng.normal(size=(20000, 1)) * 2, rng.normal(size=(20000, 1)) * 2
    truth = 0.5 * zr + 1.5 * zh - 0.3
    y = (rng.random(20000) < 1 / (1 + np.exp(-truth[:, 0]))).astype(np.int64)
    mix = ngrams.fit_mix(y, zr, zh)
    assert mix.temperature == pytest.approx(2.0, rel=0.1)
    assert mix.beta == pytest.approx(3.0, rel=0.1)
    assert mix.shift[0] == pytest.approx(-0.6, abs=0.15)


# ---------------------------------------------------------------------------- in a model


def _model_with_head(classes: int = 2, members: int = 1) -> tuple[Model, TokenIds, ngrams.Head]:
    cfg = ModelConfig(vocab_size=12, embed_dim=4, hidden_dim=3, classes=tuple("abc"[:classes]))
    models = [Model(cfg, backend="reference", seed=s) for s in range(members)]
    tokens = ragged(7, vocab=12)
    y = np.arange(len(tokens)) % classes
    head = ngrams.fit_head(tokens, y, classes, order=2, bits=9, scale="sqrt")
    base = models[0] if members == 1 else ensemble(models)
    mix = ngrams.Mix(temperature=1.5, beta=0.8, shift=(0.25,) * head.b.size)
    return ngrams.attach(base, head, mix), tokens, head


@pytest.mark.parametrize(("classes", "members"), [(2, 1), (3, 1), (2, 2)])
def test_a_models_logits_are_its_recurrent_models_plus_the_mixed_head(classes, members):
    model, tokens, _ = _model_with_head(classes, members)
    cfg = model.config
    assert cfg.ngrams == 2 and cfg.ngram_bits == 9 and cfg.temperature == 1.5
    recurrent = sum(m.logits(tokens).astype(np.float64) for m in model.members()) / members
    feats = ngrams.features(tokens, 2, 9)
    head = ngrams.head_logits(feats, model.params["ngram.W"], model.params["ngram.b"], "sqrt")
    np.testing.assert_allclose(model.logits(tokens), recurrent + head, rtol=1e-6, atol=1e-6)
    assert all(m.config.ngrams == 0 and "ngram.W" not in m.params for m in model.members())
    with pytest.raises(ConfigError, match="training pass"):
        model.forward(tokens, training=False)


def test_an_ensemble_is_of_recurrent_models_its_head_attached_after():
    model, _, _ = _model_with_head()
    with pytest.raises(ConfigError, match="without a head"):
        ensemble([model, model])


def test_attach_scales_the_head_by_the_mix():
    model, _, head = _model_with_head()
    np.testing.assert_allclose(model.params["ngram.W"], 0.8 * head.W, rtol=1e-6)
    np.testing.assert_allclose(model.params["ngram.b"], 0.8 * head.b + 0.25, rtol=1e-6)
    plain = ngrams.attach(model.members()[0], head, ngrams.Mix())
    np.testing.assert_array_equal(plain.params["ngram.W"], head.W)
    assert plain.config.temperature == 1.0


def test_a_model_with_a_head_saves_and_loads_bit_for_bit(tmp_path):
    model, tokens, _ = _model_with_head()
    tokenizer = Tokenizer(num_words=10).fit(["w" + str(i) for i in range(40)])
    assert tokenizer.vocab_size == model.config.vocab_size
    params = {k: v.astype(np.float32) for k, v in model.params.items()}
    m = Model(model.config, params, tokenizer=tokenizer)
    m.save(tmp_path / "m")
    back = Model.load(tmp_path / "m")
    assert back.config == m.config and back.fingerprint() == m.fingerprint()
    np.testing.assert_array_equal(back.predict_logits(tokens), m.predict_logits(tokens))
    # a model without a head keeps the config (and fingerprint) it had before heads
    assert "ngrams" not in m.members()[0].config.to_dict()


@pytest.mark.parametrize("scale", ["none", "sqrt"])
def test_token_shares_match_the_reference_and_add_up_to_the_heads_logit(scale):
    tokens = ragged(11, vocab=5)  # few words: repeated n-grams and colliding buckets
    rng = np.random.default_rng(0)
    W, coef = rng.normal(size=(256, 3)), rng.normal(size=(len(tokens), 3))
    got = ngrams.token_shares(tokens, 3, 8, W, coef, scale)
    np.testing.assert_allclose(got, ngrams.reference_token_shares(tokens, 3, 8, W, coef, scale))
    z = ngrams.head_logits(ngrams.features(tokens, 3, 8), W, np.zeros(3), scale)
    sums = np.array([got[tokens.offsets[i] : tokens.offsets[i + 1]].sum() for i in range(8)])
    np.testing.assert_allclose(sums, (z * coef).sum(axis=1), atol=1e-12)


@pytest.mark.parametrize("method", ["ig", "grad"])
def test_attributions_of_a_model_with_a_head_are_its_recurrent_ones_plus_the_heads(method):
    model, tokens, _ = _model_with_head()
    targets = model.predict_proba(tokens).argmax(axis=1)
    got = attributions(model, tokens, None, method, steps=8)
    np.testing.assert_array_equal(got.target, targets)
    alone = attributions(model.members()[0], tokens, targets, method, steps=8)
    coef = np.where(targets == 1, 1.0, -1.0)[:, None]
    shares = ngrams.token_shares(tokens, 2, 9, model.params["ngram.W"], coef, "sqrt")
    np.testing.assert_allclose(got.values, alone.values + shares, rtol=1e-5, atol=1e-6)
    z = model.predict_logits(tokens)[:, 0] * coef[:, 0]
    np.testing.assert_allclose(got.f_x, z, rtol=1e-5, atol=1e-6)
    if method == "ig":  # completeness holds for the whole model
        sums = np.add.reduceat(np.r_[got.values, 0], tokens.offsets[:-1])[tokens.lengths > 0]
        diff = (got.f_x - got.f_base)[tokens.lengths > 0]
        np.testing.assert_allclose(sums, diff, atol=0.05 * np.abs(diff).max())


def test_a_heads_logit_is_its_sum_over_distinct_ngrams_divided_by_their_square_root():
    tokens = TokenIds(np.array([0, 0, 1, 4, 6]), np.array([3, 3, 4, 3, 7, 7], np.int32))
    feats = ngrams.features(tokens, 2, 10)
    W, b = np.random.default_rng(0).normal(size=(1 << 10, 1)), np.array([0.5])
    sums = ngrams.head_logits(feats, W, np.zeros(1), "none")[:, 0]
    distinct = np.diff(feats.offsets)
    assert distinct.tolist() == [0, 1, 4, 2]  # "3"; "3", "4", "3 4", "4 3" ("3" twice); "7", "7 7"
    got = ngrams.head_logits(feats, W, b, "sqrt")[:, 0]
    np.testing.assert_allclose(got, 0.5 + sums / np.sqrt(np.maximum(distinct, 1)), rtol=1e-12)
    np.testing.assert_allclose(ngrams.head_logits(feats, W, b, "none")[:, 0], 0.5 + sums)


def test_a_head_saved_before_the_scale_reads_its_sums_as_they_are():
    from pipeline.config import ModelConfig

    cfg = ModelConfig(ngrams=2, ngram_bits=9)
    assert cfg.ngram_scale == "sqrt" and cfg.to_dict()["ngram_scale"] == "sqrt"
    old = cfg.to_dict()
    del old["ngram_scale"]  # a config.json written before heads were scaled
    back = ModelConfig.from_dict(old)
    assert back.ngram_scale == "none" and back.to_dict() == old  # its fingerprint as before
    plain = ModelConfig()  # no head: nothing to scale, nothing written
    assert "ngram_scale" not in plain.to_dict()
    assert ModelConfig.from_dict(plain.to_dict()) == plain


@pytest.mark.parametrize("scale", ["none", "sqrt"])
def test_a_fitted_heads_logits_are_the_ones_its_fit_minimised(scale):
    tokens = ragged(13, lengths=(1, 30, 4, 0, 12, 2, 25, 7), vocab=8)  # lengths far apart
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    head = ngrams.fit_head(tokens, y, 2, order=2, bits=10, scale=scale, C=3.0)
    problem = ngrams.HeadProblem.build(tokens, y, 2, order=2, bits=10, C=3.0, scale=scale)
    U = problem.r.shape[0]
    x = lbfgs.minimize(problem.objective, np.zeros(U + 1))
    X = np.zeros((len(tokens), U))
    X[np.repeat(np.arange(len(tokens)), np.diff(problem.offsets)), problem.cols] = 1.0
    want = problem.s * (X @ (problem.r[:, 0] * x[:U])) + x[U]
    got = ngrams.head_logits(ngrams.features(tokens, 2, 10), head.W, head.b, scale)[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
