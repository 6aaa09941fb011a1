"""The training loop: read labelled Parquet, fit the tokenizer, train, validate, save.

``train`` reads the text and label columns, validates the labels, fits the ``Tokenizer`` on
the training split only, holds out a stratified validation split (or reads ``valid_paths``),
then runs epochs of length-bucketed shuffled minibatches with Adam (or SGD), gradient
clipping and a learning-rate schedule. After each epoch it validates, keeps the best
weights (early stopping on validation loss) and writes a checkpoint next to the output
(``<out_dir>.checkpoint/``) from which ``resume=True`` continues bit for bit. The final
model (best weights) goes to ``out_dir`` atomically, with ``metrics.json``, ``history.csv``
and, when matplotlib is importable, ``training_curve.png``.

The library prints nothing: pass ``progress`` to receive ``DataReady``, ``EpochStart``,
``BatchDone`` and ``EpochEnd`` events.

Example::

    from pipeline.train import TrainConfig, train
    result = train(["sample_data/reviews.parquet"], "model/",
                   {"cell": "gru", "hidden_dim": 64}, TrainConfig(epochs=3))
    result.metrics["accuracy"]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io as _stdio
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, kernels
from pipeline.batching import group_split, length_bucketed_batches, stratified_split
from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import ConfigError, InputError, RunError
from pipeline.events import (
    BatchDone,
    DataReady,
    EpochEnd,
    EpochStart,
    ProgressEvent,
    WordVectorsDone,
)
from pipeline.metrics import accuracy, evaluate_probs, fit_temperature, log_loss
from pipeline.model import Model, check_model_target, init_params, probabilities
from pipeline.optim import (
    LRSchedule,
    WeightAverage,
    clip_global_norm,
    make_optimizer,
)
from pipeline.pretrain import Encoder, is_encoder_dir, load_encoder
from pipeline.text import TokenIds, Tokenizer
from pipeline.word2vec import word_vectors

__all__ = [
    "BatchDone",
    "DataReady",
    "EpochEnd",
    "EpochStart",
    "TrainConfig",
    "TrainResult",
    "checkpoint_dir_for",
    "evaluate",
    "load_embeddings",
    "train",
]

CHECKPOINT_VERSION = 1
# options that may change between a run and its resumption without changing the result
# of the epochs already done
_RESUMABLE_CHANGES = {"epochs", "patience", "threads"}


@dataclass
class TrainResult:
    """What ``train`` produced: the saved model and how training went."""

    model_dir: Path
    model: Model
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    checkpoint_dir: Path
    embedding_coverage: float | None = None


# --------------------------------------------------------------------------- data


@dataclass
class _Labelled:
    texts: pa.ChunkedArray
    labels: np.ndarray  # (n,) str
    origin: list[tuple[Path, int]]  # (file, first global row) per file, for error messages
    groups: np.ndarray | None = None  # (n,) str: the --valid-group column, when asked for


def _read_labelled(
    paths: Sequence[Path], text_col: str | None, label_col: str, group_col: str | None = None
) -> _Labelled:
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
    return _Labelled(
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


def _label_indices(data: _Labelled, classes: tuple[str, ...], label_col: str) -> np.ndarray:
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


def _fingerprint_data(tokens: TokenIds, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (tokens.offsets, tokens.ids, y.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- embeddings


def load_embeddings(
    path: str | Path, tokenizer: Any, embedding: np.ndarray, chunk_lines: int = 50_000
) -> float:
    """Copy pretrained word vectors (word2vec/GloVe text format) into ``embedding`` in place.

    Each line is a word and its vector; an optional first line ``N D`` is skipped. A word
    whose tokenizer encoding is a single in-vocabulary id gets its vector (first occurrence
    wins); all other rows keep their random values, the pad row stays zero.

    Returns the coverage: the share of the vocabulary's words (ids >= 2) that received a vector.

    Raises InputError for a missing file or a vector whose dimension is not the embedding's.

    Example: ``coverage = load_embeddings("glove.6B.100d.txt", tok, model.params["embedding"])``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: embeddings file not found")
    V, E = embedding.shape
    filled = np.zeros(V, dtype=bool)
    filled[:2] = True  # pad and OOV never come from the file

    def flush(words: list[str], rests: list[str], first_line: int) -> None:
        enc = tokenizer.encode(pa.array(words, type=pa.large_string()))
        lens = enc.lengths
        single = np.flatnonzero(lens == 1)
        ids = enc.ids[enc.offsets[single]]
        for k, v in zip(single.tolist(), ids.tolist(), strict=True):
            if v < 2 or v >= V or filled[v]:
                continue
            vec = np.array(rests[k].split(), dtype=np.float64)
            if vec.size != E:
                raise InputError(
                    f"{path}: line {first_line + k + 1} has a {vec.size}-dimensional vector but "
                    f"the model's embed_dim is {E}: use {E}-dimensional vectors or set "
                    f"embed_dim={vec.size}"
                )
            embedding[v] = vec
            filled[v] = True

    words: list[str] = []
    rests: list[str] = []
    first_line = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            parts = line.rstrip("\n").split(" ", 1)
            if len(parts) < 2:
                continue
            if lineno == 0 and parts[0].isdigit() and parts[1].strip().isdigit():
                continue  # word2vec's "N D" header
            if not words:
                first_line = lineno
            words.append(parts[0])
            rests.append(parts[1])
            if len(words) >= chunk_lines:
                flush(words, rests, first_line)
                words, rests = [], []
    if words:
        flush(words, rests, first_line)
    return float(filled[2:].mean()) if V > 2 else 0.0


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    """Where ``train`` keeps the checkpoint of a run writing ``out_dir``: ``<out_dir>.checkpoint``.

    It sits beside the model directory (not inside) so the model can be replaced atomically.
    """
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint")


