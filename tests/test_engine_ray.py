"""Tests for pipeline/engines/ray.py: scoring on Ray gives the local engine's files, row for row.

One local Ray cluster (2 CPUs) serves the whole session and is shut down at its end. Models
are tiny (E=8, H=8) with random weights; inputs are three small files in a tree, with nulls,
empties, non-ASCII text and a file whose ``id`` is int32 where the others are int64, so that
Ray's batches span files and its schema unification is undone per output. The tests that
need the cluster are marked ``ray`` and skip when ray is not installed; the missing-extra
path and the driver-side helpers are tested everywhere.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engines import ray as engine
from pipeline.errors import ConfigError, ModelFormatError, RunError
from pipeline.model import Model, ModelConfig, init_params
from pipeline.outputs import plan_file, with_metadata
from pipeline.score import ScoreOptions, score, score_file
from pipeline.text import Tokenizer

SENTENCES = [
    "a great film with a great cast",
    "dull, boring and awful",
    "I loved it! Wonderful acting.",
    "not good, not bad: the plot was thin",
    "Café naïve Москва 東京",
]


def make_model(classes=("negative", "positive"), seed=0, **kw) -> Model:
    tok = Tokenizer(num_words=100).fit(SENTENCES)
    cfg = ModelConfig(
        **{"cell": "lstm", "bidirectional": False, "pooling": "last", "dropout": 0.0, **kw},
        embed_dim=8, hidden_dim=8, vocab_size=tok.vocab_size, max_len=24, classes=classes,
    )  # fmt: skip
    params = init_params(cfg, seed)
    params["embedding"] *= 40  # spread the probabilities away from 0.5
    params["out.W"] *= 4
    return Model(cfg, params, tokenizer=tok)


def reviews(n: int, seed: int, id_type=pa.int64()) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split() + ["unknown", "words"]
    texts: list[str | None] = [
        " ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)
    ]
    texts[1::9] = [None] * len(texts[1::9])
    texts[4::13] = [""] * len(texts[4::13])
    return pa.table(
        {
            "id": pa.array(np.arange(n) + 1000 * seed, id_type),
            "rating": pa.array(rng.integers(1, 11, size=n), pa.int8()),
            "text": pa.array(texts, pa.string()),
        }
    )


def write_inputs(root: Path) -> Path:
    """in/a.parquet, in/sub/b.parquet (int32 ids), in/sub/c.parquet: 50, 47 and 53 rows."""
    files = {
        "a.parquet": reviews(50, 1),
        "sub/b.parquet": reviews(47, 2, pa.int32()),
        "sub/c.parquet": reviews(53, 3),
    }
    for name, table in files.items():
        path = root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=16)
    return root / "in"


def parquet_files(folder: Path) -> list[str]:
    """Every file below ``folder``, hidden temporaries included, relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_output(local: Path, ray_out: Path, prob_cols: list[str]) -> None:
    """The same schema, rows and values, scores included: README promises identical scores
    (the model's rows never depend on the batch around them, and Ray's batches span files)."""
    a, b = pq.read_table(local), pq.read_table(ray_out)
    assert b.schema.equals(a.schema, check_metadata=True), (a.schema, b.schema)
    assert b.num_rows == a.num_rows
    assert set(prob_cols) <= set(a.column_names)
    for name in a.column_names:
        if name in prob_cols:
            x, y = a[name].to_numpy(), b[name].to_numpy()
            assert x.tobytes() == y.tobytes(), (ray_out, name, np.abs(x - y).max())
        else:
            assert b[name].equals(a[name]), (ray_out, name)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster with 2 CPUs for the session (one already running is reused)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory) -> Path:
    return make_model().save(tmp_path_factory.mktemp("ray-binary") / "model")


# --------------------------------------------------------------------------- on a cluster


