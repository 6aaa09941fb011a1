"""The training loop end to end on tiny Parquet files (``pipeline/train.py``).

Tiny models (E=H=8) on the reference backend keep this fast; the sample-data tests build the
sample from ../shared/data (the quick start's recipe) and skip where it is absent.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ngrams
from pipeline.batching import group_split
from pipeline.dataset import load_split
from pipeline.errors import ConfigError, InputError, RunError
from pipeline.events import RefitStart, WordVectorsDone
from pipeline.metrics import evaluate_probs
from pipeline.model import Model, init_params, probabilities
from pipeline.train import (
    BatchDone,
    DataReady,
    EpochEnd,
    EpochStart,
    TrainConfig,
    checkpoint_dir_for,
    evaluate,
    train,
)


def _available_backends() -> list[str]:
    try:
        import pipeline.kernels.cpu  # noqa: F401
    except Exception:
        return ["reference"]
    return ["reference", "cpu"]


BACKENDS = _available_backends()
TINY = {"embed_dim": 8, "hidden_dim": 8, "max_len": 12}
FILLER = ["the", "a", "movie", "film", "plot", "actor", "scene", "story"]
POSITIVE, NEGATIVE, NEUTRAL = ["good", "great", "fine"], ["bad", "awful", "poor"], ["ok", "so"]


def _texts(rng: np.random.Generator, labels: list[int], words: list[list[str]]) -> list[str]:
    out = []
    for label in labels:
        toks = list(rng.choice(FILLER, size=rng.integers(2, 7)))
        toks.insert(int(rng.integers(0, len(toks) + 1)), str(rng.choice(words[label])))
        out.append(" ".join(toks))
    return out


def _write(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def binary_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 240).tolist()
    texts = _texts(rng, labels, [NEGATIVE, POSITIVE])
    return _write(
        tmp_path / "train.parquet",
        {"id": np.arange(240), "review": texts, "label": pa.array(labels, pa.int8())},
    )


def _config(**kw) -> TrainConfig:
    base = dict(
        epochs=2, batch_size=16, lr=0.02, backend="reference", patience=0, refit=False, ngrams=0
    )
    return TrainConfig(**{**base, **kw})


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    with np.load(model_dir / "weights.npz") as npz:
        return {k: npz[k] for k in npz.files}


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_binary_end_to_end(binary_file, tmp_path, backend):
    events = []
    out = tmp_path / "model"
    cfg = _config(epochs=3, backend=backend)
    result = train(binary_file, out, TINY, cfg, progress=events.append)
    names = sorted(p.name for p in out.iterdir())
    assert names[:5] == ["config.json", "history.csv", "metrics.json", "vocab.json", "weights.npz"]
    assert result.metrics["accuracy"] >= 0.95 and result.metrics["roc_auc"] >= 0.95
    # about 10 % held out: rows the toy data repeats stay on their first copy's side
    n_valid = json.loads((out / "metrics.json").read_text())["n"]
    assert 22 <= n_valid <= 24
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["0", "1"] and config["training"]["n_train"] == 240 - n_valid
    assert config["tokenizer"]["num_words"] == TrainConfig().num_words

    kinds = [type(e) for e in events]
    assert kinds[:3] == [WordVectorsDone, DataReady, EpochStart] and kinds[-1] is EpochEnd
    assert sum(k is EpochEnd for k in kinds) == 3 and sum(k is BatchDone for k in kinds) == 3 * 14
    batch = next(e for e in events if isinstance(e, BatchDone))
    assert batch.tokens_per_s > 0 and batch.loss > 0

    loaded = Model.load(out, backend=backend)
    probs = loaded.predict_proba(loaded.encode(["a good film", "an awful plot"]))
    assert probs[0, 1] > 0.5 > probs[1, 1]
    # evaluate() on the training file knows the classes and reports every row
    report = evaluate(binary_file, loaded)
    assert report["n"] == 240 and report["accuracy"] >= 0.95
    # best weights are the saved ones: before calibration the final metrics equal the best
    # epoch's validation loss; the fitted temperature can only lower it
    best = min(float(r["valid_loss"]) for r in rows)
    calibration = result.metrics["calibration"]
    assert calibration["log_loss_before"] == pytest.approx(best, rel=1e-5)
    assert result.metrics["log_loss"] <= calibration["log_loss_before"] + 1e-12
    assert loaded.config.temperature == calibration["temperature"] != 1.0


@pytest.mark.parametrize("extra", [{}, {"word_dropout": 0.1, "embed_dropout": 0.1,
                                         "weight_drop": 0.2, "average": 0.9}])  # fmt: skip
def test_resume_is_bit_identical(binary_file, tmp_path, extra):
    average = extra.pop("average", 0.0)
    overrides = {**TINY, "dropout": 0.2, "cell": "gru", **extra}  # the rng state matters
    cfg = _config(lr_schedule="cosine", warmup_steps=5, average=average)
    straight = train(binary_file, tmp_path / "a", overrides, cfg)

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(event):
        if isinstance(event, EpochEnd) and event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(binary_file, tmp_path / "b", overrides, cfg, progress=stop_after_first_epoch)
    assert not (tmp_path / "b").exists() and checkpoint_dir_for(tmp_path / "b").is_dir()
    events = []
    resumed = train(
        binary_file, tmp_path / "b", overrides, cfg, resume=True, progress=events.append
    )
    assert events[0].start_epoch == 1
    assert sum(isinstance(e, EpochEnd) for e in events) == 1
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    timing = ("seconds", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in straight.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in resumed.history
    ]


def test_refit_trains_again_on_every_row_and_resumes_to_the_same_bits(binary_file, tmp_path):
    overrides = {**TINY, "dropout": 0.2, "cell": "gru"}
    first = train(binary_file, tmp_path / "first", overrides, _config())
    events = []
    refit = train(
        binary_file, tmp_path / "a", overrides, _config(refit=True), progress=events.append
    )
    # the figures and temperature are the first model's, on rows it never saw
    assert refit.metrics["refit"] == {"rows": 240, "epochs": 2}
    for key in ("n", "accuracy", "log_loss", "ece"):
        assert refit.metrics[key] == first.metrics[key], key
    assert refit.model.config.temperature == first.model.config.temperature != 1.0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["training"]["refit"] == {"rows": 240, "epochs": 2}
    # then the same training again on all 240 rows, from the same starting weights
    start = next(i for i, e in enumerate(events) if isinstance(e, RefitStart))
    assert (events[start].rows, events[start].epochs) == (240, 2)
    batches = [e for e in events if isinstance(e, BatchDone)]
    assert len(batches) == 2 * 14 + 2 * 15  # 216 rows then 240, batches of 16
    later = [e for e in events[start:] if isinstance(e, BatchDone)]
    assert abs(later[0].loss - batches[0].loss) < 0.05 and later[-1].loss < later[0].loss - 0.1
    a, f = _weights(tmp_path / "a"), _weights(tmp_path / "first")
    assert not np.array_equal(a["out.W"], f["out.W"])

    # killed during the refit: --resume trains it again from the same start, to the same bits
    class Interrupt(Exception):
        pass

    seen = []

    def stop_in_refit(event):
        seen.append(event)
        if isinstance(event, EpochEnd) and any(isinstance(e, RefitStart) for e in seen):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(binary_file, tmp_path / "b", overrides, _config(refit=True), progress=stop_in_refit)
    train(binary_file, tmp_path / "b", overrides, _config(refit=True), resume=True)
    b = _weights(tmp_path / "b")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # nothing to refit on: no held-out rows, or validation files of their own
    for cfg, kw in ((_config(refit=True, valid_frac=0.0), {}),
                    (_config(refit=True), {"valid_paths": binary_file})):  # fmt: skip
        assert "refit" not in train(binary_file, tmp_path / "c", TINY, cfg, **kw).metrics


def test_ensemble_joins_the_refit_to_the_first_model(binary_file, tmp_path):
    overrides = {**TINY, "dropout": 0.2, "cell": "gru"}
    train(binary_file, tmp_path / "first", overrides, _config())
    train(binary_file, tmp_path / "refit", overrides, _config(refit=True))
    both = train(binary_file, tmp_path / "both", overrides, _config(refit=True, ensemble=True))
    assert both.model.config.members == 2 and both.metrics["refit"]["members"] == 2
    w, f, r = (_weights(tmp_path / d) for d in ("both", "first", "refit"))
    assert set(w) == set(r) | {f"m1.{k}" for k in f}
    for k in r:  # the refit's weights, then the first model's, bit for bit
        np.testing.assert_array_equal(w[k], r[k], err_msg=k)
        np.testing.assert_array_equal(w[f"m1.{k}"], f[k], err_msg=k)
    models = [Model.load(tmp_path / d) for d in ("both", "refit", "first")]
    assert models[0].config.temperature == models[2].config.temperature
    tokens = models[0].encode(pq.read_table(binary_file)["review"].combine_chunks())
    z = [m.predict_logits(tokens).astype(np.float64) for m in models]
    np.testing.assert_allclose(z[0], (z[1] + z[2]) / 2, rtol=1e-6, atol=1e-7)
    # a warm start from an ensemble starts from its first member (the refit)
    warm = train(binary_file, tmp_path / "warm", None, _config(epochs=1),
                 init_from=tmp_path / "both")  # fmt: skip
    assert warm.model.config.members == 1
    # nothing to join without a refit
    with pytest.raises(ConfigError, match="ensemble"):
        _config(ensemble=True)
    with pytest.raises(ConfigError, match="ensemble needs a refit"):
        train(binary_file, tmp_path / "c", TINY, _config(refit=True, ensemble=True),
              valid_paths=binary_file)  # fmt: skip


def test_resume_refuses_an_incompatible_checkpoint(binary_file, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(binary_file, tmp_path / "m", TINY, _config(), resume=True)
    train(binary_file, tmp_path / "m", TINY, _config(epochs=1))
    with pytest.raises(ConfigError, match="model config"):
        train(binary_file, tmp_path / "m", {**TINY, "hidden_dim": 4}, _config(), resume=True)
    with pytest.raises(ConfigError, match="train config"):
        train(binary_file, tmp_path / "m", TINY, _config(lr=0.5), resume=True)
    # more epochs is a compatible change: training continues from epoch 1
    result = train(binary_file, tmp_path / "m", TINY, _config(epochs=2), resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]


@pytest.mark.parametrize("ngrams", [0, 2])
def test_multiclass_string_labels_and_balanced_weights(tmp_path, ngrams):
    rng = np.random.default_rng(1)
    labels = rng.choice(3, size=300, p=[0.5, 0.3, 0.2]).tolist()
    names = np.array(["negative", "neutral", "positive"])
    texts = _texts(rng, labels, [NEGATIVE, NEUTRAL, POSITIVE])
    path = _write(tmp_path / "three.parquet", {"text": texts, "sentiment": names[labels]})
    result = train(
        path,
        tmp_path / "m",
        {**TINY, "pooling": "last+max"},
        _config(epochs=4, class_weights="balanced", ngrams=ngrams),
        label_col="sentiment",
    )
    assert result.model.config.classes == ("negative", "neutral", "positive")
    assert result.model.config.num_outputs == 3
    if ngrams:  # a head per class, mixed with a shift per class
        assert result.model.params["ngram.W"].shape == (1 << 21, 3)  # 32 MB at most
        assert len(result.metrics["calibration"]["shift"]) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert "roc_auc" not in result.metrics and result.metrics["accuracy"] > 0.8


def test_validation_files_and_declared_classes(binary_file, tmp_path):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40).tolist()
    valid = _write(
        tmp_path / "valid.parquet",
        {"review": _texts(rng, labels, [NEGATIVE, POSITIVE]), "label": labels},
    )
    result = train(
        binary_file, tmp_path / "m", TINY, _config(), valid_paths=valid, classes=["0", "1"]
    )
    assert result.metrics["n"] == 40
    with pytest.raises(InputError, match="'label' has the label '1'"):
        train(binary_file, tmp_path / "m2", TINY, _config(), classes=["0", "2"])


def test_loss_decreases_on_sample_data(sample_reviews, tmp_path):
    labels = pq.read_table(sample_reviews, columns=["label"]).column("label").to_pylist()
    result = train(
        sample_reviews,
        tmp_path / "m",
        {"embed_dim": 8, "hidden_dim": 8, "max_len": 40},
        _config(epochs=2, batch_size=32, lr=0.01, num_words=2000, backend=BACKENDS[-1]),
    )
    assert result.model.config.classes == tuple(sorted(set(map(str, labels))))
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]


def test_multiclass_on_sample_data_ratings(sample_reviews, tmp_path):
    # the 1-4 and 7-10 star ratings as eight classes
    result = train(
        sample_reviews,
        tmp_path / "m",
        {"embed_dim": 8, "hidden_dim": 8, "max_len": 60},
        _config(epochs=2, batch_size=32, lr=0.01, num_words=2000, backend=BACKENDS[-1]),
        label_col="rating",
    )
    assert result.model.config.classes == ("1", "2", "3", "4", "7", "8", "9", "10")
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    probs = result.model.predict_proba(result.model.encode(pa.array(["a wonderful film"])))
    assert probs.shape == (1, 8) and abs(float(probs.sum()) - 1.0) < 1e-5


def test_early_stopping_restores_the_best_weights(tmp_path):
    rng = np.random.default_rng(0)
    words = FILLER + POSITIVE + NEGATIVE
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 8))) for _ in range(200)]
    path = _write(tmp_path / "noise.parquet", {"text": texts, "label": rng.integers(0, 2, 200)})
    # random labels: validation loss rises after the first epoch, patience 1 stops at once
    result = train(path, tmp_path / "m", TINY, _config(epochs=8, lr=0.05, patience=1))
    assert result.stopped_early and len(result.history) < 8
    losses = [r["valid_loss"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert result.metrics["calibration"]["log_loss_before"] == pytest.approx(min(losses), rel=1e-5)
    # the checkpoint remembers that training stopped: resuming trains no further
    again = train(path, tmp_path / "m", TINY, _config(epochs=8, lr=0.05, patience=1), resume=True)
    assert again.history == result.history


def test_without_early_stopping_the_last_epoch_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    words = FILLER + POSITIVE + NEGATIVE
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 8))) for _ in range(200)]
    path = _write(tmp_path / "noise.parquet", {"text": texts, "label": rng.integers(0, 2, 200)})
    # random labels make validation loss rise after epoch 1; patience 0 keeps epoch 4 anyway
    result = train(path, tmp_path / "m", TINY, _config(epochs=4, lr=0.05, patience=0))
    losses = [r["valid_loss"] for r in result.history]
    assert len(result.history) == 4 and not result.stopped_early
    assert result.best_epoch == 4 and int(np.argmin(losses)) != 3
    assert result.metrics["calibration"]["log_loss_before"] == pytest.approx(losses[-1], rel=1e-5)


def test_divergence_is_a_run_error(binary_file, tmp_path, monkeypatch):
    real = Model.loss_and_grads

    def nan_loss(self, *args, **kwargs):
        return float("nan"), real(self, *args, **kwargs)[1]

    monkeypatch.setattr(Model, "loss_and_grads", nan_loss)
    with pytest.raises(RunError, match="diverged at epoch 1, batch 1"):
        train(binary_file, tmp_path / "m", TINY, _config())
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- warm starts


def _capture_starting_params(monkeypatch) -> dict[str, np.ndarray]:
    """A dict that fills with the model's parameters as they are when the first training
    step begins (before any update), so a warm start can be checked exactly."""
    seen: dict[str, np.ndarray] = {}
    real = Model.loss_and_grads

    def first_step_sees(self, *args, **kwargs):
        if not seen:
            seen.update({k: v.copy() for k, v in self.params.items()})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Model, "loss_and_grads", first_step_sees)
    return seen


def test_init_embeddings_from_a_text_file(binary_file, tmp_path, monkeypatch):
    vectors = tmp_path / "vectors.txt"
    lines = ["3 8", "good " + " ".join(["0.5"] * 8), "zebra " + " ".join(["0.1"] * 8)]
    lines.append("GOOD " + " ".join(["9"] * 8))  # same id after lowercasing: first wins
    vectors.write_text("\n".join(lines) + "\n")
    start = _capture_starting_params(monkeypatch)
    result = train(binary_file, tmp_path / "m", TINY, _config(epochs=1), init_embeddings=vectors)
    tok = result.model.tokenizer
    assert result.embedding_coverage == pytest.approx(1 / (tok.vocab_size - 2))
    # what training started from: the file's vector in the row of "good", the pad row zero,
    # every other row and every other parameter as a cold start with the same seed has them
    cold = init_params(result.model.config, seed=0)
    assert start.keys() == cold.keys()
    good = tok.word_index["good"]
    emb = start["embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb[good], np.full(8, 0.5, np.float32))
    np.testing.assert_array_equal(emb[0], np.zeros(8, np.float32))
    others = np.ones(len(emb), bool)
    others[[0, good]] = False
    np.testing.assert_array_equal(emb[others], cold["embedding"][others])
    for k in cold.keys() - {"embedding"}:
        np.testing.assert_array_equal(start[k], cold[k], err_msg=k)
    assert not np.array_equal(result.model.params["embedding"], emb)  # and training went on

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("good 0.1 0.2 0.3\n")
    with pytest.raises(InputError, match="embed_dim is 8"):
        train(binary_file, tmp_path / "m2", TINY, _config(epochs=1), init_embeddings=wrong)


def test_init_from_starts_from_the_source_models_weights(binary_file, tmp_path, monkeypatch):
    train(binary_file, tmp_path / "m1", TINY, _config(epochs=1))
    source = _weights(tmp_path / "m1")
    start = _capture_starting_params(monkeypatch)
    second = train(
        binary_file, tmp_path / "m2", {"dropout": 0.1}, _config(epochs=1), init_from=tmp_path / "m1"
    )
    # the first step starts from the source model's weights, every one of them, bit for bit
    assert start.keys() == source.keys()
    for k in source:
        np.testing.assert_array_equal(start[k], source[k], err_msg=k)
    assert not np.array_equal(_weights(tmp_path / "m2")["out.W"], source["out.W"])
    assert second.model.config.hidden_dim == 8 and second.model.config.dropout == 0.1
    assert second.model.tokenizer.words == Model.load(tmp_path / "m1").tokenizer.words
    with pytest.raises(ConfigError, match="hidden_dim"):
        train(binary_file, tmp_path / "m3", {"hidden_dim": 4}, _config(), init_from=tmp_path / "m1")


# --------------------------------------------------------------------------- bad input


def test_null_label_names_file_column_and_row(tmp_path):
    path = _write(tmp_path / "nulls.parquet", {"text": ["a", "b", "c"], "label": [1, None, 0]})
    with pytest.raises(InputError) as info:
        train(path, tmp_path / "m", TINY, _config())
    message = str(info.value)
    assert "nulls.parquet" in message and "'label'" in message and "row 1" in message
    assert not (tmp_path / "m").exists()


def test_single_class_is_refused(tmp_path):
    path = _write(tmp_path / "one.parquet", {"text": ["good film"] * 40, "label": [1] * 40})
    with pytest.raises(InputError, match="single class"):
        train(path, tmp_path / "m", TINY, _config())


def test_too_few_rows_for_a_batch(tmp_path):
    path = _write(tmp_path / "few.parquet", {"text": ["good", "bad"] * 5, "label": [1, 0] * 5})
    with pytest.raises(InputError, match="fewer than one batch"):
        train(path, tmp_path / "m", TINY, _config(batch_size=16))


def test_empty_file_is_refused(tmp_path):
    path = _write(
        tmp_path / "empty.parquet",
        {"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())},
    )
    with pytest.raises(InputError, match="empty.parquet"):
        train(path, tmp_path / "m", TINY, _config())


def test_bad_label_values_and_types(tmp_path):
    path = _write(tmp_path / "f.parquet", {"text": ["a", "b", "c"], "label": [1.0, 0.5, 0.0]})
    with pytest.raises(InputError, match="row 1"):
        train(path, tmp_path / "m", TINY, _config())
    path = _write(tmp_path / "e.parquet", {"text": ["a", "b"], "label": ["pos", ""]})
    with pytest.raises(InputError, match="empty label at row 1"):
        train(path, tmp_path / "m", TINY, _config())
    path = _write(tmp_path / "n.parquet", {"text": ["a", "b"], "stars": [1, 2]})
    with pytest.raises(InputError, match="no column 'label'"):
        train(path, tmp_path / "m", TINY, _config())


def test_evaluate_refuses_unknown_labels(binary_file, tmp_path):
    result = train(binary_file, tmp_path / "m", TINY, _config(epochs=1))
    path = _write(tmp_path / "other.parquet", {"text": ["good", "bad"], "label": [1, 7]})
    with pytest.raises(
        InputError, match="other.parquet: column 'label' has the label '7' at row 1"
    ):
        evaluate(path, result.model)


def test_bad_options():
    with pytest.raises(ConfigError):
        TrainConfig(valid_frac=1.0)
    with pytest.raises(ConfigError):
        TrainConfig(valid_frac=-0.1)
    with pytest.raises(ConfigError):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        TrainConfig(class_weights="inverse")


def test_unknown_model_option(binary_file, tmp_path):
    with pytest.raises(ConfigError, match="colour"):
        train(binary_file, tmp_path / "m", {"colour": "red"}, _config())
    with pytest.raises(ConfigError, match="vocab_size"):
        train(binary_file, tmp_path / "m", {"vocab_size": 5}, _config())


def _grouped_file(tmp_path: Path, n_groups: int = 30, seed: int = 3) -> Path:
    """Reviews in groups (a film each) whose filler words are the group's own, so a random
    split lets a model memorise groups and a group split does not."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        own = [f"film{g}x{k}" for k in range(3)]
        for _ in range(int(rng.integers(4, 12))):
            y = int(rng.integers(0, 2))
            words = list(rng.choice(own + FILLER, 6)) + [
                str(rng.choice(POSITIVE if y else NEGATIVE))
            ]
            rows.append((" ".join(words), y, f"tt{g:04d}"))
    texts, labels, groups = zip(*rows, strict=True)
    path = tmp_path / "grouped.parquet"
    pq.write_table(
        pa.table({"text": list(texts), "label": list(labels), "movie": list(groups)}), path
    )
    return path