def _write_checkpoint(
    ckpt: Path, state: dict[str, Any], arrays: Mapping[str, np.ndarray], tokenizer: Any
) -> None:
    """Write a whole new checkpoint directory, swapped in atomically (never half-written)."""
    with io.atomic_dir(ckpt) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        tokenizer.save(tmp / "vocab.json")
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def _check_outputs(out_dir: Path, ckpt: Path, data_paths: Any, valid_paths: Any) -> None:
    """Before any work: the model directory and its checkpoint may only replace what rnnpipe
    wrote there, must not hold the training or validation data, and must be writable."""
    check_model_target(out_dir)
    if os.path.lexists(ckpt) and not (ckpt.is_dir() and (ckpt / "state.json").is_file()):
        raise ConfigError(
            f"{ckpt} exists and is not an rnnpipe checkpoint (no state.json): it is where the "
            f"checkpoint of --out {out_dir.name} goes; move it away or choose another --out"
        )
    for sources in (data_paths, valid_paths):
        if sources is None:
            continue
        for f in io.resolve_inputs(sources):
            for target in (out_dir, ckpt):
                if io.is_inside(f, target):
                    raise ConfigError(
                        f"input {f} lies inside {target}, which training replaces: "
                        f"choose another --out"
                    )
    io.check_writable(out_dir)


def _read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    if not (ckpt / "state.json").is_file():
        raise ConfigError(f"no checkpoint to resume at {ckpt}: run without --resume")
    try:
        state = json.loads((ckpt / "state.json").read_text())
        with np.load(ckpt / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tokenizer = Tokenizer.load(ckpt / "vocab.json")
    except Exception as e:
        raise ConfigError(f"{ckpt}: unreadable checkpoint ({e}): run without --resume") from None
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{ckpt}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}: "
            f"run without --resume"
        )
    return state, arrays, tokenizer


