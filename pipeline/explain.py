"""Which words drove each score: token attributions in batch, through the model's own kernels.

Three methods, each giving every token the model saw a number toward one class (the
predicted one unless another is asked for):

* ``ig``, integrated gradients (Sundararajan et al. 2017): the token's embedding times the
  average gradient of the class's logit along the straight path from an all-zero input (the
  padding embedding, every position kept) to the review. The path is integrated with
  Gauss-Legendre quadrature (``steps`` nodes, as Captum does by default), and all the
  nodes of a batch of reviews run through the kernels at once: copy k of the batch has
  every token's embedding scaled by the node alpha_k (the kernels' per-token input
  scale, so the input projection runs once per distinct word, not once per copy), and
  the gradient of a token's scale, x . df/dx at alpha_k * x, summed with the nodes'
  weights, is its attribution. The attributions add up to f(review) - f(baseline)
  (completeness); each row carries how far they miss it (``ig_gap``, relative).
* ``grad``: gradient times input, one forward and backward pass.
* ``occlusion``: f(review) - f(review without the token), the model-agnostic check.

f is the logit of the class (for a binary model the single logit, negated for the negative
class), before the temperature: a temperature rescales every attribution alike.

``explain`` streams Parquet like ``score`` (bounded batches, one output per input written
atomically, ``resume``, ``keep``): the score columns, then ``target`` (the class explained),
``tokens`` (list<string>, as the tokenizer normalised them), ``token_start`` and
``token_end`` (list<int32>, code-point offsets into the original text, so any UI can
highlight the raw review), ``attributions`` (list<float32>) and ``ig_gap`` (float32, NaN for
the other methods).

Example::

    exp = attributions(model, model.encode(texts), targets=None)
    exp.values[exp.offsets[0]:exp.offsets[1]]      # the first review's tokens
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import io, outputs
from pipeline.config import METHODS, ExplainOptions
from pipeline.errors import ConfigError, InputError
from pipeline.model import WEIGHTS_FILE, Model
from pipeline.text import TokenIds

__all__ = [
    "METHODS",
    "Explanation",
    "ExplainOptions",
    "ExplainSummary",
    "attributions",
    "explain",
    "explain_texts",
]

# interpolated token rows per forward + backward pass: bounds memory (the default model
# peaks near 550 MB explaining with ig); on random IMDB reviews 1 << 15 ran ig 1.06x and
# grad 1.05x as fast as 1 << 14, and 1 << 16 about 1.15x but peaked near 800 MB
_ROWS_PER_PASS = 1 << 15


@dataclass
class Explanation:
    """Attributions of a batch: ``values`` float32[nnz] in token order (``offsets`` the
    tokens' int64[n+1]); ``target`` int[n] the class each row is explained toward; ``f_x`` and
    ``f_base`` float64[n] the class's logit for the review and the baseline (ig); ``gap``
    float32[n] |sum(values) - (f_x - f_base)| / |f_x - f_base| (ig; NaN otherwise)."""

    values: np.ndarray
    offsets: np.ndarray
    target: np.ndarray
    f_x: np.ndarray
    f_base: np.ndarray
    gap: np.ndarray


def _coefficients(model: Model, target: np.ndarray) -> np.ndarray:
    """(n, C') with f = sum(coef * logits): +-1 on a binary model's logit, else one-hot."""
    if model.config.binary:
        return np.where(target == 1, 1.0, -1.0)[:, None]
    coef = np.zeros((target.size, model.config.num_outputs))
    coef[np.arange(target.size), target] = 1.0
    return coef


def _quiet(model: Model) -> Model:
    """The model without its training-time regularisers (the same parameters)."""
    cfg = dataclasses.replace(
        model.config, dropout=0.0, word_dropout=0.0, embed_dropout=0.0, weight_drop=0.0
    )
    return Model(cfg, model.params, backend=model.backend)


def _path_gradients(
    quiet: Model,
    tokens: TokenIds,
    targets: np.ndarray | None,
    alphas: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sum_k weights[k] * x . df/dx at alphas[k] * x`` per token [nnz], f at each alpha
    [m, n], targets [n])``: one forward and backward pass over m copies of the batch, copy
    k with every token's embedding scaled by ``alphas[k]`` (the input projection still runs
    once per distinct word). The gradient of a token's scale is x . df/dx at that point: its
    own gradient, not its word's. ``targets`` None: each row's predicted class, read from
    the logits of the last copy (alpha 1, the review itself) before the backward pass."""
    m, nnz, n = alphas.size, tokens.nnz, len(tokens)
    offsets = np.concatenate([tokens.offsets[:-1] + k * nnz for k in range(m)] + [[m * nnz]])
    batch = TokenIds(offsets, np.tile(tokens.ids, m))
    scale = np.repeat(alphas, nnz).astype(np.float32)
    logits, cache = quiet.forward(batch, training=True, input_scale=scale)
    z = logits.astype(np.float64)
    if targets is None:  # the argmax of the probabilities, whatever the temperature
        last = z[(m - 1) * n :]
        targets = (last[:, 0] > 0).astype(np.int64) if quiet.config.binary else last.argmax(1)
    coefs = np.tile(_coefficients(quiet, targets), (m, 1))
    f = (z * coefs).sum(axis=1).reshape(m, n)
    dlogits = np.repeat(weights, n)[:, None] * coefs
    grads = quiet.backward(cache, dlogits, sparse_embedding=True, weights=False)
    return grads["input_scale"].reshape(m, nnz).sum(axis=0, dtype=np.float64), f, targets


def _chunks(tokens: TokenIds, copies: int) -> list[np.ndarray]:
    """Row indices in passes whose copies fit ``_ROWS_PER_PASS`` token rows (one row at
    least), the rows taken in order of length: a pass's sequences then end at about the
    same step, so the kernels' blocks keep all their rows running (grad 1.1x, ig 1.2x
    faster than passes of consecutive rows on random IMDB reviews)."""
    lens = tokens.lengths * copies
    order = np.argsort(lens, kind="stable")
    out, start, acc = [], 0, 0
    for k, length in enumerate(lens[order].tolist()):
        if acc and acc + length > _ROWS_PER_PASS:
            out.append(order[start:k])
            start, acc = k, 0
        acc += length
    if start < len(tokens):
        out.append(order[start:])
    return out


def _token_positions(offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The positions of rows ``idx``'s tokens in the batch, in ``take(idx)`` order."""
    starts, lens = offsets[idx], offsets[idx + 1] - offsets[idx]
    first = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return first + np.arange(lens.sum())


def _occlusion(model: Model, tokens: TokenIds, coef: np.ndarray) -> np.ndarray:
    """f(x) - f(x without token t), every token of every row (the reviews with one token
    left out each run through the inference path)."""
    values = np.zeros(tokens.nnz, dtype=np.float64)
    for i in range(len(tokens)):
        seq = tokens[i]
        L = seq.size
        if L == 0:
            continue
        keep = ~np.eye(L, dtype=bool)  # row t: every token but t
        ids = np.concatenate([seq[None, :].repeat(L, axis=0)[keep], seq])
        offsets = np.r_[np.arange(L + 1) * (L - 1), L * (L - 1) + L]
        z = model.predict_logits(TokenIds(offsets, ids)).astype(np.float64)
        f = z @ coef[i]
        values[tokens.offsets[i] : tokens.offsets[i + 1]] = f[-1] - f[:-1]
    return values


def attributions(
    model: Model,
    tokens: TokenIds,
    targets: np.ndarray | None = None,
    method: str = "ig",
    steps: int = 32,
) -> Explanation:
    """Attributions of every token of ``tokens`` (already truncated, as ``model.encode``
    gives them) toward ``targets`` (int class per row; None: the predicted class).

    Example: ``attributions(model, model.encode(texts), method="grad").values``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: expected ig, grad or occlusion")
    n = len(tokens)
    if targets is None and method == "occlusion":
        targets = model.predict_proba(tokens).argmax(axis=1)
    if targets is not None:
        targets = np.asarray(targets, dtype=np.int64)
    values = np.zeros(tokens.nnz, dtype=np.float64)
    f_x, f_base = np.full(n, np.nan), np.full(n, np.nan)
    if method == "occlusion":
        coef = _coefficients(model, targets)
        values = _occlusion(model, tokens, coef)
        gap = np.full(n, np.nan, dtype=np.float32)
        z = model.predict_logits(tokens).astype(np.float64)
        f_x = (z * coef).sum(axis=1)
        return Explanation(values.astype(np.float32), tokens.offsets, targets, f_x, f_base, gap)
    if method == "ig":  # Gauss-Legendre nodes on [0, 1], and the two ends (weight 0) for f
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas = np.r_[(nodes + 1) / 2, 0.0, 1.0]
        weights = np.r_[w / 2, 0.0, 0.0]
    else:
        alphas, weights = np.array([1.0]), np.array([1.0])
    quiet = _quiet(model)
    chosen = np.zeros(n, dtype=np.int64)
    for idx in _chunks(tokens, alphas.size):
        part = tokens.take(idx)
        given = None if targets is None else targets[idx]
        contrib, f, chosen[idx] = _path_gradients(quiet, part, given, alphas, weights)
        values[_token_positions(tokens.offsets, idx)] = contrib
        f_x[idx] = f[-1]
        if method == "ig":
            f_base[idx] = f[-2]
    gap = np.full(n, np.nan, dtype=np.float32)
    if method == "ig":
        sums = np.add.reduceat(values, tokens.offsets[:-1]) if tokens.nnz else np.zeros(n)
        sums[tokens.lengths == 0] = 0.0
        diff = f_x - f_base
        gap = (np.abs(sums - diff) / np.maximum(np.abs(diff), 1e-9)).astype(np.float32)
        gap[tokens.lengths == 0] = 0.0
    return Explanation(values.astype(np.float32), tokens.offsets, chosen, f_x, f_base, gap)


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
) -> list[TextExplanation]:
    """Explanations of a few texts (``rnnpipe predict --explain``).

    Example: ``explain_texts(model, ["A joy to watch."])[0].tokens``.
    """
    arr = pa.array(list(texts), pa.large_string())
    tokens = model.encode(arr)
    probs = model.predict_proba(tokens)
    targets = _targets(model, probs, target, threshold)
    exp = attributions(model, tokens, targets, method, steps)
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
    exp = attributions(model, tokens, targets, options.method, options.steps)
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
                (options.method, options.steps, options.target)
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
