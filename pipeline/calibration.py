"""After the epochs: scores that mean what they say, fitted on rows training never saw.

``calibrate`` fits the recurrent model's temperature (one scalar dividing its logits) on
held-out rows; ``mix_head`` mixes a word n-gram head (``pipeline.ngrams``) into it instead,
``a * recurrent + b * head + c`` of lowest cross-entropy, which calibrates as well. Each
returns the validation metrics of the model it leaves, with what it fitted under
``calibration``; ``mix_head`` keeps the recurrent model's own metrics under ``recurrent``.

Example::

    metrics = calibrate(model, valid_tokens, y_valid)  # sets model.config.temperature
    mix, metrics = mix_head(model, head, valid_tokens, y_valid, metrics)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline import ngrams
from pipeline.metrics import accuracy, evaluate_probs, fit_temperature
from pipeline.model import Model, probabilities
from pipeline.text import TokenIds

__all__ = ["calibrate", "mix_head"]


def calibrate(model: Model, tokens: TokenIds, y: np.ndarray, fit: bool = True) -> dict[str, Any]:
    """The model's metrics on ``tokens``/``y`` after fitting its temperature there (set in
    ``model.config``); with ``fit`` False, its metrics as it stands."""
    logits = model.predict_logits(tokens)
    before = evaluate_probs(y, probabilities(logits), model.config.classes)
    if not fit:
        return before
    temperature = fit_temperature(y, logits)
    model.config = dataclasses.replace(model.config, temperature=temperature)
    metrics = evaluate_probs(y, probabilities(logits, temperature), model.config.classes)
    metrics["calibration"] = {
        "temperature": temperature,
        "log_loss_before": before["log_loss"],
        "ece_before": before["ece"],
    }
    return metrics


def mix_head(
    model: Model, head: ngrams.Head, tokens: TokenIds, y: np.ndarray, metrics: dict[str, Any]
) -> tuple[ngrams.Mix, dict[str, Any]]:
    """The mix of ``model``'s logits and ``head``'s fitted on ``tokens``/``y`` (it replaces
    the temperature), and the mixed model's metrics there; ``metrics``, the recurrent
    model's, stay under ``recurrent`` and the head's accuracy alone under ``ngrams_alone``."""
    feats = ngrams.features(tokens, head.order, head.bits)
    z = ngrams.head_logits(feats, head.W, head.b, head.scale)
    recurrent = model.predict_logits(tokens)
    mix = ngrams.fit_mix(y, recurrent, z)
    logits = recurrent + mix.beta * z + np.asarray(mix.shift)  # what ngrams.attach gives
    mixed = evaluate_probs(y, probabilities(logits, mix.temperature), model.config.classes)
    mixed["calibration"] = {**metrics.get("calibration", {}), **dataclasses.asdict(mix)}
    mixed["ngrams_alone"] = {"accuracy": accuracy(y, probabilities(z).argmax(1))}
    return mix, {**mixed, "recurrent": metrics}
