"""Labelled training data: read the text and label columns, check the labels, split.

``read_labelled`` reads the text and label columns of every file (and a group column for
``--valid-group``), labels as strings, refusing nulls, non-integer numbers, empty strings
and labels that differ only in case, with file, column and row. ``load_split`` turns that
into training and validation rows: validation files, no validation (``valid_frac`` 0),
whole groups held out (``batching.group_split``) or a stratified share of the rows in which
a row that repeats or lies inside another (a phrase cut from a sentence) stays on that
row's side (``overlap.containment_groups``) and the validation rows no other row holds are
marked (``Split.valid_whole``): calibration fits and reports on them.

Example::

    split = load_split("train.parquet", None, None, "label", None, TrainConfig())
    split.y_train.size, split.how
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io
from pipeline.batching import group_split, stratified_split
from pipeline.config import TrainConfig
from pipeline.errors import InputError
from pipeline.overlap import containment_groups
from pipeline.text import TokenIds

__all__ = ["MIN_WHOLE_ROWS", "LabelledData", "Split", "fingerprint_data", "label_indices",
           "load_split", "read_labelled"]  # fmt: skip


@dataclass
class LabelledData:
    """The text column, the labels as strings, and where each file's rows start."""

    texts: pa.ChunkedArray
    labels: np.ndarray  # (n,) str
    origin: list[tuple[Path, int]]  # (file, first global row) per file, for error messages
    groups: np.ndarray | None = None  # (n,) str: the --valid-group column, when asked for


def read_labelled(
    paths: Sequence[Path], text_col: str | None, label_col: str, group_col: str | None = None
) -> LabelledData:
    """Text and label columns of every file, labels as strings; InputError on bad labels.
    With ``group_col``, that column too, as strings (InputError on a null)."""
    texts: list[pa.Array] = []
    labels: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    origin: list[tuple[Path, int]] = []
    start = 0
    for path in paths:
        schema = io.parquet_schema(path)
        column = io.detect_text_column(schema, text_col, path)
        for col, option in ((label_col, "--label-col"), (group_col, "--valid-group")):
            if col is not None and col not in schema.names:
                raise InputError(
                    f"{path}: no column '{col}' (columns: {', '.join(schema.names)}): pass {option}"
                )
        wanted = [column, label_col] + ([group_col] if group_col not in (None, column) else [])
        table = io.read_columns([path], wanted, text_col=column)
        origin.append((Path(path), start))
        start += table.num_rows
        texts.extend(table.column(column).cast(pa.large_string()).chunks)
        labels.append(_label_strings(table.column(label_col), path, label_col))
        if group_col is not None:
            groups.append(_group_strings(table.column(group_col), path, group_col))
    if start == 0:
        raise InputError(f"{', '.join(map(str, paths))}: no rows (empty input)")
    text = pa.chunked_array(texts, type=pa.large_string())
    if pc.max(pc.binary_length(text)).as_py() in (None, 0):
        raise InputError(
            f"{', '.join(map(str, paths))}: the text column is null or empty in every row "
            f"(pass --text-col if the text is in another column)"
        )
    return LabelledData(
        text, np.concatenate(labels), origin, np.concatenate(groups) if groups else None
    )


def _group_strings(col: pa.ChunkedArray, path: Path, group_col: str) -> np.ndarray:
    """A group key per row as strings; InputError naming the first null row."""
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise InputError(
            f"{path}: column '{group_col}' is null at row {row} (0-based): every row needs a "
            f"group for --valid-group"
        )
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.cast(pa.string()).to_numpy(zero_copy_only=False).astype(str)


def _label_strings(col: pa.ChunkedArray, path: Path, label_col: str) -> np.ndarray:
    """Labels as strings: integers (and bools) by their decimal value, strings as they are."""
    where = f"{path}: column '{label_col}'"
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise InputError(f"{where} is null at row {row} (0-based): every row needs a label")
    typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return col.cast(pa.int64()).to_numpy().astype(str)
    if pa.types.is_floating(typ):
        values = col.to_numpy()
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{where} has the non-integer label {values[row].item()!r} at row {row} (0-based): "
                f"labels must be integers or strings"
            )
        return values.astype(np.int64).astype(str)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = col.to_numpy(zero_copy_only=False).astype(str)
        empty = np.flatnonzero(values == "")
        if empty.size:
            raise InputError(f"{where} has an empty label at row {int(empty[0])} (0-based)")
        return values
    raise InputError(f"{where} is {typ}, expected integer or string labels: pass --label-col")


def _check_label_case(values: np.ndarray, path: Path, label_col: str) -> None:
    """InputError when two labels differ only in case ('Negative', 'NEGATIVE'): almost always
    a data error that would silently train a class too many."""
    seen: dict[str, str] = {}
    for label in np.unique(values).tolist():
        other = seen.setdefault(label.casefold(), label)
        if other != label:
            raise InputError(
                f"{path}: column '{label_col}' has the labels {other!r} and {label!r}, which "
                f"differ only in case: make them consistent, or pass --classes to keep both"
            )


