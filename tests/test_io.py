"""Ingestion and sinks: sources, bounded streaming, projection, text column checks, atomicity."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InputError
from pipeline.io import (
    FileBatch,
    ParquetSink,
    atomic_dir,
    atomic_write_text,
    count_rows,
    detect_text_column,
    iter_batches,
    parquet_schema,
    read_columns,
    resolve_inputs,
    write_table_atomic,
)


def make_table(n: int, start: int = 0, text_type: pa.DataType = pa.string()) -> pa.Table:
    ids = np.arange(start, start + n)
    texts = pa.array([f"review {i} " + "word " * (i % 7) for i in ids], pa.string())
    if pa.types.is_dictionary(text_type):
        texts = texts.dictionary_encode()
    else:
        texts = texts.cast(text_type)
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "text": texts, "label": pa.array(ids % 2, pa.int8())}
    )


@pytest.fixture
def three_files(tmp_path):
    """A directory with 3 Parquet files (10, 25, 7 rows), one in a subfolder, plus noise."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    pq.write_table(make_table(10, 0), root / "a.parquet", row_group_size=4)
    pq.write_table(make_table(25, 10), root / "sub" / "b.parquet", row_group_size=6)
    pq.write_table(make_table(7, 35), root / "c.parquet")
    (root / "README.md").write_text("not data")
    (root / "_SUCCESS").write_text("")
    pq.write_table(make_table(3, 99), root / ".hidden.parquet")
    return root


def all_ids(batches) -> list[int]:
    return [i for fb in batches for i in fb.batch.column("id").to_pylist()]


# -- resolve_inputs --------------------------------------------------------------------------


def test_resolve_directory_recursive_sorted(three_files):
    paths = resolve_inputs(three_files)
    assert [p.relative_to(three_files).as_posix() for p in paths] == [
        "a.parquet",
        "c.parquet",
        "sub/b.parquet",
    ]
    assert all(p.is_absolute() for p in paths)


def test_resolve_globs_and_dedup(three_files):
    top = resolve_inputs(str(three_files / "*.parquet"))
    assert [p.name for p in top] == ["a.parquet", "c.parquet"]
    deep = resolve_inputs(str(three_files / "**" / "*.parquet"))
    assert [p.name for p in deep] == ["a.parquet", "c.parquet", "b.parquet"]
    both = resolve_inputs([three_files / "a.parquet", str(three_files / "?.parquet"), three_files])
    assert both == resolve_inputs(three_files)
    assert resolve_inputs(str(three_files / "[a].parquet")) == [three_files / "a.parquet"]


def test_resolve_errors(tmp_path):
    with pytest.raises(InputError, match="input not found: .*missing.parquet"):
        resolve_inputs(tmp_path / "missing.parquet")
    with pytest.raises(InputError, match="no files match .*\\*.parquet"):
        resolve_inputs(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no .parquet files"):
        resolve_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="no input"):
        resolve_inputs([])


# -- detect_text_column ----------------------------------------------------------------------


def test_detect_text_column():
    s = pa.schema({"id": pa.int64(), "text": pa.string(), "review": pa.string()})
    assert detect_text_column(s, None, "f.parquet") == "text"
    assert detect_text_column(s, "review", "f.parquet") == "review"
    s2 = pa.schema({"id": pa.int64(), "review": pa.large_string()})
    assert detect_text_column(s2, None, "f.parquet") == "review"
    for t in (pa.string_view(), pa.dictionary(pa.int32(), pa.string())):
        assert detect_text_column(pa.schema({"text": t}), None, "f") == "text"


def test_detect_text_column_errors():
    s = pa.schema({"id": pa.int64(), "body": pa.string(), "title": pa.large_string()})
    with pytest.raises(InputError, match="f.parquet has no 'text' or 'review'.*body, title"):
        detect_text_column(s, None, "f.parquet")
    with pytest.raises(InputError, match="'comment' not in f.parquet: columns are id, body"):
        detect_text_column(s, "comment", "f.parquet")
    with pytest.raises(
        InputError,
        match="column 'id' in f.parquet is int64, expected a string column: pass --text-col",
    ):
        detect_text_column(s, "id", "f.parquet")
    bad = pa.schema({"text": pa.int64()})
    with pytest.raises(InputError, match="column 'text' in f.parquet is int64"):
        detect_text_column(bad, None, "f.parquet")


# -- iter_batches ----------------------------------------------------------------------------


