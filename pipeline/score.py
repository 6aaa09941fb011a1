"""The streaming scorer: Parquet files in, one scored Parquet file out per input, memory flat.

Each input file is streamed as record batches of at most ``batch_rows`` rows (only the text
column and the kept columns are read), each batch is tokenized with the model's tokenizer
(the last ``max_len`` tokens kept) and scored, and the result is appended to an
``io.ParquetSink``: a hidden temporary file renamed into place only when the whole input is
done, so a reader (or a resumed run) sees no output or a complete one, never half of one.
While the main thread tokenizes and scores a batch, a background thread reads and decodes
the next one from Parquet (pyarrow releases the GIL). Tokenizing and scoring stay on the
main thread: Numba's workqueue threading layer must not run two parallel kernels at once.

Output columns: the kept input columns (``--keep``, in the order given, original types),
then ``score`` (float32, probability of the positive class) for a binary model or
``prob_<class>`` (float32) per class otherwise, then ``label`` (the predicted class name).
Rows keep the input's order and count. The output's Parquet metadata records the model
fingerprint, the text column and the threshold, so ``resume`` never keeps an output that a
different model or setting wrote.

Example::

    model = Model.load("model/")
    summary = score("reviews/", model, "scores/", ScoreOptions(keep=("id", "rating")))
    print(summary.rows, summary.rows_per_s)
    [p.label for p in predict_texts(model, ["What a film!", "Dull."])]
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from pipeline.errors import ConfigError, InputError, RunError
from pipeline.kernels import BACKENDS
from pipeline.model import WEIGHTS_FILE, Model

__all__ = [
    "FileResult",
    "Prediction",
    "ProgressEvent",
    "ScoreOptions",
    "ScoreSummary",
    "check_outputs",
    "output_columns",
    "predict_texts",
    "score",
    "score_file",
    "total_rows",
]

# Output rows are small (ids and a few floats), so several input batches are gathered into
# one row group: fewer, larger row groups read faster and keep the footer small.
_ROW_GROUP_ROWS = 1 << 17
_ROW_GROUP_BYTES = 32 << 20
_META_PREFIX = b"rnnpipe."


# ---------------------------------------------------------------------------------------------
# Options and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOptions:
    """How to score.

    Fields: ``text_col`` the text column (None: ``text``, else ``review``); ``keep`` input
    columns copied to the output, in this order (None: ``("id",)`` where the input has an
    ``id`` column, else none); ``batch_rows`` rows per batch, which bounds memory;
    ``threshold`` for binary models, the score at and above which the label is the positive
    class; ``resume`` skip inputs whose output is already complete and current (``score``
    only); ``backend`` the kernel backend scoring runs on (a model loaded with another one is
    re-bound to it, sharing its weights).

    Raises ConfigError for an invalid value.

    Example: ``ScoreOptions(keep=("id", "rating"), batch_rows=4096, resume=True)``.
    """

    text_col: str | None = None
    keep: tuple[str, ...] | None = None
    batch_rows: int = 8192
    threshold: float = 0.5
    resume: bool = False
    backend: str = "cpu"

    def __post_init__(self) -> None:
        if self.text_col is not None and (not isinstance(self.text_col, str) or not self.text_col):
            raise ConfigError(f"text column must be a non-empty name, got {self.text_col!r}")
        if self.keep is not None:
            if isinstance(self.keep, str) or not isinstance(self.keep, tuple | list):
                raise ConfigError(f"keep must be a list of column names, got {self.keep!r}")
            keep = tuple(self.keep)
            bad = [c for c in keep if not isinstance(c, str) or not c]
            if bad:
                raise ConfigError(f"keep column names must be non-empty strings, got {bad[0]!r}")
            dups = sorted({c for c in keep if keep.count(c) > 1})
            if dups:
                raise ConfigError(f"keep column {dups[0]!r} is listed twice")
            object.__setattr__(self, "keep", keep)
        if (
            isinstance(self.batch_rows, bool)
            or not isinstance(self.batch_rows, int | np.integer)
            or self.batch_rows < 1
        ):
            raise ConfigError(f"batch_rows must be an integer >= 1, got {self.batch_rows!r}")
        object.__setattr__(self, "batch_rows", int(self.batch_rows))
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float | np.floating)
            or not 0.0 <= float(self.threshold) <= 1.0
        ):
            raise ConfigError(f"threshold must be a number in [0, 1], got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "resume", bool(self.resume))
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}"
            )


class ProgressEvent(NamedTuple):
    """What the ``progress`` callback receives.

    ``kind``: ``file_start``, ``batch`` (after each batch is scored and written),
    ``file_done`` (the output is in place) or ``file_skipped`` (resume found it complete);
    ``path`` the input file; ``rows`` rows newly done: the batch's rows for ``batch``, the
    file's rows for ``file_skipped``, 0 otherwise. Summed over a run, ``rows`` equals
    ``total_rows(sources)``, so a progress bar can simply advance by it.
    """

    kind: str
    path: Path
    rows: int


Progress = Callable[[ProgressEvent], None]


@dataclass
class FileResult:
    """One scored file: ``input``, ``output``, ``rows``, ``null_texts`` (null or empty texts),
    ``seconds`` (wall time)."""

    input: Path
    output: Path
    rows: int
    null_texts: int
    seconds: float


@dataclass
class ScoreSummary:
    """What a ``score`` run did.

    ``rows`` rows scored by this run; ``files`` files scored by this run; ``skipped_files``
    files ``resume`` found complete; ``seconds`` wall time; ``rows_per_s``; ``null_texts``
    null or empty texts scored; ``outputs`` every input with its output and row count, in
    input order (skipped files included).
    """

    rows: int = 0
    files: int = 0
    skipped_files: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    null_texts: int = 0
    outputs: list[tuple[Path, Path, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings), for ``rnnpipe score --json``."""
        return {
            "rows": self.rows,
            "files": self.files,
            "skipped_files": self.skipped_files,
            "seconds": round(self.seconds, 6),
            "rows_per_s": round(self.rows_per_s, 3),
            "null_texts": self.null_texts,
            "outputs": [{"input": str(i), "output": str(o), "rows": n} for i, o, n in self.outputs],
        }


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: ``label`` the predicted class, ``probability`` that class's
    probability, ``probabilities`` every class's probability, by class name."""

    label: str
    probability: float
    probabilities: dict[str, float]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def total_rows(sources: str | Path | Sequence[str | Path]) -> int:
    """Rows in every input file of ``sources`` (from Parquet footers; no data is read).

    Raises InputError for a missing source or a file that is not Parquet.

    Example: ``bar = Progress(total=total_rows("reviews/"))``.
    """
    return io.count_rows(io.resolve_inputs(sources))


