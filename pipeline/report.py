"""One self-contained HTML page a person can read: explained reviews and a model's report.

Shared by ``rnnpipe explain --html`` (reviews with every token shaded by its attribution,
and the words and two-word phrases that most often push toward each class) and
``rnnpipe evaluate --html`` (accuracy table, confusion matrix, ROC curve, reliability
diagram, the training curves from ``history.csv``, and the worst-misclassified reviews with
their explanations). Charts are inline SVG drawn here, so the page needs no plotting
library and loads nothing from the network.

Example::

    html = explain_page(summary.samples, summary.top, title="reviews/ explained")
    Path("report.html").write_text(html)
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["evaluate_page", "explain_page", "highlight"]

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse}
td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.review{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;
margin:.8em 0}.meta{color:#555;font-size:.9em;margin-bottom:.3em}.charts{display:flex;
flex-wrap:wrap;gap:1.5em}svg{background:#fff;border:1px solid #eee}
.legend{font-size:.85em;color:#555}
""" + "".join(
    f".p{k}{{background:rgba(32,140,64,{k / 10:.1f})}}"
    f".n{k}{{background:rgba(200,40,40,{k / 10:.1f})}}"
    for k in range(1, 10)
)  # fmt: skip


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def highlight(text: str | None, spans: Sequence[tuple[int, int]], values: Sequence[float]) -> str:
    """``text`` as HTML with each token's span shaded: green toward the class explained,
    red against it, darker for larger attributions (scaled to the review's largest)."""
    if not text:
        return "<i>(empty)</i>"
    scale = max((abs(v) for v in values), default=0.0) or 1.0
    out, pos = [], 0
    for (a, b), v in zip(spans, values, strict=True):
        out.append(_esc(text[pos:a]))
        level = min(9, int(abs(v) / scale * 9.999))
        word = _esc(text[a:b])
        title = f"{v:+.3f}"
        out.append(
            f'<b class="{"p" if v > 0 else "n"}{level}" title="{title}">{word}</b>'
            if level
            else f'<span title="{title}">{word}</span>'
        )
        pos = b
    out.append(_esc(text[pos:]))
    return "".join(out).replace("&lt;br /&gt;", "<br>")


def _review(sample: Mapping[str, Any]) -> str:
    probs = ", ".join(f"{c} {p:.3f}" for c, p in sample["probabilities"].items())
    truth = f" · true <b>{_esc(str(sample['truth']))}</b>" if "truth" in sample else ""
    gap = sample.get("gap", float("nan"))
    gap_text = f" · completeness gap {gap:.2%}" if gap == gap else ""
    return (
        f'<div class="review"><div class="meta">label <b>{_esc(str(sample["label"]))}</b>'
        f"{truth} · explained toward <b>{_esc(sample['target'])}</b> · {probs}{gap_text}</div>"
        f"{highlight(sample['text'], sample['spans'], sample['attributions'])}</div>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>{body}</body></html>\n"
    )


def _top_table(top: Mapping[str, Mapping[str, float]], n: int = 20) -> str:
    parts = []
    for cls, counts in sorted(top.items()):
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        if not best:
            continue
        most = best[0][1]
        rows = "".join(
            f'<tr><td class="l">{_esc(w)}</td><td>{c:,}</td><td class="l">'
            f'<svg width="160" height="12" style="border:0"><rect width="{160 * c / most:.1f}" '
            f'height="12" fill="#4a8"/></svg></td></tr>'
            for w, c in best
        )
        parts.append(
            f'<div><h3>toward {_esc(cls)}</h3><table><tr><th class="l">word or phrase</th>'
            f"<th>reviews</th><th></th></tr>{rows}</table></div>"
        )
    return f'<div class="charts">{"".join(parts)}</div>'


def explain_page(
    samples: Sequence[Mapping[str, Any]],
    top: Mapping[str, Mapping[str, float]],
    title: str = "rnnpipe explanations",
    method: str = "ig",
) -> str:
    """The ``explain --html`` page: the words and phrases that most often push toward each
    class over the whole input, then the sample reviews, each token shaded."""
    body = (
        f'<p class="legend">Method {_esc(method)}. Shading: green pushes toward the class '
        f"explained, red against it; hover a word for its attribution.</p>"
        f"<h2>Words and two-word phrases that most often push toward each class</h2>"
        f"<p class=legend>Counted over every explained review: its three highest-attributed "
        f"words and two highest adjacent pairs toward its class.</p>{_top_table(top)}"
        f"<h2>Reviews ({len(samples):,})</h2>{''.join(_review(s) for s in samples)}"
    )
    return _page(title, body)


# ---------------------------------------------------------------------------------------------
# SVG charts
# ---------------------------------------------------------------------------------------------