def test_valid_group_holds_out_whole_groups(tmp_path):
    path = _grouped_file(tmp_path)
    result = train(path, tmp_path / "m", TINY, _config(valid_group="movie", valid_frac=0.25))
    how = result.metrics["validation"]
    assert how["kind"] == "group" and how["column"] == "movie" and how["valid_groups"] >= 2
    info = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert info["validation"] == how
    # the same split by hand: no film on both sides, both labels on both sides
    table = pq.read_table(path)
    y = np.array(table["label"].to_pylist())
    groups = np.array(table["movie"].to_pylist())
    tr, va = group_split(groups, y, 0.25, seed=0)
    assert not set(groups[tr]) & set(groups[va])
    assert set(y[tr]) == set(y[va]) == {0, 1}
    assert info["n_valid"] == va.size and result.metrics["n"] == va.size
    with pytest.raises(InputError, match="no column 'film'"):
        train(path, tmp_path / "m2", TINY, _config(valid_group="film"))
    # groups that would take a class's every row out of training: one line, nothing trained
    one_class_each = _write(
        tmp_path / "two.parquet",
        {"text": [f"good film {k}" for k in range(40)] + [f"bad film {k}" for k in range(40)],
         "label": [1] * 40 + [0] * 40, "movie": ["a"] * 40 + ["b"] * 40},
    )  # fmt: skip
    with pytest.raises(InputError, match="column 'movie': its groups leave a class with no"):
        train(one_class_each, tmp_path / "m3", TINY, _config(valid_group="movie"))
    assert not (tmp_path / "m3").exists()


