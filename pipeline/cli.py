"""The ``rnnpipe`` command line: a thin Typer layer over the library.

Each command parses its options, builds a config, calls one library function and prints a
summary. Expected failures (``RnnpipeError``) become one line on stderr and a non-zero exit
code (2 bad input or usage, 1 failure at run time); anything else is a bug and keeps its
traceback.

    rnnpipe train data.parquet --out model/
    rnnpipe score reviews/ --model model/ --out scores/
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pipeline import runtime

# A program, not a library: its runtime defaults (thread hand-over, CPU tuning) go into the
# environment before the imports below load NumPy, which loads OpenBLAS, and Numba.
runtime.apply_defaults()

# the defaults live once, in the config dataclasses; every option below reads them there
from pipeline.config import EncoderConfig as _E  # noqa: E402
from pipeline.config import ModelConfig as _M  # noqa: E402
from pipeline.config import PretrainConfig as _P  # noqa: E402
from pipeline.config import TrainConfig as _T  # noqa: E402
from pipeline.errors import RnnpipeError  # noqa: E402


def _is_a(exc: BaseException, name: str) -> bool:
    # by class name: Typer ships its own copy of Click, so Click's classes are not these
    return any(c.__name__ == name for c in type(exc).__mro__)


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing option, a bad value) as one line on stderr, exit code 2,
    instead of the framework's usage block: the same shape as every other expected error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as e:
            if _is_a(e, "NoArgsIsHelpError"):
                e.show()  # the help text itself
                sys.exit(e.exit_code)
            if _is_a(e, "ClickException"):
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _err(f"{e.format_message()}{hint}")
                sys.exit(e.exit_code)
            if _is_a(e, "Abort"):
                _err("aborted")
                sys.exit(1)
            raise
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="rnnpipe",
    cls=_OneLineErrors,
    help="Train recurrent (LSTM/GRU/RNN) sentiment classifiers on Parquet and score huge "
    "Parquet datasets with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
job_app = typer.Typer(
    help="Scheduled batch jobs: incremental, exactly-once scoring.", no_args_is_help=True
)
app.add_typer(job_app, name="job")

TextCol = Annotated[str | None, typer.Option(help="Text column (default: 'text', else 'review').")]
LabelCol = Annotated[str, typer.Option(help="Label column.")]
Threads = Annotated[
    int, typer.Option(help="Threads for Numba and BLAS together (0: all cores).", min=0)
]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto (cuda when a GPU is present).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object for machines.")]
ModelDir = Annotated[Path, typer.Option("--model", "-m", help="Model directory.")]


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _expected_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RnnpipeError into one line on stderr and its exit code: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RnnpipeError as exc:
            _err(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _backend(device: str) -> str:
    """Map --device to a kernel backend name (``pipeline.runtime.resolve_backend``)."""
    return runtime.resolve_backend(device)


def _threads(n: int) -> None:
    runtime.set_threads(n or None)


def _load_model(path: Path, device: str):
    return runtime.load_model(path, device)


# ----------------------------------------------------------------------------------- train


@app.command()
@_expected_errors
def train(
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
            help="Hold out whole groups of this column (a film, a user): none on both sides."
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
    tokens, 2 epochs of Adam, and the scores calibrated on the validation rows. Pass
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
        seed=seed,
        class_weights=class_weights,
        num_words=num_words,
        threads=threads or None,
        backend=_backend(device),
    )
    overrides = {
        "cell": cell,
        "embed_dim": embed_dim,
        "hidden_dim": hidden_dim,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "pooling": pooling,
        "dropout": dropout,
        "word_dropout": word_dropout,
        "embed_dropout": embed_dropout,
        "weight_drop": weight_drop,
        "max_len": max_len,
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
@_expected_errors
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
        word_vectors=word_vectors, seed=seed, threads=threads or None,
    )  # fmt: skip
    with TrainProgress(enabled=not quiet) as progress:
        result = run_pretrain(data, out, ec, pc, text_col=text_col, resume=resume,
                              progress=progress)  # fmt: skip
    last = result.history[-1] if result.history else {}
    ppl = ", ".join(f"{d} {v:,.1f}" for d, v in (last.get("perplexity") or {}).items())
    typer.echo(f"saved {result.encoder_dir}: held-out perplexity {ppl or 'not measured'}")


# ----------------------------------------------------------------------------------- score


@app.command()
@_expected_errors
def score(
    data: Annotated[list[str], typer.Argument(help="Parquet file(s), directories or globs.")],
    model: ModelDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder, or FILE.parquet.")],
    keep: Annotated[str | None, typer.Option(help="Input columns to keep (default: id).")] = None,
    batch_rows: Annotated[int, typer.Option(help="Rows per streamed batch.", min=1)] = 8192,
    threshold: Annotated[float, typer.Option(help="Binary decision threshold.")] = 0.5,
    resume: Annotated[bool, typer.Option(help="Skip outputs already complete.")] = False,
    engine: Annotated[str, typer.Option(help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    workers: Annotated[int, typer.Option(help="Ray workers (0: one per core).")] = 0,
    text_col: TextCol = None,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score Parquet reviews with a model; one output file per input, written atomically.

    Example: rnnpipe score reviews/ --model model/ --out scores/ --keep id,date
    """
    from pipeline.score import ScoreOptions
    from pipeline.score import score as run_score

    _threads(threads)
    keep_cols = tuple(c.strip() for c in keep.split(",") if c.strip()) if keep else None
    options = ScoreOptions(
        text_col=text_col,
        keep=keep_cols,
        batch_rows=batch_rows,
        threshold=threshold,
        resume=resume,
        backend=_backend(device),
    )
    m = _load_model(model, device)
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"unknown engine {engine!r}: expected local or ray")
    from pipeline.progress import ScoreProgress

    with ScoreProgress(data, enabled=not quiet and not json_out) as progress:
        if engine == "ray":
            from pipeline.engines.ray import score_on_ray

            summary = score_on_ray(
                data, m, model, out, options, address=address, workers=workers,
                progress=progress,
            )  # fmt: skip
        else:
            summary = run_score(data, m, out, options, progress=progress)
    if json_out:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        typer.echo(
            f"scored {summary.rows:,} rows in {summary.files} file(s) "
            f"({summary.skipped_files} skipped) in {summary.seconds:.1f} s: "
            f"{summary.rows_per_s:,.0f} rows/s, {summary.null_texts:,} null or empty texts"
        )


