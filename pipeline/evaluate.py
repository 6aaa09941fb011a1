"""``rnnpipe evaluate``: a model's metrics on labelled Parquet.

Example::

    report = evaluate("test.parquet", Model.load("model/"))
    report["accuracy"], report["ece"]
"""

from __future__ import annotations

from typing import Any

from pipeline import io
from pipeline.dataset import label_indices, read_labelled
from pipeline.metrics import evaluate_probs
from pipeline.model import Model

__all__ = ["evaluate", "evaluate_rows"]


def evaluate(
    data_paths: Any,
    model: Model,
    text_col: str | None = None,
    label_col: str = "label",
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Score labelled Parquet with ``model`` and return ``metrics.evaluate_probs``'s report.

    Labels are matched to the model's class names as strings (integer labels by their
    decimal value). Raises InputError for unreadable data, null labels or labels the model
    does not know (naming file, column and row).

    Example: ``report = evaluate("test.parquet", Model.load("model/"))``.
    """
    return evaluate_rows(data_paths, model, text_col, label_col, batch_size)[0]


def evaluate_rows(
    data_paths: Any,
    model: Model,
    text_col: str | None = None,
    label_col: str = "label",
    batch_size: int = 1024,
) -> tuple[dict[str, Any], Any, Any, Any]:
    """``evaluate``'s report with what it was computed from: ``(report, y int[n], probs
    float32[n, C], texts)`` (for ``evaluate --html``'s charts and worst reviews).

    Example: ``report, y, probs, texts = evaluate_rows("test.parquet", model)``.
    """
    files = io.resolve_inputs(data_paths)
    data = read_labelled(files, text_col, label_col)
    y = label_indices(data, model.config.classes, label_col)
    probs = model.predict_proba(model.encode(data.texts), batch_size=batch_size)
    return evaluate_probs(y, probs, model.config.classes), y, probs, data.texts