def output_columns(model: Model, keep: Sequence[str] = ()) -> list[str]:
    """The output's column names for ``model`` with ``keep`` columns kept.

    Example: ``output_columns(model, ["id"]) == ["id", "score", "label"]`` for a binary model.
    """
    return [*keep, *_prediction_names(model), "label"]


def score(
    sources: str | Path | Sequence[str | Path],
    model: Model,
    out: str | Path,
    options: ScoreOptions | None = None,
    progress: Progress | None = None,
    *,
    model_dir: str | Path | None = None,
) -> ScoreSummary:
    """Score every Parquet file of ``sources`` into one output file each.

    Parameters: ``sources`` a file, a directory (its ``*.parquet`` files, recursively) or a
    glob, or several; ``model`` the classifier; ``out`` with a single input file and a name
    ending in ``.parquet`` the output file itself, otherwise a directory in which each
    output keeps its input's path relative to the inputs' common root (a directory input:
    that directory; a glob: the deepest common parent of its matches) and file name;
    ``options`` (default ``ScoreOptions()``); ``progress`` called with a ``ProgressEvent``
    after each batch and at each file's start and end; ``model_dir`` the model's directory,
    whose weights file an output must be newer than for ``resume`` to keep it.

    Every file is checked (columns, types, output paths) before anything is written. With
    ``resume``, an input is skipped when its output exists, is newer than the input (and the
    model's weights when ``model_dir`` is given), has the input's row count and the expected
    columns, and was written by the same model with the same text column and threshold.

    Returns a ``ScoreSummary``. Raises InputError for a missing source, a file that is not
    Parquet, or a missing text or keep column; ConfigError for bad output paths or a keep
    column that clashes with an output column; RunError when the model produces a
    probability that is not finite or not in [0, 1]. A failed file leaves no output.

    Example::

        summary = score("reviews/", Model.load("m/"), "scores/", ScoreOptions(resume=True))
    """
    options = options or ScoreOptions()
    model = _bind_backend(model, options.backend)
    started = time.perf_counter()
    pairs = _output_paths(sources, Path(out))
    plans = [_plan_file(src, dst, model, options) for src, dst in pairs]
    fingerprint = model.fingerprint()
    weights = Path(model_dir) / WEIGHTS_FILE if model_dir is not None else None
    if weights is not None and not weights.is_file():
        raise ConfigError(f"model directory {model_dir} has no {WEIGHTS_FILE}")

    # what a run killed with -9 left beside these outputs (a live writer's stays)
    io.remove_stale_temps(plan.output for plan in plans)
    summary = ScoreSummary()
    entries = []  # (plan, schema, skip), in input order
    for plan in plans:
        schema = _with_metadata(plan.schema, fingerprint, plan.text_col, options.threshold)
        entries.append((plan, schema, options.resume and _is_complete(plan, schema, weights)))
    # One read-ahead for all the files to score: while a file's last batch is scored, the
    # next file's first batch is read, instead of each file starting with a wait.
    todo = [plan for plan, _, skip in entries if not skip]
    with _Prefetch(_batches_of(todo, options.batch_rows)) as items:
        for plan, schema, skip in entries:
            if skip:
                summary.skipped_files += 1
                summary.outputs.append((plan.input, plan.output, plan.rows))
                _notify(progress, "file_skipped", plan.input, plan.rows)
                continue
            result = _score_plan(plan, schema, model, options, progress, _one_file(items))
            summary.files += 1
            summary.rows += result.rows
            summary.null_texts += result.null_texts
            summary.outputs.append((result.input, result.output, result.rows))
    summary.seconds = time.perf_counter() - started
    summary.rows_per_s = summary.rows / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def score_file(
    path: str | Path,
    model: Model,
    out_path: str | Path,
    options: ScoreOptions | None = None,
    progress: Progress | None = None,
) -> FileResult:
    """Score one Parquet file into ``out_path``, atomically (no output unless complete).

    The building block for scheduled jobs, which choose output paths themselves;
    ``options.resume`` is ignored here (the job's manifest decides what to run).

    Returns a ``FileResult``. Raises as ``score`` does.

    Example: ``score_file("in/a.parquet", model, "out/a.parquet").rows``.
    """
    options = options or ScoreOptions()
    model = _bind_backend(model, options.backend)
    src, dst = Path(os.path.abspath(path)), Path(os.path.abspath(out_path))
    check_outputs([(src, dst)])
    plan = _plan_file(src, dst, model, options)
    schema = _with_metadata(plan.schema, model.fingerprint(), plan.text_col, options.threshold)
    with _Prefetch(_batches_of([plan], options.batch_rows)) as items:
        return _score_plan(plan, schema, model, options, progress, _one_file(items))