def _check_resumable(ckpt: Path, state: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """ConfigError when the checkpoint was made by a different run than the one asked for."""
    for key, value in now.items():
        saved = state.get(key)
        if key == "train_config":
            saved = {k: v for k, v in (saved or {}).items() if k not in _RESUMABLE_CHANGES}
            value = {k: v for k, v in value.items() if k not in _RESUMABLE_CHANGES}
        if saved != value:
            raise ConfigError(
                f"{ckpt}: the checkpoint was made with a different {key.replace('_', ' ')} "
                f"than this run: run without --resume to start over"
            )


# --------------------------------------------------------------------------- outputs


def _history_csv(history: list[dict[str, float]]) -> str:
    buf = _stdio.StringIO()
    cols = ["epoch", "train_loss", "valid_loss", "valid_acc", "seconds", "tokens_per_s"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({c: row[c] for c in cols})
    return buf.getvalue()


def _curve_png(history: list[dict[str, float]]) -> bytes | None:
    """The loss and accuracy curves as PNG bytes, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax1.plot(epochs, [r["valid_loss"] for r in history], marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax1.legend()
    ax2.plot(epochs, [r["valid_acc"] for r in history], marker="o")
    ax2.set(xlabel="epoch", ylabel="validation accuracy")
    fig.tight_layout()
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- train


def _set_threads(n: int | None) -> None:
    """Apply the kernels' thread count (Numba and BLAS together) when one is asked for."""
    if n is None:
        return
    setter = getattr(kernels, "set_threads", None)
    if setter is None:
        try:
            from pipeline.kernels.threads import set_threads as setter
        except ImportError:
            return
    setter(n)


@dataclass
class _Split:
    """Training and validation texts with their class indices."""

    train_texts: pa.ChunkedArray
    y_train: np.ndarray  # (n_train,) int64
    valid_texts: pa.ChunkedArray
    y_valid: np.ndarray  # (n_valid,) int64
    classes: tuple[str, ...]
    files: list[Path]
    valid_files: list[Path] | None
    how: dict[str, Any] | None = None  # how the validation rows were chosen (metrics.json)


def _load_split(
    data_paths: Any,
    valid_paths: Any,
    text_col: str | None,
    label_col: str,
    classes: tuple[str, ...] | None,
    tc: TrainConfig,
) -> _Split:
    """Read, validate labels, and split (or read the validation files)."""
    files = io.resolve_inputs(data_paths)
    group_col = tc.valid_group if valid_paths is None and tc.valid_frac > 0 else None
    data = _read_labelled(files, text_col, label_col, group_col)
    if classes is None:
        _check_label_case(data.labels, files[0], label_col)
    declared = classes if classes is not None else _sorted_classes(data.labels)
    y_all = _label_indices(data, declared, label_col) if len(declared) >= 2 else None
    if y_all is None or np.unique(y_all).size < 2:
        present = sorted(set(data.labels.tolist()))
        raise InputError(
            f"{files[0]}: column '{label_col}' holds a single class {present}: "
            f"training needs at least two"
        )
    if valid_paths is not None:
        valid_files = io.resolve_inputs(valid_paths)
        vdata = _read_labelled(valid_files, text_col, label_col)
        y_valid = _label_indices(vdata, declared, label_col)
        split = _Split(data.texts, y_all, vdata.texts, y_valid, declared, files, valid_files)
    elif tc.valid_frac == 0:  # train on everything; no validation
        split = _Split(data.texts, y_all, data.texts.slice(0, 0), y_all[:0], declared, files, None)
    else:
        if data.groups is not None:
            train_idx, valid_idx = group_split(data.groups, y_all, tc.valid_frac, tc.seed)
            split_info = {
                "kind": "group",
                "column": tc.valid_group,
                "train_groups": int(np.unique(data.groups[train_idx]).size),
                "valid_groups": int(np.unique(data.groups[valid_idx]).size),
            }
        else:
            train_idx, valid_idx = stratified_split(y_all, tc.valid_frac, tc.seed)
            split_info = {"kind": "stratified"}
        split = _Split(
            data.texts.take(train_idx), y_all[train_idx],
            data.texts.take(valid_idx), y_all[valid_idx], declared, files, None,
            {**split_info, "frac": tc.valid_frac, "seed": tc.seed},
        )  # fmt: skip
    if split.y_train.size < tc.batch_size:
        raise InputError(
            f"{files[0]}: only {split.y_train.size} training rows, fewer than one batch of "
            f"{tc.batch_size}: add data or lower --batch-size"
        )
    return split


def _build_config(
    overrides: Mapping[str, Any], vocab_size: int, classes: tuple[str, ...]
) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown model option {unknown[0]!r}: expected some of {sorted(names)}")
    for fixed in ("vocab_size", "classes"):
        if fixed in overrides:
            raise ConfigError(f"model option {fixed} comes from the data and cannot be set")
    return ModelConfig(**{**overrides, "vocab_size": vocab_size, "classes": classes})


def _warm_config(warm: Model, overrides: Mapping[str, Any], source: Any) -> ModelConfig:
    """The warm-start model's config; only the regularisers and max_len may change, and the
    temperature starts again from 1 (training fits it anew)."""
    allowed = {"dropout", "word_dropout", "embed_dropout", "weight_drop", "max_len"}
    for key, value in overrides.items():
        if key not in allowed and getattr(warm.config, key, value) != value:
            raise ConfigError(
                f"model option {key}={value!r} differs from {source} "
                f"({getattr(warm.config, key)!r}): a warm start keeps the architecture"
            )
    kept = {k: overrides[k] for k in allowed & set(overrides)}
    return dataclasses.replace(warm.config, **kept, temperature=1.0)


def _from_encoder(
    encoder: Encoder, overrides: Mapping[str, Any], classes: tuple[str, ...], seed: int, source
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A classifier on a pretrained encoder: its shape and weights, a new dense layer (and
    pooling, dropout, max_len from ``overrides`` or the defaults)."""
    shape = {
        "cell": encoder.config.cell,
        "embed_dim": encoder.config.embed_dim,
        "hidden_dim": encoder.config.hidden_dim,
        "num_layers": encoder.config.num_layers,
        "bidirectional": encoder.config.bidirectional,
    }
    for key, value in shape.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"model option {key}={overrides[key]!r} differs from the encoder {source} "
                f"({value!r}): a classifier on an encoder keeps its shape"
            )
    config = _build_config({**overrides, **shape}, encoder.config.vocab_size, classes)
    params = init_params(config, seed)  # the dense layer's draws; the encoder's replace theirs
    for name, value in encoder.encoder_params.items():
        params[name] = value.copy()
    return config, params


@dataclass
class _LoopState:
    """Everything besides parameters and optimizer that a checkpoint must carry."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best_loss"] = self.best_loss if math.isfinite(self.best_loss) else None
        d["history"] = [
            {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
            for r in self.history
        ]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _LoopState:
        names = [f.name for f in dataclasses.fields(cls)]
        state = cls(**{n: d[n] for n in names})
        state.best_loss = math.inf if state.best_loss is None else float(state.best_loss)
        state.history = [
            {k: (math.nan if v is None else v) for k, v in r.items()} for r in state.history
        ]
        return state


@dataclass
class _Run:
    """One training run, built by ``_build``: the model and everything ``_fit`` works on."""

    tc: TrainConfig
    model: Model
    split: _Split
    train_tokens: TokenIds
    valid_tokens: TokenIds
    optimizer: Any
    schedule: LRSchedule
    average: WeightAverage | None
    class_weights: np.ndarray | None
    rng: np.random.Generator
    best: dict[str, np.ndarray]  # the kept weights of the best epoch so far
    identity: dict[str, Any]  # what a checkpoint must match to be resumed
    ckpt: Path
    coverage: float | None
    loop: _LoopState = field(default_factory=_LoopState)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.split.y_train.size / self.tc.batch_size)


def _save_checkpoint(run: _Run) -> None:
    arrays = {f"param/{k}": v for k, v in run.model.params.items()}
    arrays.update({f"best/{k}": v for k, v in run.best.items()})
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_dict().items()})
    if run.average is not None:
        arrays.update({f"average/{k}": v for k, v in run.average.state_dict().items()})
    state = {
        "version": CHECKPOINT_VERSION,
        **run.identity,
        **run.loop.to_json(),
        "rng": run.rng.bit_generator.state,
    }
    _write_checkpoint(run.ckpt, state, arrays, run.model.tokenizer)