@pytest.mark.ray
def test_multi_file_matches_the_local_engine_row_for_row(ray_cluster, tmp_path, binary_dir):
    inputs = write_inputs(tmp_path)
    model = Model.load(binary_dir)
    # batches of 16 rows over files of 50, 47 and 53: Ray's batches span files
    options = ScoreOptions(keep=("id", "rating"), batch_rows=16)
    local = score(inputs, model, tmp_path / "local", options)
    import ray.data

    bars = ray.data.DataContext.get_current().enable_progress_bars
    events = []
    got = engine.score_on_ray(
        [str(inputs)], model, binary_dir, tmp_path / "ray", options, workers=2,
        progress=events.append,
    )  # fmt: skip

    assert (
        parquet_files(tmp_path / "ray")
        == parquet_files(tmp_path / "local")
        == [
            "a.parquet",
            "sub/b.parquet",
            "sub/c.parquet",
        ]
    )  # same names, and no temporaries left behind
    for name in parquet_files(tmp_path / "local"):
        assert_same_output(tmp_path / "local" / name, tmp_path / "ray" / name, ["score"])
    assert pq.read_schema(tmp_path / "ray" / "sub/b.parquet").field("id").type == pa.int32()
    assert len(set(pq.read_table(tmp_path / "ray" / "a.parquet")["label"].to_pylist())) == 2
    assert (
        (got.rows, got.files, got.skipped_files, got.null_texts)
        == (
            local.rows,
            local.files,
            0,
            local.null_texts,
        )
        == (150, 3, 0, local.null_texts)
    )
    assert local.null_texts > 0
    assert [(i, o.relative_to(tmp_path / "ray"), n) for i, o, n in got.outputs] == [
        (i, o.relative_to(tmp_path / "local"), n) for i, o, n in local.outputs
    ]
    assert json.loads(json.dumps(got.to_dict()))["rows"] == 150
    # Ray's own bars were off for the run (rnnpipe draws its own) and are back as they were
    assert ray.data.DataContext.get_current().enable_progress_bars == bars
    # progress as the local engine reports it: each file starts, its rows arrive, it is done
    kinds = [e.kind for e in events]
    assert kinds.count("file_start") == kinds.count("file_done") == 3
    assert sum(e.rows for e in events if e.kind == "batch") == 150
    per_file = {}
    for e in events:
        per_file.setdefault(e.path, []).append(e)
    for path, evs in per_file.items():
        assert evs[0].kind == "file_start" and evs[-1].kind == "file_done", path
        assert sum(e.rows for e in evs) == pq.read_metadata(path).num_rows

    # resume: complete, current outputs are kept without starting any actor
    events.clear()
    again = engine.score_on_ray(
        [str(inputs)], model, binary_dir, tmp_path / "ray",
        dataclasses.replace(options, resume=True), workers=2, progress=events.append,
    )  # fmt: skip
    assert (again.files, again.skipped_files, again.rows) == (0, 3, 0)
    assert [e.kind for e in events] == ["file_skipped"] * 3
    assert sum(e.rows for e in events) == 150


