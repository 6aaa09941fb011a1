"""Every option of the product, in one place: the frozen dataclasses whose defaults are
rnnpipe's defaults, read alike by the CLI (``pipeline.cli``) and the library.

``ModelConfig`` fixes a classifier's shape and behaviour (stored in its ``config.json``);
``TrainConfig`` how it is trained; ``EncoderConfig`` and ``PretrainConfig`` the same for
a pretrained encoder (``pipeline.pretrain``); ``ScoreOptions`` and ``ExplainOptions``
how ``rnnpipe score`` and ``rnnpipe explain`` run. Each validates itself in ``__post_init__``
and raises ``ConfigError`` with a one-line message. This module imports nothing heavy (no
Numba), so the CLI can read the defaults without paying for the kernels.

Example::

    from pipeline.config import ModelConfig, TrainConfig
    ModelConfig().cell, TrainConfig().epochs
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.kernels import BACKENDS, CELLS

__all__ = [
    "DIRECTIONS",
    "FORMAT_VERSION",
    "METHODS",
    "POOLINGS",
    "SCHEDULES",
    "EncoderConfig",
    "ExplainOptions",
    "ModelConfig",
    "PretrainConfig",
    "ScoreOptions",
    "TrainConfig",
]

SCHEDULES = ("constant", "linear", "cosine")
FORMAT_VERSION = 1
POOLINGS = ("last", "max", "mean", "last+max", "last+mean", "max+mean", "last+max+mean")
DIRECTIONS = ("fwd", "bwd")
MAX_NGRAMS = 5  # the longest word n-gram a head may hash
NGRAM_BITS, NGRAM_BITS_RANGE = 22, (8, 28)  # a binary model's head: 2^22 buckets
NGRAM_SCALES = ("none", "sqrt")  # a head's sum as is, or divided by sqrt(distinct n-grams)


# training-only regularisers
_REGULARISERS = ("word_dropout", "embed_dropout", "weight_drop")
# fields added after format version 1 first shipped, and their value for older models
_ADDED_LATER = {**dict.fromkeys(_REGULARISERS, 0.0), "temperature": 1.0, "members": 1,
                "ngrams": 0, "ngram_bits": NGRAM_BITS, "ngram_scale": "none"}  # fmt: skip


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's shapes and behaviour; stored in ``config.json``.

    Fields: ``cell`` lstm|gru|rnn; ``embed_dim`` E; ``hidden_dim`` H; ``num_layers`` >= 1;
    ``bidirectional``; ``pooling`` one of ``POOLINGS`` ("last+max" pools both ways and
    concatenates); ``dropout`` in [0, 1), applied between layers and before the dense layer;
    ``vocab_size`` V including pad (0) and OOV (1); ``max_len`` tokens kept per review (the
    last ones); ``classes`` the class names, >= 2, in label-index order. Regularisers that
    act in training only, each a probability in [0, 1): ``word_dropout`` drops token
    occurrences (the step reads a zero input), ``embed_dropout`` drops whole words from a
    batch (every occurrence, the rest scaled by 1/(1-p); Gal & Ghahramani 2016),
    ``weight_drop`` DropConnect on the recurrent weights ``W_hh``, one mask per batch
    (Merity et al. 2018, AWD-LSTM). ``temperature`` > 0 divides the logits before the
    sigmoid or softmax (set by training's calibration on the validation split; 1 is none).
    ``members`` recurrent models whose logits are averaged (an ensemble); ``ngrams`` N > 0:
    a word n-gram head of orders 1..N hashed into 2^``ngram_bits`` buckets adds its logits
    (``pipeline.ngrams``; 0: none), its sum over a review's distinct n-grams divided by their
    number's square root (``ngram_scale`` "sqrt"; "none" in heads saved before it).

    Raises ConfigError for any invalid value.

    Example: ``ModelConfig(cell="gru", hidden_dim=64, pooling="last+max", vocab_size=20002)``.
    """

    cell: str = "gru"
    embed_dim: int = 128
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "max"
    dropout: float = 0.4
    vocab_size: int = 20002
    max_len: int = 400
    classes: tuple[str, ...] = ("negative", "positive")
    word_dropout: float = 0.0
    embed_dropout: float = 0.0
    weight_drop: float = 0.0
    temperature: float = 1.0
    members: int = 1
    ngrams: int = 0
    ngram_bits: int = NGRAM_BITS
    ngram_scale: str = "sqrt"

    format_version = FORMAT_VERSION  # class constant, not a field

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}: expected one of lstm, gru, rnn")
        bounds = {"embed_dim": (1, None), "hidden_dim": (1, None), "num_layers": (1, None),
                  "vocab_size": (2, None), "max_len": (1, None), "members": (1, None),
                  "ngrams": (0, MAX_NGRAMS), "ngram_bits": NGRAM_BITS_RANGE}  # fmt: skip
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not _is_int(value) or value < low or (high is not None and value > high):
                within = f">= {low}" if high is None else f"in {low}..{high}"
                raise ConfigError(f"model option {name} must be an integer {within}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.bidirectional, bool | np.bool_):
            raise ConfigError(f"bidirectional must be true or false, got {self.bidirectional!r}")
        object.__setattr__(self, "bidirectional", bool(self.bidirectional))
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"unknown pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf:
            raise ConfigError(f"temperature must be a positive number, got {t!r}")
        object.__setattr__(self, "temperature", float(t))
        for name in ("dropout", *_REGULARISERS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.classes, str) or not isinstance(self.classes, tuple | list):
            raise ConfigError(f"classes must be a list of names, got {self.classes!r}")
        classes = tuple(str(c) for c in self.classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or "" in classes:
            raise ConfigError(f"classes must be >= 2 distinct non-empty names, got {list(classes)}")
        object.__setattr__(self, "classes", classes)
        if self.ngram_scale not in NGRAM_SCALES:
            raise ConfigError(
                f"ngram_scale must be one of {', '.join(NGRAM_SCALES)}, got {self.ngram_scale!r}"
            )
        if not self.ngrams:  # no head: the scale means nothing, keep one value
            object.__setattr__(self, "ngram_scale", ModelConfig.ngram_scale)

    @property
    def modes(self) -> tuple[str, ...]:
        """The pooling modes, e.g. ``("last", "max")`` for ``"last+max"``."""
        return tuple(self.pooling.split("+"))

    @property
    def directions(self) -> tuple[str, ...]:
        return DIRECTIONS if self.bidirectional else DIRECTIONS[:1]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def num_outputs(self) -> int:
        """C': 1 logit for two classes (sigmoid), else one per class (softmax)."""
        return 1 if self.binary else len(self.classes)

    @property
    def feature_dim(self) -> int:
        """F = dirs * H * len(modes), the input width of the dense layer."""
        return len(self.directions) * self.hidden_dim * len(self.modes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``classes`` as a list)."""
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        # a model without them: its config (and fingerprint) as before ensembles and heads
        if self.members == 1:
            del d["members"]
        if self.ngrams == 0:
            del d["ngrams"], d["ngram_bits"], d["ngram_scale"]
        elif self.ngram_scale == "none":  # heads saved before the scale: fingerprints as then
            del d["ngram_scale"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build from ``to_dict`` output. Raises ConfigError on missing or unknown keys.

        Example: ``ModelConfig.from_dict(cfg.to_dict()) == cfg``.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown model option {unknown[0]!r}: expected some of {names}")
        # models saved before the training-only regularisers existed were trained without them
        missing = [n for n in names if n not in d and n not in _ADDED_LATER]
        if missing:
            raise ConfigError(f"model config lacks {missing[0]!r}")
        return cls(**{n: d.get(n, _ADDED_LATER.get(n)) for n in names})


@dataclass(frozen=True)
class TrainConfig:
    """Training options (model shape options live in ``ModelConfig``).

    Fields: ``epochs``; ``batch_size``; ``lr`` peak learning rate; ``optimizer`` adam|adamw|sgd;
    ``clip_norm`` global gradient-norm limit (0 turns clipping off); ``weight_decay`` decoupled,
    matrices only; ``warmup_steps`` linear warm-up; ``lr_schedule`` constant|linear|cosine
    (decay to ``lr_floor`` * lr at the end of the last epoch); ``patience`` epochs without a
    better validation loss before stopping and restoring the best epoch's weights (0: never
    stop early and keep the last epoch's weights); ``valid_frac`` held-out
    share when no validation files are given (0: train on every row, no validation);
    ``valid_group`` a column whose groups (a film, a user) are held out whole, so no group is
    on both sides (None: rows are held out stratified by class, each row that repeats or
    lies inside another on that row's side, ``pipeline.overlap``); ``seed`` for
    the split, initialisation and shuffling; ``class_weights`` none|balanced;
    ``num_words`` tokenizer vocabulary size; ``word_vectors`` epochs of skip-gram word
    vectors learned from the training text before training, which then start the
    embedding (``pipeline.word2vec``; 0: a random embedding); ``encoder_lr`` multiplies the
    learning rate of the embedding and recurrent layers (below 1: a warm-started encoder
    moves less than the new dense layer, ULMFiT's discriminative rates); ``freeze_epochs``
    epochs at the start in which only the dense layer learns; ``average`` the decay of an
    exponential moving average of the weights, which validation and the saved model use
    (0: off; 0.998 averages about the last 500 steps); ``calibrate`` fit the model's
    temperature on the validation rows after training (those no other row holds, when the
    split found at least ``dataset.MIN_WHOLE_ROWS``); ``refit`` then train again from the
    same starting weights on the training and validation rows together, for the epochs
    kept, and save that model with the temperature just fitted (only when the validation
    rows were held out of the training data; the validation figures stay the first
    model's); ``ensemble`` save the refit and the first model together, their logits
    averaged (two recurrences per review when scoring; needs the refit); ``ngrams`` N > 0:
    fit a word n-gram head of orders 1..N beside the recurrent model and mix the two on the
    validation rows (``pipeline.ngrams``; 0: the recurrent model alone); ``threads`` for the
    kernels (None: leave as is); ``backend`` cpu|reference|cuda.

    Raises ConfigError for invalid values.

    Example: ``TrainConfig(epochs=5, lr=2e-3, lr_schedule="cosine", warmup_steps=100)``.
    """

    epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"
    clip_norm: float = 5.0
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "linear"
    lr_floor: float = 0.0
    patience: int = 0
    valid_frac: float = 0.1
    valid_group: str | None = None
    seed: int = 0
    class_weights: str = "none"
    num_words: int = 30000
    word_vectors: int = 5
    encoder_lr: float = 1.0
    freeze_epochs: int = 0
    average: float = 0.0
    calibrate: bool = True
    refit: bool = True
    ensemble: bool = False
    ngrams: int = 2
    threads: int | None = None
    backend: str = "cpu"

    def __post_init__(self) -> None:
        ints = {"epochs": 1, "batch_size": 1, "warmup_steps": 0, "patience": 0, "num_words": 1,
                "word_vectors": 0, "freeze_epochs": 0, "ngrams": 0}  # fmt: skip
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.ngrams > MAX_NGRAMS:
            raise ConfigError(f"ngrams must be at most {MAX_NGRAMS}, got {self.ngrams}")
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
        if not 0 <= self.valid_frac < 1:
            raise ConfigError(f"valid_frac must be in [0, 1), got {self.valid_frac}")
        if self.valid_frac == 0 and self.patience > 0:
            raise ConfigError(
                "early stopping (patience > 0) needs a validation split: set valid_frac > 0"
            )
        if self.valid_group is not None and (
            not isinstance(self.valid_group, str) or not self.valid_group
        ):
            raise ConfigError(f"valid_group must be a column name, got {self.valid_group!r}")
        if not (isinstance(self.encoder_lr, int | float) and 0 < self.encoder_lr < math.inf):
            raise ConfigError(f"encoder_lr must be a positive number, got {self.encoder_lr!r}")
        if self.freeze_epochs >= self.epochs:
            raise ConfigError(
                f"freeze_epochs ({self.freeze_epochs}) must be fewer than epochs ({self.epochs})"
            )
        if not (isinstance(self.average, int | float) and 0 <= self.average < 1):
            raise ConfigError(f"average must be in [0, 1) (0: off), got {self.average!r}")
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError(f"class_weights must be none or balanced, got {self.class_weights!r}")
        if self.ensemble and not (self.refit and self.valid_frac > 0):
            raise ConfigError("ensemble joins the refit to the first model: it needs refit on "
                              "and held-out validation rows (valid_frac > 0)")  # fmt: skip
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder's shape and its training-only regularisers; stored with the encoder.

    Fields: ``cell`` lstm|gru|rnn; ``embed_dim`` E; ``hidden_dim`` H; ``num_layers`` (a
    bidirectional encoder has one: stacked directions would let the forward model see the
    future through the layer below); ``bidirectional``; ``vocab_size`` V (from the
    tokenizer); ``max_len`` tokens per training window; ``dropout`` between layers,
    ``word_dropout``, ``embed_dropout``, ``weight_drop`` as in ``ModelConfig``.

    Example: ``EncoderConfig(cell="gru", embed_dim=128, hidden_dim=128)``.
    """

    # the shape of the classifier `rnnpipe train` builds, so an encoder pretrained with the
    # defaults warm-starts the default classifier
    cell: str = ModelConfig.cell
    embed_dim: int = ModelConfig.embed_dim
    hidden_dim: int = ModelConfig.hidden_dim
    num_layers: int = ModelConfig.num_layers
    bidirectional: bool = ModelConfig.bidirectional
    vocab_size: int = 30002
    max_len: int = ModelConfig.max_len
    dropout: float = 0.0
    word_dropout: float = 0.0
    embed_dropout: float = 0.0
    weight_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}: expected one of lstm, gru, rnn")
        for name, low in (("embed_dim", 1), ("hidden_dim", 1), ("num_layers", 1),
                          ("vocab_size", 3), ("max_len", 2)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(
                    f"encoder option {name} must be an integer >= {low}, got {value!r}"
                )
            object.__setattr__(self, name, int(value))
        if not isinstance(self.bidirectional, bool | np.bool_):
            raise ConfigError(f"bidirectional must be true or false, got {self.bidirectional!r}")
        object.__setattr__(self, "bidirectional", bool(self.bidirectional))
        if self.bidirectional and self.num_layers > 1:
            raise ConfigError(
                "a bidirectional encoder is pretrained with one layer: stacked directions "
                "would let the forward language model see the future"
            )
        for name in ("dropout", "word_dropout", "embed_dropout", "weight_drop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def directions(self) -> tuple[str, ...]:
        return DIRECTIONS if self.bidirectional else DIRECTIONS[:1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown encoder option {unknown[0]!r}")
        return cls(**dict(d))


@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain.

    Fields: ``epochs`` of the language model (0: word vectors only); ``batch_size`` windows
    per step; ``lr`` peak learning rate (Adam,
    ``warmup_steps`` of linear warm-up, then linear decay to 0 over the run);
    ``clip_norm``; ``samples`` candidate words per step for the sampled softmax;
    ``word_vectors`` epochs of skip-gram word vectors over the text that start the
    embedding before the language model trains (0: a random embedding); ``num_words``
    the tokenizer's vocabulary; ``valid_frac`` share of the reviews held out for perplexity
    (at most ``max_valid`` of them); ``seed``; ``members`` encoders pretrained one after
    the other on the same tokens, member k exactly as one run with seed ``seed + k``
    (``train`` fine-tunes each and averages their logits); ``threads`` (None: leave as
    is); ``backend``.

    Example: ``PretrainConfig(epochs=2, samples=512)``.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    clip_norm: float = 1.0
    samples: int = 256
    num_words: int = TrainConfig.num_words
    word_vectors: int = TrainConfig.word_vectors
    valid_frac: float = 0.01
    max_valid: int = 500
    seed: int = 0
    members: int = 2
    threads: int | None = None
    backend: str = "cpu"

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("warmup_steps", 0),
                          ("samples", 1), ("num_words", 1), ("max_valid", 0),
                          ("word_vectors", 0), ("members", 1)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.epochs == 0 and self.word_vectors == 0:
            raise ConfigError("nothing to pretrain: epochs and word_vectors are both 0")
        if not 0 <= self.clip_norm < math.inf:
            raise ConfigError(f"clip_norm must be >= 0, got {self.clip_norm!r}")
        if not 0 <= self.valid_frac < 1:
            raise ConfigError(f"valid_frac must be in [0, 1), got {self.valid_frac!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# attribution methods of pipeline.explain
METHODS = ("ig", "grad", "occlusion")


@dataclass(frozen=True)
class ExplainOptions(ScoreOptions):
    """How to explain: ``method`` ig|grad|occlusion; ``steps`` quadrature nodes of ``ig``
    for every row; ``tolerance`` the relative completeness gap above which a row's ig gets
    more nodes where its path needs them (0: never; see ``pipeline.attribution``);
    ``target`` a class name to explain toward (None: each row's predicted class); the rest
    as in ``score.ScoreOptions`` and checked by it, with smaller batches (each row costs
    ``steps`` + 2 passes or more). Raises ConfigError for an invalid value."""

    batch_rows: int = 256
    method: str = "ig"
    steps: int = 32
    target: str | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: expected ig, grad or occlusion")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < 1:
            raise ConfigError(f"tolerance must be a number in [0, 1), got {tol!r}")