def _restore_checkpoint(run: _Run, state: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    ckpt = run.ckpt
    _check_resumable(ckpt, state, run.identity)

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    try:
        for k, p in run.model.params.items():
            np.copyto(p, arrays[f"param/{k}"], casting="no")
            np.copyto(run.best[k], arrays[f"best/{k}"], casting="no")
        run.optimizer.load_state_dict(part("optim/"))
        if run.average is not None:
            run.average.load_state_dict(part("average/"))
        run.rng.bit_generator.state = state["rng"]
        run.loop = _LoopState.from_json(state)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{ckpt}: checkpoint does not fit this run ({e})") from None
    if run.tc.epochs < run.loop.epoch:
        raise ConfigError(f"{ckpt}: the checkpoint is at epoch {run.loop.epoch} > epochs")


def _train_epoch(run: _Run, emit: Callable[[ProgressEvent], None]) -> tuple[float, int]:
    """One pass over shuffled length-bucketed batches; returns (mean loss, tokens seen)."""
    tc, y = run.tc, run.split.y_train
    batches = length_bucketed_batches(run.train_tokens.lengths, tc.batch_size, run.rng)
    emit(EpochStart(run.loop.epoch, tc.epochs, len(batches)))
    loss_sum, tokens_done = 0.0, 0
    # a diverging run is caught by its non-finite loss below: NumPy's overflow warnings on
    # the way there would only put noise before that one error line
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for b, idx in enumerate(batches, start=1):
            loss, n_tokens = _train_step(run, batches, b, idx, emit)
            loss_sum += loss * idx.size
            tokens_done += n_tokens
    return loss_sum / y.size, tokens_done


def _train_step(
    run: _Run, batches: list[np.ndarray], b: int, idx: np.ndarray, emit: Callable
) -> tuple[float, int]:
    """One optimizer step on the batch ``idx`` (the ``b``-th); returns (loss, tokens)."""
    tc, model, optimizer, epoch = run.tc, run.model, run.optimizer, run.loop.epoch
    t0 = time.perf_counter()
    batch = run.train_tokens.take(idx)
    lr = run.schedule(optimizer.step_count)
    # the embedding's gradient as its batch rows: the optimizer's update is the same bits
    # as with the dense [V, E] array, without writing and reading that array every step
    y = run.split.y_train[idx]
    loss, grads = model.loss_and_grads(batch, y, run.class_weights, run.rng, sparse_embedding=True)
    if not math.isfinite(loss):
        raise RunError(
            f"training diverged at epoch {epoch}, batch {b} (loss {loss}): "
            f"lower --lr or keep clipping on"
        )
    if tc.clip_norm > 0:
        clip_global_norm(grads, tc.clip_norm)
    optimizer.step(grads, lr, _lr_scales(run))
    if run.average is not None:
        run.average.update(optimizer.step_count)
    speed = batch.nnz / max(time.perf_counter() - t0, 1e-9)
    emit(BatchDone(epoch, b, len(batches), loss, speed, lr))
    return loss, batch.nnz


def _lr_scales(run: _Run) -> dict[str, float] | None:
    """Per-parameter learning-rate factors: the encoder (embedding and recurrent layers) at
    ``encoder_lr``, or frozen (0) during the first ``freeze_epochs`` epochs."""
    tc = run.tc
    if tc.encoder_lr == 1.0 and tc.freeze_epochs == 0:
        return None
    factor = 0.0 if run.loop.epoch <= tc.freeze_epochs else tc.encoder_lr
    return {name: (1.0 if name.startswith("out.") else factor) for name in run.model.params}


@contextlib.contextmanager
def _evaluated_weights(run: _Run) -> Iterator[None]:
    """The weights validation and the saved model use: the average when averaging is on."""
    if run.average is not None:
        run.average.swap()
    run.model.clear_cache()
    try:
        yield
    finally:
        if run.average is not None:
            run.average.swap()
        run.model.clear_cache()


def _validate(run: _Run) -> tuple[float, float]:
    """(log loss, accuracy) of the evaluated weights on the validation rows (NaN: none)."""
    y = run.split.y_valid
    if y.size == 0:
        return math.nan, math.nan
    with _evaluated_weights(run):
        probs = run.model.predict_proba(run.valid_tokens)
    return log_loss(y, probs), accuracy(y, probs.argmax(axis=1))


def _build(
    data_paths: Any,
    valid_paths: Any,
    overrides: Mapping[str, Any],
    tc: TrainConfig,
    ckpt: Path,
    text_col: str | None,
    label_col: str,
    classes: Sequence[str] | None,
    resume: bool,
    init_from: str | Path | None,
    init_embeddings: str | Path | None,
    emit: Callable[[ProgressEvent], None],
) -> _Run:
    """Read and split the data, fit (or take) the tokenizer, build the model and the
    optimisation state; restore the checkpoint when resuming."""
    encoder = None
    if init_from is not None and is_encoder_dir(init_from):
        encoder, init_from_model = load_encoder(init_from), None
    else:
        init_from_model = init_from
    warm = Model.load(init_from_model, backend=tc.backend) if init_from_model is not None else None
    declared = tuple(str(c) for c in classes) if classes is not None else None
    if warm is not None:
        if declared is not None and declared != warm.config.classes:
            raise ConfigError(f"classes {list(declared)} differ from those of {init_from}")
        declared = warm.config.classes
    split = _load_split(data_paths, valid_paths, text_col, label_col, declared, tc)
    state, arrays = None, {}
    if resume:
        state, arrays, tokenizer = _read_checkpoint(ckpt)
    elif warm is not None or encoder is not None:
        tokenizer = (warm or encoder).tokenizer
    else:
        tokenizer = Tokenizer(num_words=tc.num_words).fit(split.train_texts)
    if warm is not None:
        config = _warm_config(warm, overrides, init_from)
        params = {k: v.copy() for k, v in warm.params.items()}
    elif encoder is not None:
        config, params = _from_encoder(encoder, overrides, split.classes, tc.seed, init_from)
    else:
        config = _build_config(overrides, tokenizer.vocab_size, split.classes)
        params = init_params(config, tc.seed)
    coverage = None
    if tc.word_vectors > 0 and state is None and warm is None and encoder is None and (
        init_embeddings is None
    ):  # fmt: skip
        t0 = time.perf_counter()
        text = tokenizer.encode(split.train_texts)  # every token is context, untruncated
        params["embedding"] = word_vectors(
            text, tokenizer.vocab_size, config.embed_dim, tc.word_vectors, tc.seed
        )
        emit(WordVectorsDone(tc.word_vectors, text.nnz, time.perf_counter() - t0))
    if init_embeddings is not None:
        emb = params["embedding"].astype(np.float64)
        coverage = load_embeddings(init_embeddings, tokenizer, emb)
        emb[0] = 0.0
        params["embedding"] = emb.astype(np.float32)
    model = Model(config, params, tokenizer=tokenizer, backend=tc.backend)
    train_tokens = tokenizer.encode(split.train_texts).truncate(config.max_len)
    valid_tokens = tokenizer.encode(split.valid_texts).truncate(config.max_len)
    y_train = split.y_train

    class_weights = None
    if tc.class_weights == "balanced":
        counts = np.bincount(y_train, minlength=len(config.classes)).astype(np.float64)
        class_weights = np.where(counts > 0, y_train.size / (len(counts) * counts), 0.0)
    steps = tc.epochs * math.ceil(y_train.size / tc.batch_size)
    schedule = LRSchedule(
        tc.lr,
        # a small dataset may have fewer steps than the warm-up asks for: warm up for at most
        # a tenth of the run rather than refuse the defaults
        min(tc.warmup_steps, steps // 10),
        tc.lr_schedule,
        steps,
        tc.lr_floor,
    )
    run = _Run(
        tc=tc,
        model=model,
        split=split,
        train_tokens=train_tokens,
        valid_tokens=valid_tokens,
        optimizer=make_optimizer(tc.optimizer, model.params, tc.lr, tc.weight_decay),
        schedule=schedule,
        average=WeightAverage(model.params, tc.average) if tc.average > 0 else None,
        class_weights=class_weights,
        rng=np.random.default_rng(tc.seed),
        best={k: v.copy() for k, v in model.params.items()},
        identity={
            "model_config": config.to_dict(),
            "train_config": tc.to_dict(),
            "classes": list(config.classes),
            "data_fingerprint": _fingerprint_data(train_tokens, y_train),
            "valid_fingerprint": _fingerprint_data(valid_tokens, split.y_valid),
        },
        ckpt=ckpt,
        coverage=coverage,
    )
    if state is not None:
        _restore_checkpoint(run, state, arrays)
    return run


def _fit(run: _Run, emit: Callable[[ProgressEvent], None]) -> None:
    """Run the epochs left, validating and checkpointing after each."""
    tc, loop = run.tc, run.loop
    emit(
        DataReady(
            n_train=int(run.split.y_train.size), n_valid=int(run.split.y_valid.size),
            classes=run.model.config.classes, vocab_size=run.model.config.vocab_size,
            epochs=tc.epochs, batches_per_epoch=run.batches_per_epoch, start_epoch=loop.epoch,
            embedding_coverage=run.coverage,
        )
    )  # fmt: skip
    while loop.epoch < tc.epochs and not loop.stopped:
        loop.epoch += 1
        t0 = time.perf_counter()
        train_loss, tokens_done = _train_epoch(run, emit)
        train_seconds = time.perf_counter() - t0
        valid_loss, valid_acc = _validate(run)
        improved = valid_loss < loop.best_loss
        if improved:
            loop.best_loss, loop.best_epoch, loop.bad_epochs = valid_loss, loop.epoch, 0
            with _evaluated_weights(run):
                for k, p in run.model.params.items():
                    np.copyto(run.best[k], p)
        else:
            loop.bad_epochs += 1
        row = {
            "epoch": loop.epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "seconds": round(time.perf_counter() - t0, 3),
            "tokens_per_s": round(tokens_done / max(train_seconds, 1e-9), 1),
        }
        loop.history.append(row)
        loop.stopped = tc.patience > 0 and loop.bad_epochs >= tc.patience and loop.epoch < tc.epochs
        _save_checkpoint(run)
        emit(
            EpochEnd(
                loop.epoch, tc.epochs, train_loss, valid_loss, valid_acc, row["seconds"],
                row["tokens_per_s"], improved,
            )
        )  # fmt: skip


def _keep_and_calibrate(run: _Run) -> tuple[int, dict[str, Any]]:
    """Put the weights to keep into the model and fit its temperature on the validation
    rows. Returns (the epoch kept, the validation metrics of the final model).

    With early stopping on, the best epoch's weights (lowest validation loss); with it off
    (patience 0), the last epoch's: the one the learning-rate schedule was planned to end on
    (Keras' restore_best_weights=False). Either is the average when averaging is on."""
    tc, loop, model, split = run.tc, run.loop, run.model, run.split
    if tc.patience > 0:
        kept = loop.best_epoch
        for k, p in model.params.items():
            np.copyto(p, run.best[k])
    else:
        kept = int(loop.history[-1]["epoch"]) if loop.history else 0
        if run.average is not None:
            for k, p in model.params.items():
                np.copyto(p, run.average.average[k])
    model.clear_cache()
    if split.y_valid.size == 0:
        return kept, {"n": 0, "note": "no validation rows (valid_frac 0): nothing measured"}
    logits = model.predict_logits(run.valid_tokens)
    before = evaluate_probs(split.y_valid, probabilities(logits), model.config.classes)
    if not tc.calibrate:
        return kept, before
    temperature = fit_temperature(split.y_valid, logits)
    model.config = dataclasses.replace(model.config, temperature=temperature)
    metrics = evaluate_probs(
        split.y_valid, probabilities(logits, temperature), model.config.classes
    )
    metrics["calibration"] = {
        "temperature": temperature,
        "log_loss_before": before["log_loss"],
        "ece_before": before["ece"],
    }
    return kept, metrics


def train(
    data_paths: Any,
    out_dir: str | Path,
    model_config_overrides: Mapping[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    text_col: str | None = None,
    label_col: str = "label",
    valid_paths: Any = None,
    classes: Sequence[str] | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    init_embeddings: str | Path | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> TrainResult:
    """Train a classifier on labelled Parquet and save it to ``out_dir``.

    Parameters: ``data_paths`` file, directory, glob or a list of them; ``out_dir`` the model
    directory to write (new, or an rnnpipe model directory, which is replaced);
    ``model_config_overrides`` ``ModelConfig`` fields (not vocab_size or classes, which come
    from the data); ``train_config``; ``text_col`` (auto-detected when None); ``label_col``;
    ``valid_paths`` validation files instead of a held-out split; ``classes`` the class
    names in index order (default: the sorted distinct labels, numeric order for integer
    labels); ``resume`` continue from ``<out_dir>.checkpoint``; ``init_from`` a model
    directory to warm-start from (same architecture and vocabulary); ``init_embeddings`` a
    word2vec/GloVe text file; ``progress`` receives events.

    After the last epoch the model's temperature is fitted on the validation rows (see
    ``TrainConfig.calibrate``) and the model is saved with ``metrics.json`` (validation
    metrics after calibration, and before it under ``calibration``) and ``history.csv``.

    Returns a ``TrainResult``.

    Raises InputError for unreadable or bad data (null or undeclared labels with file,
    column and row; a single class; fewer rows than one batch; an empty input), ConfigError
    for bad options, an ``out_dir`` that is not a model directory, or an incompatible
    checkpoint, RunError if the loss diverges, OutputError when the model cannot be written.

    Example::

        result = train("train.parquet", "model/", {"cell": "lstm"}, TrainConfig(epochs=2))
    """
    tc = train_config or TrainConfig()
    emit = progress or (lambda event: None)
    out_dir = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    ckpt = checkpoint_dir_for(out_dir)
    if init_from is not None and (init_embeddings is not None or resume):
        raise ConfigError("init_from cannot be combined with init_embeddings or resume")
    _check_outputs(out_dir, ckpt, data_paths, valid_paths)
    _set_threads(tc.threads)

    run = _build(
        data_paths, valid_paths, dict(model_config_overrides or {}), tc, ckpt, text_col,
        label_col, classes, resume, init_from, init_embeddings, emit,
    )  # fmt: skip
    _fit(run, emit)
    kept_epoch, metrics = _keep_and_calibrate(run)
    metrics["best_epoch"] = kept_epoch
    split, loop = run.split, run.loop
    training_info = {
        "train_config": tc.to_dict(),
        "data": [str(p) for p in split.files],
        "valid_data": [str(p) for p in split.valid_files] if split.valid_files else None,
        "validation": split.how,
        "text_col": text_col,
        "label_col": label_col,
        "n_train": int(split.y_train.size),
        "n_valid": int(split.y_valid.size),
        "data_fingerprint": run.identity["data_fingerprint"],
        "epochs_run": len(loop.history),
        "best_epoch": kept_epoch,
        "stopped_early": loop.stopped,
        "init_from": str(init_from) if init_from is not None else None,
        "init_embeddings": str(init_embeddings) if init_embeddings is not None else None,
        "embedding_coverage": run.coverage,
    }
    metrics["validation"] = split.how
    extra: dict[str, bytes | str] = {
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "history.csv": _history_csv(loop.history),
    }
    png = _curve_png(loop.history)
    if png is not None:
        extra["training_curve.png"] = png
    run.model.save(out_dir, training=training_info, metrics=metrics, extra_files=extra)
    return TrainResult(
        model_dir=out_dir,
        model=run.model,
        metrics=metrics,
        history=loop.history,
        best_epoch=kept_epoch,
        stopped_early=loop.stopped,
        checkpoint_dir=ckpt,
        embedding_coverage=run.coverage,
    )


def evaluate(
    data_paths: Any,
    model: Model,
    text_col: str | None = None,
    label_col: str = "label",
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Score labelled Parquet with ``model`` and return ``metrics.evaluate_probs``'s report.

    Labels are matched to the model's class names as strings (integer labels by their
    decimal value). Raises InputError for unreadable data, null labels or labels the model
    does not know (naming file, column and row).

    Example: ``report = evaluate("test.parquet", Model.load("model/"))``.
    """
    files = io.resolve_inputs(data_paths)
    data = _read_labelled(files, text_col, label_col)
    y = _label_indices(data, model.config.classes, label_col)
    probs = model.predict_proba(model.encode(data.texts), batch_size=batch_size)
    return evaluate_probs(y, probs, model.config.classes)