@pytest.mark.ray
def test_cli_engine_ray_multiclass(ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    model_dir = make_model(("neg", "neutral", "pos"), seed=3, cell="gru").save(tmp_path / "m")
    inputs = write_inputs(tmp_path)
    (inputs / "sub" / "c.parquet").unlink()  # two files are enough here
    result = CliRunner().invoke(
        app,
        ["score", str(inputs), "--model", str(model_dir), "--out", str(tmp_path / "ray"),
         "--engine", "ray", "--workers", "1", "--keep", "id", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["files"]) == (97, 2)

    local = score(inputs, Model.load(model_dir), tmp_path / "local", ScoreOptions(keep=("id",)))
    assert summary["null_texts"] == local.null_texts
    probs = ["prob_neg", "prob_neutral", "prob_pos"]
    for name in ("a.parquet", "sub/b.parquet"):
        assert_same_output(tmp_path / "local" / name, tmp_path / "ray" / name, probs)
    labels = pq.read_table(tmp_path / "ray" / "a.parquet")["label"].to_pylist()
    assert set(labels) <= {"neg", "neutral", "pos"} and len(set(labels)) >= 2


@pytest.mark.ray
def test_job_spec_with_engine_ray_writes_the_given_output(ray_cluster, tmp_path, binary_dir):
    from pipeline.jobs import load_spec, run_job

    src = tmp_path / "in" / "day1.parquet"
    src.parent.mkdir()
    pq.write_table(reviews(40, 7), src)
    spec_path = tmp_path / "job.toml"
    spec_path.write_text(
        'name = "ray-job"\ninputs = ["in/*.parquet"]\n'
        f'model = {json.dumps(str(binary_dir))}\noutput = "out"\nkeep = ["id"]\n'
        'engine = "ray"\nthreads = 0\n'
    )
    spec = load_spec(spec_path)
    report = run_job(spec, echo=False)
    assert report.exit_code == 0, report
    assert report.rows == 40 and len(report.scored) == 1
    out = tmp_path / "out" / "day1.parquet"
    assert out.is_file() and not list((tmp_path / "out").rglob(".*.tmp"))
    expected = score_file(src, Model.load(binary_dir), tmp_path / "local.parquet",
                          ScoreOptions(keep=("id",)))  # fmt: skip
    assert expected.rows == 40
    assert_same_output(tmp_path / "local.parquet", out, ["score"])
    # the next run finds it done: nothing is scored again
    assert run_job(spec, echo=False).up_to_date == 1


@pytest.mark.ray
def test_model_dir_holding_another_model_is_refused(tmp_path, binary_dir):
    pytest.importorskip("ray")
    src = tmp_path / "in.parquet"
    pq.write_table(reviews(5, 1), src)
    other = make_model(seed=9)
    with pytest.raises(ConfigError, match="holds another model"):
        engine.score_on_ray([str(src)], other, binary_dir, tmp_path / "out.parquet")
    with pytest.raises(ModelFormatError, match="not a model directory"):
        engine.score_on_ray([str(src)], other, tmp_path / "nope", tmp_path / "out.parquet")
    with pytest.raises(ConfigError, match="workers must be an integer"):
        engine.score_on_ray([str(src)], other, binary_dir, tmp_path / "o.parquet", workers=-1)
    assert not (tmp_path / "out.parquet").exists()


# --------------------------------------------------------------------------- without a cluster


def test_missing_ray_is_a_one_line_config_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError) as info:
        engine.score_on_ray(["in.parquet"], make_model(), tmp_path, tmp_path / "out")
    assert str(info.value) == "the ray engine needs the ray extra: pip install 'rnnpipe[ray]'"
    assert "\n" not in str(info.value)


def test_errors_raised_on_actors_come_back_as_rnnpipe_errors():
    # what Ray keeps of an actor that died in its constructor: the traceback as text
    died = RuntimeError(
        "The actor died because of an error raised in its creation task\n"
        '  File "ray.py", line 1, in __init__\n'
        "pipeline.errors.ConfigError: model directory m holds another model"
    )
    found = engine._cause(died)
    assert type(found) is ConfigError and str(found) == "model directory m holds another model"
    try:
        try:
            raise RunError("a Ray batch: the model produced probability [nan]")
        except RunError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert type(engine._cause(outer)) is RunError
    assert engine._cause(ValueError("pipeline.errors.Nope: x")) is None
    with pytest.raises(RunError, match="^boom$"):
        with engine._ray_errors():
            raise RuntimeError("wrapped") from RunError("boom\nsecond line")


def test_row_count_mismatch_fails_and_leaves_no_output(tmp_path):
    model = make_model()
    src = tmp_path / "in.parquet"
    pq.write_table(reviews(6, 1), src)
    plan = plan_file(src, tmp_path / "out.parquet", model, keep=("id",))
    schema = with_metadata(plan.schema, "fp", plan.text_col, 0.5)

    def scored(n: int) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(range(n), pa.int64()),
                "score": pa.array([0.5] * n, pa.float32()),
                "label": pa.array(["positive"] * n),
                engine._NULL_FLAG: pa.array([False] * n),
            }
        )

    with pytest.raises(RunError, match="Ray returned 4 rows but its footer says 6"):
        engine._write_outputs(iter([scored(4)]), [(plan, schema)])
    with pytest.raises(RunError, match="1 rows more"):
        engine._write_outputs(iter([scored(3), scored(4)]), [(plan, schema)])
    assert parquet_files(tmp_path) == ["in.parquet"]  # neither left an output behind
    events = []
    got = engine._write_outputs(iter([scored(2), scored(4)]), [(plan, schema)], events.append)
    assert got == [(6, 0)]
    assert [(e.kind, e.rows) for e in events] == [
        ("file_start", 0), ("batch", 2), ("batch", 4), ("file_done", 0)
    ]  # fmt: skip
    assert pq.read_table(tmp_path / "out.parquet")["id"].to_pylist() == [0, 1, 0, 1, 2, 3]


