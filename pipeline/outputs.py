"""Scored outputs: where each input's output goes, what it holds, and how it is made.

The part of scoring that does not depend on the engine: the local streaming scorer
(``pipeline.score``) and the Ray engine (``pipeline.engines.ray``) both plan their files,
check their output paths, skip complete outputs and turn a model's probabilities into output
columns through this module, so the two write the same files.

Output columns: the kept input columns (``--keep``, in the order given, original types),
then ``score`` (float32, probability of the positive class) for a binary model or
``prob_<class>`` (float32) per class otherwise, then ``label`` (the predicted class name).
Rows keep the input's order and count. The output's Parquet metadata records the model
fingerprint, the text column and the threshold (``with_metadata``), so ``resume`` never
keeps an output that a different model or setting wrote (``is_complete``).

This module loads neither Numba nor the model's modules (the Ray engine imports it before an
actor has chosen its Numba cache); a model is used only through its methods.

Example::

    pairs = output_paths("reviews/", Path("scores/"))
    plans = [plan_file(src, dst, model) for src, dst in pairs]
    schema = with_metadata(plans[0].schema, model.fingerprint(), plans[0].text_col, 0.5)
    probs = predict(model, texts, plans[0].input, 0)
    columns = prediction_columns(probs, model, 0.5)    # score (or prob_*), label
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from pipeline.errors import ConfigError, InputError, RunError

if TYPE_CHECKING:
    from pipeline.model import Model

__all__ = [
    "ROW_GROUP_BYTES",
    "ROW_GROUP_ROWS",
    "FilePlan",
    "Progress",
    "ProgressEvent",
    "bind_backend",
    "check_outputs",
    "is_complete",
    "label_index",
    "notify",
    "null_or_empty",
    "output_columns",
    "output_paths",
    "plan_file",
    "predict",
    "prediction_columns",
    "prediction_names",
    "with_metadata",
]

# Output rows are small (ids and a few floats), so several input batches are gathered into
# one row group: fewer, larger row groups read faster and keep the footer small.
ROW_GROUP_ROWS = 1 << 17
ROW_GROUP_BYTES = 32 << 20
META_PREFIX = b"rnnpipe."


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


def notify(progress: Progress | None, kind: str, path: Path, rows: int) -> None:
    """Call ``progress`` with a ``ProgressEvent(kind, path, rows)``; nothing for None."""
    if progress is not None:
        progress(ProgressEvent(kind, path, rows))


# ---------------------------------------------------------------------------------------------
# Planning: inputs, outputs, columns
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilePlan:
    """One input file's scoring plan, from its footer alone (``plan_file``).

    ``input`` and ``output`` paths; ``text_col`` the text column; ``keep`` the input columns
    copied to the output; ``columns`` what is read: the text column, then kept columns not
    yet read; ``schema`` the output's schema, without metadata; ``rows`` the input's rows.
    """

    input: Path
    output: Path
    text_col: str
    keep: tuple[str, ...]
    columns: tuple[str, ...]
    schema: pa.Schema
    rows: int


def output_paths(sources: str | Path | Sequence[str | Path], out: Path) -> list[tuple[Path, Path]]:
    """(input, output) for every input file of ``sources``.

    With a single input file and ``out`` ending in ``.parquet``, ``out`` is the output file;
    otherwise ``out`` is a directory in which each output keeps its input's path relative
    to the inputs' common root (a directory input: that directory; a glob: the deepest
    common parent of its matches) and file name.

    Raises InputError for a missing source; ConfigError for an ``out`` that is a file while
    several inputs need a directory, an input inside ``out``, or an output ``check_outputs``
    refuses.

    Example: ``output_paths("reviews/", Path("scores/"))[0]  # (.../a.parquet, .../a.parquet)``.
    """
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


def prediction_names(model: Model) -> list[str]:
    """The probability columns of ``model``'s outputs: ``score`` (binary) or ``prob_<class>``."""
    classes = model.config.classes
    return ["score"] if len(classes) == 2 else [f"prob_{c}" for c in classes]


def output_columns(model: Model, keep: Sequence[str] = ()) -> list[str]:
    """The output's column names for ``model`` with ``keep`` columns kept.

    Example: ``output_columns(model, ["id"]) == ["id", "score", "label"]`` for a binary model.
    """
    return [*keep, *prediction_names(model), "label"]


