"""Where training starts: the split data, the tokenizer, each model's first weights.

``starting_point`` reads and splits the labelled data (``pipeline.dataset``) and gives the
tokenizer (fitted on the training rows; a warm start's or an encoder's; a checkpoint's when
resuming) and the config and first weights of every model ``pipeline.train`` trains: fresh
with word vectors learned from the training text (``pipeline.word2vec``) or read from a
word2vec/GloVe file, a warm start's (another model), or a pretrained encoder's
(``pipeline.pretrain``): one model per member of the encoder.

Example::

    start = starting_point(Request(...), emit)
    config, params = start.members[0]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import read_checkpoint
from pipeline.config import ModelConfig, TrainConfig
from pipeline.dataset import Split, load_split
from pipeline.errors import ConfigError
from pipeline.events import ProgressEvent, WordVectorsDone
from pipeline.model import Model, init_params
from pipeline.pretrain import Encoder, is_encoder_dir, load_encoder
from pipeline.text import Tokenizer
from pipeline.word2vec import load_embeddings, word_vectors

__all__ = ["Request", "Start", "starting_point"]


@dataclass(frozen=True)
class Request:
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


@dataclass
class Start:
    """Where training starts: what ``starting_point`` gives."""

    split: Split
    tokenizer: Tokenizer
    members: list[tuple[ModelConfig, dict[str, np.ndarray]]]  # a model to train for each
    coverage: float | None  # the share of the vocabulary a word-vector file held
    state: Any  # the checkpoint's state and arrays when resuming, else None and {}
    arrays: Any


def starting_point(req: Request, emit: Callable[[ProgressEvent], None]) -> Start:
    """The split data, the tokenizer, each model's config and first weights (a warm
    start's, an encoder's, word vectors or fresh; a model per member of an encoder), and a
    checkpoint's state when resuming.

    Raises InputError for bad data, ConfigError for options the starting point contradicts
    (another architecture or other classes than a warm start's), ModelFormatError for a
    broken model or encoder to start from."""
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
        members = [
            _from_encoder(encoder, overrides, split.classes, tc.seed, init_from, k)
            for k in range(encoder.members)
        ]
        return Start(split, tokenizer, members, None, state, arrays)
    else:
        config = _build_config(overrides, tokenizer.vocab_size, split.classes)
        params = init_params(config, tc.seed)
    coverage = None
    if tc.word_vectors > 0 and state is None and warm is None and init_embeddings is None:
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
    return Start(split, tokenizer, [(config, params)], coverage, state, arrays)


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
    encoder: Encoder, overrides: Mapping[str, Any], classes: tuple[str, ...], seed: int, source,
    member: int = 0,
) -> tuple[ModelConfig, dict[str, np.ndarray]]:  # fmt: skip
    """A classifier on member ``member`` of a pretrained encoder: its shape and weights, a
    new dense layer drawn with ``seed + member`` (and pooling, dropout, max_len from
    ``overrides`` or the defaults)."""
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
    params = init_params(config, seed + member)  # the dense layer's; the encoder's replace theirs
    for name, value in encoder.member_params(member).items():
        params[name] = value.copy()
    return config, params
