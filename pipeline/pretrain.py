"""Self-supervised pretraining: a language model over unlabeled reviews warms up the encoder.

``pretrain`` fits a tokenizer on the unlabeled text, then trains the encoder (embedding and
recurrent layers, ``pipeline.encoder``) to predict every next token from the forward
states and, for a bidirectional encoder, every previous token from the backward states,
with a sampled softmax (``pipeline.lm``). The result is an *encoder directory* that
``train(..., init_from=ENCODER)`` turns into a classifier: its tokenizer, embedding and
recurrent layers, with a new pooling and dense layer on top (Dai & Le 2015; ULMFiT,
Howard & Ruder 2018).

Memory stays bounded whatever the input size: the text is read in record batches and
tokenized once into a token store (``tokens.i32``/``offsets.i64``, memory-mapped, beside
the checkpoint), from which every epoch draws shuffled windows of at most ``max_len``
tokens (a longer review gives several windows). A small held-out share of the reviews
measures perplexity after every epoch (full softmax). A checkpoint after every epoch lets
``resume=True`` continue bit for bit.

Example::

    from pipeline.pretrain import EncoderConfig, PretrainConfig, pretrain
    pretrain(["imdb_unsup.parquet", "imdb_train.parquet"], "enc/",
             EncoderConfig(cell="gru", hidden_dim=128), PretrainConfig(epochs=4))
    # then: train("imdb_train.parquet", "model/", init_from="enc/")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import io
from pipeline.batching import length_bucketed_batches
from pipeline.checkpoint import check_outputs, read_state_dir, write_checkpoint
from pipeline.config import EncoderConfig, PretrainConfig
from pipeline.encoder import (
    encoder_backward,
    encoder_forward,
    encoder_shapes,
    init_encoder_params,
    member_name,
)
from pipeline.errors import ConfigError, InputError, ModelFormatError, RunError
from pipeline.events import BatchDone, EpochStart, PretrainEpochEnd, PretrainReady, WordVectorsDone
from pipeline.kernels import get_backend
from pipeline.lm import UnigramSampler, full_softmax_nll, sampled_softmax
from pipeline.optim import LRSchedule, RowGrad, clip_global_norm, make_optimizer
from pipeline.runtime import set_threads
from pipeline.text import PAD_ID, TokenIds, Tokenizer
from pipeline.word2vec import word_vectors

__all__ = [
    "ENCODER_KIND",
    "Encoder",
    "EncoderConfig",
    "PretrainConfig",
    "PretrainResult",
    "is_encoder_dir",
    "load_encoder",
    "pretrain",
]

ENCODER_KIND = "rnnpipe-encoder"
ENCODER_FORMAT_VERSION = 2  # 2: several members; one member is still written as version 1
CHECKPOINT_VERSION = 1
_READ_ROWS = 4096  # rows per record batch while building the token store


# ------------------------------------------------------------------------------ the artifact


@dataclass
class Encoder:
    """A pretrained encoder: its config, parameters (encoder and language-model heads) and
    tokenizer. With ``members`` > 1 it holds that many encoders of one shape on one
    tokenizer, member k's parameters named as ``pipeline.encoder.member_name`` says.
    ``member_params(k)`` are the ones a classifier takes over."""

    config: EncoderConfig
    params: dict[str, np.ndarray]
    tokenizer: Tokenizer
    info: dict[str, Any] = field(default_factory=dict)
    members: int = 1

    def member_params(self, k: int = 0) -> dict[str, np.ndarray]:
        """Member ``k``'s embedding and recurrent layers, under a single encoder's names."""
        return {name: self.params[member_name(k, name)] for name in encoder_shapes(self.config)}

    @property
    def encoder_params(self) -> dict[str, np.ndarray]:
        return self.member_params(0)


def _head_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for d in config.directions:
        shapes[f"lm.{d}.W"] = (config.vocab_size, config.hidden_dim)
        shapes[f"lm.{d}.b"] = (config.vocab_size,)
    return shapes


def _all_shapes(config: EncoderConfig, members: int = 1) -> dict[str, tuple[int, ...]]:
    one = {**encoder_shapes(config), **_head_shapes(config)}
    return {member_name(k, n): shape for k in range(members) for n, shape in one.items()}


def is_encoder_dir(path: str | Path) -> bool:
    """True when ``path`` holds an encoder written by ``pretrain``."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == ENCODER_KIND


