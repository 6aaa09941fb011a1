"""Pretraining (``pipeline/pretrain.py``): the language-model step against finite
differences, the encoder artifact, --resume bit for bit, warm-starting a classifier, and
encoders of several members (each the run of its own seed; a model per member)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import toy_reviews
from typer.testing import CliRunner

from pipeline import ngrams
from pipeline.cli import app
from pipeline.config import EncoderConfig, PretrainConfig, TrainConfig
from pipeline.errors import ConfigError, InputError, ModelFormatError
from pipeline.events import PretrainEpochEnd
from pipeline.kernels import get_backend
from pipeline.lm import UnigramSampler
from pipeline.model import Model
from pipeline.pretrain import (
    _init_params,
    _lm_step,
    _positions,
    checkpoint_dir_for,
    is_encoder_dir,
    load_encoder,
    pretrain,
)
from pipeline.text import TokenIds
from pipeline.train import train

TINY_ENC = EncoderConfig(cell="gru", embed_dim=6, hidden_dim=5, max_len=12)


def _pc(**kw) -> PretrainConfig:
    base = dict(epochs=2, batch_size=8, lr=0.01, samples=8, num_words=200, valid_frac=0.1,
                warmup_steps=2, threads=1, members=1)  # fmt: skip
    return PretrainConfig(**{**base, **kw})


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Text with strong order (word k is followed by word k+1), so a model can learn it."""
    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(30)]
    texts = []
    for _ in range(160):
        start, n = int(rng.integers(0, 30)), int(rng.integers(3, 20))
        texts.append(" ".join(words[(start + i) % 30] for i in range(n)))
    path = tmp_path / "unlabeled.parquet"
    pq.write_table(pa.table({"text": texts}), path)
    return path


def test_positions_pair_each_state_with_the_next_or_previous_token():
    offsets = np.array([0, 3, 3, 4, 6])  # lengths 3, 0, 1, 2
    pos, tgt = _positions(offsets, "fwd")
    assert pos.tolist() == [0, 1, 4] and tgt.tolist() == [1, 2, 5]
    pos, tgt = _positions(offsets, "bwd")
    assert pos.tolist() == [1, 2, 5] and tgt.tolist() == [0, 1, 4]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_language_model_gradients_match_finite_differences(cell):
    ec = EncoderConfig(cell=cell, embed_dim=3, hidden_dim=2, vocab_size=9, max_len=8,
                       word_dropout=0.2, weight_drop=0.2)  # fmt: skip
    counts = np.arange(9, dtype=float)
    params = {k: v.astype(np.float64) for k, v in _init_params(ec, counts, seed=1).items()}
    rng = np.random.default_rng(2)
    for k in params:  # non-zero biases and heads so every path carries gradient
        if ".b_" in k or k.startswith("lm."):
            params[k] += rng.normal(scale=0.3, size=params[k].shape)
    tokens = TokenIds(np.array([0, 4, 5, 8]), rng.integers(1, 9, 8))
    kernels = get_backend("reference")
    sampler = UnigramSampler(counts + 1)

    def step():  # the same seed each call: the same masks and candidates
        return _lm_step(ec, params, kernels, tokens, sampler, 4, np.random.default_rng(0))

    _, grads = step()
    eps = 1e-6
    for name, p in params.items():
        g = grads[name]
        g = g.dense() if hasattr(g, "dense") else g
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = step()[0]
            p[i] = old - eps
            down = step()[0]
            p[i] = old
            numeric[i] = (up - down) / (2 * eps)
        if name == "embedding":
            numeric[0] = 0  # padding never learns
        np.testing.assert_allclose(g, numeric, atol=2e-7, err_msg=name)


def test_pretrain_learns_and_writes_an_encoder(corpus, tmp_path):
    events = []
    result = pretrain(corpus, tmp_path / "enc", TINY_ENC, _pc(epochs=3), progress=events.append)
    ends = [e for e in events if isinstance(e, PretrainEpochEnd)]
    assert [e.kind for e in events[:2]] == ["word_vectors", "pretrain_ready"]
    assert [e.epoch for e in ends] == [1, 2, 3]
    ppl = [e.perplexity["fwd"] for e in ends]
    assert ppl[-1] < ppl[0] < 30  # below uniform over the 30 words, and falling
    assert is_encoder_dir(tmp_path / "enc")
    enc = load_encoder(tmp_path / "enc")
    assert enc.config.vocab_size == enc.tokenizer.vocab_size == 32
    assert set(enc.params) >= {"embedding", "l0.fwd.W_hh", "l0.bwd.W_hh", "lm.fwd.W", "lm.bwd.b"}
    for k, v in result.encoder.params.items():
        np.testing.assert_array_equal(enc.params[k], v, err_msg=k)
    info = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert info["pretraining"]["history"][-1]["epoch"] == 3