# -------------------------------------------------------------------------------- evaluate


@app.command()
@_expected_errors
def evaluate(
    data: Annotated[list[str], typer.Argument(help="Labelled Parquet file(s).")],
    model: ModelDir,
    text_col: TextCol = None,
    label_col: LabelCol = "label",
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
) -> None:
    """Accuracy, per-class precision/recall/F1, ROC AUC, log loss, calibration of a model.

    Example: rnnpipe evaluate test.parquet --model model/ --json
    """
    from pipeline.train import evaluate as run_evaluate

    _threads(threads)
    m = _load_model(model, device)
    report = run_evaluate(data, m, text_col=text_col, label_col=label_col)
    if json_out:
        typer.echo(json.dumps(report))
        return
    from pipeline.progress import print_evaluation

    print_evaluation(report)


# --------------------------------------------------------------------------------- predict


@app.command()
@_expected_errors
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts (default: stdin lines).")] = None,
    model: ModelDir = Path("model"),
    threshold: Annotated[float, typer.Option(help="Binary decision threshold.")] = 0.5,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Label texts given as arguments, or one per line on stdin.

    Example: rnnpipe predict --model model/ "a wonderful film" "dull and far too long"
    """
    from pipeline.score import predict_texts

    _threads(threads)
    m = _load_model(model, device)
    items, invalid = _input_texts(texts)
    if invalid:
        where = "argument" if texts else "line"
        _err_warn(
            f"{len(invalid)} input {where}(s) held invalid UTF-8 (first: {where} {invalid[0]}): "
            "decoded with U+FFFD replacement characters"
        )
    for text, p in zip(items, predict_texts(m, items, threshold=threshold), strict=True):
        if json_out:
            typer.echo(
                json.dumps(
                    {
                        "text": text,
                        "label": p.label,
                        "probability": p.probability,
                        "probs": p.probabilities,
                    }
                )
            )
        else:
            typer.echo(f"{p.label}\t{p.probability:.4f}\t{text}")


def _input_texts(texts: list[str] | None) -> tuple[list[str], list[int]]:
    """``predict``'s texts (arguments, else stdin lines) as valid Unicode, and the 1-based
    numbers of those that held invalid UTF-8 (decoded with replacement characters)."""
    invalid: list[int] = []
    if texts:
        items = []
        for k, text in enumerate(texts, start=1):
            raw = text.encode("utf-8", "surrogateescape")  # how Python keeps undecodable argv
            fixed = raw.decode("utf-8", "replace")
            if fixed != text:
                invalid.append(k)
            items.append(fixed)
        return items, invalid
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stdin (already decoded by whoever replaced it)
        return [line.rstrip("\n") for line in sys.stdin], invalid
    items = []
    for k, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            items.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            invalid.append(k)
            items.append(raw.decode("utf-8", "replace"))
    return items, invalid


def _err_warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


# ------------------------------------------------------------------------------------ info


@app.command()
@_expected_errors
def info(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    json_out: Json = False,
) -> None:
    """Show a model's configuration, size, training data and metrics.

    Example: rnnpipe info model/
    """
    from pipeline.model import Model

    m = Model.load(model_dir)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    n_params = int(sum(v.size for v in m.params.values()))
    report = {
        "model_dir": str(model_dir),
        "parameters": n_params,
        "fingerprint": m.fingerprint(),
        **config,
    }
    if json_out:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_short(v)}" for k, v in value.items())
        typer.echo(f"{key:>16}: {_short(value)}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ... {len(value)} items]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


# ----------------------------------------------------------------------------------- bench


@app.command()
@_expected_errors
def bench(
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn.")] = "lstm",
    embed_dim: Annotated[int, typer.Option(help="Embedding size E.")] = 128,
    hidden_dim: Annotated[int, typer.Option(help="Hidden size H.")] = 128,
    rows: Annotated[int, typer.Option(help="Generated reviews to score.", min=1)] = 4096,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).", min=1)] = 3,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
) -> None:
    """Measure this machine: score generated reviews with a random model of the given size.

    Prints reviews/s, tokens/s and GFLOP/s of the recurrent product, and the machine's
    matrix-product rate for comparison. Example: rnnpipe bench --cell gru --threads 2
    """
    from pipeline.bench import run_machine_bench

    _threads(threads)
    report = run_machine_bench(cell, embed_dim, hidden_dim, rows, repeats, _backend(device))
    if json_out:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        typer.echo(
            f"{key:>22}: {value:,.1f}" if isinstance(value, float) else f"{key:>22}: {value}"
        )


# ------------------------------------------------------------------------------------ jobs


JobSpecArg = Annotated[Path, typer.Argument(help="Job spec (TOML).")]


@job_app.command("run")
@_expected_errors
def job_run(
    spec: JobSpecArg,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log events to the job's log.jsonl only.")
    ] = False,
) -> None:
    """Score the job's new or changed inputs; safe to kill and rerun.

    Exit codes: 0 all done (or nothing to do), 1 some inputs failed, 2 bad spec,
    3 another run holds the lock. Example: rnnpipe job run jobs/example.toml
    """
    from pipeline.jobs import load_spec, run_job

    report = run_job(load_spec(spec), echo=not quiet)
    raise typer.Exit(report.exit_code)


@job_app.command("status")
@_expected_errors
def job_status(spec: JobSpecArg, json_out: Json = False) -> None:
    """What a job has done, what is pending or failed, and its last run.

    Example: rnnpipe job status jobs/example.toml --json
    """
    from pipeline.jobs import format_status, job_status, load_spec

    status = job_status(load_spec(spec))
    typer.echo(json.dumps(status) if json_out else format_status(status))


@job_app.command("validate")
@_expected_errors
def job_validate(spec: JobSpecArg) -> None:
    """Check a job spec (keys, types, model, inputs) without running it.

    Example: rnnpipe job validate jobs/example.toml
    """
    from pipeline.jobs import load_spec, validate_spec

    info = validate_spec(load_spec(spec))
    inputs = info.get("inputs", [])
    n = len(inputs) if isinstance(inputs, list | tuple) else inputs
    typer.echo(
        f"{spec}: ok (job {info.get('job')}, model {info.get('model')} "
        f"{str(info.get('fingerprint', ''))[:12]}, {n} input file(s))"
    )


def main() -> None:
    """Console entry point: run the app, then leave at once (``pipeline.runtime.leave``:
    atexit handlers and a flush, then ``os._exit``; ``RNNPIPE_FAST_EXIT=0`` exits the usual
    way)."""
    try:
        app()
    except SystemExit as exc:
        runtime.leave(exc.code)
        raise
    runtime.leave(0)