def test_valid_frac_zero_trains_on_everything(binary_file, tmp_path):
    result = train(binary_file, tmp_path / "m", TINY, _config(valid_frac=0.0))
    assert result.metrics["n"] == 0 and "accuracy" not in result.metrics
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["training"]["n_train"] == 240 and info["temperature"] == 1.0
    assert all(math.isnan(r["valid_loss"]) for r in result.history)
    with pytest.raises(ConfigError, match="needs a validation split"):
        TrainConfig(valid_frac=0.0, patience=1)


def test_averaging_saves_the_averaged_weights(binary_file, tmp_path):
    cfg = _config(epochs=2, average=0.9, calibrate=False)
    train(binary_file, tmp_path / "avg", TINY, cfg)
    train(binary_file, tmp_path / "last", TINY, _config(epochs=2, calibrate=False))
    with np.load(checkpoint_dir_for(tmp_path / "avg") / "arrays.npz") as npz:
        average = {k[len("average/") :]: npz[k] for k in npz.files if k.startswith("average/")}
        last = {k[len("param/") :]: npz[k] for k in npz.files if k.startswith("param/")}
    saved = _weights(tmp_path / "avg")
    for k in saved:  # the model holds the average, which is not the last step's weights
        np.testing.assert_array_equal(saved[k], average[k], err_msg=k)
    assert not np.array_equal(saved["out.W"], last["out.W"])
    # the optimisation itself is the same run: the last step's weights equal plain training's
    plain = _weights(tmp_path / "last")
    for k in plain:
        np.testing.assert_array_equal(plain[k], last[k], err_msg=k)


