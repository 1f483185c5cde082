"""compute_metrics against values worked out by hand on small fixed examples."""

import math
import warnings

import numpy as np
import pytest

from protadapt.evaluation.metrics import METRIC_DIRECTION, compute_metrics

# Binary: predictions [0, 1, 1, 0, 1]; TP=2 TN=1 FP=1 FN=1.
BINARY_TRUE = [0, 0, 1, 1, 1]
BINARY_P1 = [0.1, 0.6, 0.7, 0.4, 0.9]

# Three classes, supports 3/2/1; predictions [0, 0, 1, 1, 2, 2].
MULTI_TRUE = [0, 0, 0, 1, 1, 2]
MULTI_PROBS = [
    [0.7, 0.2, 0.1],
    [0.5, 0.3, 0.2],
    [0.2, 0.6, 0.2],
    [0.1, 0.8, 0.1],
    [0.3, 0.3, 0.4],
    [0.2, 0.2, 0.6],
]


def test_binary_metrics_match_hand_computation():
    scores = np.column_stack([1 - np.array(BINARY_P1), BINARY_P1])
    got = compute_metrics("classification", BINARY_TRUE, scores)
    # class 0: P=R=F1=1/2 (support 2); class 1: P=R=F1=2/3 (support 3)
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["precision"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert got["recall"] == pytest.approx(3 / 5)
    assert got["f1"] == pytest.approx(3 / 5)
    assert got["f1_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert got["auroc"] == pytest.approx(5 / 6)  # 5 of 6 positive/negative pairs ordered correctly


def test_binary_accepts_probability_of_class_one():
    as_matrix = compute_metrics("classification", BINARY_TRUE, np.column_stack([1 - np.array(BINARY_P1), BINARY_P1]))
    assert compute_metrics("classification", BINARY_TRUE, BINARY_P1) == pytest.approx(as_matrix)


def test_multiclass_metrics_match_hand_computation():
    got = compute_metrics("classification", MULTI_TRUE, MULTI_PROBS)
    # per class (P, R, F1): 0 -> (1, 2/3, 0.8); 1 -> (1/2, 1/2, 1/2); 2 -> (1/2, 1, 2/3); weights 3:2:1
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert got["recall"] == pytest.approx(4 / 6)
    assert got["f1"] == pytest.approx(61 / 90)
    assert got["f1_macro"] == pytest.approx(59 / 90)
    # Gorodkin's multiclass MCC: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    assert got["mcc"] == pytest.approx((4 * 6 - (2 * 3 + 2 * 2 + 2 * 1)) / math.sqrt((36 - 12) * (36 - 14)))
    # one-vs-rest AUROCs 5/6, 13/16, 1 (ties count 1/2), weighted 3:2:1
    assert got["auroc"] == pytest.approx((3 * 5 / 6 + 2 * 13 / 16 + 1 * 1) / 6)


def test_multiclass_auroc_ignores_a_class_absent_from_y_true():
    y_true = [0, 0, 0, 1, 1, 1]
    probs = np.array(MULTI_PROBS)
    # classes 0 and 1 each have support 3; class 2 weighs nothing. Class 0: 7.5/9 pairs; class 1: 5/9.
    assert compute_metrics("classification", y_true, probs)["auroc"] == pytest.approx((7.5 / 9 + 5 / 9) / 2)


def test_auroc_is_nan_with_one_class_and_nothing_is_raised():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics("classification", [1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert math.isnan(got["auroc"])
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_regression_metrics_match_hand_computation():
    got = compute_metrics("regression", [1, 2, 3, 4], [1, 2, 5, 4])
    assert got["mse"] == pytest.approx(1.0)  # errors 0, 0, 2, 0
    assert got["mae"] == pytest.approx(0.5)
    assert got["pearson"] == pytest.approx(6 / math.sqrt(5 * 10))
    assert got["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # rank differences 0, 0, 1, 1
    assert got["r2"] == pytest.approx(1 - 4 / 5)


def test_regression_constant_predictions_give_nan_correlations_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics("regression", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
        constant_truth = compute_metrics("regression", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])
    assert got["mse"] == pytest.approx(2 / 3)
    assert got["r2"] == pytest.approx(0.0)  # the mean predictor
    assert math.isnan(constant_truth["r2"]) and math.isnan(constant_truth["pearson"])


def test_every_metric_has_a_direction():
    names = set(compute_metrics("classification", BINARY_TRUE, BINARY_P1))
    names |= set(compute_metrics("regression", [1, 2, 3], [1, 2, 2]))
    assert names <= set(METRIC_DIRECTION)
    assert set(METRIC_DIRECTION.values()) == {"max", "min"}
    assert METRIC_DIRECTION["mse"] == "min" and METRIC_DIRECTION["f1"] == "max"


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="problem_type"):
        compute_metrics("ranking", [0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="rows"):
        compute_metrics("classification", [0, 1, 1], [0.2, 0.8])