def predict_texts(
    model: Model, texts: Sequence[str | None], threshold: float = 0.5
) -> list[Prediction]:
    """Predictions for a few texts (``rnnpipe predict``): label, its probability, all of them.

    Null and empty texts get the model's prediction for an empty sequence. For a binary
    model the label is the positive class when its probability is at least ``threshold``.

    Raises ConfigError for a bad threshold; TypeError when ``texts`` is a single string or
    holds something other than strings and None; RunError for probabilities outside [0, 1].

    Example::

        [p.label for p in predict_texts(model, ["A joy.", "A bore."])]  # ['positive', ...]
    """
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a sequence of strings, not a single string")
    texts = list(texts)
    bad = [t for t in texts if t is not None and not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings or None, got {type(bad[0]).__name__}")
    options = ScoreOptions(threshold=threshold)  # validates the threshold
    classes = model.config.classes
    probs = _predict(model, pa.array(texts, pa.large_string()), "the given texts", 0)
    idx = _label_index(probs, model, options.threshold)
    return [
        Prediction(
            label=classes[k],
            probability=float(row[k]),
            probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
        )
        for k, row in zip(idx.tolist(), probs, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Planning: inputs, outputs, columns
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FilePlan:
    input: Path
    output: Path
    text_col: str
    keep: tuple[str, ...]
    columns: tuple[str, ...]  # what is read: the text column, then kept columns not yet read
    schema: pa.Schema  # of the output, without metadata
    rows: int


def _bind_backend(model: Model, backend: str) -> Model:
    if model.backend == backend:
        return model
    # the same weights and tokenizer, other kernels (folded tables are rebuilt lazily)
    return Model(model.config, model.params, tokenizer=model.tokenizer, backend=backend)


def _output_paths(sources: str | Path | Sequence[str | Path], out: Path) -> list[tuple[Path, Path]]:
    """(input, output) for every input file; see ``score`` for the layout."""
    if isinstance(sources, str | Path):
        sources = [sources]
    sources = list(sources)
    inputs: set[Path] = set()
    roots: list[str] = []
    for source in sources:
        files = io.resolve_inputs(source)
        inputs.update(files)
        path = Path(source).expanduser()
        if path.is_dir():
            roots.append(os.path.abspath(path))
        else:
            roots.append(os.path.commonpath([str(f.parent) for f in files]))
    files = sorted(inputs)
    out = Path(os.path.abspath(out.expanduser()))
    if len(files) == 1 and out.suffix == ".parquet" and not out.is_dir():
        pairs = [(files[0], out)]
    else:
        if out.exists() and not out.is_dir():
            raise ConfigError(
                f"output {out} is a file but {len(files)} inputs need a directory: "
                "pass a directory to --out"
            )
        if out.suffix == ".parquet" and not out.exists():
            raise ConfigError(
                f"{len(files)} input files need an output directory, got the file name {out}: "
                "pass a directory to --out"
            )
        root = Path(os.path.commonpath(roots))
        for f in files:
            # through links too: `score d -o dlink` with dlink -> d would score d into itself
            if io.is_inside(f, out):
                raise ConfigError(
                    f"input {f} lies inside the output directory {out}: choose an --out "
                    "outside the inputs"
                )
        pairs = [(f, out / f.relative_to(root)) for f in files]
    check_outputs(pairs)
    return pairs


def check_outputs(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Refuse, before any work, outputs that would replace an input (compared as real paths
    and inodes, so a link to a folder does not hide it) or that cannot be created.

    Raises ConfigError naming the first such output.

    Example: ``check_outputs([(Path("in/a.parquet"), Path("out/a.parquet"))])``.
    """
    real_inputs = {Path(os.path.realpath(src)): src for src, _ in pairs}
    for src, dst in pairs:
        clash = real_inputs.get(io.real_entry(dst))
        if clash is None and io.would_overwrite(dst, src):
            clash = src
        if clash is not None:
            what = "its input" if clash == src else f"the input {clash}"
            raise ConfigError(f"output {dst} would overwrite {what}: choose another --out")
        if dst.is_dir():
            raise ConfigError(f"output {dst} is a directory: pass a file path")
        io.check_writable(dst)


def _prediction_names(model: Model) -> list[str]:
    classes = model.config.classes
    return ["score"] if len(classes) == 2 else [f"prob_{c}" for c in classes]


def _plan_file(src: Path, dst: Path, model: Model, options: ScoreOptions) -> _FilePlan:
    """Check one input's columns and derive its output schema (footer only, no data read)."""
    schema, rows = io.parquet_schema(src), io.count_rows([src])
    text_col = io.detect_text_column(schema, options.text_col, src)
    if options.keep is None:
        keep: tuple[str, ...] = ("id",) if "id" in schema.names else ()
    else:
        keep = options.keep
    missing = [c for c in keep if c not in schema.names]
    if missing:
        raise InputError(
            f"keep column {missing[0]!r} not in {src}: columns are {', '.join(schema.names)}"
        )
    produced = [*_prediction_names(model), "label"]
    clash = [c for c in keep if c in produced]
    if clash:
        raise ConfigError(
            f"keep column {clash[0]!r} of {src} has the name of an output column "
            f"({', '.join(produced)}): rename it in the input or leave it out of --keep"
        )
    columns = (text_col, *[c for c in keep if c != text_col])
    fields = [schema.field(c) for c in keep]
    fields += [pa.field(name, pa.float32()) for name in _prediction_names(model)]
    fields.append(pa.field("label", pa.string()))
    return _FilePlan(src, dst, text_col, keep, columns, pa.schema(fields), rows)


def _with_metadata(
    schema: pa.Schema, fingerprint: str, text_col: str, threshold: float
) -> pa.Schema:
    return schema.with_metadata(
        {
            _META_PREFIX + b"model": fingerprint.encode(),
            _META_PREFIX + b"text_col": text_col.encode(),
            _META_PREFIX + b"threshold": repr(threshold).encode(),
        }
    )


def _is_complete(plan: _FilePlan, schema: pa.Schema, weights: Path | None) -> bool:
    """True when ``plan.output`` is a finished, current output of ``plan.input``."""
    try:
        out_mtime = plan.output.stat().st_mtime_ns
        if out_mtime <= plan.input.stat().st_mtime_ns:
            return False
        if weights is not None and out_mtime <= weights.stat().st_mtime_ns:
            return False
        pf = pq.ParquetFile(plan.output)
        try:
            found, rows = pf.schema_arrow, pf.metadata.num_rows
        finally:
            pf.close()
    except (OSError, pa.ArrowException):
        return False  # missing or unreadable: score it again
    return (
        rows == plan.rows
        and found.equals(schema, check_metadata=False)
        and all((found.metadata or {}).get(k) == v for k, v in schema.metadata.items())
    )


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _notify(progress: Progress | None, kind: str, path: Path, rows: int) -> None:
    if progress is not None:
        progress(ProgressEvent(kind, path, rows))


_FILE_END = object()  # marks the end of one file's batches in _batches_of


def _batches_of(plans: Sequence[_FilePlan], batch_rows: int) -> Iterator[Any]:
    """Every plan's input batches in order, each file's followed by ``_FILE_END``."""
    for plan in plans:
        yield from io.iter_batches([plan.input], plan.columns, batch_rows=batch_rows)
        yield _FILE_END


def _one_file(items: Iterator[Any]) -> Iterator[io.FileBatch]:
    """The next file's batches from a ``_batches_of`` stream, up to its ``_FILE_END``."""
    for item in items:
        if item is _FILE_END:
            return
        yield item


def _score_plan(
    plan: _FilePlan,
    schema: pa.Schema,
    model: Model,
    options: ScoreOptions,
    progress: Progress | None,
    batches: Iterator[io.FileBatch],
) -> FileResult:
    started = time.perf_counter()
    _notify(progress, "file_start", plan.input, 0)
    rows = null_texts = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = pending_bytes = 0
    with io.ParquetSink(plan.output, schema) as sink:
        for fb in batches:
            batch = fb.batch
            texts = _as_text(batch.column(0))
            probs = _predict(model, texts, plan.input, fb.row_offset)
            out = _output_batch(batch, plan, schema, probs, model, options.threshold)
            null_texts += _count_null_or_empty(texts)
            pending.append(out)
            pending_rows += out.num_rows
            pending_bytes += out.nbytes
            if pending_rows >= _ROW_GROUP_ROWS or pending_bytes >= _ROW_GROUP_BYTES:
                sink.write(pa.Table.from_batches(pending, schema))
                pending, pending_rows, pending_bytes = [], 0, 0
            rows += out.num_rows
            _notify(progress, "batch", plan.input, out.num_rows)
        if pending:
            sink.write(pa.Table.from_batches(pending, schema))
        if rows != plan.rows:
            # leaving the block with an exception removes the temporary file
            raise RunError(f"{plan.input}: read {rows} rows but its footer says {plan.rows}")
    _notify(progress, "file_done", plan.input, 0)
    return FileResult(plan.input, plan.output, rows, null_texts, time.perf_counter() - started)


def _as_text(col: pa.Array) -> pa.Array:
    # dictionary and view strings are cast once, so counting and encoding see plain offsets
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return col.cast(pa.large_string())


def _null_or_empty(texts: pa.Array) -> np.ndarray:
    """bool[n]: True where a text is null or empty (texts: string or large_string)."""
    # on the offsets buffer: a compute call with a Python scalar makes pyarrow import pandas
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], dtype=width)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    empty = np.diff(offsets) == 0
    if texts.null_count:
        empty |= ~np.asarray(texts.is_valid())
    return empty


def _count_null_or_empty(texts: pa.Array) -> int:
    return int(np.count_nonzero(_null_or_empty(texts)))


def _predict(model: Model, texts: pa.Array, where: Any, row_offset: int) -> np.ndarray:
    """Probabilities float32[n, C] for ``texts``, checked finite and in [0, 1]."""
    probs = model.predict_proba(model.encode(texts))
    n, c = len(texts), len(model.config.classes)
    if probs.shape != (n, c):
        raise RunError(f"{where}: the model returned shape {probs.shape}, expected {(n, c)}")
    bad = ~(np.isfinite(probs) & (probs >= 0) & (probs <= 1)).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RunError(
            f"{where}: the model produced probability {probs[row].tolist()} at row "
            f"{row_offset + row}, not finite or outside [0, 1]: the model is broken"
        )
    return probs


def _label_index(probs: np.ndarray, model: Model, threshold: float) -> np.ndarray:
    if len(model.config.classes) == 2:
        return (probs[:, 1] >= threshold).astype(np.int32)
    return probs.argmax(axis=1).astype(np.int32)  # ties go to the first class


# Arrow arrays are built from buffers here: pa.array() on Python or object data makes pyarrow
# import pandas when it is installed, 0.3 s of a 2 s cold start.


def _strings(values: tuple[str, ...]) -> pa.Array:
    """A string Arrow array of ``values``."""
    data = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.StringArray.from_buffers(
        len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data))
    )