def test_word_vectors_start_the_embedding(binary_file, tmp_path, monkeypatch):
    from pipeline.events import WordVectorsDone
    from pipeline.text import Tokenizer
    from pipeline.word2vec import word_vectors

    start = _capture_starting_params(monkeypatch)
    events = []
    cfg = _config(epochs=1, valid_frac=0.0, word_vectors=2)
    train(binary_file, tmp_path / "m", TINY, cfg, progress=events.append)
    texts = pq.read_table(binary_file)["review"]
    tok = Tokenizer(num_words=cfg.num_words).fit(texts)
    expected = word_vectors(tok.encode(texts), tok.vocab_size, TINY["embed_dim"], 2, cfg.seed)
    np.testing.assert_array_equal(start["embedding"], expected)
    done = [e for e in events if isinstance(e, WordVectorsDone)]
    assert len(done) == 1 and done[0].epochs == 2 and done[0].tokens == tok.encode(texts).nnz


def test_freeze_epochs_keep_the_encoder_still(binary_file, tmp_path):
    cfg = _config(epochs=2, freeze_epochs=1, calibrate=False)
    train(binary_file, tmp_path / "m", TINY, cfg)
    with np.load(checkpoint_dir_for(tmp_path / "m") / "arrays.npz") as npz:
        updates = dict(zip(_weights(tmp_path / "m"), npz["optim/updates"], strict=True))
    steps = 14  # batches an epoch: only the second epoch moved the encoder
    assert updates["out.W"] == 2 * steps and updates["embedding"] == steps
    assert updates["l0.fwd.W_hh"] == steps
    with pytest.raises(ConfigError, match="freeze_epochs"):
        TrainConfig(epochs=2, freeze_epochs=2)


