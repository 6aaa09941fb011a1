"""The streaming scorer: Parquet files in, one scored Parquet file out per input, memory flat.

Each input file is streamed as record batches of at most ``batch_rows`` rows (only the text
column and the kept columns are read), each batch is tokenized with the model's tokenizer
(the last ``max_len`` tokens kept) and scored, and the result is appended to an
``io.ParquetSink``: a hidden temporary file renamed into place only when the whole input is
done, so a reader (or a resumed run) sees no output or a complete one, never half of one.
While the main thread tokenizes and scores a batch, a background thread reads and decodes
the next one from Parquet (pyarrow releases the GIL). Tokenizing and scoring stay on the
main thread: Numba's workqueue threading layer must not run two parallel kernels at once.

What an output holds, where it goes and when ``resume`` keeps it is decided in
``pipeline.outputs``, shared with the Ray engine: the kept input columns, then ``score`` (or
``prob_<class>`` per class) and ``label``, rows in the input's order, and metadata naming the
model, text column and threshold.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import io
from pipeline.config import ScoreOptions
from pipeline.errors import ConfigError, RunError
from pipeline.model import WEIGHTS_FILE, Model
from pipeline.outputs import (
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    FilePlan,
    Progress,
    ProgressEvent,
    bind_backend,
    check_outputs,
    is_complete,
    label_index,
    notify,
    null_or_empty,
    output_columns,
    output_paths,
    plan_file,
    predict,
    prediction_columns,
    with_metadata,
)

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

# ---------------------------------------------------------------------------------------------
# Options and results
# ---------------------------------------------------------------------------------------------


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
    model = bind_backend(model, options.backend)
    started = time.perf_counter()
    pairs = output_paths(sources, Path(out))
    plans = [plan_file(src, dst, model, options.text_col, options.keep) for src, dst in pairs]
    fingerprint = model.fingerprint()
    weights = Path(model_dir) / WEIGHTS_FILE if model_dir is not None else None
    if weights is not None and not weights.is_file():
        raise ConfigError(f"model directory {model_dir} has no {WEIGHTS_FILE}")

    # what a run killed with -9 left beside these outputs (a live writer's stays)
    io.remove_stale_temps(plan.output for plan in plans)
    summary = ScoreSummary()
    entries = []  # (plan, schema, skip), in input order
    for plan in plans:
        schema = with_metadata(plan.schema, fingerprint, plan.text_col, options.threshold)
        entries.append((plan, schema, options.resume and is_complete(plan, schema, weights)))
    # One read-ahead for all the files to score: while a file's last batch is scored, the
    # next file's first batch is read, instead of each file starting with a wait.
    todo = [plan for plan, _, skip in entries if not skip]
    with _Prefetch(_batches_of(todo, options.batch_rows)) as items:
        for plan, schema, skip in entries:
            if skip:
                summary.skipped_files += 1
                summary.outputs.append((plan.input, plan.output, plan.rows))
                notify(progress, "file_skipped", plan.input, plan.rows)
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
    model = bind_backend(model, options.backend)
    src, dst = Path(os.path.abspath(path)), Path(os.path.abspath(out_path))
    check_outputs([(src, dst)])
    plan = plan_file(src, dst, model, options.text_col, options.keep)
    schema = with_metadata(plan.schema, model.fingerprint(), plan.text_col, options.threshold)
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
    probs = predict(model, pa.array(texts, pa.large_string()), "the given texts", 0)
    idx = label_index(probs, model, options.threshold)
    return [
        Prediction(
            label=classes[k],
            probability=float(row[k]),
            probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
        )
        for k, row in zip(idx.tolist(), probs, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


_FILE_END = object()  # marks the end of one file's batches in _batches_of


def _batches_of(plans: Sequence[FilePlan], batch_rows: int) -> Iterator[Any]:
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
    plan: FilePlan,
    schema: pa.Schema,
    model: Model,
    options: ScoreOptions,
    progress: Progress | None,
    batches: Iterator[io.FileBatch],
) -> FileResult:
    started = time.perf_counter()
    notify(progress, "file_start", plan.input, 0)
    rows = null_texts = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = pending_bytes = 0
    with io.ParquetSink(plan.output, schema) as sink:
        for fb in batches:
            batch = fb.batch
            texts = _as_text(batch.column(0))
            probs = predict(model, texts, plan.input, fb.row_offset)
            out = _output_batch(batch, plan, schema, probs, model, options.threshold)
            null_texts += _count_null_or_empty(texts)
            pending.append(out)
            pending_rows += out.num_rows
            pending_bytes += out.nbytes
            if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
                sink.write(pa.Table.from_batches(pending, schema))
                pending, pending_rows, pending_bytes = [], 0, 0
            rows += out.num_rows
            notify(progress, "batch", plan.input, out.num_rows)
        if pending:
            sink.write(pa.Table.from_batches(pending, schema))
        if rows != plan.rows:
            # leaving the block with an exception removes the temporary file
            raise RunError(f"{plan.input}: read {rows} rows but its footer says {plan.rows}")
    notify(progress, "file_done", plan.input, 0)
    return FileResult(plan.input, plan.output, rows, null_texts, time.perf_counter() - started)


def _as_text(col: pa.Array) -> pa.Array:
    # dictionary and view strings are cast once, so counting and encoding see plain offsets
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return col.cast(pa.large_string())


def _count_null_or_empty(texts: pa.Array) -> int:
    return int(np.count_nonzero(null_or_empty(texts)))


def _output_batch(
    batch: pa.RecordBatch,
    plan: FilePlan,
    schema: pa.Schema,
    probs: np.ndarray,
    model: Model,
    threshold: float,
) -> pa.RecordBatch:
    kept = [batch.column(plan.columns.index(c)) for c in plan.keep]
    columns = [*kept, *prediction_columns(probs, model, threshold)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


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