def test_each_actor_claims_its_own_numba_cache_folder(tmp_path):
    held = len(engine._HELD_LOCKS)
    try:
        first = engine._own_cache_dir(tmp_path / "cache")
        second = engine._own_cache_dir(tmp_path / "cache")
        assert (first.name, second.name) == ("slot-0", "slot-1")
        os.close(engine._HELD_LOCKS.pop(held))  # slot-0's actor ends: its folder is free again
        assert engine._own_cache_dir(tmp_path / "cache").name == "slot-0"
    finally:
        while len(engine._HELD_LOCKS) > held:
            os.close(engine._HELD_LOCKS.pop())


def test_actor_scores_a_batch_in_chunks_with_the_same_result(tmp_path):
    # The actor scores a Ray batch chunk_rows rows at a time, so its memory follows the
    # chunk and not Ray's (large) batch; chunking must not change a single value.
    import numba

    from pipeline.runtime import set_threads

    model = make_model(classes=("a", "b", "c"))
    model_dir = model.save(tmp_path / "model")
    table = reviews(23, 3)
    threads = numba.get_num_threads()
    try:
        outs = [
            engine._Scorer(
                str(model_dir),
                "cpu",
                model.fingerprint(),
                "text",
                ["id"],
                0.5,
                1,
                None,
                chunk_rows=k,
            )(table)
            for k in (4, 23, 8192)
        ]
    finally:
        set_threads(threads)
    assert outs[0].column_names == ["id", "prob_a", "prob_b", "prob_c", "label", engine._NULL_FLAG]
    assert outs[0].num_rows == 23
    assert outs[0].column("id").to_pylist() == table.column("id").to_pylist()
    for other in outs[1:]:
        assert other.equals(outs[0])
    flags = outs[0].column(engine._NULL_FLAG).to_pylist()
    texts = table.column("text").to_pylist()
    assert flags == [not t for t in texts] and any(flags)
    probs = np.stack([outs[0].column(c).to_numpy() for c in ("prob_a", "prob_b", "prob_c")], 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_ray_data_info_logs_are_hidden_during_a_run_unless_asked(monkeypatch):
    import logging

    log = logging.getLogger("ray.data")
    saved = log.level
    try:
        log.setLevel(logging.INFO)
        monkeypatch.delenv(engine.RAY_VERBOSE_ENV, raising=False)
        with engine._quiet_ray_logs():
            assert log.getEffectiveLevel() == logging.WARNING
            # the notice that Ray's bars are off is hidden too, other warnings are not
            notice = logging.getLogger("ray.data._internal.progress")
            assert notice.getEffectiveLevel() == logging.ERROR
        assert log.level == logging.INFO  # restored after the run
        assert notice.getEffectiveLevel() == logging.INFO
        monkeypatch.setenv(engine.RAY_VERBOSE_ENV, "1")
        with engine._quiet_ray_logs():
            assert log.getEffectiveLevel() == logging.INFO
        log.setLevel(logging.ERROR)  # a user's stricter setting is kept
        monkeypatch.delenv(engine.RAY_VERBOSE_ENV)
        with engine._quiet_ray_logs():
            assert log.getEffectiveLevel() == logging.ERROR
    finally:
        log.setLevel(saved)


def test_read_tasks_are_bounded_by_the_actor_count():
    # reads run at 0 CPUs, so only this bounds how many worker processes Ray starts for them
    assert [engine._read_tasks(w) for w in (1, 2, 8, 9, 16, 64)] == [1, 1, 1, 2, 2, 8]