def test_stream_directory_bounded_rows(three_files):
    paths = resolve_inputs(three_files)
    batches = list(iter_batches(paths, ["id", "text"], batch_rows=4))
    assert all(isinstance(fb, FileBatch) for fb in batches)
    assert all(1 <= fb.batch.num_rows <= 4 for fb in batches)
    assert all_ids(batches) == list(range(10)) + list(range(35, 42)) + list(range(10, 35))
    # row_offset counts rows within each file
    for path in paths:
        offsets = [fb.row_offset for fb in batches if fb.path == path]
        sizes = [fb.batch.num_rows for fb in batches if fb.path == path]
        assert offsets == list(np.cumsum([0, *sizes[:-1]]))


def test_stream_glob(three_files):
    paths = resolve_inputs(str(three_files / "**" / "b.parquet"))
    assert all_ids(iter_batches(paths, ["id"], batch_rows=100)) == list(range(10, 35))


def test_projection_reads_only_requested_columns(three_files):
    paths = resolve_inputs(three_files)
    for fb in iter_batches(paths, ["label", "id"]):
        assert fb.batch.schema.names == ["label", "id"]


@pytest.mark.parametrize(
    "text_type",
    [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())],
    ids=["string", "large_string", "string_view", "dictionary"],
)
def test_text_column_types_all_arrive_as_large_string(tmp_path, text_type):
    table = make_table(9, text_type=text_type)
    pq.write_table(table, tmp_path / "t.parquet")
    got = list(
        iter_batches([tmp_path / "t.parquet"], ["text", "id"], batch_rows=4, text_col="text")
    )
    assert all(fb.batch.schema.field("text").type == pa.large_string() for fb in got)
    texts = [t for fb in got for t in fb.batch.column("text").to_pylist()]
    assert texts == make_table(9).column("text").to_pylist()
    whole = read_columns([tmp_path / "t.parquet"], ["text", "id"], text_col="text")
    assert whole.schema.field("text").type == pa.large_string()
    assert whole.column("text").to_pylist() == texts