# --------------------------------------------------------------------------- n-gram head


def test_the_ngram_head_is_fitted_beside_the_model_and_mixed_on_the_validation_rows(
    binary_file, tmp_path
):
    overrides = {**TINY, "cell": "gru"}
    alone = train(binary_file, tmp_path / "alone", overrides, _config())
    tc = _config(ngrams=2)
    both = train(binary_file, tmp_path / "both", overrides, tc)
    w, a = _weights(tmp_path / "both"), _weights(tmp_path / "alone")
    assert set(w) == set(a) | {"ngram.W", "ngram.b"}
    for k in a:  # the recurrent model trains as it does without a head
        np.testing.assert_array_equal(w[k], a[k], err_msg=k)
    assert both.metrics["recurrent"]["accuracy"] == alone.metrics["accuracy"]

    # the head: fitted on the training rows alone, scaled by the mix the validation rows chose
    model = Model.load(tmp_path / "both", backend="reference")  # as training ran it
    split = load_split(binary_file, None, None, "label", None, tc)
    cfg = model.config
    head = ngrams.fit_head(
        model.encode(split.train_texts), split.y_train, 2, 2, cfg.ngram_bits, cfg.ngram_scale
    )
    cal = both.metrics["calibration"]
    assert model.config.temperature == cal["temperature"] and model.config.ngrams == 2
    np.testing.assert_array_equal(w["ngram.W"], (head.W * cal["beta"]).astype(np.float32))
    recurrent = model.members()[0]
    valid = model.encode(split.valid_texts)
    z = ngrams.head_logits(ngrams.features(valid, 2, head.bits), head.W, head.b, head.scale)
    mix = ngrams.fit_mix(split.y_valid, recurrent.predict_logits(valid), z)
    assert (mix.temperature, mix.beta) == (cal["temperature"], cal["beta"])
    # the metrics are the mixed model's on the validation rows
    probs = model.predict_proba(valid)
    assert both.metrics["accuracy"] == pytest.approx(
        float((probs.argmax(1) == split.y_valid).mean())
    )
    assert both.metrics["ngrams_alone"]["accuracy"] == float(
        ((z[:, 0] > 0) == split.y_valid).mean()
    )


