"""``rnnpipe explain``, ``score``, ``evaluate`` and ``predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import (
    Device,
    Json,
    LabelCol,
    ModelDir,
    TextCol,
    Threads,
    app,
    expected_errors,
    keep_columns,
    load_model,
    resolve_backend,
    set_threads,
)
from pipeline.config import ExplainOptions as _X
from pipeline.config import ScoreOptions as _S

# --------------------------------------------------------------------------------- explain


@app.command()
@expected_errors
def explain(
    data: Annotated[list[str], typer.Argument(help="Parquet file(s), directories or globs.")],
    model: ModelDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder, or FILE.parquet.")],
    method: Annotated[str, typer.Option(help="ig, grad or occlusion.")] = _X.method,
    steps: Annotated[int, typer.Option(help="Integration steps of ig.", min=1)] = _X.steps,
    tolerance: Annotated[
        float,
        typer.Option(help="ig: refine rows whose completeness gap exceeds this (0: never)."),
    ] = _X.tolerance,
    target: Annotated[
        str | None, typer.Option(help="Class to explain toward (default: the predicted one).")
    ] = None,
    keep: Annotated[str | None, typer.Option(help="Input columns to keep (default: id).")] = None,
    batch_rows: Annotated[
        int, typer.Option(help="Rows per streamed batch.", min=1)
    ] = _X.batch_rows,
    threshold: Annotated[float, typer.Option(help="Binary decision threshold.")] = _X.threshold,
    resume: Annotated[bool, typer.Option(help="Skip outputs already complete.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write an HTML report here.")] = None,
    rows: Annotated[int, typer.Option(help="Reviews shown in the HTML report.", min=0)] = 200,
    text_col: TextCol = None,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Which words drove each score: per-token attributions, written like scores.

    Each output row holds the score columns, then target, tokens, token_start/token_end
    (offsets into the text), attributions and ig_gap (integrated gradients' completeness).
    Example: rnnpipe explain reviews/ --model model/ --out explained/ --html report.html
    """
    from pipeline.explain import run_explain

    set_threads(threads)
    options = _X(
        method=method, steps=steps, target=target, tolerance=tolerance, text_col=text_col,
        keep=keep_columns(keep),
        batch_rows=batch_rows, threshold=threshold, resume=resume,
        backend=resolve_backend(device),
    )  # fmt: skip
    m = load_model(model, device)
    summary = run_explain(data, m, model, out, options, html, rows, quiet or json_out)
    if json_out:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        rate = summary.rows / summary.seconds if summary.seconds else 0.0
        typer.echo(
            f"explained {summary.rows:,} rows in {summary.files} file(s) "
            f"({summary.skipped_files} skipped) in {summary.seconds:.1f} s: {rate:,.1f} rows/s"
        )


# ----------------------------------------------------------------------------------- score


@app.command()
@expected_errors
def score(
    data: Annotated[list[str], typer.Argument(help="Parquet file(s), directories or globs.")],
    model: ModelDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder, or FILE.parquet.")],
    keep: Annotated[str | None, typer.Option(help="Input columns to keep (default: id).")] = None,
    batch_rows: Annotated[
        int, typer.Option(help="Rows per streamed batch.", min=1)
    ] = _S.batch_rows,
    threshold: Annotated[float, typer.Option(help="Binary decision threshold.")] = _S.threshold,
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
    from pipeline.score import score as run_score

    set_threads(threads)
    options = _S(
        text_col=text_col,
        keep=keep_columns(keep),
        batch_rows=batch_rows,
        threshold=threshold,
        resume=resume,
        backend=resolve_backend(device),
    )
    m = load_model(model, device)
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
@expected_errors
def evaluate(
    data: Annotated[list[str], typer.Argument(help="Labelled Parquet file(s).")],
    model: ModelDir,
    text_col: TextCol = None,
    label_col: LabelCol = "label",
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Json = False,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report here.")
    ] = None,
    worst: Annotated[
        int, typer.Option(help="Misclassified reviews explained in the report.", min=0)
    ] = 20,
) -> None:
    """Accuracy, per-class precision/recall/F1, ROC AUC, log loss, calibration of a model.

    --html writes one page: the metrics, confusion matrix, ROC curve, reliability diagram,
    training curves and the worst-misclassified reviews with their explanations.
    Example: rnnpipe evaluate test.parquet --model model/ --html report.html
    """
    from pipeline.evaluate import evaluate_rows

    set_threads(threads)
    m = load_model(model, device)
    report, y, probs, texts = evaluate_rows(data, m, text_col=text_col, label_col=label_col)
    if html is not None:
        from pipeline.explain import write_evaluate_html

        write_evaluate_html(html, data, model, m, report, y, probs, texts, worst)
    if json_out:
        typer.echo(json.dumps(report))
        return
    from pipeline.progress import print_evaluation

    print_evaluation(report)


# --------------------------------------------------------------------------------- predict


@app.command()
@expected_errors
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts (default: stdin lines).")] = None,
    model: ModelDir = Path("model"),
    threshold: Annotated[float, typer.Option(help="Binary decision threshold.")] = 0.5,
    threads: Threads = 0,
    device: Device = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show which words drove each label.")
    ] = False,
    method: Annotated[str, typer.Option(help="ig, grad or occlusion (with --explain).")] = "ig",
) -> None:
    """Label texts given as arguments, or one per line on stdin.

    With --explain each text is shown with its most influential words marked (coloured on
    a terminal: green toward the label, red against it); --json then carries every token
    and its attribution. Example: rnnpipe predict --model model/ "a wonderful film" --explain
    """
    from pipeline.score import predict_texts

    set_threads(threads)
    m = load_model(model, device)
    items, invalid = _input_texts(texts)
    if invalid:
        where = "argument" if texts else "line"
        _err_warn(
            f"{len(invalid)} input {where}(s) held invalid UTF-8 (first: {where} {invalid[0]}): "
            "decoded with U+FFFD replacement characters"
        )
    if explain:
        from pipeline.explain import print_explanations

        print_explanations(m, items, method, threshold, json_out, sys.stdout.isatty())
        return
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
