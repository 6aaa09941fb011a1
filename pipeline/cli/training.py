"""``rnnpipe train`` and ``rnnpipe pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import (
    Device,
    LabelCol,
    TextCol,
    Threads,
    app,
    expected_errors,
    resolve_backend,
)

# the defaults live once, in the config dataclasses; every option reads them there
from pipeline.config import EncoderConfig as _E
from pipeline.config import ModelConfig as _M
from pipeline.config import PretrainConfig as _P
from pipeline.config import TrainConfig as _T

# ----------------------------------------------------------------------------------- train


@app.command()
@expected_errors
def train(
    ctx: typer.Context,
    data: Annotated[list[str], typer.Argument(help="Parquet file(s), directories or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn.")] = _M.cell,
    embed_dim: Annotated[int, typer.Option(help="Embedding size E.")] = _M.embed_dim,
    hidden_dim: Annotated[int, typer.Option(help="Hidden size H.")] = _M.hidden_dim,
    num_layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = _M.num_layers,
    bidirectional: Annotated[
        bool, typer.Option(help="Also run each review backwards.")
    ] = _M.bidirectional,
    pooling: Annotated[str, typer.Option(help="last, max, mean or a '+' mix.")] = _M.pooling,
    dropout: Annotated[float, typer.Option(help="Dropout before the dense layer.")] = _M.dropout,
    word_dropout: Annotated[
        float, typer.Option(help="Share of token occurrences dropped in training.")
    ] = _M.word_dropout,
    embed_dropout: Annotated[
        float, typer.Option(help="Share of a batch's distinct words dropped in training.")
    ] = _M.embed_dropout,
    weight_drop: Annotated[
        float, typer.Option(help="DropConnect on the recurrent weights in training.")
    ] = _M.weight_drop,
    max_len: Annotated[int, typer.Option(help="Tokens kept per review (the last).")] = _M.max_len,
    num_words: Annotated[int, typer.Option(help="Vocabulary size.")] = _T.num_words,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = _T.epochs,
    batch_size: Annotated[int, typer.Option(help="Reviews per minibatch.")] = _T.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = _T.lr,
    optimizer: Annotated[str, typer.Option(help="adam, adamw or sgd.")] = _T.optimizer,
    clip_norm: Annotated[
        float, typer.Option(help="Global gradient-norm clip (0: off).")
    ] = _T.clip_norm,
    weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay.")] = _T.weight_decay,
    warmup_steps: Annotated[
        int, typer.Option(help="Linear learning-rate warm-up.")
    ] = _T.warmup_steps,
    lr_schedule: Annotated[str, typer.Option(help="constant, linear or cosine.")] = _T.lr_schedule,
    patience: Annotated[
        int,
        typer.Option(
            help="Stop after N epochs without a better validation loss and keep the "
            "best epoch (0: run every epoch, keep the last)."
        ),
    ] = _T.patience,
    valid_frac: Annotated[
        float, typer.Option(help="Held-out share for validation (0: train on every row).")
    ] = _T.valid_frac,
    valid_group: Annotated[
        str | None,
        typer.Option(
            help="Hold out whole groups of this column (a film, a user): none on both sides. "
            "Without it, a row that repeats or lies inside another stays on that row's side."
        ),
    ] = _T.valid_group,
    word_vectors: Annotated[
        int,
        typer.Option(help="Epochs of word vectors learned from the training text first (0: off)."),
    ] = _T.word_vectors,
    encoder_lr: Annotated[
        float, typer.Option(help="Learning-rate factor of the embedding and recurrent layers.")
    ] = _T.encoder_lr,
    freeze_epochs: Annotated[
        int, typer.Option(help="First epochs in which only the dense layer learns.")
    ] = _T.freeze_epochs,
    average: Annotated[
        float, typer.Option(help="Moving average of the weights, its decay (0: off).")
    ] = _T.average,
    calibrate: Annotated[
        bool, typer.Option(help="Fit the scores' temperature on the validation rows.")
    ] = _T.calibrate,
    refit: Annotated[
        bool,
        typer.Option(
            help="Then train again on all rows, validation rows too, keeping the calibration."
        ),
    ] = _T.refit,
    ensemble: Annotated[
        bool,
        typer.Option(
            help="Save the refit and the first model together, logits averaged (2x scoring)."
        ),
    ] = _T.ensemble,
    ngrams: Annotated[
        int, typer.Option(help="A linear head on word n-grams of orders 1..N (0: none).")
    ] = _T.ngrams,
    valid: Annotated[list[str] | None, typer.Option(help="Validation file(s) instead.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names in order, comma-separated.")
    ] = None,
    class_weights: Annotated[str, typer.Option(help="none or balanced.")] = _T.class_weights,
    seed: Annotated[int, typer.Option(help="Seed for split, init and shuffling.")] = _T.seed,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    init_from: Annotated[Path | None, typer.Option(help="Warm-start from a model.")] = None,
    init_embeddings: Annotated[Path | None, typer.Option(help="word2vec/GloVe text file.")] = None,
    text_col: TextCol = None,
    label_col: LabelCol = "label",
    threads: Threads = 0,
    device: Device = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a classifier on labelled Parquet reviews and save it to --out.

    By default: word vectors learned from the training text first (5 epochs of
    skip-gram), then a bidirectional GRU (E=128, H=128) with max pooling over the last 400
    tokens, 2 epochs of Adam; beside it a linear head over the reviews' words and word
    pairs (NBSVM), mixed with it and calibrated on the validation rows; then the same
    training again on every row (the validation rows too). Pass
    --valid-group when rows come in groups (the reviews of a film) so validation is honest.
    Example: rnnpipe train reviews.parquet --out model/ --valid-group movie
    """
    from pipeline.train import TrainConfig
    from pipeline.train import train as run_train

    tc = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        clip_norm=clip_norm,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        lr_schedule=lr_schedule,
        patience=patience,
        valid_frac=valid_frac,
        valid_group=valid_group,
        word_vectors=word_vectors,
        encoder_lr=encoder_lr,
        freeze_epochs=freeze_epochs,
        average=average,
        calibrate=calibrate,
        refit=refit,
        ensemble=ensemble,
        ngrams=ngrams,
        seed=seed,
        class_weights=class_weights,
        num_words=num_words,
        threads=threads or None,
        backend=resolve_backend(device),
    )
    # from a model or an encoder, what is not asked for comes from the one started from
    overrides = {
        k: ctx.params[k] for k in _MODEL_OPTIONS if init_from is None or not _defaulted(ctx, k)
    }
    declared = [c.strip() for c in classes.split(",")] if classes else None
    from pipeline.progress import TrainProgress

    with TrainProgress(enabled=not quiet) as progress:
        result = run_train(
            data,
            out,
            overrides,
            tc,
            text_col=text_col,
            label_col=label_col,
            valid_paths=valid,
            classes=declared,
            resume=resume,
            init_from=init_from,
            init_embeddings=init_embeddings,
            progress=progress,
        )
    m = result.metrics
    cov = result.embedding_coverage
    extra = f", embedding coverage {cov:.1%}" if cov is not None else ""
    if not m.get("n"):
        typer.echo(f"saved {result.model_dir}: epoch {result.best_epoch}, no validation rows")
        return
    typer.echo(
        f"saved {result.model_dir}: epoch {result.best_epoch}, validation accuracy "
        f"{m['accuracy']:.4f}, log loss {m['log_loss']:.4f}, ECE {m['ece']:.4f}{extra}"
    )


