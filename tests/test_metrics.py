"""Metrics against hand-computed examples (``pipeline/metrics.py``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline import metrics as m


def test_accuracy_and_confusion():
    y = np.array([0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 0, 2, 1, 2])
    assert m.accuracy(y, p) == pytest.approx(4 / 6)
    cm = m.confusion_matrix(y, p, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 1, 0], [0, 1, 2]])


def test_precision_recall_f1_by_hand():
    y = np.array([0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 0, 2, 1, 2])
    precision, recall, f1, support = m.precision_recall_f1(y, p, 3)
    np.testing.assert_allclose(precision, [1 / 2, 1 / 2, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(f1, [2 / 3, 1 / 2, 0.8])
    np.testing.assert_array_equal(support, [1, 2, 3])
    assert m.f1_macro(y, p, 3) == pytest.approx((2 / 3 + 1 / 2 + 0.8) / 3)


def test_f1_of_a_class_never_predicted_is_zero():
    precision, recall, f1, _ = m.precision_recall_f1(np.array([0, 1]), np.array([0, 0]), 2)
    assert precision[1] == 0 and recall[1] == 0 and f1[1] == 0


def test_roc_auc_simple_and_with_ties():
    assert m.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # ties: pos {0.5, 0.9}, neg {0.5, 0.1}: pairs (0.5 vs 0.5)=1/2, (0.5 vs 0.1)=1,
    # (0.9 vs 0.5)=1, (0.9 vs 0.1)=1 -> 3.5 / 4
    assert m.roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1])) == 0.875
    # all scores equal: chance
    assert m.roc_auc(np.array([1, 0, 1, 0, 0]), np.zeros(5)) == 0.5
    assert m.roc_auc(np.array([0, 1]), np.array([1.0, 0.0])) == 0.0
    assert math.isnan(m.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200) / 10  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert m.roc_auc(y, s) == pytest.approx(pairs / (pos.size * neg.size))


def test_log_loss_is_clipped():
    assert m.log_loss(np.array([1]), np.array([[0.2, 0.8]])) == pytest.approx(-math.log(0.8))
    assert m.log_loss(np.array([0]), np.array([[0.0, 1.0]])) == pytest.approx(-math.log(1e-7))


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert m.expected_calibration_error(np.array([0, 1]), probs) == pytest.approx(0.45)
    # perfectly calibrated bins: confidence 0.75 with 3 of 4 right
    probs = np.tile([0.25, 0.75], (4, 1))
    assert m.expected_calibration_error(np.array([1, 1, 1, 0]), probs) == pytest.approx(0.0)
    # two bins: 0.95 (both right: gap 0.05) and 0.55 (one of two right: gap 0.05)
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    y = np.array([0, 1, 1, 1])
    assert m.expected_calibration_error(y, probs) == pytest.approx(0.05)


def test_evaluate_probs_binary_is_json_ready():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    report = m.evaluate_probs(y, probs, ("negative", "positive"))
    json.dumps(report, allow_nan=False)
    assert report["n"] == 4
    assert report["accuracy"] == 0.5
    assert report["roc_auc"] == 0.75
    assert report["confusion_matrix"] == [[1, 1], [1, 1]]
    assert report["per_class"]["positive"]["support"] == 2
    for key in ("f1_macro", "log_loss", "ece"):
        assert isinstance(report[key], float)


def test_evaluate_probs_multiclass_has_no_auc():
    y = np.array([0, 1, 2])
    probs = np.eye(3)[[0, 1, 1]]
    report = m.evaluate_probs(y, probs, ["a", "b", "c"])
    assert "roc_auc" not in report
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        m.evaluate_probs(np.array([0, 1]), np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        m.evaluate_probs(np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"])


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_scale_of_the_logits(true_t):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(20000, 1))
    y = (rng.random(20000) < 1 / (1 + np.exp(-z[:, 0] / true_t))).astype(np.int64)
    t = m.fit_temperature(y, z)
    assert t == pytest.approx(true_t, rel=0.08)
    probs = np.stack([1 / (1 + np.exp(z[:, 0] / t)), 1 / (1 + np.exp(-z[:, 0] / t))], axis=1)
    raw = np.stack([1 / (1 + np.exp(z[:, 0])), 1 / (1 + np.exp(-z[:, 0]))], axis=1)
    assert m.log_loss(y, probs) <= m.log_loss(y, raw) + 1e-12
    if true_t != 1.0:
        assert m.expected_calibration_error(y, probs) < m.expected_calibration_error(y, raw)


def test_fit_temperature_multiclass_and_bounds():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=4.0, size=(6000, 3))
    p = np.exp(z / 2) / np.exp(z / 2).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert m.fit_temperature(y, z) == pytest.approx(2.0, rel=0.1)
    # a separable set would push T to zero; the search stops at 0.25
    assert m.fit_temperature(np.array([0, 1, 1]), np.array([[-5.0], [5.0], [6.0]])) == (
        pytest.approx(0.25, rel=1e-4)
    )
    assert m.fit_temperature(np.zeros(0, np.int64), np.zeros((0, 1))) == 1.0
    with pytest.raises(ValueError):
        m.fit_temperature(np.array([0, 1]), np.zeros((3, 1)))
