"""Which words drove each score: ``rnnpipe explain`` and ``predict --explain``, and the
HTML reports.

The attributions themselves (integrated gradients, gradient x input, occlusion) are
``pipeline.attribution``'s; this module turns texts into tokens and their places in the
text, streams Parquet like ``score`` (bounded batches, one output per input written
atomically, ``resume``, ``keep``) and writes the pages.

The output holds the score columns, then ``target`` (the class explained), ``tokens``
(list<string>, as the tokenizer normalised them), ``token_start`` and ``token_end``
(list<int32>, code-point offsets into the original text, so any UI can highlight the raw
review), ``attributions`` (list<float32>) and ``ig_gap`` (float32, NaN for the other
methods).

Example::

    exp = attributions(model, model.encode(texts), targets=None)
    exp.values[exp.offsets[0]:exp.offsets[1]]      # the first review's tokens
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import io, outputs
from pipeline.attribution import Explanation, attributions
from pipeline.config import METHODS, ExplainOptions
from pipeline.errors import ConfigError, InputError
from pipeline.model import WEIGHTS_FILE, Model

__all__ = [
    "METHODS",
    "Explanation",
    "ExplainOptions",
    "ExplainSummary",
    "attributions",
    "explain",
    "explain_texts",
]

# ---------------------------------------------------------------------------------------------
# Texts: tokens, their places in the text, and their attributions
# ---------------------------------------------------------------------------------------------


@dataclass
class TextExplanation:
    """One text's explanation: its ``tokens`` (normalised), their ``spans`` (start, end code
    points into the text), ``attributions``, the ``target`` class name, the probability of
    each class (``probabilities``) and ``gap`` (ig's relative completeness gap)."""

    text: str | None
    tokens: list[str]
    spans: list[tuple[int, int]]
    attributions: list[float]
    target: str
    probabilities: dict[str, float]
    gap: float = field(default=float("nan"))


def _token_columns(model: Model, texts: pa.Array) -> tuple[list[list[str]], np.ndarray, Any]:
    """The tokens the model sees (the last ``max_len`` of each text) and their spans."""
    tok = model.tokenizer
    all_tokens = tok.tokens(texts)
    rows, starts, ends = tok.spans(texts)
    max_len = model.config.max_len
    kept_rows = [0]
    keep = np.zeros(starts.size, dtype=bool)
    tokens: list[list[str]] = []
    for i, words in enumerate(all_tokens):
        first = max(0, len(words) - max_len)
        tokens.append(words[first:])
        keep[rows[i] + first : rows[i + 1]] = True
        kept_rows.append(kept_rows[-1] + len(words) - first)
    return tokens, np.asarray(kept_rows, dtype=np.int64), (starts[keep], ends[keep])


def _targets(model: Model, probs: np.ndarray, target: str | None, threshold: float) -> np.ndarray:
    if target is None:
        return outputs.label_index(probs, model, threshold).astype(np.int64)
    classes = model.config.classes
    if target not in classes:
        raise ConfigError(f"target {target!r} is not a class of the model: {list(classes)}")
    return np.full(probs.shape[0], classes.index(target), dtype=np.int64)


def explain_texts(
    model: Model,
    texts: Sequence[str | None],
    method: str = "ig",
    steps: int = 32,
    target: str | None = None,
    threshold: float = 0.5,
    tolerance: float = 0.01,
) -> list[TextExplanation]:
    """Explanations of a few texts (``rnnpipe predict --explain``).

    Example: ``explain_texts(model, ["A joy to watch."])[0].tokens``.
    """
    arr = pa.array(list(texts), pa.large_string())
    tokens = model.encode(arr)
    probs = model.predict_proba(tokens)
    targets = _targets(model, probs, target, threshold)
    exp = attributions(model, tokens, targets, method, steps, tolerance)
    words, rows, (starts, ends) = _token_columns(model, arr)
    classes = model.config.classes
    out = []
    for i, text in enumerate(texts):
        a, b = int(rows[i]), int(rows[i + 1])
        out.append(
            TextExplanation(
                text=text,
                tokens=words[i],
                spans=list(zip(starts[a:b].tolist(), ends[a:b].tolist(), strict=True)),
                attributions=exp.values[exp.offsets[i] : exp.offsets[i + 1]].tolist(),
                target=classes[int(targets[i])],
                probabilities={c: float(p) for c, p in zip(classes, probs[i], strict=True)},
                gap=float(exp.gap[i]),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Streaming Parquet in, Parquet out
# ---------------------------------------------------------------------------------------------

_EXTRA = [
    pa.field("target", pa.string()),
    pa.field("tokens", pa.list_(pa.string())),
    pa.field("token_start", pa.list_(pa.int32())),
    pa.field("token_end", pa.list_(pa.int32())),
    pa.field("attributions", pa.list_(pa.float32())),
    pa.field("ig_gap", pa.float32()),
]


@dataclass
class ExplainSummary:
    """What an ``explain`` run did: ``rows``, ``files``, ``skipped_files``, ``seconds``,
    ``outputs`` (input, output, rows), and up to ``sample_rows`` explained rows kept for a
    report (``samples``: dicts with text, label, score columns, tokens, attributions...)."""

    rows: int = 0
    files: int = 0
    skipped_files: int = 0
    seconds: float = 0.0
    outputs: list[tuple[Path, Path, int]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    top: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "files": self.files,
            "skipped_files": self.skipped_files,
            "seconds": round(self.seconds, 6),
            "rows_per_s": round(self.rows / self.seconds, 3) if self.seconds > 0 else 0.0,
            "outputs": [{"input": str(i), "output": str(o), "rows": n} for i, o, n in self.outputs],
        }


def _list_array(values: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def _explain_batch(
    model: Model, texts: pa.Array, probs: np.ndarray, options: ExplainOptions
) -> tuple[list[pa.Array], Explanation, list[list[str]], tuple[np.ndarray, ...]]:
    targets = _targets(model, probs, options.target, options.threshold)
    tokens = model.encode(texts)
    exp = attributions(model, tokens, targets, options.method, options.steps, options.tolerance)
    words, rows, (starts, ends) = _token_columns(model, texts)
    flat = [w for ws in words for w in ws]
    names = np.asarray(model.config.classes, dtype=object)[targets]
    columns = [
        pa.array(names.tolist(), pa.string()),
        _list_array(np.asarray(flat, dtype=object), rows, pa.string()),
        _list_array(starts, rows, pa.int32()),
        _list_array(ends, rows, pa.int32()),
        _list_array(exp.values, exp.offsets, pa.float32()),
        pa.array(exp.gap, pa.float32()),
    ]
    return columns, exp, words, (rows, starts, ends)


def _collect(
    summary: ExplainSummary, texts: pa.Array, probs: np.ndarray, model: Model,
    exp: Explanation, words: list[list[str]], spans: tuple[np.ndarray, ...], sample_rows: int,
    labels: pa.Array,
) -> None:  # fmt: skip
    """Keep the first ``sample_rows`` rows for a report, and count each row's most pushing
    words and two-word phrases toward its target class."""
    classes = model.config.classes
    for i in range(len(texts)):
        a, b = int(exp.offsets[i]), int(exp.offsets[i + 1])
        vals = exp.values[a:b]
        target = classes[int(exp.target[i])]
        if len(summary.samples) < sample_rows:
            summary.samples.append(
                {
                    "text": texts[i].as_py(),
                    "label": labels[i].as_py(),
                    "target": target,
                    "probabilities": {c: float(p) for c, p in zip(classes, probs[i], strict=True)},
                    "tokens": words[i],
                    "spans": list(
                        zip(spans[1][a:b].tolist(), spans[2][a:b].tolist(), strict=True)
                    ),  # fmt: skip
                    "attributions": vals.tolist(),
                    "gap": float(exp.gap[i]),
                }
            )
        counts = summary.top.setdefault(target, {})
        for k in np.argsort(-vals)[:3].tolist():
            if vals[k] > 0:
                counts[words[i][k]] = counts.get(words[i][k], 0) + 1
        if len(vals) > 1:
            pairs = vals[:-1] + vals[1:]
            for k in np.argsort(-pairs)[:2].tolist():
                if pairs[k] > 0:
                    phrase = f"{words[i][k]} {words[i][k + 1]}"
                    counts[phrase] = counts.get(phrase, 0) + 1


def explain(
    sources: str | Path | Sequence[str | Path],
    model: Model,
    out: str | Path,
    options: ExplainOptions | None = None,
    progress: Callable[[Any], None] | None = None,
    *,
    model_dir: str | Path | None = None,
    sample_rows: int = 0,
) -> ExplainSummary:
    """Explain every Parquet file of ``sources`` into one output file each (layout and
    checks as ``score``: outputs written atomically, never over an input, ``resume`` skips
    complete ones). ``sample_rows`` rows are kept in the summary for an HTML report.

    Raises InputError, ConfigError, RunError as ``score`` does.

    Example: ``explain("reviews/", Model.load("m/"), "explained/", ExplainOptions(method="grad"))``.
    """
    options = options or ExplainOptions()
    model = outputs.bind_backend(model, options.backend)
    if options.target is not None and options.target not in model.config.classes:
        raise ConfigError(
            f"--target {options.target!r} is not a class of the model: {list(model.config.classes)}"
        )
    started = time.perf_counter()
    pairs = outputs.output_paths(sources, Path(out))
    plans = [outputs.plan_file(s, d, model, options.text_col, options.keep) for s, d in pairs]
    for plan in plans:
        clash = [c for c in plan.keep if c in {f.name for f in _EXTRA}]
        if clash:
            raise ConfigError(f"keep column {clash[0]!r} of {plan.input} is an explain column")
    io.remove_stale_temps(plan.output for plan in plans)
    weights = Path(model_dir) / WEIGHTS_FILE if model_dir is not None else None
    fingerprint = model.fingerprint()
    summary = ExplainSummary()
    for plan in plans:
        schema = pa.schema([*plan.schema, *_EXTRA])
        schema = outputs.with_metadata(schema, fingerprint, plan.text_col, options.threshold)
        schema = schema.with_metadata(
            {**schema.metadata, outputs.META_PREFIX + b"explain": repr(
                (options.method, options.steps, options.target, options.tolerance)
            ).encode()}
        )  # fmt: skip
        if options.resume and outputs.is_complete(plan, schema, weights):
            summary.skipped_files += 1
            summary.outputs.append((plan.input, plan.output, plan.rows))
            outputs.notify(progress, "file_skipped", plan.input, plan.rows)
            continue
        rows = _explain_file(plan, schema, model, options, progress, summary, sample_rows)
        summary.files += 1
        summary.rows += rows
        summary.outputs.append((plan.input, plan.output, rows))
    summary.seconds = time.perf_counter() - started
    return summary


def _explain_file(plan, schema, model, options, progress, summary, sample_rows) -> int:
    outputs.notify(progress, "file_start", plan.input, 0)
    rows = 0
    with io.ParquetSink(plan.output, schema) as sink:
        for fb in io.iter_batches([plan.input], plan.columns, batch_rows=options.batch_rows):
            batch = fb.batch
            texts = batch.column(0)
            if not pa.types.is_large_string(texts.type):
                texts = texts.cast(pa.large_string())
            probs = outputs.predict(model, texts, plan.input, fb.row_offset)
            kept = [batch.column(plan.columns.index(c)) for c in plan.keep]
            preds = outputs.prediction_columns(probs, model, options.threshold)
            extra, exp, words, spans = _explain_batch(model, texts, probs, options)
            sink.write(pa.RecordBatch.from_arrays([*kept, *preds, *extra], schema=schema))
            _collect(summary, texts, probs, model, exp, words, spans, sample_rows, preds[-1])
            rows += batch.num_rows
            outputs.notify(progress, "batch", plan.input, batch.num_rows)
        if rows != plan.rows:
            raise InputError(f"{plan.input}: read {rows} rows but its footer says {plan.rows}")
    outputs.notify(progress, "file_done", plan.input, 0)
    return rows


# ---------------------------------------------------------------------------------------------
# What the CLI shows and writes
# ---------------------------------------------------------------------------------------------


def run_explain(
    sources: Any, model: Model, model_dir: Path, out: Path, options: ExplainOptions,
    html: Path | None, rows: int, quiet: bool,
) -> ExplainSummary:  # fmt: skip
    """``rnnpipe explain``: explain into ``out`` with a progress bar, and write the HTML
    report (atomically) when ``html`` is given. Bad paths are refused before any work."""
    from pipeline.progress import ScoreProgress
    from pipeline.report import explain_page

    if html is not None:
        _check_html(html, sources)
    with ScoreProgress(sources, enabled=not quiet) as progress:
        summary = explain(sources, model, out, options, progress, model_dir=model_dir,
                          sample_rows=rows if html is not None else 0)  # fmt: skip
    if html is not None:
        title = f"Explanations: {', '.join(map(str, sources))}"
        page = explain_page(summary.samples, summary.top, title, options.method)
        io.atomic_write_text(html, page)
    return summary


def _check_html(html: Path, sources: Any) -> None:
    inputs = io.resolve_inputs(sources)
    outputs.check_outputs([(f, Path(html).absolute()) for f in inputs])


_GREEN, _RED, _RESET = "\033[1;32m", "\033[1;31m", "\033[0m"


def _marked(text: str, spans: Sequence[tuple[int, int]], values: Sequence[float], tty: bool,
            top: int = 5) -> str:  # fmt: skip
    """``text`` with its ``top`` most influential tokens marked: coloured on a terminal,
    ``[+word]``/``[-word]`` otherwise."""
    order = sorted(range(len(values)), key=lambda k: -abs(values[k]))[:top]
    chosen = {k for k in order if values[k] != 0}
    out, pos = [], 0
    for k, (a, b) in enumerate(spans):
        if k not in chosen:
            continue
        out.append(text[pos:a])
        word = text[a:b]
        if tty:
            out.append(f"{_GREEN if values[k] > 0 else _RED}{word}{_RESET}")
        else:
            out.append(f"[{'+' if values[k] > 0 else '-'}{word}]")
        pos = b
    out.append(text[pos:])
    return "".join(out)


def print_explanations(
    model: Model, texts: Sequence[str], method: str, threshold: float, as_json: bool, tty: bool
) -> None:
    """``rnnpipe predict --explain``: one line per text, its label, probability and the text
    with its top words marked; or JSON lines with every token and attribution."""
    import json
    import sys

    for e in explain_texts(model, texts, method=method, threshold=threshold):
        p = e.probabilities[e.target]
        if as_json:
            record = {
                "text": e.text, "label": e.target, "probability": p, "probs": e.probabilities,
                "tokens": e.tokens, "spans": e.spans, "attributions": e.attributions,
                "method": method,
            }  # fmt: skip
            if method == "ig":
                record["ig_gap"] = e.gap
            print(json.dumps(record), file=sys.stdout)
        else:
            marked = _marked(e.text or "", e.spans, e.attributions, tty)
            print(f"{e.target}\t{p:.4f}\t{marked}", file=sys.stdout)


def write_evaluate_html(
    html: Path, sources: Any, model_dir: Path, model: Model, report: dict[str, Any],
    y: np.ndarray, probs: np.ndarray, texts: Any, worst: int,
) -> None:  # fmt: skip
    """``rnnpipe evaluate --html``: the report page, with the training curves of
    ``model_dir/history.csv`` and the ``worst`` most confidently misclassified reviews
    explained (integrated gradients toward the predicted class)."""
    import csv

    from pipeline.report import evaluate_page

    _check_html(html, sources)
    history = []
    if (Path(model_dir) / "history.csv").is_file():
        with open(Path(model_dir) / "history.csv", encoding="utf-8") as f:
            history = [r for r in csv.DictReader(f) if r.get("valid_loss") not in ("", "nan")]
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:worst]
    samples = []
    if wrong.size:
        chosen = texts.take(pa.array(wrong)) if hasattr(texts, "take") else texts
        chosen = pa.chunked_array([chosen]) if isinstance(chosen, pa.Array) else chosen
        exps = explain_texts(model, chosen.to_pylist())
        classes = model.config.classes
        for row, e in zip(wrong.tolist(), exps, strict=True):
            samples.append({
                "text": e.text, "label": e.target, "truth": classes[int(y[row])],
                "target": e.target, "probabilities": e.probabilities, "spans": e.spans,
                "attributions": e.attributions, "gap": e.gap,
            })  # fmt: skip
    title = f"Evaluation of {model_dir} on {', '.join(map(str, sources))}"
    page = evaluate_page(report, y, probs, history, samples, title)
    io.atomic_write_text(html, page)