# -------------------------------------------------------------------------------- pretrain


@app.command()
@expected_errors
def pretrain(
    data: Annotated[
        list[str], typer.Argument(help="Unlabeled Parquet file(s), directories or globs.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoder directory to write.")],
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn.")] = _E.cell,
    embed_dim: Annotated[int, typer.Option(help="Embedding size E.")] = _E.embed_dim,
    hidden_dim: Annotated[int, typer.Option(help="Hidden size H.")] = _E.hidden_dim,
    bidirectional: Annotated[
        bool, typer.Option(help="Also learn to predict each previous token backwards.")
    ] = _E.bidirectional,
    max_len: Annotated[int, typer.Option(help="Tokens per training window.")] = _E.max_len,
    num_words: Annotated[int, typer.Option(help="Vocabulary size.")] = _P.num_words,
    epochs: Annotated[int, typer.Option(help="Passes over the text.")] = _P.epochs,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = _P.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam).")] = _P.lr,
    samples: Annotated[
        int, typer.Option(help="Candidate words per step (sampled softmax).")
    ] = _P.samples,
    word_vectors: Annotated[
        int, typer.Option(help="Epochs of word vectors that start the embedding (0: off).")
    ] = _P.word_vectors,
    seed: Annotated[int, typer.Option(help="Seed for init, held-out rows, shuffling.")] = _P.seed,
    members: Annotated[
        int, typer.Option(help="Encoders pretrained (seeds SEED, SEED+1...); train averages them.")
    ] = _P.members,
    resume: Annotated[bool, typer.Option(help="Continue after the last whole epoch.")] = False,
    text_col: TextCol = None,
    threads: Threads = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Pretrain an encoder as a language model on unlabeled reviews (no labels needed).

    The encoder (tokenizer, embedding, recurrent layer) then warm-starts a classifier:
    rnnpipe train labelled.parquet --init-from ENCODER. Never pretrain on text you will
    evaluate on. Example: rnnpipe pretrain unlabeled.parquet train.parquet --out enc/
    """
    from pipeline.pretrain import EncoderConfig, PretrainConfig
    from pipeline.pretrain import pretrain as run_pretrain
    from pipeline.progress import TrainProgress

    ec = EncoderConfig(
        cell=cell, embed_dim=embed_dim, hidden_dim=hidden_dim, bidirectional=bidirectional,
        max_len=max_len,
    )  # fmt: skip
    pc = PretrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, samples=samples, num_words=num_words,
        word_vectors=word_vectors, seed=seed, members=members, threads=threads or None,
    )  # fmt: skip
    with TrainProgress(enabled=not quiet) as progress:
        result = run_pretrain(data, out, ec, pc, text_col=text_col, resume=resume,
                              progress=progress)  # fmt: skip
    last = [r for r in result.history if r["epoch"] == epochs]  # each member's last epoch
    ppl = "; ".join(
        ", ".join(f"{d} {v:,.1f}" for d, v in (r.get("perplexity") or {}).items()) for r in last
    )
    typer.echo(f"saved {result.encoder_dir}: held-out perplexity {ppl or 'not measured'}")


_MODEL_OPTIONS = ("cell", "embed_dim", "hidden_dim", "num_layers", "bidirectional", "pooling",
                  "dropout", "word_dropout", "embed_dropout", "weight_drop", "max_len")  # fmt: skip


def _defaulted(ctx: typer.Context, name: str) -> bool:
    """True when option ``name`` was not given on the command line (nor by the environment)."""
    source = ctx.get_parameter_source(name)  # an enum of the click Typer runs on
    return source is None or source.name == "DEFAULT"