def test_pretrain_resume_is_bit_identical(corpus, tmp_path):
    pc = _pc(epochs=3)
    pretrain(corpus, tmp_path / "a", TINY_ENC, pc)

    class Stop(Exception):
        pass

    def stop_after_one(event):
        if isinstance(event, PretrainEpochEnd) and event.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        pretrain(corpus, tmp_path / "b", TINY_ENC, pc, progress=stop_after_one)
    assert not (tmp_path / "b").exists() and checkpoint_dir_for(tmp_path / "b").is_dir()
    resumed = pretrain(corpus, tmp_path / "b", TINY_ENC, pc, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a, b = load_encoder(tmp_path / "a"), load_encoder(tmp_path / "b")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    with pytest.raises(ConfigError, match="different"):
        pretrain(corpus, tmp_path / "b", TINY_ENC, _pc(epochs=3, lr=0.5), resume=True)


def test_an_encoder_warm_starts_a_classifier(tmp_path, monkeypatch):
    data = tmp_path / "labelled.parquet"
    pq.write_table(toy_reviews(200, seed=1), data)
    pretrain(data, tmp_path / "enc", TINY_ENC, _pc())
    enc = load_encoder(tmp_path / "enc")
    seen = {}
    real = Model.loss_and_grads

    def first_step(self, *args, **kwargs):
        if not seen:
            seen.update({k: v.copy() for k, v in self.params.items()})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Model, "loss_and_grads", first_step)
    tc = TrainConfig(epochs=1, batch_size=16, backend="reference")
    result = train(data, tmp_path / "m", {"pooling": "max", "dropout": 0.0}, tc,
                   init_from=tmp_path / "enc")  # fmt: skip
    for k, v in enc.encoder_params.items():  # the classifier starts from the encoder, exactly
        np.testing.assert_array_equal(seen[k], v, err_msg=k)
    assert result.model.tokenizer.words == enc.tokenizer.words
    cfg = result.model.config
    assert (cfg.cell, cfg.embed_dim, cfg.hidden_dim, cfg.bidirectional) == ("gru", 6, 5, True)
    monkeypatch.setattr(Model, "loss_and_grads", real)
    cold = train(data, tmp_path / "m2", {"cell": "gru", "embed_dim": 6, "hidden_dim": 5,
                                         "pooling": "max", "dropout": 0.0}, tc)  # fmt: skip
    assert not np.array_equal(cold.model.params["out.W"], result.model.params["out.W"])
    with pytest.raises(ConfigError, match="hidden_dim"):
        train(data, tmp_path / "m3", {"hidden_dim": 7}, tc, init_from=tmp_path / "enc")


def test_bad_input_and_broken_encoders(corpus, tmp_path):
    no_text = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3]}), no_text)
    with pytest.raises(InputError, match="no 'text' or 'review' column"):
        pretrain(no_text, tmp_path / "e1", TINY_ENC, _pc())
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([None, ""], pa.string())}), empty)
    with pytest.raises(InputError, match="no words|two tokens"):
        pretrain(empty, tmp_path / "e2", TINY_ENC, _pc())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an rnnpipe model directory"):
        pretrain(corpus, tmp_path / "notes", TINY_ENC, _pc())
    assert (tmp_path / "notes" / "keep.txt").read_text() == "x"
    with pytest.raises(ConfigError, match="one layer"):
        EncoderConfig(num_layers=2, bidirectional=True)
    with pytest.raises(ModelFormatError, match="not an rnnpipe encoder"):
        load_encoder(tmp_path / "notes")


def test_word_vectors_only(corpus, tmp_path):
    result = pretrain(corpus, tmp_path / "enc", TINY_ENC, _pc(epochs=0, word_vectors=2))
    assert result.history == []
    enc = load_encoder(tmp_path / "enc")
    from pipeline.word2vec import word_vectors

    unlearned = word_vectors(TokenIds(np.zeros(1, np.int64), np.zeros(0, np.int32)),
                             enc.config.vocab_size, enc.config.embed_dim, 2, seed=0)  # fmt: skip
    assert not np.allclose(enc.params["embedding"], unlearned)  # the vectors learned
    with pytest.raises(ConfigError, match="nothing to pretrain"):
        PretrainConfig(epochs=0, word_vectors=0)


