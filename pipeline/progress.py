"""Progress bars and summaries on stderr for the CLI (rich, which Typer already brings).

The library reports progress through callbacks and prints nothing; these classes turn the
callbacks into a progress bar with rate and ETA, and one summary line per epoch.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


class TrainProgress:
    """Callback for ``train`` and ``pretrain``: a bar per epoch (loss, tokens/s, ETA) and a
    line per epoch."""

    def __init__(self, enabled: bool = True) -> None:
        self.quiet = not enabled  # --quiet: no bar and no summary lines
        self.enabled = enabled and _console.is_terminal
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:,.0f} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=_console,
                transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        if self.quiet:
            return
        if kind == "data_ready":
            member = _member("model", event)
            _console.print(
                f"{member}{event.n_train:,} training and {event.n_valid:,} validation reviews, "
                f"classes {list(event.classes)}, vocabulary {event.vocab_size:,}"
                + (f", resuming after epoch {event.start_epoch}" if event.start_epoch else "")
            )
        elif kind == "refit":
            member = _member("model", event)
            _console.print(
                f"{member}training again on all {event.rows:,} reviews (the validation rows "
                f"too) for {event.epochs} epoch{'s' if event.epochs != 1 else ''}, keeping the "
                "calibration (and the n-gram head's mix)"
            )
        elif kind == "word_vectors":
            _console.print(
                f"word vectors: {event.epochs} epochs over {event.tokens:,} tokens of the "
                f"training text in {event.seconds:.0f} s"
            )
        elif kind == "ngram_head":
            _console.print(
                f"word n-gram head: orders 1-{event.order} in 2^{event.bits} buckets, fitted on "
                f"{event.rows:,} reviews in {event.seconds:.1f} s"
            )
        elif kind == "pretrain_ready":
            member = _member("encoder", event)
            _console.print(
                f"{member}{event.n_reviews:,} reviews ({event.tokens:,} tokens in "
                f"{event.windows:,} windows) and {event.n_valid:,} held out, "
                f"vocabulary {event.vocab_size:,}"
                + (f", resuming after epoch {event.start_epoch}" if event.start_epoch else "")
            )
        elif kind == "pretrain_epoch_end":
            ppl = ", ".join(f"{d} {v:,.1f}" for d, v in event.perplexity.items())
            _console.print(
                f"epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.4f}, "
                f"held-out perplexity {ppl}, {event.seconds:.0f} s, "
                f"{event.tokens_per_s:,.0f} tok/s"
            )
        elif kind == "epoch_start" and self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                "train",
                total=event.batches,
                epoch=f"{event.epoch}/{event.epochs}",
                loss=0.0,
                speed=0.0,
            )
        elif kind == "batch" and self.progress is not None and self.task is not None:
            self.progress.update(
                self.task, completed=event.batch, loss=event.loss, speed=event.tokens_per_s
            )
        elif kind == "epoch_end":
            mark = " *" if event.improved else ""
            valid = (
                f"valid loss {event.valid_loss:.4f}, valid acc {event.valid_acc:.4f}"
                if event.valid_loss == event.valid_loss  # NaN: no validation rows
                else "no validation"
            )
            _console.print(
                f"epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.4f}, "
                f"{valid}, {event.seconds:.0f} s, {event.tokens_per_s:,.0f} tok/s{mark}"
            )


def _member(noun: str, event: Any) -> str:
    """The prefix of a line about one of several models or encoders ("model 2 of 2: ")."""
    return f"{noun} {event.member + 1} of {event.members}: " if event.members > 1 else ""


class ScoreProgress:
    """Callback for ``score``: a bar over all input rows with rows/s and ETA."""

    def __init__(self, sources: Any, enabled: bool = True) -> None:
        self.enabled = enabled and _console.is_terminal
        self.sources = sources
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> ScoreProgress:
        if self.enabled:
            from pipeline.io import count_rows, resolve_inputs

            try:
                total = count_rows(resolve_inputs(self.sources))
            except Exception:  # the scorer reports bad inputs itself, with its own message
                total = None
            self.progress = Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:,.0f} rows/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=_console,
                transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("score", total=total, rate=0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        if self.progress is None or self.task is None:
            return
        rows = event if isinstance(event, int) else getattr(event, "rows", None)
        if isinstance(rows, int) and getattr(event, "kind", "batch") == "batch":
            self.progress.advance(self.task, rows)
            task = self.progress.tasks[0]
            self.progress.update(self.task, rate=task.speed or 0.0)


def print_evaluation(report: dict[str, Any]) -> None:
    """Print an evaluation report (from ``train.evaluate``) as a short table."""
    out = Console()
    out.print(
        f"n={report['n']:,}  accuracy {report['accuracy']:.4f}  macro F1 "
        f"{report['f1_macro']:.4f}  log loss {report['log_loss']:.4f}"
        + (f"  ROC AUC {report['roc_auc']:.4f}" if report.get("roc_auc") is not None else "")
        + (f"  ECE {report['ece']:.4f}" if report.get("ece") is not None else "")
    )
    per_class = report.get("per_class") or {}
    if per_class:
        out.print(f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for name, m in per_class.items():
            out.print(
                f"{name:<16}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
                f"{m['support']:>10}"
            )
    cm = report.get("confusion_matrix")
    if cm:
        out.print("confusion matrix (rows: true, columns: predicted):")
        for row in cm:
            out.print("  " + " ".join(f"{v:>7}" for v in row))
