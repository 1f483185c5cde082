"""Baselines: composition features by hand, majority priors, and the scikit-learn composition model."""

import numpy as np
import pytest

from protadapt.evaluation.baselines import (
    AMINO_ACIDS,
    composition_baseline,
    composition_features,
    majority_baseline,
    run_baseline,
)
from protadapt.evaluation.metrics import compute_metrics


def aa(residue):
    return AMINO_ACIDS.index(residue)


def dipeptide(first, second):
    return 20 + aa(first) * 20 + aa(second)


def test_composition_of_aac():
    features = composition_features(["AAC"])
    assert features.shape == (1, 420)
    expected = np.zeros(420)
    expected[aa("A")], expected[aa("C")] = 2 / 3, 1 / 3
    expected[dipeptide("A", "A")], expected[dipeptide("A", "C")] = 1 / 2, 1 / 2
    np.testing.assert_allclose(features[0], expected)


def test_non_standard_residues_are_ignored_and_break_pairs():
    features = composition_features(["AXc", "xb-", ""])
    # "AXc": residues A, C; the only pairs (A,X) and (X,C) touch X, so no dipeptide is counted
    assert features[0, aa("A")] == 0.5 and features[0, aa("C")] == 0.5
    assert features[0, 20:].sum() == 0
    assert not features[1:].any()  # nothing standard: all zeros, no division by zero


def test_each_block_sums_to_one():
    features = composition_features(["MKTAYIAKQRQISFVKSHFSRQ", "GGGW"])
    np.testing.assert_allclose(features[:, :20].sum(axis=1), 1.0)
    np.testing.assert_allclose(features[:, 20:].sum(axis=1), 1.0)


def test_majority_baseline_gives_training_frequencies():
    scores = majority_baseline([0, 1, 1, 1, 2], n_test=3, problem_type="classification", num_classes=4)
    np.testing.assert_allclose(scores, np.tile([0.2, 0.6, 0.2, 0.0], (3, 1)))
    np.testing.assert_allclose(majority_baseline([1.0, 2.0, 6.0], 2, "regression"), [3.0, 3.0])


def test_majority_accuracy_is_the_majority_share():
    scores = majority_baseline([0, 0, 1], n_test=4, problem_type="classification", num_classes=2)
    got = compute_metrics("classification", [0, 1, 0, 0], scores)
    assert got["accuracy"] == pytest.approx(3 / 4) and got["auroc"] == pytest.approx(0.5)


def test_composition_baseline_separates_composition_defined_classes():
    rng = np.random.default_rng(0)

    def sequences(alphabet, n):
        return ["".join(rng.choice(list(alphabet), size=30)) for _ in range(n)]

    train = sequences("KRH", 20) + sequences("DE", 20)
    test = sequences("KRH", 5) + sequences("DE", 5)
    labels = [0] * 20 + [1] * 20
    scores = composition_baseline(train, labels, test, "classification", num_classes=3)
    assert scores.shape == (10, 3) and np.all(scores[:, 2] == 0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    assert compute_metrics("classification", [0] * 5 + [1] * 5, scores)["accuracy"] == 1.0


def test_composition_regression_learns_a_composition_target():
    rng = np.random.default_rng(1)
    train = ["".join(rng.choice(list("AL"), size=40)) for _ in range(60)]
    target = [s.count("L") / len(s) for s in train]
    predictions = composition_baseline(train[:50], target[:50], train[50:], "regression")
    assert predictions.shape == (10,)
    assert compute_metrics("regression", target[50:], predictions)["pearson"] > 0.95


def test_run_baseline_dispatches_and_rejects_unknown_names():
    train, test = ["AAC", "CCA", "ACA"], ["AC"]
    np.testing.assert_allclose(
        run_baseline("majority", train, [0, 1, 1], test, "classification", num_classes=2), [[1 / 3, 2 / 3]]
    )
    assert run_baseline("composition", train, [0, 1, 1], test, "classification").shape == (1, 2)
    with pytest.raises(ValueError, match="unknown baseline 'knn'; choose one of majority, composition"):
        run_baseline("knn", train, [0, 1, 1], test, "classification")
    with pytest.raises(ValueError, match="two classes"):
        composition_baseline(train, [1, 1, 1], test, "classification")