def _save_encoder(directory: Path, encoder: Encoder) -> None:
    from pipeline.model import check_model_target

    check_model_target(directory)
    config = {
        "format_version": ENCODER_FORMAT_VERSION if encoder.members > 1 else 1,
        "kind": ENCODER_KIND,
        "members": encoder.members,
        "encoder": encoder.config.to_dict(),
        "tokenizer": encoder.tokenizer.to_config(),
        "pretraining": encoder.info,
    }
    with io.atomic_dir(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
        encoder.tokenizer.save(tmp / "vocab.json")
        np.savez(tmp / "weights.npz", **encoder.params)


def load_encoder(directory: str | Path) -> Encoder:
    """Load and validate an encoder directory (``pretrain``'s output).

    Raises ModelFormatError (one line naming the directory and the problem) for anything
    missing, of another version, or of the wrong shape.

    Example: ``enc = load_encoder("enc/"); enc.config.hidden_dim``.
    """
    directory = Path(directory)

    def fail(what: str) -> ModelFormatError:
        return ModelFormatError(f"{directory}: {what}")

    if not is_encoder_dir(directory):
        raise fail("not an rnnpipe encoder directory (no config.json of kind rnnpipe-encoder)")
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if raw.get("format_version") not in (1, ENCODER_FORMAT_VERSION):
        raise fail(f"encoder format_version {raw.get('format_version')!r} is not supported")
    members = raw.get("members", 1)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise fail(f"members must be a positive integer, got {members!r}")
    try:
        config = EncoderConfig.from_dict(raw.get("encoder") or {})
        tokenizer = Tokenizer.load(directory / "vocab.json")
    except (ConfigError, OSError, ValueError, KeyError, TypeError) as e:
        raise fail(f"bad encoder config or vocabulary: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise fail(f"vocab.json has {tokenizer.vocab_size} ids, the config {config.vocab_size}")
    try:
        with np.load(directory / "weights.npz", allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    except Exception as e:  # zip, header and pickle errors all mean a broken file
        raise fail(f"cannot read weights.npz: {e}") from None
    shapes = _all_shapes(config, members)
    if set(params) != set(shapes):
        raise fail(f"weights.npz holds {sorted(params)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        a = params[name]
        if a.shape != shape or a.dtype != np.float32 or not np.all(np.isfinite(a)):
            raise fail(
                f"weight {name!r} is {a.dtype}{list(a.shape)}, expected float32{list(shape)}"
            )
    return Encoder(config, params, tokenizer, dict(raw.get("pretraining") or {}), members)


# ------------------------------------------------------------------------------ token store


@dataclass
class _Store:
    """The pretraining text as token ids on disk, memory-mapped: ``offsets`` int64[n+1] and
    ``ids`` int32[nnz] of every review, ``valid`` bool[n] the held-out ones, ``counts``
    float64[V] how often each id occurs in the training reviews."""

    offsets: np.ndarray
    ids: np.ndarray
    valid: np.ndarray
    counts: np.ndarray

    def windows(self, max_len: int, valid: bool) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of every window of at most ``max_len`` tokens of the training
        (or held-out) reviews: a longer review is cut into consecutive windows."""
        lens = np.diff(self.offsets)
        keep = np.flatnonzero((self.valid == valid) & (lens >= 2))
        pieces = -(-lens[keep] // max_len)
        review = np.repeat(keep, pieces)
        k = np.arange(review.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = self.offsets[review] + k * max_len
        ends = np.minimum(starts + max_len, self.offsets[review + 1])
        ok = ends - starts >= 2  # a window needs a token to predict
        return starts[ok], (ends - starts)[ok]

    def gather(self, starts: np.ndarray, lens: np.ndarray) -> TokenIds:
        offsets = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        seq = np.repeat(np.arange(lens.size), lens)
        src = starts[seq] + (np.arange(offsets[-1]) - offsets[:-1][seq])
        return TokenIds(offsets, np.asarray(self.ids[src]))


def _text_column(path: Path, text_col: str | None) -> str:
    return io.detect_text_column(io.parquet_schema(path), text_col, path)


def _build_store(
    files: Sequence[Path], text_col: str | None, tokenizer: Tokenizer, folder: Path
) -> None:
    """Tokenize every review once into ``folder`` (ids, offsets), one record batch at a
    time (bounded memory); ``_open_store`` maps it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tokens.i32", "wb") as f_ids, open(folder / "lengths.i64", "wb") as f_len:
        for path in files:
            col = _text_column(path, text_col)
            for fb in io.iter_batches([path], [col], batch_rows=_READ_ROWS, text_col=col):
                tokens = tokenizer.encode(fb.batch.column(0))
                f_ids.write(tokens.ids.tobytes())
                f_len.write(tokens.lengths.astype(np.int64).tobytes())
    lens = np.fromfile(folder / "lengths.i64", dtype=np.int64)
    offsets = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    (folder / "lengths.i64").unlink()


# ------------------------------------------------------------------------------ training


@dataclass
class PretrainResult:
    """What ``pretrain`` produced: the encoder directory, the encoder and its history (one
    dict per epoch: epoch, train_loss, perplexity per direction, seconds, tokens_per_s; and
    member, the member's index, when there are several)."""

    encoder_dir: Path
    encoder: Encoder
    history: list[dict[str, Any]]
    checkpoint_dir: Path


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    """``<out_dir>.checkpoint``: the token store and the last epoch's state."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint")


def _fingerprint_files(files: Sequence[Path], text_col: str | None) -> str:
    h = hashlib.sha256(json.dumps(text_col).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _init_params(ec: EncoderConfig, counts: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = init_encoder_params(ec, rng)
    # the head starts from the unigram distribution: its bias is log frequency
    log_freq = np.log((counts + 1.0) / (counts.sum() + counts.size))
    log_freq[PAD_ID] = -30.0
    for d in ec.directions:
        params[f"lm.{d}.W"] = rng.uniform(-0.05, 0.05, size=(ec.vocab_size, ec.hidden_dim))
        params[f"lm.{d}.b"] = log_freq.copy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def _positions(offsets: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions whose state predicts a token, that token's position): forward, every
    token but each window's last predicts the next; backward, every token but the first
    predicts the previous."""
    nnz = int(offsets[-1])
    edge = np.zeros(nnz, dtype=bool)
    lens = np.diff(offsets)
    ran = lens > 0
    if direction == "fwd":
        edge[offsets[1:][ran] - 1] = True
        pos = np.flatnonzero(~edge)
        return pos, pos + 1
    edge[offsets[:-1][ran]] = True
    pos = np.flatnonzero(~edge)
    return pos, pos - 1


def _lm_step(
    ec: EncoderConfig,
    params: dict[str, np.ndarray],
    kernels: Any,
    batch: TokenIds,
    sampler: UnigramSampler,
    samples: int,
    rng: np.random.Generator,
) -> tuple[float, dict[str, Any]]:
    """Loss (mean over directions) and every parameter's gradient for one batch."""
    hs, cache = encoder_forward(ec, params, kernels, batch, training=True, rng=rng)
    cand, log_q, tries = sampler.draw(rng, samples)
    grads: dict[str, Any] = {}
    dhs: dict[str, np.ndarray | None] = {}
    total = 0.0
    scale = 1.0 / len(ec.directions)
    for d in ec.directions:
        pos, tgt = _positions(batch.offsets, d)
        targets = batch.ids[tgt].astype(np.int64)
        W, b = params[f"lm.{d}.W"], params[f"lm.{d}.b"]
        loss, g = sampled_softmax(
            hs[d][pos], targets, W, b, cand, log_q, sampler.log_q_of(targets, tries)
        )
        total += loss * scale
        dh = np.zeros_like(hs[d])
        dh[pos] = g.dh * scale
        dhs[d] = dh
        grads[f"lm.{d}.W"] = RowGrad(g.rows, np.ascontiguousarray(g.dW * scale, W.dtype), W.shape)
        db = np.zeros_like(b)
        db[g.rows] = g.db * scale
        grads[f"lm.{d}.b"] = db
    finals = {d: None for d in ec.directions}
    grads.update(encoder_backward(ec, params, kernels, cache, dhs, finals, sparse_embedding=True))
    return total, grads


def _perplexity(
    ec: EncoderConfig, params: dict[str, np.ndarray], kernels: Any, store: _Store
) -> dict[str, float]:
    """Held-out perplexity per direction, full softmax (NaN without held-out reviews)."""
    starts, lens = store.windows(ec.max_len, valid=True)
    if starts.size == 0:
        return {d: math.nan for d in ec.directions}
    nll = dict.fromkeys(ec.directions, 0.0)
    count = 0
    for a in range(0, starts.size, 64):
        batch = store.gather(starts[a : a + 64], lens[a : a + 64])
        hs, _ = encoder_forward(ec, params, kernels, batch, training=False)
        for d in ec.directions:
            pos, tgt = _positions(batch.offsets, d)
            nll[d] += full_softmax_nll(
                hs[d][pos], batch.ids[tgt].astype(np.int64), params[f"lm.{d}.W"],
                params[f"lm.{d}.b"],
            )  # fmt: skip
        count += int(batch.nnz - (np.diff(batch.offsets) > 0).sum())
    return {d: float(math.exp(min(nll[d] / max(count, 1), 700.0))) for d in ec.directions}


@dataclass
class _LMRun:
    """One pretraining run: what every epoch works on."""

    ec: EncoderConfig
    pc: PretrainConfig
    params: dict[str, np.ndarray]
    kernels: Any
    store: _Store
    starts: np.ndarray  # (windows,) first token of each training window
    lens: np.ndarray  # (windows,)
    sampler: UnigramSampler
    optimizer: Any
    schedule: LRSchedule
    rng: np.random.Generator
    identity: dict[str, Any]
    ckpt: Path
    tokenizer: Tokenizer
    member: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _tokenized(
    files: Sequence[Path], text_col: str | None, ckpt: Path, stamp: dict[str, Any],
    pc: PretrainConfig, resume: bool,
) -> tuple[Any, Any, Tokenizer]:  # fmt: skip
    """The tokenizer, and the token store beside the checkpoint: built once (fit, then
    tokenize every review), or taken from the checkpoint when resuming, with the first
    member's last epoch's state and arrays."""
    state = arrays = None
    if resume:
        state, arrays, tokenizer = _read_state(ckpt, stamp)
    else:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        tokenizer = Tokenizer(num_words=pc.num_words)
        tokenizer.fit(
            fb.batch.column(0)
            for f in files
            for fb in io.iter_batches([f], [_text_column(f, text_col)], batch_rows=_READ_ROWS,
                                      text_col=_text_column(f, text_col))
        )  # fmt: skip
        if tokenizer.vocab_size < 3:
            raise InputError(f"{files[0]}: no words to learn from (every text is empty)")
        _build_store(files, text_col, tokenizer, ckpt / "store")
        io.atomic_write_text(ckpt / "stamp.json", json.dumps(stamp) + "\n")
    return state, arrays, tokenizer


def _lm_epoch(run: _LMRun, emit: Callable[[Any], None]) -> dict[str, Any]:
    """One pass over shuffled windows, then held-out perplexity; returns the history row."""
    run.epoch += 1
    epoch, pc, optimizer = run.epoch, run.pc, run.optimizer
    t0 = time.perf_counter()
    batches = length_bucketed_batches(run.lens, pc.batch_size, run.rng)
    emit(EpochStart(epoch, pc.epochs, len(batches)))
    loss_sum, tokens_done = 0.0, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for b, idx in enumerate(batches, start=1):
            t1 = time.perf_counter()
            batch = run.store.gather(run.starts[idx], run.lens[idx])
            lr = run.schedule(optimizer.step_count)
            loss, grads = _lm_step(
                run.ec, run.params, run.kernels, batch, run.sampler, pc.samples, run.rng
            )
            if not math.isfinite(loss):
                raise RunError(
                    f"pretraining diverged at epoch {epoch}, batch {b} (loss {loss}): lower --lr"
                )
            if pc.clip_norm > 0:
                clip_global_norm(grads, pc.clip_norm)
            optimizer.step(grads, lr)
            loss_sum += loss
            tokens_done += batch.nnz
            speed = batch.nnz / max(time.perf_counter() - t1, 1e-9)
            emit(BatchDone(epoch, b, len(batches), loss, speed, lr))
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(len(batches), 1),
        "perplexity": _perplexity(run.ec, run.params, run.kernels, run.store),
        "seconds": round(time.perf_counter() - t0, 3),
        "tokens_per_s": round(tokens_done / max(seconds, 1e-9), 1),
    }


def _checkpoint(run: _LMRun) -> None:
    arrays = {f"param/{k}": v for k, v in run.params.items()}
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_dict().items()})
    state = {"version": CHECKPOINT_VERSION, **run.identity, "epoch": run.epoch,
             "history": _json_ready(run.history), "rng": run.rng.bit_generator.state}  # fmt: skip
    write_checkpoint(_state_dir(run.ckpt, run.member), state, arrays, run.tokenizer)


def _state_dir(ckpt: Path, member: int) -> Path:
    """Where a member's last whole epoch is checkpointed (the token store is shared)."""
    return ckpt / ("state" if member == 0 else f"state.m{member}")


def _start(
    files: Sequence[Path], text_col: str | None, ec: EncoderConfig, pc: PretrainConfig,
    ckpt: Path, resume: bool, emit: Callable[[Any], None], member: int = 0,
    tokenizer: Tokenizer | None = None,
) -> _LMRun:  # fmt: skip
    """Member ``member``'s run: tokenize (the first member; the others take its
    ``tokenizer`` and token store), learn the word vectors, build the optimizer; restore
    its checkpoint. Member k runs exactly as a single run with seed ``pc.seed + k``."""
    stamp = {
        "files": _fingerprint_files(files, text_col),
        "num_words": pc.num_words,
        "seed": pc.seed,
        "valid_frac": pc.valid_frac,
        "max_valid": pc.max_valid,
    }
    if member == 0:
        state, arrays, tokenizer = _tokenized(files, text_col, ckpt, stamp, pc, resume)
    else:  # a member not begun before the run stopped starts afresh
        state, arrays, _ = _read_state(ckpt, stamp, member) if resume else (None, None, None)
    assert tokenizer is not None
    pc = dataclasses.replace(pc, seed=pc.seed + member)
    store = _open_store(ckpt / "store", tokenizer, pc)
    ec = dataclasses.replace(ec, vocab_size=tokenizer.vocab_size)
    starts, lens = store.windows(ec.max_len, valid=False)
    if starts.size == 0:
        raise InputError(f"{files[0]}: no review has two tokens: nothing to pretrain on")
    params = _init_params(ec, store.counts, pc.seed)
    if pc.word_vectors > 0 and state is None:
        t0 = time.perf_counter()
        # every review in place in the token store (a memory map): the held-out ones skipped
        params["embedding"] = word_vectors(
            TokenIds(store.offsets, store.ids), ec.vocab_size, ec.embed_dim, pc.word_vectors,
            pc.seed, skip=store.valid,
        )  # fmt: skip
        n_tokens = int(store.ids.size - np.diff(store.offsets)[store.valid].sum())
        emit(WordVectorsDone(pc.word_vectors, n_tokens, time.perf_counter() - t0))
    steps = pc.epochs * math.ceil(starts.size / pc.batch_size)
    run = _LMRun(
        ec=ec, pc=pc, params=params, kernels=get_backend(pc.backend), store=store,
        starts=starts, lens=lens, sampler=UnigramSampler(store.counts),
        optimizer=make_optimizer("adam", params, pc.lr, 0.0),
        schedule=LRSchedule(pc.lr, min(pc.warmup_steps, steps // 10), "linear", max(steps, 1)),
        rng=np.random.default_rng(pc.seed),
        identity={
            "encoder_config": ec.to_dict(),
            "pretrain_config": {
                k: v for k, v in pc.to_dict().items() if k not in ("epochs", "threads")
            },
            "stamp": stamp,
        },
        ckpt=ckpt, tokenizer=tokenizer, member=member,
    )  # fmt: skip
    if state is not None:
        run.epoch, run.history = _restore(
            ckpt, state, arrays, run.identity, params, run.optimizer, run.rng
        )
        if run.epoch > pc.epochs:
            raise ConfigError(f"{ckpt}: the checkpoint is at epoch {run.epoch} > epochs")
    return run


def pretrain(
    sources: Any,
    out_dir: str | Path,
    encoder_config: EncoderConfig | None = None,
    config: PretrainConfig | None = None,
    text_col: str | None = None,
    resume: bool = False,
    progress: Callable[[Any], None] | None = None,
) -> PretrainResult:
    """Pretrain an encoder as a language model on the text of ``sources`` (no labels).

    Parameters: ``sources`` Parquet files, directories or globs; ``out_dir`` the encoder
    directory to write (new, or an rnnpipe directory, which is replaced);
    ``encoder_config`` its shape (``vocab_size`` comes from the tokenizer);
    ``config`` how to train; ``text_col`` (default ``text``, else ``review``); ``resume``
    continue from ``<out_dir>.checkpoint`` after its last whole epoch; ``progress``
    receives ``pipeline.events`` events.

    Returns a ``PretrainResult``. Raises InputError for missing or unreadable input or one
    without text, ConfigError for bad options or a checkpoint of another run, RunError
    when the loss diverges, OutputError when the encoder cannot be written.

    Example::

        pretrain("unlabeled/", "enc/", EncoderConfig(hidden_dim=128), PretrainConfig(epochs=3))
    """
    pc = config or PretrainConfig()
    ec = encoder_config or EncoderConfig()
    emit = progress or (lambda event: None)
    out_dir = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    ckpt = checkpoint_dir_for(out_dir)
    files = io.resolve_inputs(sources)
    for f in files:
        _text_column(f, text_col)  # every file has its text column, before any work
    check_outputs(out_dir, ckpt, files, "stamp.json")
    if pc.threads is not None:
        set_threads(pc.threads)
    params: dict[str, np.ndarray] = {}
    history: list[dict[str, Any]] = []
    tokenizer = None
    for k in range(pc.members):  # one after the other: memory for one member's training
        run = _start(files, text_col, ec, pc, ckpt, resume, emit, k, tokenizer)
        _run_epochs(run, emit)
        tokenizer = run.tokenizer
        params.update({member_name(k, n): p for n, p in run.params.items()})
        history += [{**row, "member": k} if pc.members > 1 else row for row in run.history]
        if k == 0:
            info = {
                "data": [str(f) for f in files],
                "text_col": text_col,
                "reviews": int((~run.store.valid).sum()),
                "held_out_reviews": int(run.store.valid.sum()),
                "tokens_per_epoch": int(run.lens.sum()),
                "pretrain_config": pc.to_dict(),
            }
    encoder = Encoder(run.ec, params, tokenizer, {**info, "history": _json_ready(history)},
                      pc.members)  # fmt: skip
    _save_encoder(out_dir, encoder)
    return PretrainResult(out_dir, encoder, history, ckpt)


def _run_epochs(run: _LMRun, emit: Callable[[Any], None]) -> None:
    """A member's epochs left, each checkpointed."""
    pc, store = run.pc, run.store
    emit(
        PretrainReady(
            n_reviews=int((~store.valid).sum()), n_valid=int(store.valid.sum()),
            tokens=int(run.lens.sum()), windows=int(run.starts.size),
            vocab_size=run.ec.vocab_size, epochs=pc.epochs,
            batches_per_epoch=math.ceil(run.starts.size / pc.batch_size),
            start_epoch=run.epoch, member=run.member, members=pc.members,
        )
    )  # fmt: skip
    while run.epoch < pc.epochs:
        row = _lm_epoch(run, emit)
        run.history.append(row)
        _checkpoint(run)
        emit(PretrainEpochEnd(run.epoch, pc.epochs, row["train_loss"], row["perplexity"],
                              row["seconds"], row["tokens_per_s"]))  # fmt: skip


def _json_ready(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return [clean(r) for r in history]


def _open_store(folder: Path, tokenizer: Tokenizer, pc: PretrainConfig) -> _Store:
    """Map the token store, choose the held-out reviews with ``pc.seed`` and count the
    training reviews' ids for the sampler (in chunks: bounded memory)."""
    try:
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
        size = (folder / "tokens.i32").stat().st_size
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{folder}: the token store is unreadable ({e}): run without --resume"
        ) from None
    if size != 4 * int(offsets[-1]):
        raise ConfigError(f"{folder}: the token store is incomplete: run without --resume")
    ids = (
        np.memmap(folder / "tokens.i32", dtype=np.int32, mode="r")
        if offsets[-1]
        else np.zeros(0, np.int32)
    )
    rng = np.random.default_rng(pc.seed)
    n = offsets.size - 1
    valid = rng.random(n) < pc.valid_frac
    if valid.sum() > pc.max_valid:
        valid[np.flatnonzero(valid)[pc.max_valid :]] = False
    counts = np.zeros(tokenizer.vocab_size, dtype=np.float64)
    for a in range(0, ids.size, 1 << 24):
        counts += np.bincount(np.asarray(ids[a : a + (1 << 24)]), minlength=counts.size)
    held = np.flatnonzero(valid)
    if held.size:
        sel = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in held])
        counts -= np.bincount(np.asarray(ids[sel]), minlength=counts.size)
    return _Store(offsets, ids, valid, counts)


def _read_state(ckpt: Path, stamp: dict[str, Any], member: int = 0):
    """The checkpoint of ``member`` (state, arrays, tokenizer); (None, None, None) for a
    member after the first that has none yet."""
    state_dir = _state_dir(ckpt, member)
    if not (state_dir / "state.json").is_file():
        if member > 0:
            return None, None, None
        raise ConfigError(f"no pretraining checkpoint to resume at {ckpt}: run without --resume")
    try:
        saved_stamp = json.loads((ckpt / "stamp.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ckpt}: unreadable checkpoint ({e}): run without --resume") from None
    state, arrays, tokenizer = read_state_dir(state_dir, where=ckpt)
    if saved_stamp != stamp:
        raise ConfigError(
            f"{ckpt}: the checkpoint was made from other input files or settings: run without "
            f"--resume to start over"
        )
    return state, arrays, tokenizer


def _restore(ckpt, state, arrays, identity, params, optimizer, rng) -> tuple[int, list]:
    for key, value in identity.items():
        if state.get(key) != value:
            raise ConfigError(
                f"{ckpt}: the checkpoint was made with a different {key.replace('_', ' ')}: "
                f"run without --resume to start over"
            )
    try:
        for k, p in params.items():
            np.copyto(p, arrays[f"param/{k}"], casting="no")
        optimizer.load_state_dict(
            {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
        )
        rng.bit_generator.state = state["rng"]
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{ckpt}: checkpoint does not fit this run ({e})") from None
    history = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in state["history"]]
    return int(state["epoch"]), history
