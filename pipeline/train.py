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

import csv
import dataclasses
import hashlib
import io as _stdio
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import io, kernels
from pipeline.batching import length_bucketed_batches, stratified_split
from pipeline.errors import ConfigError, InputError, RunError
from pipeline.metrics import accuracy, evaluate_probs, log_loss
from pipeline.model import Model, ModelConfig, check_model_target, init_params
from pipeline.optim import SCHEDULES, LRSchedule, clip_global_norm, make_optimizer
from pipeline.text import TokenIds, Tokenizer

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


@dataclass(frozen=True)
class TrainConfig:
    """Training options (model shape options live in ``ModelConfig``).

    Fields: ``epochs``; ``batch_size``; ``lr`` peak learning rate; ``optimizer`` adam|adamw|sgd;
    ``clip_norm`` global gradient-norm limit (0 turns clipping off); ``weight_decay`` decoupled,
    matrices only; ``warmup_steps`` linear warm-up; ``lr_schedule`` constant|linear|cosine
    (decay to ``lr_floor`` * lr at the end of the last epoch); ``patience`` epochs without a
    better validation loss before stopping and restoring the best epoch's weights (0: never
    stop early and keep the last epoch's weights); ``valid_frac`` held-out
    share when no validation files are given; ``seed`` for the split, initialisation and
    shuffling; ``class_weights`` none|balanced; ``num_words`` tokenizer vocabulary size;
    ``threads`` for the kernels (None: leave as is); ``backend`` cpu|reference|cuda.

    Raises ConfigError for invalid values.

    Example: ``TrainConfig(epochs=5, lr=2e-3, lr_schedule="cosine", warmup_steps=100)``.
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    clip_norm: float = 5.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    lr_floor: float = 0.0
    patience: int = 2
    valid_frac: float = 0.1
    seed: int = 0
    class_weights: str = "none"
    num_words: int = 20000
    threads: int | None = None
    backend: str = "cpu"

    def __post_init__(self) -> None:
        ints = {"epochs": 1, "batch_size": 1, "warmup_steps": 0, "patience": 0, "num_words": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer.lower() not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: expected adam, adamw or sgd")
        if not self.clip_norm >= 0 or not self.weight_decay >= 0:
            raise ConfigError("clip_norm and weight_decay must be >= 0")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown lr schedule {self.lr_schedule!r}: expected one of {', '.join(SCHEDULES)}"
            )
        if not 0 <= self.lr_floor <= 1:
            raise ConfigError(f"lr_floor must be in [0, 1], got {self.lr_floor}")
        if not 0 < self.valid_frac < 1:
            raise ConfigError(f"valid_frac must be in (0, 1), got {self.valid_frac}")
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError(f"class_weights must be none or balanced, got {self.class_weights!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.backend not in kernels.BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}: expected one of {', '.join(kernels.BACKENDS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- progress events


@dataclass(frozen=True)
class DataReady:
    """Data read, tokenizer fitted, model built; training is about to start."""

    n_train: int
    n_valid: int
    classes: tuple[str, ...]
    vocab_size: int
    epochs: int
    batches_per_epoch: int
    start_epoch: int  # > 0 when resuming
    embedding_coverage: float | None
    kind: str = "data_ready"


@dataclass(frozen=True)
class EpochStart:
    epoch: int  # 1-based
    epochs: int
    batches: int
    kind: str = "epoch_start"


@dataclass(frozen=True)
class BatchDone:
    epoch: int
    batch: int  # 1-based within the epoch
    batches: int
    loss: float
    tokens_per_s: float
    lr: float
    kind: str = "batch"


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    valid_loss: float
    valid_acc: float
    seconds: float
    tokens_per_s: float
    improved: bool
    kind: str = "epoch_end"


ProgressEvent = DataReady | EpochStart | BatchDone | EpochEnd


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


def _read_labelled(paths: Sequence[Path], text_col: str | None, label_col: str) -> _Labelled:
    """Text and label columns of every file, labels as strings; InputError on bad labels."""
    texts: list[pa.Array] = []
    labels: list[np.ndarray] = []
    origin: list[tuple[Path, int]] = []
    start = 0
    for path in paths:
        schema = io.parquet_schema(path)
        column = io.detect_text_column(schema, text_col, path)
        if label_col not in schema.names:
            raise InputError(
                f"{path}: no column '{label_col}' (columns: {', '.join(schema.names)}): "
                f"pass --label-col"
            )
        table = io.read_columns([path], [column, label_col], text_col=column)
        origin.append((Path(path), start))
        start += table.num_rows
        texts.extend(table.column(column).cast(pa.large_string()).chunks)
        labels.append(_label_strings(table.column(label_col), path, label_col))
    if start == 0:
        raise InputError(f"{', '.join(map(str, paths))}: no rows (empty input)")
    text = pa.chunked_array(texts, type=pa.large_string())
    if pc.max(pc.binary_length(text)).as_py() in (None, 0):
        raise InputError(
            f"{', '.join(map(str, paths))}: the text column is null or empty in every row "
            f"(pass --text-col if the text is in another column)"
        )
    return _Labelled(text, np.concatenate(labels), origin)


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
    data = _read_labelled(files, text_col, label_col)
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
    else:
        train_idx, valid_idx = stratified_split(y_all, tc.valid_frac, tc.seed)
        split = _Split(
            data.texts.take(train_idx), y_all[train_idx],
            data.texts.take(valid_idx), y_all[valid_idx], declared, files, None,
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
    """The warm-start model's config; only dropout and max_len may change."""
    allowed = {"dropout", "max_len"}
    for key, value in overrides.items():
        if key not in allowed and getattr(warm.config, key, value) != value:
            raise ConfigError(
                f"model option {key}={value!r} differs from {source} "
                f"({getattr(warm.config, key)!r}): a warm start keeps the architecture"
            )
    return dataclasses.replace(warm.config, **{k: overrides[k] for k in allowed & set(overrides)})


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
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _LoopState:
        names = [f.name for f in dataclasses.fields(cls)]
        state = cls(**{n: d[n] for n in names})
        state.best_loss = math.inf if state.best_loss is None else float(state.best_loss)
        return state