def test_calibration_fits_and_reports_on_the_validation_rows_no_other_row_holds(tmp_path):
    # sentences and phrases cut from them (as SST-2): the mix and the temperature are fitted
    # on the held-out sentences, what users score, not on their phrases
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 1500).tolist()
    texts, ys = [], []
    for sentence, label in zip(_texts(rng, labels, [NEGATIVE, POSITIVE]), labels, strict=True):
        words = sentence.split()
        texts += [sentence, " ".join(words[1:]), " ".join(words[:-1])]
        ys += [label, label, label]
    path = _write(tmp_path / "phrases.parquet", {"review": texts, "label": ys})
    tc = _config(ngrams=2, backend="cpu")
    result = train(path, tmp_path / "m", TINY, tc)
    split = load_split(path, None, None, "label", None, tc)
    whole = split.valid_whole
    assert whole is not None and 100 <= whole.sum() < whole.size / 2
    assert result.metrics["n"] == whole.sum() == result.metrics["validation"]["whole_valid_rows"]
    # each epoch is measured on the same rows: the last epoch's figures are the first model's
    history = result.history[-1]
    assert history["valid_acc"] == pytest.approx(result.metrics["recurrent"]["accuracy"])
    model = Model.load(tmp_path / "m")
    recurrent, cal = model.members()[0], result.metrics["calibration"]
    tokens = model.encode(split.valid_texts.take(np.flatnonzero(whole)))
    cfg = model.config
    head = ngrams.fit_head(
        model.encode(split.train_texts), split.y_train, 2, 2, cfg.ngram_bits, cfg.ngram_scale
    )
    z = ngrams.head_logits(ngrams.features(tokens, 2, head.bits), head.W, head.b, head.scale)
    mix = ngrams.fit_mix(split.y_valid[whole], recurrent.predict_logits(tokens), z)
    assert (mix.temperature, mix.beta) == (cal["temperature"], cal["beta"])
    logits = recurrent.predict_logits(tokens)
    assert cal["log_loss_before"] == pytest.approx(
        evaluate_probs(split.y_valid[whole], probabilities(logits), ("0", "1"))["log_loss"]
    )