def _f32(values: np.ndarray) -> pa.Array:
    """A float32 Arrow array on the values' own buffer."""
    a = np.ascontiguousarray(values, dtype=np.float32)
    return pa.Array.from_buffers(pa.float32(), a.size, [None, pa.py_buffer(a)])


def _output_batch(
    batch: pa.RecordBatch,
    plan: _FilePlan,
    schema: pa.Schema,
    probs: np.ndarray,
    model: Model,
    threshold: float,
) -> pa.RecordBatch:
    kept = [batch.column(plan.columns.index(c)) for c in plan.keep]
    if len(model.config.classes) == 2:
        preds = [_f32(probs[:, 1])]
    else:
        preds = [_f32(probs[:, k]) for k in range(probs.shape[1])]
    names = _strings(model.config.classes)
    index = np.ascontiguousarray(_label_index(probs, model, threshold), dtype=np.int32)
    labels = names.take(pa.Array.from_buffers(pa.int32(), index.size, [None, pa.py_buffer(index)]))
    return pa.RecordBatch.from_arrays([*kept, *preds, labels], schema=schema)


# ---------------------------------------------------------------------------------------------
# Read-ahead
# ---------------------------------------------------------------------------------------------

_ITEM, _END, _ERROR = 0, 1, 2


class _Prefetch:
    """Runs an iterator one item ahead in a background thread.

    Only for I/O-bound iterators (Parquet reads, where pyarrow releases the GIL): the
    consumer keeps Numba's parallel kernels to itself on the main thread. At most one item
    waits in the queue and one is being produced, so memory stays bounded. Errors in the
    producer are raised in the consumer; leaving the ``with`` block early stops the producer.
    """

    def __init__(self, items: Iterable[Any]):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnnpipe-prefetch", daemon=True)

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def _put(self, message: tuple[int, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((_ERROR, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator is closed in the thread that ran it

    def _consume(self) -> Iterator[Any]:
        while True:
            kind, value = self._queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
