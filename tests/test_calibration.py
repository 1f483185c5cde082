"""Expected calibration error, temperature scaling and the reliability diagram on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from protadapt.evaluation.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                              logits_from_probabilities, reliability_bins)
from protadapt.evaluation.plots import plot_reliability_diagram

BINS = 15  # Guo et al.'s bin count


def calibrated_task(seed: int, n: int, temperature: float = 1.0, classes: int = 4):
    """True logits, labels drawn from softmax(true logits), and the model's logits = true logits × temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    labels = (rng.random(n)[:, None] > softmax(logits, axis=1).cumsum(axis=1)).sum(axis=1)
    return logits * temperature, labels


def test_ece_equals_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = calibrated_task(0, 3000, temperature=2.0)
    probabilities = softmax(logits, axis=1)
    expected = multiclass_calibration_error(torch.tensor(probabilities), torch.tensor(labels), num_classes=4,
                                            n_bins=BINS, norm="l1")
    assert expected_calibration_error(labels, probabilities, BINS) == pytest.approx(float(expected), abs=1e-6)


def test_ece_of_calibrated_scores_is_near_zero_and_of_overconfident_ones_is_not():
    logits, labels = calibrated_task(1, 20000)
    assert expected_calibration_error(labels, softmax(logits, axis=1), BINS) < 0.015
    overconfident = softmax(logits * 2.5, axis=1)
    assert expected_calibration_error(labels, overconfident, BINS) > 0.08


def test_ece_by_hand_on_two_bins():
    probabilities = np.array([0.9, 0.8, 0.3, 0.4])  # binary P(class 1): top confidences 0.9, 0.8, 0.7, 0.6
    labels = np.array([1, 0, 0, 0])  # bin (0.5, 1]: accuracy 3/4, mean confidence 0.75 -> ECE 0 with 2 bins
    assert expected_calibration_error(labels, probabilities, 2) == pytest.approx(0.0, abs=1e-12)
    bins = reliability_bins(labels, probabilities, 10)  # bins (0.5,0.6], (0.6,0.7], (0.7,0.8], (0.8,0.9]
    assert bins["count"].tolist() == [1, 1, 1, 1]
    assert bins["accuracy"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert expected_calibration_error(labels, probabilities, 10) == pytest.approx((0.4 + 0.3 + 0.8 + 0.1) / 4)


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_is_recovered(temperature):
    logits, labels = calibrated_task(2, 20000, temperature=temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_temperature_scaling_reduces_ece_on_new_rows_and_keeps_the_argmax():
    validation_logits, validation_labels = calibrated_task(3, 5000, temperature=2.5)
    test_logits, test_labels = calibrated_task(4, 5000, temperature=2.5)
    temperature = fit_temperature(validation_logits, validation_labels)
    before = expected_calibration_error(test_labels, softmax(test_logits, axis=1), BINS)
    scaled = apply_temperature(test_logits, temperature)
    after = expected_calibration_error(test_labels, scaled, BINS)
    assert after < before / 3
    np.testing.assert_array_equal(scaled.argmax(axis=1), test_logits.argmax(axis=1))


def test_log_probabilities_scale_like_logits():
    logits, labels = calibrated_task(5, 4000, temperature=2.0)
    from_probabilities = fit_temperature(logits_from_probabilities(softmax(logits, axis=1)), labels)
    assert from_probabilities == pytest.approx(fit_temperature(logits, labels), rel=1e-4)
    binary = softmax(logits[:, :2], axis=1)[:, 1]  # a binary task's 1-D P(class 1) works too
    assert logits_from_probabilities(binary).shape == (4000, 2)


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="one probability row per label"):
        expected_calibration_error([0, 1], np.array([[0.5, 0.5]]), BINS)
    with pytest.raises(ValueError, match="temperature must be positive"):
        apply_temperature(np.zeros((2, 2)), 0.0)


def test_reliability_diagram_png(tmp_path):
    logits, labels = calibrated_task(6, 500, temperature=2.0)
    path = plot_reliability_diagram(labels, softmax(logits, axis=1), tmp_path / "plots" / "reliability.png", BINS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # two panels with bars, not an empty canvas
