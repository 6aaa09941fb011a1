"""Tests for pipeline/score.py: the streaming scorer, its output layout, atomicity and resume.

Models are tiny (E=8, H=8) with random weights and a tokenizer fitted on a few sentences;
what is checked is the plumbing (rows, order, columns, files), and that the scores are those
``Model.predict_proba`` gives, whatever the batching.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError, InputError, RunError
from pipeline.model import Model, ModelConfig, init_params
from pipeline.score import (
    ProgressEvent,
    ScoreOptions,
    _Prefetch,
    output_columns,
    predict_texts,
    score,
    score_file,
    total_rows,
)
from pipeline.text import TokenIds, Tokenizer

SENTENCES = [
    "a great film with a great cast",
    "dull, boring and awful",
    "I loved it! Wonderful acting.",
    "not good, not bad: the plot was thin",
    "the movie isn't worth it",
    "Café naïve Москва 東京",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(num_words=100).fit(SENTENCES)


def make_model(
    tokenizer: Tokenizer,
    classes: tuple[str, ...] = ("negative", "positive"),
    backend: str = "cpu",
    seed: int = 0,
    **kw,
) -> Model:
    base = {"cell": "lstm", "bidirectional": False, "pooling": "last", "dropout": 0.0}
    cfg = ModelConfig(
        **{**base, **kw},
        embed_dim=8,
        hidden_dim=8,
        vocab_size=tokenizer.vocab_size,
        max_len=24,
        classes=classes,
    )
    params = init_params(cfg, seed)
    # larger embeddings and output weights spread the probabilities away from 0.5
    params["embedding"] *= 40
    params["out.W"] *= 4
    return Model(cfg, params, tokenizer=tokenizer, backend=backend)


@pytest.fixture(scope="module")
def binary(tokenizer: Tokenizer) -> Model:
    return make_model(tokenizer)


@pytest.fixture(scope="module")
def multiclass(tokenizer: Tokenizer) -> Model:
    return make_model(tokenizer, classes=("neg", "neutral", "pos"), cell="gru", seed=3)


def reviews_table(n: int, seed: int = 0, with_id: bool = True) -> pa.Table:
    """``n`` rows: id int64, rating int8, text string (with nulls and empties), note string."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split() + ["unknown", "words", "here"]
    texts: list[str | None] = [
        " ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(n)
    ]
    for i in range(0, n, 7):
        texts[i] = None
    for i in range(3, n, 11):
        texts[i] = ""
    cols = {
        "rating": pa.array(rng.integers(1, 11, size=n), pa.int8()),
        "text": pa.array(texts, pa.string()),
        "note": pa.array([f"n{i}" for i in range(n)], pa.string()),
    }
    if with_id:
        cols = {"id": pa.array(np.arange(n) * 10 + 5, pa.int64()), **cols}
    return pa.table(cols)