def _sorted_classes(values: np.ndarray) -> tuple[str, ...]:
    """Distinct labels, numerically sorted when they are all integers ("2" before "10")."""
    distinct = np.unique(values).tolist()
    try:
        return tuple(str(v) for v in sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def label_indices(data: LabelledData, classes: tuple[str, ...], label_col: str) -> np.ndarray:
    """int64 class index per row; InputError naming file, column and row of a label outside."""
    distinct, inverse = np.unique(data.labels, return_inverse=True)
    lookup = {c: k for k, c in enumerate(classes)}
    mapped = np.array([lookup.get(v, -1) for v in distinct.tolist()], dtype=np.int64)
    y = mapped[inverse.reshape(-1)] if distinct.size else np.zeros(0, np.int64)
    bad = np.flatnonzero(y < 0)
    if bad.size:
        row = int(bad[0])
        path, first = next((p, s) for p, s in reversed(data.origin) if s <= row)
        raise InputError(
            f"{path}: column '{label_col}' has the label {str(data.labels[row])!r} at row "
            f"{row - first} (0-based), which is not one of the classes {list(classes)}"
        )
    return y


def fingerprint_data(tokens: TokenIds, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (tokens.offsets, tokens.ids, y.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class Split:
    """Training and validation texts with their class indices."""

    train_texts: pa.ChunkedArray
    y_train: np.ndarray  # (n_train,) int64
    valid_texts: pa.ChunkedArray
    y_valid: np.ndarray  # (n_valid,) int64
    classes: tuple[str, ...]
    files: list[Path]
    valid_files: list[Path] | None
    how: dict[str, Any] | None = None  # how the validation rows were chosen (metrics.json)
    # (n_valid,) bool: the validation rows no other row holds, those validation measures
    # and calibration fits (SST-2's sentences, not their phrases); None: every row
    valid_whole: np.ndarray | None = None


MIN_WHOLE_ROWS = 100  # fewer whole texts than this: calibrate on every validation row


def _lost_class(y: np.ndarray, train_idx: np.ndarray) -> bool:
    """A class of ``y`` has no row among ``train_idx``."""
    return np.unique(y[train_idx]).size < np.unique(y).size


def _split_rows(
    data: LabelledData, y: np.ndarray, tc: TrainConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray | None]:
    """(train rows, validation rows, how, whole) for ``--valid-group``'s groups or, without
    one, a stratified split that keeps each row with any row that repeats or holds it;
    ``whole`` marks the validation rows no other row holds (None: all of them, or too few
    of them to calibrate on)."""
    if data.groups is not None:
        train_idx, valid_idx = group_split(data.groups, y, tc.valid_frac, tc.seed)
        if _lost_class(y, train_idx):
            raise InputError(
                f"column '{tc.valid_group}': its groups leave a class with no training rows "
                f"(holding out {tc.valid_frac} of them): use more groups or another column"
            )
        how = {
            "kind": "group",
            "column": tc.valid_group,
            "train_groups": int(np.unique(data.groups[train_idx]).size),
            "valid_groups": int(np.unique(data.groups[valid_idx]).size),
        }
        return train_idx, valid_idx, how, None
    heads = containment_groups(data.texts)
    contained = int(np.count_nonzero(heads != np.arange(heads.size)))
    if contained == 0 or np.unique(heads).size < 2:
        return *stratified_split(y, tc.valid_frac, tc.seed), {"kind": "stratified"}, None
    train_idx, valid_idx = group_split(heads, y, tc.valid_frac, tc.seed)
    how = {"kind": "stratified", "contained_rows": contained}
    if _lost_class(y, train_idx) or valid_idx.size > 2 * tc.valid_frac * y.size + 1:
        # a few texts repeated many times: too few groups to hold out a share of; the
        # rows one by one, as without repeats (validation then overstates itself)
        return *stratified_split(y, tc.valid_frac, tc.seed), {**how, "groups": "too few"}, None
    whole = heads[valid_idx] == valid_idx
    if whole.all() or whole.sum() < MIN_WHOLE_ROWS:
        return train_idx, valid_idx, how, None
    return train_idx, valid_idx, {**how, "whole_valid_rows": int(whole.sum())}, whole


def load_split(
    data_paths: Any,
    valid_paths: Any,
    text_col: str | None,
    label_col: str,
    classes: tuple[str, ...] | None,
    tc: TrainConfig,
) -> Split:
    """Read, validate labels, and split (or read the validation files)."""
    files = io.resolve_inputs(data_paths)
    group_col = tc.valid_group if valid_paths is None and tc.valid_frac > 0 else None
    data = read_labelled(files, text_col, label_col, group_col)
    if classes is None:
        _check_label_case(data.labels, files[0], label_col)
    declared = classes if classes is not None else _sorted_classes(data.labels)
    y_all = label_indices(data, declared, label_col) if len(declared) >= 2 else None
    if y_all is None or np.unique(y_all).size < 2:
        present = sorted(set(data.labels.tolist()))
        raise InputError(
            f"{files[0]}: column '{label_col}' holds a single class {present}: "
            f"training needs at least two"
        )
    if valid_paths is not None:
        valid_files = io.resolve_inputs(valid_paths)
        vdata = read_labelled(valid_files, text_col, label_col)
        y_valid = label_indices(vdata, declared, label_col)
        split = Split(data.texts, y_all, vdata.texts, y_valid, declared, files, valid_files)
    elif tc.valid_frac == 0:  # train on everything; no validation
        split = Split(data.texts, y_all, data.texts.slice(0, 0), y_all[:0], declared, files, None)
    else:
        train_idx, valid_idx, split_info, whole = _split_rows(data, y_all, tc)
        split = Split(
            data.texts.take(train_idx), y_all[train_idx],
            data.texts.take(valid_idx), y_all[valid_idx], declared, files, None,
            {**split_info, "frac": tc.valid_frac, "seed": tc.seed}, whole,
        )  # fmt: skip
    if split.y_train.size < tc.batch_size:
        raise InputError(
            f"{files[0]}: only {split.y_train.size} training rows, fewer than one batch of "
            f"{tc.batch_size}: add data or lower --batch-size"
        )
    return split
