"""Progress events that training and pretraining send to their ``progress`` callback.

The library prints nothing; the CLI turns these into a progress bar and summary lines
(``pipeline.progress``). Every event has a ``kind`` string, so a callback can dispatch on it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BatchDone",
    "DataReady",
    "EpochEnd",
    "EpochStart",
    "HeadFitted",
    "PretrainEpochEnd",
    "PretrainReady",
    "ProgressEvent",
    "RefitStart",
    "WordVectorsDone",
]


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
    member: int = 0  # which of the models on a pretrained encoder's members, from 0
    members: int = 1
    kind: str = "data_ready"


@dataclass(frozen=True)
class RefitStart:
    """Training starts again on the training and validation rows together (``refit``)."""

    rows: int
    epochs: int
    member: int = 0  # as in ``DataReady``
    members: int = 1
    kind: str = "refit"


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


@dataclass(frozen=True)
class HeadFitted:
    """The word n-gram head fitted (``pipeline.ngrams``): after training, and after a refit."""

    order: int
    bits: int  # 2**bits hashed buckets
    rows: int
    seconds: float
    kind: str = "ngram_head"


@dataclass(frozen=True)
class PretrainReady:
    """Text tokenized into the token store; pretraining is about to start."""

    n_reviews: int
    n_valid: int
    tokens: int
    windows: int
    vocab_size: int
    epochs: int
    batches_per_epoch: int
    start_epoch: int  # > 0 when resuming
    member: int = 0  # which of the encoders being pretrained, from 0
    members: int = 1
    kind: str = "pretrain_ready"


@dataclass(frozen=True)
class PretrainEpochEnd:
    epoch: int
    epochs: int
    train_loss: float  # mean sampled-softmax loss over the epoch's steps and directions
    perplexity: dict[str, float]  # held-out, full softmax, per direction
    seconds: float
    tokens_per_s: float
    kind: str = "pretrain_epoch_end"


@dataclass(frozen=True)
class WordVectorsDone:
    """Word vectors learned from the training text before training (``pipeline.word2vec``)."""

    epochs: int
    tokens: int
    seconds: float
    kind: str = "word_vectors"


ProgressEvent = (
    DataReady
    | EpochStart
    | BatchDone
    | EpochEnd
    | RefitStart
    | HeadFitted
    | PretrainReady
    | PretrainEpochEnd
    | WordVectorsDone
)