def _line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    title: str, xlabel: str, ylabel: str, xlim=None, ylim=None, diagonal: bool = False,
) -> str:  # fmt: skip
    """An SVG line chart: ``series`` of (name, xs, ys, colour)."""
    w, h, pad = 340, 260, 42
    xs = [x for _, s, _, _ in series for x in s]
    ys = [y for _, _, s, _ in series for y in s if y == y]
    x0, x1 = xlim or (min(xs, default=0), max(xs, default=1))
    y0, y1 = ylim or (min(ys, default=0), max(ys, default=1))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - pad - 10)

    def py(y: float) -> float:
        return h - pad - (y - y0) / (y1 - y0) * (h - pad - 24)

    parts = [
        f'<svg width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>',
        f'<line x1="{pad}" y1="{py(y0)}" x2="{w - 10}" y2="{py(y0)}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{py(y0)}" x2="{pad}" y2="24" stroke="#888"/>',
        f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle" font-size="11">{_esc(xlabel)}</text>',
        f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 {h / 2})" '
        f'text-anchor="middle">{_esc(ylabel)}</text>',
    ]
    for v in (x0, x1):
        parts.append(f'<text x="{px(v)}" y="{py(y0) + 14}" font-size="10" '
                     f'text-anchor="middle">{v:.3g}</text>')  # fmt: skip
    for v in (y0, y1):
        parts.append(f'<text x="{pad - 4}" y="{py(v) + 3}" font-size="10" '
                     f'text-anchor="end">{v:.3g}</text>')  # fmt: skip
    if diagonal:
        parts.append(f'<line x1="{px(x0)}" y1="{py(y0)}" x2="{px(x1)}" y2="{py(y1)}" '
                     f'stroke="#bbb" stroke-dasharray="4"/>')  # fmt: skip
    for k, (name, sx, sy, colour) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy, strict=True) if y == y)
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{pts}"/>')  # fmt: skip
        parts.append(f'<text x="{w - 14}" y="{40 + 14 * k}" font-size="11" fill="{colour}" '
                     f'text-anchor="end">{_esc(name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _roc(y: np.ndarray, score: np.ndarray) -> tuple[list[float], list[float]]:
    order = np.argsort(-score, kind="stable")
    ys = y[order]
    tp, fp = np.cumsum(ys == 1), np.cumsum(ys == 0)
    P, N = max(tp[-1], 1) if ys.size else 1, max(fp[-1], 1) if ys.size else 1
    return [0.0, *(fp / N).tolist()], [0.0, *(tp / P).tolist()]


def _reliability(y: np.ndarray, probs: np.ndarray, bins: int = 10):
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    xs, ys = [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            xs.append(float(conf[sel].mean()))
            ys.append(float(correct[sel].mean()))
    return xs, ys


def _confusion(report: Mapping[str, Any]) -> str:
    classes = report["classes"]
    head = "".join(f"<th>{_esc(c)}</th>" for c in classes)
    rows = "".join(
        f'<tr><th class="l">{_esc(c)}</th>' + "".join(f"<td>{v:,}</td>" for v in row) + "</tr>"
        for c, row in zip(classes, report["confusion_matrix"], strict=True)
    )
    return (f'<table class="confusion"><tr><th class="l">true \\ predicted</th>{head}</tr>'
            f"{rows}</table>")  # fmt: skip


def evaluate_page(
    report: Mapping[str, Any],
    y: np.ndarray,
    probs: np.ndarray,
    history: Sequence[Mapping[str, float]],
    worst: Sequence[Mapping[str, Any]],
    title: str = "rnnpipe evaluation",
) -> str:
    """The ``evaluate --html`` page: metrics, confusion matrix, ROC curve (binary),
    reliability diagram, training curves and the worst-misclassified reviews explained."""
    metrics = [("rows", f"{report['n']:,}"), ("accuracy", f"{report['accuracy']:.4f}"),
               ("macro F1", f"{report['f1_macro']:.4f}"), ("log loss", f"{report['log_loss']:.4f}"),
               ("ECE", f"{report['ece']:.4f}")]  # fmt: skip
    if report.get("roc_auc") is not None:
        metrics.append(("ROC AUC", f"{report['roc_auc']:.4f}"))
    table = "".join(f'<tr><th class="l">{k}</th><td>{v}</td></tr>' for k, v in metrics)
    per_class = "".join(
        f'<tr><td class="l">{_esc(c)}</td><td>{m["precision"]:.4f}</td><td>{m["recall"]:.4f}</td>'
        f"<td>{m['f1']:.4f}</td><td>{m['support']:,}</td></tr>"
        for c, m in report["per_class"].items()
    )
    charts = []
    if probs.shape[1] == 2 and y.size:
        fx, fy = _roc(y, probs[:, 1])
        charts.append(_line_chart([("ROC", fx, fy, "#26a")], "ROC curve", "false positive rate",
                                  "true positive rate", (0, 1), (0, 1), diagonal=True))  # fmt: skip
    rx, ry = _reliability(y, probs)
    charts.append(_line_chart([("model", rx, ry, "#a42")], "Reliability (calibration)",
                              "confidence", "accuracy", (0, 1), (0, 1), diagonal=True))  # fmt: skip
    if history:
        ep = [float(r["epoch"]) for r in history]
        charts.append(_line_chart(
            [("train", ep, [float(r["train_loss"]) for r in history], "#26a"),
             ("validation", ep, [float(r["valid_loss"]) for r in history], "#a42")],
            "Training curves", "epoch", "loss",
        ))  # fmt: skip
        charts.append(_line_chart(
            [("validation", ep, [float(r["valid_acc"]) for r in history], "#284")],
            "Validation accuracy", "epoch", "accuracy",
        ))  # fmt: skip
    body = (
        f"<table>{table}</table><h2>Per class</h2><table><tr><th class=l>class</th>"
        f"<th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}</table>"
        f"<h2>Confusion matrix</h2>{_confusion(report)}"
        f'<h2>Charts</h2><div class="charts">{"".join(charts)}</div>'
        f"<h2>The worst-misclassified reviews ({len(worst)}), explained</h2>"
        f"{''.join(_review(s) for s in worst)}"
    )
    return _page(title, body)


def history_csv(history: Sequence[Mapping[str, float]]) -> str:
    """``history.csv``'s text: one row per epoch, the columns ``evaluate_page`` draws."""
    buf = io.StringIO()
    cols = ["epoch", "train_loss", "valid_loss", "valid_acc", "seconds", "tokens_per_s"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({c: row[c] for c in cols})
    return buf.getvalue()