def plan_file(
    src: Path,
    dst: Path,
    model: Model,
    text_col: str | None = None,
    keep: Sequence[str] | None = None,
) -> FilePlan:
    """Check one input's columns and derive its output schema (footer only, no data read).

    ``text_col`` None: ``text``, else ``review``; ``keep`` None: ``id`` where the input has
    one, else nothing.

    Raises InputError for a missing text or keep column, or a file that is not Parquet;
    ConfigError for a keep column named like an output column.

    Example: ``plan_file(Path("in/a.parquet"), Path("out/a.parquet"), model).columns``.
    """
    schema, rows = io.parquet_schema(src), io.count_rows([src])
    text_col = io.detect_text_column(schema, text_col, src)
    if keep is None:
        keep = ("id",) if "id" in schema.names else ()
    keep = tuple(keep)
    missing = [c for c in keep if c not in schema.names]
    if missing:
        raise InputError(
            f"keep column {missing[0]!r} not in {src}: columns are {', '.join(schema.names)}"
        )
    produced = [*prediction_names(model), "label"]
    clash = [c for c in keep if c in produced]
    if clash:
        raise ConfigError(
            f"keep column {clash[0]!r} of {src} has the name of an output column "
            f"({', '.join(produced)}): rename it in the input or leave it out of --keep"
        )
    columns = (text_col, *[c for c in keep if c != text_col])
    fields = [schema.field(c) for c in keep]
    fields += [pa.field(name, pa.float32()) for name in prediction_names(model)]
    fields.append(pa.field("label", pa.string()))
    return FilePlan(src, dst, text_col, keep, columns, pa.schema(fields), rows)


def with_metadata(
    schema: pa.Schema, fingerprint: str, text_col: str, threshold: float
) -> pa.Schema:
    """``schema`` with the output metadata: model fingerprint, text column and threshold."""
    return schema.with_metadata(
        {
            META_PREFIX + b"model": fingerprint.encode(),
            META_PREFIX + b"text_col": text_col.encode(),
            META_PREFIX + b"threshold": repr(threshold).encode(),
        }
    )


def is_complete(plan: FilePlan, schema: pa.Schema, weights: Path | None) -> bool:
    """True when ``plan.output`` is a finished, current output of ``plan.input``.

    It must be newer than the input (and than ``weights``, the model's weights file, when
    given), hold the input's row count and ``schema``'s columns, and carry ``schema``'s
    metadata (same model, text column and threshold). A missing or unreadable output is
    not complete.
    """
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
# Predictions into output columns
# ---------------------------------------------------------------------------------------------


def bind_backend(model: Model, backend: str) -> Model:
    """``model`` on the kernel ``backend``: itself, or a model sharing its weights and
    tokenizer on other kernels (folded tables are rebuilt lazily)."""
    from pipeline.model import Model

    if model.backend == backend:
        return model
    return Model(model.config, model.params, tokenizer=model.tokenizer, backend=backend)


def predict(model: Model, texts: pa.Array, where: Any, row_offset: int) -> np.ndarray:
    """Probabilities float32[n, C] for ``texts`` (string or large_string), checked finite and
    in [0, 1]. Raises RunError naming ``where`` and the row (``row_offset`` + its index)."""
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


def label_index(probs: np.ndarray, model: Model, threshold: float) -> np.ndarray:
    """int32[n]: each row's predicted class (binary: the positive class at ``threshold``)."""
    if len(model.config.classes) == 2:
        return (probs[:, 1] >= threshold).astype(np.int32)
    return probs.argmax(axis=1).astype(np.int32)  # ties go to the first class


def null_or_empty(texts: pa.Array) -> np.ndarray:
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


def prediction_columns(probs: np.ndarray, model: Model, threshold: float) -> list[pa.Array]:
    """The output columns after the kept ones, from probabilities float32[n, C]: ``score``
    (binary) or one ``prob_<class>`` per class, then ``label`` (the class names)."""
    if len(model.config.classes) == 2:
        preds = [_f32(probs[:, 1])]
    else:
        preds = [_f32(probs[:, k]) for k in range(probs.shape[1])]
    names = _strings(model.config.classes)
    index = np.ascontiguousarray(label_index(probs, model, threshold), dtype=np.int32)
    labels = names.take(pa.Array.from_buffers(pa.int32(), index.size, [None, pa.py_buffer(index)]))
    return [*preds, labels]