def test_batches_bounded_in_bytes(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["x" * int(n) for n in rng.integers(0, 3000, size=500)]
    texts[100] = "y" * 50_000  # one row over the budget travels alone
    pq.write_table(pa.table({"id": np.arange(500), "text": texts}), tmp_path / "t.parquet")
    budget = 20_000
    got = list(
        iter_batches(
            [tmp_path / "t.parquet"],
            ["id", "text"],
            batch_rows=1000,
            batch_bytes=budget,
            text_col="text",
        )
    )
    assert len(got) > 10
    for fb in got:
        col = fb.batch.column("text").to_pylist()
        size = sum(len(t) + 8 for t in col) + 8 * fb.batch.num_rows
        assert size <= budget or fb.batch.num_rows == 1
    assert [t for fb in got for t in fb.batch.column("text").to_pylist()] == texts
    assert [fb.row_offset for fb in got] == list(
        np.cumsum([0] + [fb.batch.num_rows for fb in got[:-1]])
    )


def test_streaming_memory_is_flat(tmp_path):
    # 40 row groups of ~200 kB: streaming must hold about one at a time, never the file
    rng = np.random.default_rng(1)
    words = np.array(["alpha", "beta", "gamma", "delta"])
    texts = [" ".join(rng.choice(words, 150)) for _ in range(8000)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=200, compression="none")
    size = os.path.getsize(path)
    base = pa.total_allocated_bytes()
    peak = 0
    for _ in iter_batches([path], ["text"], batch_rows=100, text_col="text"):
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert peak < size / 4, (peak, size)


def test_not_parquet_and_missing(tmp_path, three_files):
    junk = tmp_path / "junk.parquet"
    junk.write_text("hello, I am a CSV\n1,2,3\n")
    with pytest.raises(InputError, match=r"junk.parquet is not a Parquet file: "):
        list(iter_batches([junk], ["text"]))
    with pytest.raises(InputError, match="input not found"):
        list(iter_batches([tmp_path / "gone.parquet"], ["text"]))
    with pytest.raises(InputError, match="is not a Parquet file"):
        count_rows([junk])


def test_missing_column_lists_existing(three_files):
    paths = resolve_inputs(three_files)
    with pytest.raises(InputError, match="'review' not in .*a.parquet: columns are id, text"):
        list(iter_batches(paths, ["review"]))
    with pytest.raises(InputError, match="columns are id, text, label"):
        read_columns(paths, ["id", "score"])


def test_non_string_text_column(three_files):
    paths = resolve_inputs(three_files)
    with pytest.raises(InputError, match="column 'id' in .*a.parquet is int64, expected a string"):
        list(iter_batches(paths, ["id"], text_col="id"))
    with pytest.raises(ConfigError):
        list(iter_batches(paths, ["id"], text_col="text"))


def test_count_rows_and_read_columns(three_files):
    paths = resolve_inputs(three_files)
    assert count_rows(paths) == 42
    table = read_columns(paths, ["id", "label"])
    assert table.num_rows == 42 and table.schema.names == ["id", "label"]
    assert table.column("id").to_pylist() == all_ids(iter_batches(paths, ["id"]))


def test_empty_file_streams_nothing(tmp_path):
    pq.write_table(make_table(0), tmp_path / "e.parquet")
    assert list(iter_batches([tmp_path / "e.parquet"], ["text"], text_col="text")) == []
    assert read_columns([tmp_path / "e.parquet"], ["text"]).num_rows == 0
    assert count_rows([tmp_path / "e.parquet"]) == 0


def test_corner_texts_stream_unchanged(corner_parquet, corner_texts):
    path = resolve_inputs(corner_parquet)[0]
    text_col = detect_text_column(parquet_schema(path), None, path)
    got = iter_batches([path], [text_col, "id"], 7, batch_bytes=50_000, text_col=text_col)
    texts = [t for fb in got for t in fb.batch.column(text_col).to_pylist()]
    assert texts == corner_texts  # nulls, empty strings, Unicode and the ~300 kB review intact


def test_parquet_schema(three_files):
    assert parquet_schema(three_files / "a.parquet").names == ["id", "text", "label"]


def test_real_imdb_stream(imdb_train_path):
    assert count_rows([imdb_train_path]) == 25_000
    text_col = detect_text_column(parquet_schema(imdb_train_path), None, imdb_train_path)
    assert text_col == "review"
    n = 0
    for fb in iter_batches([imdb_train_path], ["review"], batch_rows=5000, text_col="review"):
        assert fb.batch.num_rows <= 5000 and fb.batch.schema.names == ["review"]
        n += fb.batch.num_rows
    assert n == 25_000


# -- sinks -----------------------------------------------------------------------------------


def test_sink_writes_and_leaves_no_temp(tmp_path):
    table = make_table(20)
    out = tmp_path / "out" / "scores.parquet"
    with ParquetSink(out, table.schema) as sink:
        for batch in table.to_batches(max_chunksize=6):
            sink.write(batch)
            assert not out.exists()  # nothing visible until complete
    assert sink.rows == 20
    assert pq.read_table(out).equals(table)
    assert os.listdir(out.parent) == ["scores.parquet"]


def test_sink_exception_leaves_nothing(tmp_path):
    table = make_table(20)
    out = tmp_path / "scores.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with ParquetSink(out, table.schema) as sink:
            sink.write(table.to_batches(max_chunksize=5)[0])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_sink_exception_keeps_previous_file(tmp_path):
    out = tmp_path / "scores.parquet"
    write_table_atomic(make_table(3), out)
    with pytest.raises(ValueError):
        with ParquetSink(out, make_table(1).schema) as sink:
            sink.write(make_table(5))
            sink.write(pa.table({"other": [1]}))  # wrong schema
    assert pq.read_table(out).num_rows == 3
    assert os.listdir(tmp_path) == ["scores.parquet"]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=30),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30),
)
def test_parquet_write_read_round_trip(tmp_path_factory, texts, numbers):
    n = min(len(texts), len(numbers))
    table = pa.table({"text": pa.array(texts[:n], pa.string()), "x": pa.array(numbers[:n])})
    path = tmp_path_factory.mktemp("rt") / "t.parquet"
    write_table_atomic(table, path)
    assert pq.read_table(path).equals(table)
    back = read_columns([path], ["text", "x"], text_col="text")
    assert back.column("text").to_pylist() == table.column("text").to_pylist()


def test_atomic_write_text(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_text(path, '{"a": 1}')
    atomic_write_text(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_dir_success_and_replace(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        assert d.parent == tmp_path and d.name.startswith(".") and d != final
        (d / "config.json").write_text("v1")
        assert not final.exists()
    assert (final / "config.json").read_text() == "v1"
    with atomic_dir(final) as d:
        (d / "weights.npz").write_bytes(b"v2")
    assert sorted(p.name for p in final.iterdir()) == ["weights.npz"]
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_dir_failure_keeps_old(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        (d / "config.json").write_text("v1")
    with pytest.raises(KeyError):
        with atomic_dir(final) as d:
            (d / "config.json").write_text("half")
            raise KeyError("crash")
    assert (final / "config.json").read_text() == "v1"
    assert os.listdir(tmp_path) == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        with atomic_dir(tmp_path / "file"):
            pass