def write(table: pa.Table, path: Path, row_group_size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def all_files(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def expected_probs(model: Model, texts: list[str | None]) -> np.ndarray:
    return model.predict_proba(model.encode(pa.array(texts, pa.large_string())))


# --------------------------------------------------------------------------- scores


BATCH_MODELS = [{}, {"cell": "gru", "bidirectional": True, "pooling": "last+max"}]


@pytest.mark.parametrize("model_kw", BATCH_MODELS)
def test_scores_do_not_depend_on_batch_rows(tmp_path, tokenizer, corner_parquet, model_kw):
    # bit for bit, on the cpu backend: batching is an implementation detail, never a change
    # in results (a BLAS product in the dense layer broke this by 1 ulp)
    model = make_model(tokenizer, **model_kw)
    scores = {}
    for batch_rows in (1, 3, 1000):
        out = tmp_path / f"b{batch_rows}.parquet"
        summary = score(corner_parquet, model, out, ScoreOptions(batch_rows=batch_rows))
        assert summary.rows == pq.read_metadata(corner_parquet).num_rows
        scores[batch_rows] = pq.read_table(out).column("score").to_numpy()
    for batch_rows in (1, 3):
        assert scores[batch_rows].tobytes() == scores[1000].tobytes(), (
            f"batch_rows={batch_rows} changes the scores by up to "
            f"{np.abs(scores[batch_rows] - scores[1000]).max():.3g}"
        )


@pytest.mark.parametrize("model_kw", BATCH_MODELS)
def test_model_logits_do_not_depend_on_the_rows_beside(tokenizer, corner_texts, model_kw):
    # the model layer of the property above: each row's logits alone equal its logits in
    # a batch, bit for bit
    model = make_model(tokenizer, **model_kw)
    tokens = model.encode(pa.array(corner_texts, pa.large_string()))
    whole = model.logits(tokens)
    alone = np.concatenate([model.logits(tokens.take(np.array([i]))) for i in range(len(tokens))])
    assert whole.tobytes() == alone.tobytes(), np.abs(whole - alone).max()


def test_scorer_itself_adds_no_batch_dependence(tmp_path, tokenizer, corner_parquet, monkeypatch):
    # a stand-in model whose output is an exact function of each row's own token ids: any
    # difference between batchings is then the scorer's doing
    model = make_model(tokenizer)

    def exact(tokens: TokenIds, batch_size: int = 1024) -> np.ndarray:
        weights = (np.arange(tokens.nnz) - np.repeat(tokens.offsets[:-1], tokens.lengths)) + 7
        sums = np.zeros(len(tokens), np.int64)
        np.add.at(sums, np.repeat(np.arange(len(tokens)), tokens.lengths), tokens.ids * weights)
        p1 = ((sums % 997) / 997).astype(np.float32)
        return np.stack([1 - p1, p1], axis=1)

    monkeypatch.setattr(model, "predict_proba", exact)
    got = {}
    for batch_rows in (1, 3, 1000):
        out = tmp_path / f"b{batch_rows}.parquet"
        score(corner_parquet, model, out, ScoreOptions(batch_rows=batch_rows))
        got[batch_rows] = pq.read_table(out).column("score").to_numpy()
    texts = pq.read_table(corner_parquet).column("text")
    want = exact(model.encode(texts))[:, 1]
    assert len(set(want.tolist())) > 10
    for batch_rows in (1, 3, 1000):
        assert got[batch_rows].tobytes() == want.tobytes()


def test_scores_equal_model_predictions_and_reference_backend(tmp_path, binary, corner_parquet):
    texts = pq.read_table(corner_parquet).column("text").to_pylist()
    out_cpu, out_ref = tmp_path / "cpu.parquet", tmp_path / "ref.parquet"
    score(corner_parquet, binary, out_cpu, ScoreOptions(batch_rows=5, backend="cpu"))
    score(corner_parquet, binary, out_ref, ScoreOptions(batch_rows=5, backend="reference"))
    cpu = pq.read_table(out_cpu)
    ref = pq.read_table(out_ref)
    np.testing.assert_allclose(
        cpu.column("score").to_numpy(), ref.column("score").to_numpy(), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        cpu.column("score").to_numpy(), expected_probs(binary, texts)[:, 1], rtol=0, atol=1e-6
    )
    assert cpu.schema.field("score").type == pa.float32()
    labels = np.where(cpu.column("score").to_numpy() >= 0.5, "positive", "negative")
    assert cpu.column("label").to_pylist() == labels.tolist()
    assert len(set(labels)) == 2  # the fixture model really separates the rows


def test_keep_columns_order_types_and_rows(tmp_path, binary):
    table = reviews_table(50)
    src = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    opts = ScoreOptions(keep=("rating", "id", "text"), batch_rows=7)
    summary = score(src, binary, out, opts)
    got = pq.read_table(out)
    assert got.column_names == ["rating", "id", "text", "score", "label"]
    assert got.column_names == output_columns(binary, opts.keep)
    assert got.schema.field("rating").type == pa.int8()
    assert got.schema.field("id").type == pa.int64()
    assert got.schema.field("text").type == pa.string()  # not the large_string read internally
    assert got.schema.field("label").type == pa.string()
    for name in ("rating", "id", "text"):
        assert got.column(name).to_pylist() == table.column(name).to_pylist()
    assert summary.rows == got.num_rows == 50
    probs = expected_probs(binary, table.column("text").to_pylist())
    np.testing.assert_allclose(got.column("score").to_numpy(), probs[:, 1], atol=1e-6)


def test_dictionary_text_column_is_scored_and_kept_as_is(tmp_path, binary):
    table = reviews_table(20)
    as_dict = table.set_column(2, "text", table.column("text").dictionary_encode())
    src = write(as_dict, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    score(src, binary, out, ScoreOptions(keep=("text",), batch_rows=6))
    got = pq.read_table(out)
    assert pa.types.is_dictionary(got.schema.field("text").type)
    assert got.column("text").to_pylist() == table.column("text").to_pylist()
    probs = expected_probs(binary, table.column("text").to_pylist())
    np.testing.assert_allclose(got.column("score").to_numpy(), probs[:, 1], atol=1e-6)


def test_default_keep_is_id_when_present(tmp_path, binary):
    with_id = write(reviews_table(5), tmp_path / "a.parquet")
    without = write(reviews_table(5, with_id=False), tmp_path / "b.parquet")
    score(with_id, binary, tmp_path / "a_out.parquet")
    score(without, binary, tmp_path / "b_out.parquet")
    assert pq.read_schema(tmp_path / "a_out.parquet").names == ["id", "score", "label"]
    assert pq.read_schema(tmp_path / "b_out.parquet").names == ["score", "label"]


def test_multiclass_writes_prob_columns_and_argmax_label(tmp_path, multiclass):
    table = reviews_table(40, seed=2)
    src = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    score(src, multiclass, out, ScoreOptions(batch_rows=6))
    got = pq.read_table(out)
    assert got.column_names == ["id", "prob_neg", "prob_neutral", "prob_pos", "label"]
    probs = np.stack([got.column(c).to_numpy() for c in got.column_names[1:4]], axis=1)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    classes = np.array(["neg", "neutral", "pos"])
    assert got.column("label").to_pylist() == classes[probs.argmax(axis=1)].tolist()
    assert len(set(got.column("label").to_pylist())) > 1
    want = expected_probs(multiclass, table.column("text").to_pylist())
    np.testing.assert_allclose(probs, want, atol=1e-6)


def test_threshold_moves_the_label(tmp_path, binary):
    src = write(reviews_table(30), tmp_path / "in.parquet")
    low, high = tmp_path / "low.parquet", tmp_path / "high.parquet"
    score(src, binary, low, ScoreOptions(threshold=0.0))
    score(src, binary, high, ScoreOptions(threshold=1.0))
    assert set(pq.read_table(low).column("label").to_pylist()) == {"positive"}
    assert set(pq.read_table(high).column("label").to_pylist()) == {"negative"}


def test_null_and_empty_texts_are_scored_and_counted(tmp_path, binary):
    texts = ["great film", None, "", "awful", None, "   "]
    src = write(pa.table({"id": list(range(6)), "text": texts}), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    summary = score(src, binary, out, ScoreOptions(batch_rows=4))
    assert summary.null_texts == 3  # two nulls and one empty string; "   " is a text
    empty = binary.predict_proba(TokenIds(np.zeros(2, np.int64), np.zeros(0, np.int32)))[0, 1]
    got = pq.read_table(out).column("score").to_numpy()
    assert got[1] == got[2] == got[4] == np.float32(empty)
    assert got[0] != got[1]


def test_empty_input_gives_empty_output_with_schema(tmp_path, multiclass):
    empty = reviews_table(3).slice(0, 0)
    src = write(empty, tmp_path / "empty.parquet")
    out = tmp_path / "out.parquet"
    summary = score(src, multiclass, out, ScoreOptions(keep=("id", "rating")))
    got = pq.read_table(out)
    assert got.num_rows == 0 and summary.rows == 0
    assert got.column_names == ["id", "rating", "prob_neg", "prob_neutral", "prob_pos", "label"]
    assert got.schema.field("rating").type == pa.int8()


# --------------------------------------------------------------------------- layout


def test_directory_input_mirrors_the_tree(tmp_path, binary):
    root = tmp_path / "reviews"
    write(reviews_table(5, 1), root / "a.parquet")
    write(reviews_table(6, 2), root / "2024" / "01" / "b.parquet")
    write(reviews_table(7, 3), root / "2024" / "02" / "c.parquet")
    write(reviews_table(2, 4), root / "_ignored" / "d.parquet")
    out = tmp_path / "scores"
    summary = score(root, binary, out)
    assert all_files(out) == ["2024/01/b.parquet", "2024/02/c.parquet", "a.parquet"]
    assert summary.files == 3 and summary.rows == 18
    assert [(i.name, o.relative_to(out).as_posix(), n) for i, o, n in summary.outputs] == [
        ("b.parquet", "2024/01/b.parquet", 6),
        ("c.parquet", "2024/02/c.parquet", 7),
        ("a.parquet", "a.parquet", 5),
    ]
    assert pq.read_table(out / "2024/02/c.parquet").column("id").to_pylist() == list(
        range(5, 75, 10)
    )
    doc = json.loads(json.dumps(summary.to_dict()))
    assert doc["rows"] == 18 and doc["outputs"][0]["output"].endswith("b.parquet")


def test_directory_with_files_in_one_subfolder_keeps_the_subfolder(tmp_path, binary):
    write(reviews_table(3), tmp_path / "in" / "sub" / "x.parquet")
    score(tmp_path / "in", binary, tmp_path / "out")
    assert all_files(tmp_path / "out") == ["sub/x.parquet"]


def test_glob_input_is_relative_to_deepest_common_parent(tmp_path, binary):
    write(reviews_table(3), tmp_path / "data" / "p1" / "part-0.parquet")
    write(reviews_table(4), tmp_path / "data" / "p2" / "part-0.parquet")
    write(reviews_table(4), tmp_path / "data" / "p2" / "other.csv.parquet")
    out = tmp_path / "out"
    summary = score(str(tmp_path / "data" / "*" / "part-*.parquet"), binary, out)
    assert all_files(out) == ["p1/part-0.parquet", "p2/part-0.parquet"]
    assert summary.rows == 7
    flat = tmp_path / "flat"
    score(str(tmp_path / "data" / "p2" / "*.parquet"), binary, flat)
    assert all_files(flat) == ["other.csv.parquet", "part-0.parquet"]


def test_single_file_to_file_or_directory(tmp_path, binary):
    src = write(reviews_table(4), tmp_path / "in" / "r.parquet")
    exact = tmp_path / "somewhere" / "scored.parquet"
    summary = score(src, binary, exact)
    assert all_files(tmp_path / "somewhere") == ["scored.parquet"]
    assert summary.outputs == [(src, exact, 4)]
    score(src, binary, tmp_path / "dir")
    assert all_files(tmp_path / "dir") == ["r.parquet"]


def test_bad_output_paths_are_refused(tmp_path, binary):
    a = write(reviews_table(3), tmp_path / "in" / "a.parquet")
    write(reviews_table(3), tmp_path / "in" / "b.parquet")
    with pytest.raises(ConfigError, match="overwrite its input"):
        score(a, binary, a)
    with pytest.raises(ConfigError, match="need an output directory"):
        score(tmp_path / "in", binary, tmp_path / "all.parquet")
    with pytest.raises(ConfigError, match="inside the output directory"):
        score(tmp_path / "in", binary, tmp_path / "in")
    assert all_files(tmp_path / "in") == ["a.parquet", "b.parquet"]


# --------------------------------------------------------------------------- errors


def test_missing_keep_column_names_file_column_and_columns(tmp_path, binary):
    src = write(reviews_table(3), tmp_path / "in.parquet")
    with pytest.raises(InputError) as err:
        score(src, binary, tmp_path / "out", ScoreOptions(keep=("id", "stars")))
    msg = str(err.value)
    assert "'stars'" in msg and "in.parquet" in msg
    assert "id, rating, text, note" in msg
    assert not (tmp_path / "out").exists()


def test_every_file_is_checked_before_any_is_written(tmp_path, binary):
    write(reviews_table(3), tmp_path / "in" / "a.parquet")
    write(reviews_table(3).drop_columns(["text"]), tmp_path / "in" / "b.parquet")
    with pytest.raises(InputError, match="b.parquet"):
        score(tmp_path / "in", binary, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_keep_column_clashing_with_output_is_refused(tmp_path, binary):
    src = write(
        reviews_table(3).append_column("label", pa.array([0, 1, 0])), tmp_path / "i.parquet"
    )
    with pytest.raises(ConfigError, match="'label'"):
        score(src, binary, tmp_path / "o.parquet", ScoreOptions(keep=("id", "label")))


@pytest.mark.parametrize(
    "kw",
    [
        {"batch_rows": 0},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"keep": "id"},
        {"keep": ("id", "id")},
        {"backend": "gpu"},
    ],
)
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        ScoreOptions(**kw)


def test_failure_mid_file_leaves_no_output(tmp_path, tokenizer, monkeypatch):
    model = make_model(tokenizer)
    src = write(reviews_table(30), tmp_path / "in" / "r.parquet")
    out_dir = tmp_path / "out"
    calls = []
    real = model.predict_proba

    def flaky(tokens, *args, **kw):
        calls.append(len(tokens))
        if len(calls) == 2:
            raise OSError("disk on fire")
        return real(tokens, *args, **kw)

    monkeypatch.setattr(model, "predict_proba", flaky)
    threads_before = threading.active_count()
    with pytest.raises(OSError, match="disk on fire"):
        score(src, model, out_dir, ScoreOptions(batch_rows=10))
    assert len(calls) == 2
    assert all_files(out_dir) == []  # neither the output nor a temporary file
    assert threading.active_count() == threads_before  # the read-ahead thread is gone


def test_next_file_is_read_while_the_last_batch_of_this_one_is_scored(
    tmp_path, tokenizer, monkeypatch
):
    import pipeline.score as score_mod

    model = make_model(tokenizer)
    for name in ("a", "b"):
        write(reviews_table(20), tmp_path / "in" / f"{name}.parquet")
    b_read = threading.Event()
    seen_at_call: list[bool] = []
    real_iter, real_predict = score_mod.io.iter_batches, model.predict_proba

    def reading(paths, *args, **kw):
        for fb in real_iter(paths, *args, **kw):
            if Path(fb.path).stem == "b":
                b_read.set()
            yield fb

    def predicting(tokens, *args, **kw):
        if len(seen_at_call) == 1:  # the second call scores a's last batch (2 x 10 rows)
            b_read.wait(5)
        seen_at_call.append(b_read.is_set())
        return real_predict(tokens, *args, **kw)

    monkeypatch.setattr(score_mod.io, "iter_batches", reading)
    monkeypatch.setattr(model, "predict_proba", predicting)
    summary = score(tmp_path / "in", model, tmp_path / "out", ScoreOptions(batch_rows=10))
    assert summary.files == 2 and summary.rows == 40
    assert seen_at_call == [False, True, True, True]  # b was read during a's last batch
    for name in ("a", "b"):
        assert pq.read_table(tmp_path / "out" / f"{name}.parquet").num_rows == 20


def test_a_bad_second_file_leaves_the_first_output_whole(tmp_path, tokenizer, monkeypatch):
    import pipeline.score as score_mod

    model = make_model(tokenizer)
    for name in ("a", "b"):
        write(reviews_table(20), tmp_path / "in" / f"{name}.parquet")
    real_iter = score_mod.io.iter_batches

    def failing_on_b(paths, *args, **kw):
        for fb in real_iter(paths, *args, **kw):
            if Path(fb.path).stem == "b":
                raise OSError("b is unreadable")
            yield fb

    monkeypatch.setattr(score_mod.io, "iter_batches", failing_on_b)
    threads_before = threading.active_count()
    with pytest.raises(OSError, match="b is unreadable"):
        score(tmp_path / "in", model, tmp_path / "out", ScoreOptions(batch_rows=10))
    assert all_files(tmp_path / "out") == ["a.parquet"]
    assert pq.read_table(tmp_path / "out" / "a.parquet").num_rows == 20
    assert threading.active_count() == threads_before


def test_broken_probabilities_raise_run_error(tmp_path, tokenizer, monkeypatch):
    model = make_model(tokenizer)
    src = write(reviews_table(12), tmp_path / "r.parquet")

    calls = []

    def broken(tokens, *args, **kw):
        calls.append(1)
        p = np.full((len(tokens), 2), 0.5, np.float32)
        if len(calls) == 2:
            p[4, 1] = np.nan  # the 2nd batch's last row: row 9 of the file
        return p

    monkeypatch.setattr(model, "predict_proba", broken)
    with pytest.raises(RunError, match=r"row 9"):
        score(src, model, tmp_path / "out" / "o.parquet", ScoreOptions(batch_rows=5))
    assert all_files(tmp_path / "out") == []


# --------------------------------------------------------------------------- resume


def test_resume_skips_complete_outputs_and_rescoring_stale_ones(tmp_path, binary):
    root = tmp_path / "in"
    a = write(reviews_table(5, 1), root / "a.parquet")
    write(reviews_table(6, 2), root / "b.parquet")
    out = tmp_path / "out"
    first = score(root, binary, out, ScoreOptions(resume=True))
    assert (first.files, first.skipped_files, first.rows) == (2, 0, 11)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in ("a.parquet", "b.parquet")}

    again = score(root, binary, out, ScoreOptions(resume=True))
    assert (again.files, again.skipped_files, again.rows) == (0, 2, 0)
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    assert [n for _, _, n in again.outputs] == [5, 6]

    # an output older than its input is stale
    old = a.stat().st_mtime_ns - 10**10
    os.utime(out / "a.parquet", ns=(old, old))
    third = score(root, binary, out, ScoreOptions(resume=True))
    assert (third.files, third.skipped_files, third.rows) == (1, 1, 5)
    assert (out / "a.parquet").stat().st_mtime_ns > old
    assert (out / "b.parquet").stat().st_mtime_ns == mtimes["b.parquet"]

    # without resume everything is scored again
    assert score(root, binary, out).files == 2


def test_resume_rescores_other_model_settings_and_bad_outputs(tmp_path, tokenizer, binary):
    src = write(reviews_table(8), tmp_path / "in" / "r.parquet")
    out = tmp_path / "out"
    score(src, binary, out, ScoreOptions(resume=True))
    other = make_model(tokenizer, seed=9)
    assert score(src, other, out, ScoreOptions(resume=True)).skipped_files == 0
    assert score(src, other, out, ScoreOptions(resume=True, threshold=0.7)).skipped_files == 0
    keep = ScoreOptions(resume=True, threshold=0.7, keep=("id", "rating"))
    assert score(src, other, out, keep).skipped_files == 0
    assert score(src, other, out, keep).skipped_files == 1
    # a truncated output (say, copied by hand) is not complete
    data = (out / "r.parquet").read_bytes()
    (out / "r.parquet").write_bytes(data[: len(data) // 2])
    assert score(src, other, out, keep).skipped_files == 0
    assert pq.read_table(out / "r.parquet").num_rows == 8


def test_resume_rescores_when_the_model_weights_are_newer(tmp_path, binary):
    model_dir = binary.save(tmp_path / "model")
    src = write(reviews_table(4), tmp_path / "in" / "r.parquet")
    out = tmp_path / "out"
    opts = ScoreOptions(resume=True)
    score(src, binary, out, opts, model_dir=model_dir)
    assert score(src, binary, out, opts, model_dir=model_dir).skipped_files == 1
    future = (out / "r.parquet").stat().st_mtime_ns + 10**10
    os.utime(model_dir / "weights.npz", ns=(future, future))
    assert score(src, binary, out, opts, model_dir=model_dir).skipped_files == 0


# --------------------------------------------------------------------------- building blocks


def test_score_file_and_progress_events(tmp_path, binary):
    src = write(reviews_table(23), tmp_path / "in.parquet")
    events: list[ProgressEvent] = []
    dst = tmp_path / "x" / "y.parquet"
    result = score_file(src, binary, dst, ScoreOptions(batch_rows=10), events.append)
    assert result.rows == 23 and result.output == dst
    texts = pq.read_table(src).column("text").to_pylist()
    assert result.null_texts == sum(t is None or t == "" for t in texts) == 5
    assert [e.kind for e in events] == ["file_start", "batch", "batch", "batch", "file_done"]
    assert [e.rows for e in events if e.kind == "batch"] == [10, 10, 3]
    assert sum(e.rows for e in events) == total_rows(src) == 23


def test_progress_counts_skipped_files(tmp_path, binary):
    write(reviews_table(5), tmp_path / "in" / "a.parquet")
    write(reviews_table(6), tmp_path / "in" / "b.parquet")
    score(tmp_path / "in", binary, tmp_path / "out")
    events: list[ProgressEvent] = []
    score(tmp_path / "in", binary, tmp_path / "out", ScoreOptions(resume=True), events.append)
    assert [(e.kind, e.rows) for e in events] == [("file_skipped", 5), ("file_skipped", 6)]
    assert total_rows(tmp_path / "in") == 11


def test_predict_texts(binary, multiclass):
    texts = ["a great film", None, "dull, boring and awful"]
    preds = predict_texts(binary, texts)
    probs = expected_probs(binary, texts)
    for p, row in zip(preds, probs, strict=True):
        assert p.label == ("positive" if row[1] >= 0.5 else "negative")
        assert p.probability == pytest.approx(row.max())
        assert p.probabilities == pytest.approx({"negative": row[0], "positive": row[1]})
    assert {p.label for p in predict_texts(binary, texts, threshold=0.0)} == {"positive"}
    multi = predict_texts(multiclass, texts)
    assert sum(multi[0].probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert multi[0].probability == max(multi[0].probabilities.values())
    assert predict_texts(binary, []) == []
    with pytest.raises(TypeError):
        predict_texts(binary, "one string")


def test_prefetch_passes_errors_and_stops_early():
    def items():
        yield 1
        yield 2
        raise InputError("bad row group")

    with _Prefetch(items()) as it, pytest.raises(InputError, match="bad row group"):
        list(it)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    with _Prefetch(endless()) as it:
        assert next(it) == 0
    assert threading.active_count() == before
    assert len(produced) <= 4  # at most one item queued and one being made ahead
