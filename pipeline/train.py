"""The training loop: data, tokenizer and model built, epochs run, the model saved.

``train`` starts where ``pipeline.starting`` says: the labelled data read and split, the
``Tokenizer`` fitted on the training rows (or a warm start's), word vectors learned from the
training text, or a pretrained encoder (a model for each of its members, their logits
averaged in the end). Then it runs epochs of length-bucketed shuffled minibatches with
Adam (or SGD), gradient clipping and a learning-rate schedule. After each epoch it
validates, keeps the best weights (early stopping on validation loss, when asked) and
writes a checkpoint (``pipeline.checkpoint``) from which ``resume=True`` continues bit for
bit. Then it fits the scores' temperature on the validation rows (or the word n-gram
head's mix with the model, ``pipeline.ngrams``) and, when those rows were held out of the
training data, trains again from the same starting weights on all the rows for the same
epochs (``refit``: the held-out tenth is worth about 0.6 points on IMDB) before saving the
model atomically with ``metrics.json`` and ``history.csv``. Five parts: ``_build``,
``_fit``, ``_keep_and_calibrate``, ``_head``, ``_refit``.

The library prints nothing: pass ``progress`` to receive ``pipeline.events`` events.

Example::

    from pipeline.train import TrainConfig, train
    result = train(["sample_data/reviews.parquet"], "model/",
                   {"cell": "gru", "hidden_dim": 64}, TrainConfig(epochs=3))
    result.metrics["accuracy"]
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from pipeline import io, ngrams, report
from pipeline.batching import length_bucketed_batches
from pipeline.calibration import calibrate, mix_head
from pipeline.checkpoint import (
    CHECKPOINT_VERSION,
    LoopState,
    check_outputs,
    check_resumable,
    checkpoint_dir_for,
    write_checkpoint,
)
from pipeline.config import TrainConfig
from pipeline.dataset import Split, fingerprint_data
from pipeline.errors import ConfigError, RunError
from pipeline.evaluate import evaluate
from pipeline.events import (
    BatchDone,
    DataReady,
    EpochEnd,
    EpochStart,
    HeadFitted,
    ProgressEvent,
    RefitStart,
)
from pipeline.metrics import accuracy, log_loss
from pipeline.model import Model, ensemble
from pipeline.optim import LRSchedule, WeightAverage, clip_global_norm, make_optimizer
from pipeline.runtime import set_threads
from pipeline.starting import Request, starting_point
from pipeline.text import TokenIds
from pipeline.word2vec import load_embeddings

__all__ = ["BatchDone", "DataReady", "EpochEnd", "EpochStart", "TrainConfig", "TrainResult",
           "checkpoint_dir_for", "evaluate", "load_embeddings", "train"]  # fmt: skip


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


# --------------------------------------------------------------------------- train


@dataclass
class _Run:
    """One training run, built by ``_build``: the model and everything ``_fit`` works on."""

    tc: TrainConfig
    model: Model
    split: Split
    train_tokens: TokenIds
    valid_tokens: TokenIds
    optimizer: Any
    schedule: LRSchedule
    average: WeightAverage | None
    class_weights: np.ndarray | None
    rng: np.random.Generator
    best: dict[str, np.ndarray]  # the kept weights of the best epoch so far
    identity: dict[str, Any]  # what a checkpoint must match to be resumed
    ckpt: Path | None  # None: no checkpoints (the refit, an encoder's members after the first)
    coverage: float | None
    loop: LoopState = field(default_factory=LoopState)
    initial: dict[str, np.ndarray] | None = None  # the starting weights, kept for the refit
    refit: bool = False  # this run is a refit
    member: int = 0  # which model of an encoder's members, of ``members``
    members: int = 1

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.split.y_train.size / self.tc.batch_size)


def _save_checkpoint(run: _Run) -> None:
    arrays = {f"param/{k}": v for k, v in run.model.params.items()}
    arrays.update({f"best/{k}": v for k, v in run.best.items()})
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_dict().items()})
    if run.average is not None:
        arrays.update({f"average/{k}": v for k, v in run.average.state_dict().items()})
    if run.initial is not None:
        arrays.update({f"initial/{k}": v for k, v in run.initial.items()})
    state = {
        "version": CHECKPOINT_VERSION,
        **run.identity,
        **run.loop.to_json(),
        "rng": run.rng.bit_generator.state,
    }
    write_checkpoint(run.ckpt, state, arrays, run.model.tokenizer)


def _restore_checkpoint(run: _Run, state: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    ckpt = run.ckpt
    check_resumable(ckpt, state, run.identity)

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    try:
        for k, p in run.model.params.items():
            np.copyto(p, arrays[f"param/{k}"], casting="no")
            np.copyto(run.best[k], arrays[f"best/{k}"], casting="no")
        run.optimizer.load_state_dict(part("optim/"))
        if run.average is not None:
            run.average.load_state_dict(part("average/"))
        if run.initial is not None:
            for k, p in run.initial.items():
                np.copyto(p, arrays[f"initial/{k}"], casting="no")
        run.rng.bit_generator.state = state["rng"]
        run.loop = LoopState.from_json(state)
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
    tokens, y = _whole(run)
    if y.size == 0:
        return math.nan, math.nan
    with _evaluated_weights(run):
        probs = run.model.predict_proba(tokens)
    return log_loss(y, probs), accuracy(y, probs.argmax(axis=1))


def _weights_and_schedule(
    tc: TrainConfig, y_train: np.ndarray, n_classes: int
) -> tuple[np.ndarray | None, LRSchedule]:
    """Class weights ("balanced": inverse frequency) and the learning-rate schedule."""
    class_weights = None
    if tc.class_weights == "balanced":
        counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
        class_weights = np.where(counts > 0, y_train.size / (len(counts) * counts), 0.0)
    steps = tc.epochs * math.ceil(y_train.size / tc.batch_size)
    # a small dataset may have fewer steps than the warm-up asks for: warm up for at most
    # a tenth of the run rather than refuse the defaults
    warmup = min(tc.warmup_steps, steps // 10)
    return class_weights, LRSchedule(tc.lr, warmup, tc.lr_schedule, steps, tc.lr_floor)


def _new_run(
    tc: TrainConfig, model: Model, split: Split, tokens: tuple[TokenIds, TokenIds],
    ckpt: Path | None, coverage: float | None,
) -> _Run:  # fmt: skip
    """A run on ``split`` (its ``tokens``, training and validation) from ``model``'s
    weights: optimizer, schedule, fresh state; ``ckpt`` None: never checkpointed (the
    refit), so no identity is kept."""
    train_tokens, valid_tokens = tokens
    class_weights, schedule = _weights_and_schedule(tc, split.y_train, len(model.config.classes))
    identity = {}
    if ckpt is not None:
        identity = {
            "model_config": model.config.to_dict(),
            "train_config": tc.to_dict(),
            "classes": list(model.config.classes),
            "data_fingerprint": fingerprint_data(train_tokens, split.y_train),
            "valid_fingerprint": fingerprint_data(valid_tokens, split.y_valid),
        }
    return _Run(
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
        identity=identity,
        ckpt=ckpt,
        coverage=coverage,
    )


def _build(req: Request, emit: Callable[[ProgressEvent], None]) -> list[_Run]:
    """Read and split the data, fit (or take) the tokenizer, build the model and the
    optimisation state; restore the checkpoint when resuming. A run per model to train:
    one, or one per member of a pretrained encoder (member k with seed ``seed + k``, not
    checkpointed: ``train`` cannot resume from an encoder)."""
    start = starting_point(req, emit)
    split, tokenizer = start.split, start.tokenizer
    texts = (split.train_texts, split.valid_texts)
    max_len = start.members[0][0].max_len
    tokens = tuple(tokenizer.encode(t).truncate(max_len) for t in texts)
    if not _refits(req.tc, split) and req.tc.ensemble:  # no refit to join to the first model
        raise ConfigError("ensemble needs a refit: validation rows held out, not --valid files")
    runs = []
    for k, (config, params) in enumerate(start.members):
        model = Model(config, params, tokenizer=tokenizer, backend=req.tc.backend)
        tc = dataclasses.replace(req.tc, seed=req.tc.seed + k)
        run = _new_run(tc, model, split, tokens, req.ckpt if k == 0 else None, start.coverage)
        run.member, run.members = k, len(start.members)
        if _refits(tc, split):
            run.initial = {name: p.copy() for name, p in model.params.items()}
        runs.append(run)
    if start.state is not None:
        _restore_checkpoint(runs[0], start.state, start.arrays)
    return runs


def _refits(tc: TrainConfig, split: Split) -> bool:
    """Training runs again on all rows: asked for, and validation rows held out of the data."""
    return tc.refit and split.valid_files is None and split.y_valid.size > 0


def _fit(run: _Run, emit: Callable[[ProgressEvent], None]) -> None:
    """Run the epochs left, validating and checkpointing after each."""
    tc, loop = run.tc, run.loop
    if run.refit:
        emit(RefitStart(int(run.split.y_train.size), tc.epochs, run.member, run.members))
    else:
        emit(DataReady(
            n_train=int(run.split.y_train.size), n_valid=int(run.split.y_valid.size),
            classes=run.model.config.classes, vocab_size=run.model.config.vocab_size,
            epochs=tc.epochs, batches_per_epoch=run.batches_per_epoch,
            start_epoch=loop.epoch, embedding_coverage=run.coverage,
            member=run.member, members=run.members,
        ))  # fmt: skip
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
        if run.ckpt is not None:
            _save_checkpoint(run)
        emit(EpochEnd(
            loop.epoch, tc.epochs, train_loss, valid_loss, valid_acc, row["seconds"],
            row["tokens_per_s"], improved,
        ))  # fmt: skip


def _keep_and_calibrate(runs: list[_Run]) -> tuple[list[int], Model, dict[str, Any]]:
    """Put the weights to keep into each run's model, join the models (one, or the
    ensemble of an encoder's members) and fit the temperature on the validation rows.
    Returns (each run's epoch kept, the joined model, its validation metrics)."""
    kept = [_keep(run) for run in runs]
    run = runs[0]
    first = run.model if len(runs) == 1 else ensemble([r.model for r in runs])
    if run.split.y_valid.size == 0:
        return kept, first, {"n": 0, "note": "no validation rows (valid_frac 0): nothing measured"}
    return kept, first, calibrate(first, *_whole(run), fit=run.tc.calibrate)


def _keep(run: _Run) -> int:
    """Put the weights to keep into the model; returns their epoch. With early stopping on,
    the best epoch's weights (lowest validation loss); with it off (patience 0), the last
    epoch's: the one the learning-rate schedule was planned to end on (Keras'
    restore_best_weights=False). Either is the average when averaging is on."""
    tc, loop, model = run.tc, run.loop, run.model
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
    return kept


def _whole(run: _Run) -> tuple[TokenIds, np.ndarray]:
    """The validation rows each epoch and the calibration are measured on: those no other
    row holds, when the split marked them (SST-2's sentences, not the phrases cut from
    them: users score whole texts), else every validation row."""
    keep = run.split.valid_whole
    if keep is None:
        return run.valid_tokens, run.split.y_valid
    return run.valid_tokens.take(np.flatnonzero(keep)), run.split.y_valid[keep]


def _fit_head(run: _Run, tokens: TokenIds, y: np.ndarray, emit: Callable) -> ngrams.Head:
    t0, bits = time.perf_counter(), ngrams.table_bits(run.model.config.num_outputs)
    scale = run.model.config.ngram_scale
    head = ngrams.fit_head(tokens, y, len(run.split.classes), run.tc.ngrams, bits, scale)
    emit(HeadFitted(run.tc.ngrams, bits, int(y.size), time.perf_counter() - t0))
    return head


def _head(
    run: _Run, first: Model, metrics: dict, emit: Callable
) -> tuple[ngrams.Head, ngrams.Mix, dict]:
    """The n-gram head fitted on the first model's training rows, mixed with ``first`` (the
    first model, or the first models joined) on its validation rows (the mix replaces the
    temperature). The metrics become the mixed model's; the recurrent model's alone stay
    under ``recurrent``."""
    head = _fit_head(run, run.train_tokens, run.split.y_train, emit)
    if run.split.y_valid.size == 0 or not run.tc.calibrate:
        return head, ngrams.Mix(), metrics
    return head, *mix_head(first, head, *_whole(run), metrics)


def _every_row(run: _Run) -> tuple[TokenIds, np.ndarray]:
    """The training rows and the validation rows, tokens and labels (what a refit sees)."""
    split = run.split
    tokens = TokenIds.concat([run.train_tokens, run.valid_tokens])
    return tokens, np.concatenate([split.y_train, split.y_valid])


def _refit(run: _Run, epochs: int, emit: Callable[[ProgressEvent], None]) -> Model:
    """The model trained again from ``run``'s starting weights on its training and
    validation rows together, for ``epochs`` (those the first training kept), with the
    same settings and seed, and the temperature the first model's validation rows fitted.

    Not checkpointed: a run killed here resumes from the first training's last checkpoint
    and starts the refit again, to the same bits."""
    split, first = run.split, run.model
    tc = dataclasses.replace(
        run.tc, epochs=epochs, patience=0, freeze_epochs=min(run.tc.freeze_epochs, epochs - 1)
    )
    texts = pa.chunked_array(
        split.train_texts.chunks + split.valid_texts.chunks, split.train_texts.type
    )
    tokens, y = _every_row(run)  # already encoded
    everything = dataclasses.replace(
        split,
        train_texts=texts,
        y_train=y,
        valid_texts=texts.slice(0, 0),
        y_valid=y[:0],
        valid_whole=None,
    )
    assert run.initial is not None
    config = dataclasses.replace(first.config, temperature=1.0)
    params = {k: v.copy() for k, v in run.initial.items()}
    model = Model(config, params, tokenizer=first.tokenizer, backend=tc.backend)
    again = _new_run(tc, model, everything, (tokens, tokens.take(np.arange(0))), None, run.coverage)
    again.refit, again.member, again.members = True, run.member, run.members
    _fit(again, emit)
    _keep(again)  # the last epoch's weights (or their average)
    model.config = dataclasses.replace(config, temperature=first.config.temperature)
    return model


def _refit_all(
    runs: list[_Run], kept: list[int], first: Model, emit: Callable[[ProgressEvent], None]
) -> tuple[Model, dict[str, int]]:
    """Every run trained again on every row for the epochs it kept, joined (their logits
    averaged; with ``ensemble``, the first models too) at the temperature ``first``, the
    first models joined, was calibrated to; and what the refit was."""
    split = runs[0].split
    models = [_refit(r, max(e, 1), emit) for r, e in zip(runs, kept, strict=True)]
    refit = {"rows": int(split.y_train.size + split.y_valid.size), "epochs": max(kept[0], 1)}
    if runs[0].tc.ensemble:  # the refits and the first models, their logits averaged
        models += [r.model for r in runs]
    if len(models) == 1:
        return models[0], refit
    joined, refit["members"] = ensemble(models), len(models)
    joined.config = dataclasses.replace(joined.config, temperature=first.config.temperature)
    return joined, refit


def _training_info(
    req: Request, run: _Run, kept_epoch: int, refit: dict[str, int] | None
) -> dict[str, Any]:
    """How the model was trained, for its ``config.json``."""
    split, loop = run.split, run.loop
    return {
        "train_config": req.tc.to_dict(),
        "data": [str(p) for p in split.files],
        "valid_data": [str(p) for p in split.valid_files] if split.valid_files else None,
        "validation": split.how,
        "text_col": req.text_col,
        "label_col": req.label_col,
        "n_train": int(split.y_train.size),
        "n_valid": int(split.y_valid.size),
        "data_fingerprint": run.identity["data_fingerprint"],
        "epochs_run": len(loop.history),
        "best_epoch": kept_epoch,
        "stopped_early": loop.stopped,
        "init_from": str(req.init_from) if req.init_from is not None else None,
        "init_embeddings": str(req.init_embeddings) if req.init_embeddings is not None else None,
        "embedding_coverage": run.coverage,
        "refit": refit,
    }


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
    ``TrainConfig.calibrate``), or with ``TrainConfig.ngrams`` an n-gram head is fitted on
    the training rows and mixed with the model on the validation rows; with
    ``TrainConfig.refit`` (the default) and validation rows held out of the data, the model
    (and head) are then trained again on all the rows and keep that temperature and mix
    (with ``TrainConfig.ensemble``, joined to the first model). From an encoder of several
    members (``init_from``), a model is trained on each, member k with seed ``seed + k``
    on the same split, and their logits are averaged before the head is mixed in. It is saved with
    ``metrics.json`` (validation metrics of the first model and head, calibration, refit)
    and ``history.csv``. Returns a ``TrainResult``.

    Raises InputError for unreadable or bad data (null or undeclared labels with file,
    column and row; a single class; fewer rows than one batch; an empty input), ConfigError
    for bad options, an ``out_dir`` that is not a model directory, or an incompatible
    checkpoint, RunError if the loss diverges, OutputError when the model cannot be written.

    Example: ``result = train("train.parquet", "model/", {"cell": "lstm"}, TrainConfig())``.
    """
    tc = train_config or TrainConfig()
    emit = progress or (lambda event: None)
    out_dir = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    ckpt = checkpoint_dir_for(out_dir)
    if init_from is not None and (init_embeddings is not None or resume):
        raise ConfigError("init_from cannot be combined with init_embeddings or resume")
    sources = [src for src in (data_paths, valid_paths) if src is not None]
    inputs = [f for src in sources for f in io.resolve_inputs(src)]
    check_outputs(out_dir, ckpt, inputs, "state.json")
    if tc.threads is not None:
        set_threads(tc.threads)
    req = Request(
        data_paths, valid_paths, dict(model_config_overrides or {}), tc, ckpt, text_col,
        label_col, classes, resume, init_from, init_embeddings,
    )  # fmt: skip
    runs = _build(req, emit)
    for run in runs:
        _fit(run, emit)
    kept, model, metrics = _keep_and_calibrate(runs)
    run, kept_epoch = runs[0], kept[0]
    if tc.ngrams:
        head, mix, metrics = _head(run, model, metrics, emit)
    metrics["best_epoch"], metrics["members"] = kept_epoch, len(runs)
    split, loop, refit = run.split, run.loop, None
    if run.initial is not None:
        model, refit = _refit_all(runs, kept, model, emit)
        if tc.ngrams:  # the head too, on every row; the mix stays the first model's
            head = _fit_head(run, *_every_row(run), emit)
        # the figures above are the first model's, on rows it never saw
        metrics["refit"] = refit
    if tc.ngrams:
        model = ngrams.attach(model, head, mix)
    training_info = _training_info(req, run, kept_epoch, refit)
    metrics["validation"] = split.how
    extra: dict[str, bytes | str] = {
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "history.csv": report.history_csv(loop.history),
    }
    model.save(out_dir, training=training_info, metrics=metrics, extra_files=extra)
    return TrainResult(
        model_dir=out_dir,
        model=model,
        metrics=metrics,
        history=loop.history,
        best_epoch=kept_epoch,
        stopped_early=loop.stopped,
        checkpoint_dir=ckpt,
        embedding_coverage=run.coverage,
    )