def _same_params(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_members_are_the_runs_of_the_next_seeds(corpus, tmp_path):
    joined = pretrain(corpus, tmp_path / "enc", TINY_ENC, _pc(members=2, seed=4))
    enc = load_encoder(tmp_path / "enc")
    assert enc.members == 2 and joined.encoder.members == 2
    raw = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert (raw["format_version"], raw["members"]) == (2, 2)
    assert [(r["member"], r["epoch"]) for r in raw["pretraining"]["history"]] == [
        (0, 1), (0, 2), (1, 1), (1, 2)
    ]  # fmt: skip
    for k, seed in enumerate((4, 5)):  # member k is the single run with seed + k, bit for bit
        one = pretrain(corpus, tmp_path / f"s{seed}", TINY_ENC, _pc(seed=seed))
        assert (
            json.loads((tmp_path / f"s{seed}" / "config.json").read_text())["format_version"] == 1
        )
        mine = {n: enc.params[n if k == 0 else f"m{k}.{n}"] for n in one.encoder.params}
        _same_params(mine, one.encoder.params)
        _same_params(enc.member_params(k), one.encoder.encoder_params)
    assert not np.array_equal(enc.params["embedding"], enc.params["m1.embedding"])


def test_members_resume_bit_identical(corpus, tmp_path):
    pc = _pc(members=2)
    pretrain(corpus, tmp_path / "a", TINY_ENC, pc)

    class Stop(Exception):
        pass

    ends = []

    def stop_in_the_second_member(event):
        ends.append(isinstance(event, PretrainEpochEnd))
        if sum(ends) == 3:  # member 0's two epochs, member 1's first
            raise Stop

    with pytest.raises(Stop):
        pretrain(corpus, tmp_path / "b", TINY_ENC, pc, progress=stop_in_the_second_member)
    assert (checkpoint_dir_for(tmp_path / "b") / "state.m1" / "state.json").is_file()
    resumed = pretrain(corpus, tmp_path / "b", TINY_ENC, pc, resume=True)
    assert [(r["member"], r["epoch"]) for r in resumed.history] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    _same_params(load_encoder(tmp_path / "a").params, load_encoder(tmp_path / "b").params)


def test_a_model_per_member_each_as_its_own_run(tmp_path):
    data, valid = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    pq.write_table(toy_reviews(160, seed=1), data)
    pq.write_table(toy_reviews(60, seed=2), valid)
    pretrain(data, tmp_path / "enc", TINY_ENC, _pc(members=2))
    pretrain(data, tmp_path / "enc1", TINY_ENC, _pc(seed=1))  # member 1 alone
    tc = TrainConfig(epochs=1, batch_size=16, backend="reference", ngrams=1)
    joined = train(data, tmp_path / "m", {}, tc, valid_paths=valid, init_from=tmp_path / "enc")
    one = train(data, tmp_path / "m1", {}, dataclasses.replace(tc, seed=1), valid_paths=valid,
                init_from=tmp_path / "enc1")  # fmt: skip
    model = Model.load(tmp_path / "m")
    assert model.config.members == 2 and joined.metrics["members"] == 2
    members = model.members()
    _same_params(members[1].params, one.model.members()[0].params)  # trained as its own run
    assert not np.array_equal(members[0].params["out.W"], members[1].params["out.W"])
    tokens = model.encode(pq.read_table(valid).column("text"))
    mean = (members[0].predict_logits(tokens) + members[1].predict_logits(tokens)) / 2
    cfg, p = model.config, model.params
    feats = ngrams.features(tokens, cfg.ngrams, cfg.ngram_bits)
    head = ngrams.head_logits(feats, p["ngram.W"], p["ngram.b"], cfg.ngram_scale)
    # the saved model: the members' mean logits, and the head mixed in
    np.testing.assert_allclose(model.logits(tokens) - head, mean, rtol=1e-5, atol=1e-5)


def test_the_cli_pretrains_members_and_trains_on_them_without_shape_flags(tmp_path):
    data = tmp_path / "train.parquet"
    pq.write_table(toy_reviews(160, seed=1), data)
    enc = tmp_path / "enc"
    small = "--embed-dim 6 --hidden-dim 5 --max-len 12 --num-words 200 --batch-size 8 "
    small += "--samples 8 --word-vectors 1 --threads 1 -q"
    res = CliRunner().invoke(app, ["pretrain", str(data), "--out", str(enc), *small.split()])
    assert res.exit_code == 0, res.output
    assert "saved" in res.output and load_encoder(enc).members == 2
    out = tmp_path / "m"
    args = ["train", str(data), "--init-from", str(enc), "--out", str(out), "--epochs", "1", "-q"]
    res = CliRunner().invoke(app, args)  # the encoder's shape, with no flag for it
    assert res.exit_code == 0, res.output
    cfg = Model.load(out).config
    assert (cfg.embed_dim, cfg.hidden_dim, cfg.members) == (6, 5, 2)
    res = CliRunner().invoke(app, [*args, "--hidden-dim", "7"])  # asked for, and contradicted
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "hidden_dim" in res.output
    res = CliRunner().invoke(app, ["pretrain", str(data), "--out", str(enc), "--members", "0"])
    assert res.exit_code == 2 and "members must be an integer >= 1" in res.output


def test_broken_members_are_refused(corpus, tmp_path):
    pretrain(corpus, tmp_path / "enc", TINY_ENC, _pc(members=2, epochs=1))
    cfg_path = tmp_path / "enc" / "config.json"
    raw = json.loads(cfg_path.read_text())
    for members, match in ((0, "members must be a positive integer"),
                           (3, "weights.npz holds")):  # fmt: skip
        cfg_path.write_text(json.dumps({**raw, "members": members}))
        with pytest.raises(ModelFormatError, match=match):
            load_encoder(tmp_path / "enc")
