"""The training loop: data, tokenizer and model built, epochs run, the model saved.

``train`` reads and splits the labelled data (``pipeline.dataset``), fits the ``Tokenizer``
on the training rows (or takes a warm start's), learns word vectors from the training
text (``pipeline.word2vec``), then runs epochs of length-bucketed shuffled minibatches with
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
    read_checkpoint,
    write_checkpoint,
)
from pipeline.config import ModelConfig, TrainConfig
from pipeline.dataset import Split, fingerprint_data, load_split
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
    WordVectorsDone,
)
from pipeline.metrics import accuracy, log_loss
from pipeline.model import Model, ensemble, init_params
from pipeline.optim import LRSchedule, WeightAverage, clip_global_norm, make_optimizer
from pipeline.pretrain import Encoder, is_encoder_dir, load_encoder
from pipeline.runtime import set_threads
from pipeline.text import TokenIds, Tokenizer
from pipeline.word2vec import load_embeddings, word_vectors

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
    ckpt: Path | None  # None: no checkpoints (the refit)
    coverage: float | None
    loop: LoopState = field(default_factory=LoopState)
    initial: dict[str, np.ndarray] | None = None  # the starting weights, kept for the refit

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


@dataclass(frozen=True)
class _Request:
    """What ``train`` was asked for, as its arguments say."""

    data_paths: Any
    valid_paths: Any
    overrides: Mapping[str, Any]
    tc: TrainConfig
    ckpt: Path
    text_col: str | None
    label_col: str
    classes: Sequence[str] | None
    resume: bool
    init_from: str | Path | None
    init_embeddings: str | Path | None


def _starting_point(
    req: _Request, emit: Callable[[ProgressEvent], None]
) -> tuple[Split, Tokenizer, ModelConfig, dict[str, np.ndarray], float | None, Any, Any]:
    """The split data, the tokenizer, the model config and its first weights (a warm
    start's, an encoder's, word vectors or fresh), and a checkpoint's state when resuming."""
    tc, overrides, init_from, init_embeddings = (
        req.tc, req.overrides, req.init_from, req.init_embeddings
    )  # fmt: skip
    encoder = None
    if init_from is not None and is_encoder_dir(init_from):
        encoder, init_from_model = load_encoder(init_from), None
    else:
        init_from_model = init_from
    warm = Model.load(init_from_model, backend=tc.backend) if init_from_model is not None else None
    warm = warm.members()[0] if warm is not None else None  # an ensemble: its first member
    declared = tuple(str(c) for c in req.classes) if req.classes is not None else None
    if warm is not None:
        if declared is not None and declared != warm.config.classes:
            raise ConfigError(f"classes {list(declared)} differ from those of {init_from}")
        declared = warm.config.classes
    split = load_split(req.data_paths, req.valid_paths, req.text_col, req.label_col, declared, tc)
    state, arrays = None, {}
    if req.resume:
        state, arrays, tokenizer = read_checkpoint(req.ckpt)
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
    return split, tokenizer, config, params, coverage, state, arrays


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


def _build(req: _Request, emit: Callable[[ProgressEvent], None]) -> _Run:
    """Read and split the data, fit (or take) the tokenizer, build the model and the
    optimisation state; restore the checkpoint when resuming."""
    split, tokenizer, config, params, coverage, state, arrays = _starting_point(req, emit)
    model = Model(config, params, tokenizer=tokenizer, backend=req.tc.backend)
    texts = (split.train_texts, split.valid_texts)
    tokens = tuple(tokenizer.encode(t).truncate(config.max_len) for t in texts)
    run = _new_run(req.tc, model, split, tokens, req.ckpt, coverage)
    if _refits(req.tc, split):
        run.initial = {k: v.copy() for k, v in model.params.items()}
    elif req.tc.ensemble:  # no refit to join to the first model
        raise ConfigError("ensemble needs a refit: validation rows held out, not --valid files")
    if state is not None:
        _restore_checkpoint(run, state, arrays)
    return run


def _refits(tc: TrainConfig, split: Split) -> bool:
    """Training runs again on all rows: asked for, and validation rows held out of the data."""
    return tc.refit and split.valid_files is None and split.y_valid.size > 0


def _fit(run: _Run, emit: Callable[[ProgressEvent], None]) -> None:
    """Run the epochs left, validating and checkpointing after each."""
    tc, loop = run.tc, run.loop
    if run.ckpt is None:
        emit(RefitStart(int(run.split.y_train.size), tc.epochs))
    else:
        emit(DataReady(
            n_train=int(run.split.y_train.size), n_valid=int(run.split.y_valid.size),
            classes=run.model.config.classes, vocab_size=run.model.config.vocab_size,
            epochs=tc.epochs, batches_per_epoch=run.batches_per_epoch,
            start_epoch=loop.epoch, embedding_coverage=run.coverage,
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
    return kept, calibrate(model, *_whole(run), fit=tc.calibrate)


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


def _head(run: _Run, metrics: dict, emit: Callable) -> tuple[ngrams.Head, ngrams.Mix, dict]:
    """The n-gram head fitted on the first model's training rows, mixed with the model on
    its validation rows (the mix replaces the temperature). The metrics become the mixed
    model's; the recurrent model's alone stay under ``recurrent``."""
    head = _fit_head(run, run.train_tokens, run.split.y_train, emit)
    if run.split.y_valid.size == 0 or not run.tc.calibrate:
        return head, ngrams.Mix(), metrics
    return head, *mix_head(run.model, head, *_whole(run), metrics)


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
    _fit(again, emit)
    _keep_and_calibrate(again)  # the last epoch's weights (or their average); no rows left
    model.config = dataclasses.replace(config, temperature=first.config.temperature)
    return model


def _training_info(
    req: _Request, run: _Run, kept_epoch: int, refit: dict[str, int] | None
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
    (with ``TrainConfig.ensemble``, joined to the first model). It is saved with
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

    req = _Request(
        data_paths, valid_paths, dict(model_config_overrides or {}), tc, ckpt, text_col,
        label_col, classes, resume, init_from, init_embeddings,
    )  # fmt: skip
    run = _build(req, emit)
    _fit(run, emit)
    kept_epoch, metrics = _keep_and_calibrate(run)
    if tc.ngrams:
        head, mix, metrics = _head(run, metrics, emit)
    metrics["best_epoch"] = kept_epoch
    split, loop, model, refit = run.split, run.loop, run.model, None
    if run.initial is not None:
        epochs = max(kept_epoch, 1)
        model = _refit(run, epochs, emit)
        refit = {"rows": int(split.y_train.size + split.y_valid.size), "epochs": epochs}
        if tc.ensemble:  # the refit and the first model, their logits averaged
            model, refit["members"] = ensemble([model, run.model]), 2
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