def test_a_refit_refits_the_head_on_every_row_and_keeps_the_mix(binary_file, tmp_path):
    overrides = {**TINY, "cell": "gru"}
    first = train(binary_file, tmp_path / "first", overrides, _config(ngrams=2))
    tc = _config(ngrams=2, refit=True, ensemble=True)
    events = []
    both = train(binary_file, tmp_path / "both", overrides, tc, progress=events.append)
    fits = [e for e in events if e.kind == "ngram_head"]  # the first model's head, the refit's
    assert [(e.order, e.rows) for e in fits] == [(2, 240 - both.metrics["n"]), (2, 240)]
    assert events.index(fits[0]) < [e.kind for e in events].index("refit") < events.index(fits[1])
    model = Model.load(tmp_path / "both")
    assert model.config.members == 2 and model.config.ngrams == 2
    assert model.config.temperature == first.model.config.temperature
    split = load_split(binary_file, None, None, "label", None, tc)
    texts = pa.chunked_array(split.train_texts.chunks + split.valid_texts.chunks)
    y = np.concatenate([split.y_train, split.y_valid])
    head = ngrams.fit_head(model.encode(texts), y, 2, 2, model.config.ngram_bits, "sqrt")
    beta = both.metrics["calibration"]["beta"]
    np.testing.assert_array_equal(_weights(tmp_path / "both")["ngram.W"], head.W * np.float32(beta))
    tokens = model.encode(texts)
    members = [m.predict_logits(tokens).astype(np.float64) for m in model.members()]
    feats = ngrams.features(tokens, 2, head.bits)
    want = sum(members) / 2 + ngrams.head_logits(
        feats, model.params["ngram.W"], model.params["ngram.b"], "sqrt"
    )
    np.testing.assert_allclose(model.predict_logits(tokens), want, rtol=1e-5, atol=1e-5)
    # a warm start from a model with a head starts from its recurrent model alone
    warm = train(
        binary_file, tmp_path / "warm", None, _config(epochs=1), init_from=tmp_path / "both"
    )
    assert warm.model.config.ngrams == 0 and "ngram.W" not in warm.model.params