def _save_checkpoint(ckpt, identity, loop, rng, model, best, optimizer) -> None:
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    arrays.update({f"best/{k}": v for k, v in best.items()})
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    state = {
        "version": CHECKPOINT_VERSION,
        **identity,
        **loop.to_json(),
        "rng": rng.bit_generator.state,
    }
    _write_checkpoint(ckpt, state, arrays, model.tokenizer)


def _restore_checkpoint(ckpt, state, arrays, identity, rng, model, best, optimizer) -> _LoopState:
    _check_resumable(ckpt, state, identity)
    try:
        for k, p in model.params.items():
            np.copyto(p, arrays[f"param/{k}"], casting="no")
            np.copyto(best[k], arrays[f"best/{k}"], casting="no")
        optimizer.load_state_dict(
            {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
        )
        rng.bit_generator.state = state["rng"]
        return _LoopState.from_json(state)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{ckpt}: checkpoint does not fit this run ({e})") from None


def _train_epoch(
    epoch: int,
    tc: TrainConfig,
    model: Model,
    optimizer: Any,
    schedule: LRSchedule,
    tokens: TokenIds,
    y: np.ndarray,
    class_weights: np.ndarray | None,
    rng: np.random.Generator,
    emit: Callable[[ProgressEvent], None],
) -> tuple[float, int]:
    """One pass over shuffled length-bucketed batches; returns (mean loss, tokens seen)."""
    batches = length_bucketed_batches(tokens.lengths, tc.batch_size, rng)
    emit(EpochStart(epoch, tc.epochs, len(batches)))
    loss_sum, tokens_done = 0.0, 0
    for b, idx in enumerate(batches, start=1):
        t0 = time.perf_counter()
        batch = tokens.take(idx)
        lr = schedule(optimizer.step_count)
        # the embedding's gradient as its batch rows: the optimizer's update is the same bits
        # as with the dense [V, E] array, without writing and reading that array every step
        loss, grads = model.loss_and_grads(batch, y[idx], class_weights, rng, sparse_embedding=True)
        if not math.isfinite(loss):
            raise RunError(
                f"training diverged at epoch {epoch}, batch {b} (loss {loss}): "
                f"lower --lr or keep clipping on"
            )
        if tc.clip_norm > 0:
            clip_global_norm(grads, tc.clip_norm)
        optimizer.step(grads, lr)
        loss_sum += loss * idx.size
        tokens_done += batch.nnz
        speed = batch.nnz / max(time.perf_counter() - t0, 1e-9)
        emit(BatchDone(epoch, b, len(batches), loss, speed, lr))
    return loss_sum / y.size, tokens_done


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
    directory to write; ``model_config_overrides`` ``ModelConfig`` fields (not vocab_size or
    classes, which come from the data); ``train_config``; ``text_col`` (auto-detected when
    None); ``label_col``; ``valid_paths`` validation files instead of a held-out split;
    ``classes`` the class names in index order (default: the sorted distinct labels, numeric
    order for integer labels); ``resume`` continue from ``<out_dir>.checkpoint``;
    ``init_from`` a model directory to warm-start from (same architecture and vocabulary);
    ``init_embeddings`` a word2vec/GloVe text file; ``progress`` receives events.

    Returns a ``TrainResult``.

    Raises InputError for unreadable or bad data (null or undeclared labels with file,
    column and row; a single class; fewer rows than one batch; an empty input), ConfigError
    for bad options or an incompatible checkpoint, RunError if the loss diverges.

    Example::

        result = train("train.parquet", "model/", {"cell": "lstm"}, TrainConfig(epochs=2))
    """
    tc = train_config or TrainConfig()
    overrides = dict(model_config_overrides or {})
    emit = progress or (lambda event: None)
    out_dir = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    ckpt = checkpoint_dir_for(out_dir)
    if init_from is not None and (init_embeddings is not None or resume):
        raise ConfigError("init_from cannot be combined with init_embeddings or resume")
    _check_outputs(out_dir, ckpt, data_paths, valid_paths)
    _set_threads(tc.threads)

    # ---- data, tokenizer, model
    warm = Model.load(init_from, backend=tc.backend) if init_from is not None else None
    declared = tuple(str(c) for c in classes) if classes is not None else None
    if warm is not None:
        if declared is not None and declared != warm.config.classes:
            raise ConfigError(f"classes {list(declared)} differ from those of {init_from}")
        declared = warm.config.classes
    split = _load_split(data_paths, valid_paths, text_col, label_col, declared, tc)
    state, arrays = None, {}
    if resume:
        state, arrays, tokenizer = _read_checkpoint(ckpt)
    elif warm is not None:
        tokenizer = warm.tokenizer
    else:
        tokenizer = Tokenizer(num_words=tc.num_words).fit(split.train_texts)
    if warm is not None:
        config = _warm_config(warm, overrides, init_from)
        params = {k: v.copy() for k, v in warm.params.items()}
    else:
        config = _build_config(overrides, tokenizer.vocab_size, split.classes)
        params = init_params(config, tc.seed)
    coverage = None
    if init_embeddings is not None:
        emb = params["embedding"].astype(np.float64)
        coverage = load_embeddings(init_embeddings, tokenizer, emb)
        emb[0] = 0.0
        params["embedding"] = emb.astype(np.float32)
    model = Model(config, params, tokenizer=tokenizer, backend=tc.backend)
    train_tokens = tokenizer.encode(split.train_texts).truncate(config.max_len)
    valid_tokens = tokenizer.encode(split.valid_texts).truncate(config.max_len)
    y_train, y_valid = split.y_train, split.y_valid

    # ---- optimisation state, possibly restored
    class_weights = None
    if tc.class_weights == "balanced":
        counts = np.bincount(y_train, minlength=len(config.classes)).astype(np.float64)
        class_weights = np.where(counts > 0, y_train.size / (len(counts) * counts), 0.0)
    batches_per_epoch = math.ceil(y_train.size / tc.batch_size)
    optimizer = make_optimizer(tc.optimizer, model.params, tc.lr, tc.weight_decay)
    schedule = LRSchedule(
        tc.lr,
        # a small dataset may have fewer steps than the warm-up asks for: warm up for at most
        # a tenth of the run rather than refuse the defaults
        min(tc.warmup_steps, tc.epochs * batches_per_epoch // 10),
        tc.lr_schedule,
        tc.epochs * batches_per_epoch,
        tc.lr_floor,
    )
    rng = np.random.default_rng(tc.seed)
    best = {k: v.copy() for k, v in model.params.items()}
    identity = {
        "model_config": config.to_dict(),
        "train_config": tc.to_dict(),
        "classes": list(config.classes),
        "data_fingerprint": _fingerprint_data(train_tokens, y_train),
        "valid_fingerprint": _fingerprint_data(valid_tokens, y_valid),
    }
    loop = _LoopState()
    if state is not None:
        loop = _restore_checkpoint(ckpt, state, arrays, identity, rng, model, best, optimizer)
        if tc.epochs < loop.epoch:
            raise ConfigError(f"{ckpt}: the checkpoint is at epoch {loop.epoch} > epochs")

    emit(
        DataReady(
            n_train=int(y_train.size), n_valid=int(y_valid.size), classes=config.classes,
            vocab_size=config.vocab_size, epochs=tc.epochs, batches_per_epoch=batches_per_epoch,
            start_epoch=loop.epoch, embedding_coverage=coverage,
        )
    )  # fmt: skip

    # ---- epochs
    while loop.epoch < tc.epochs and not loop.stopped:
        loop.epoch += 1
        epoch = loop.epoch
        t0 = time.perf_counter()
        train_loss, tokens_done = _train_epoch(
            epoch, tc, model, optimizer, schedule, train_tokens, y_train, class_weights, rng, emit
        )
        train_seconds = time.perf_counter() - t0

        model.clear_cache()
        probs = model.predict_proba(valid_tokens)
        valid_loss = log_loss(y_valid, probs)
        valid_acc = accuracy(y_valid, probs.argmax(axis=1))
        improved = valid_loss < loop.best_loss
        if improved:
            loop.best_loss, loop.best_epoch, loop.bad_epochs = valid_loss, epoch, 0
            for k, p in model.params.items():
                np.copyto(best[k], p)
        else:
            loop.bad_epochs += 1
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "seconds": round(time.perf_counter() - t0, 3),
            "tokens_per_s": round(tokens_done / max(train_seconds, 1e-9), 1),
        }
        loop.history.append(row)
        loop.stopped = tc.patience > 0 and loop.bad_epochs >= tc.patience and epoch < tc.epochs
        _save_checkpoint(ckpt, identity, loop, rng, model, best, optimizer)
        emit(
            EpochEnd(
                epoch, tc.epochs, row["train_loss"], valid_loss, valid_acc, row["seconds"],
                row["tokens_per_s"], improved,
            )
        )  # fmt: skip

    # ---- the weights to keep, final metrics, artifact. With early stopping on, the best
    # epoch's (lowest validation loss); with it off (patience 0), the last epoch's: the one
    # the learning-rate schedule was planned to end on (Keras' restore_best_weights=False).
    kept_epoch = loop.best_epoch
    if tc.patience > 0:
        for k, p in model.params.items():
            np.copyto(p, best[k])
    elif loop.history:
        kept_epoch = int(loop.history[-1]["epoch"])
    model.clear_cache()
    metrics = evaluate_probs(y_valid, model.predict_proba(valid_tokens), config.classes)
    metrics["best_epoch"] = kept_epoch
    training_info = {
        "train_config": tc.to_dict(),
        "data": [str(p) for p in split.files],
        "valid_data": [str(p) for p in split.valid_files] if split.valid_files else None,
        "text_col": text_col,
        "label_col": label_col,
        "n_train": int(y_train.size),
        "n_valid": int(y_valid.size),
        "data_fingerprint": identity["data_fingerprint"],
        "epochs_run": len(loop.history),
        "best_epoch": kept_epoch,
        "stopped_early": loop.stopped,
        "init_from": str(init_from) if init_from is not None else None,
        "init_embeddings": str(init_embeddings) if init_embeddings is not None else None,
        "embedding_coverage": coverage,
    }
    extra: dict[str, bytes | str] = {
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "history.csv": _history_csv(loop.history),
    }
    png = _curve_png(loop.history)
    if png is not None:
        extra["training_curve.png"] = png
    model.save(out_dir, training=training_info, metrics=metrics, extra_files=extra)
    return TrainResult(
        model_dir=out_dir,
        model=model,
        metrics=metrics,
        history=loop.history,
        best_epoch=kept_epoch,
        stopped_early=loop.stopped,
        checkpoint_dir=ckpt,
        embedding_coverage=coverage,
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
