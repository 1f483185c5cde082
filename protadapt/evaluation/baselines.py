"""Two sequence-only baselines, run on the same splits as the models, so a tiny-set result can be judged."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protadapt.data.io import STANDARD_AMINO_ACIDS

AMINO_ACIDS = STANDARD_AMINO_ACIDS  # the 20 standard residues; feature order of composition_features

_RESIDUE_INDEX = np.full(256, -1, dtype=np.int64)  # byte -> position in AMINO_ACIDS, -1 for anything else
_RESIDUE_INDEX[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(20)

BASELINES = ("majority", "composition")


def run_baseline(
    name: str,
    train_sequences: Sequence[str],
    train_labels: ArrayLike,
    test_sequences: Sequence[str],
    problem_type: str,
    num_classes: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Scores for the test sequences in the same form a model gives them, ready for compute_metrics."""
    if name == "majority":
        return majority_baseline(train_labels, len(test_sequences), problem_type, num_classes)
    if name == "composition":
        return composition_baseline(train_sequences, train_labels, test_sequences, problem_type, seed, num_classes)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def majority_baseline(
    train_labels: ArrayLike, n_test: int, problem_type: str, num_classes: int | None = None
) -> np.ndarray:
    """Training-set class frequencies as every test row's probabilities (argmax = majority), or the train mean."""
    train_labels = np.asarray(train_labels)
    if problem_type == "classification":
        counts = np.bincount(train_labels.astype(np.int64), minlength=num_classes or 0)
        return np.tile(counts / counts.sum(), (n_test, 1))
    if problem_type == "regression":
        return np.full(n_test, float(np.mean(train_labels)))
    raise ValueError(f"unknown problem_type {problem_type!r}; use 'classification' or 'regression'")


def composition_baseline(
    train_sequences: Sequence[str],
    train_labels: ArrayLike,
    test_sequences: Sequence[str],
    problem_type: str,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """Linear model on amino-acid + dipeptide composition: the bar a model must clear to show it learns more.

    Classification returns N x C probabilities (StandardScaler + LogisticRegression), with C =
    `num_classes` or the number of training classes; regression returns predictions (StandardScaler + Ridge).
    The regularisation strength is chosen by internal cross-validation on the training rows only:
    420 features on a few hundred sequences overfit badly at a fixed default.
    """
    train_labels = np.asarray(train_labels)
    train_features = composition_features(train_sequences)
    test_features = composition_features(test_sequences)
    if problem_type == "classification":
        classes = np.unique(train_labels)
        if len(classes) < 2:
            raise ValueError("composition baseline needs at least two classes in the training labels")
        folds = int(min(5, np.bincount(np.searchsorted(classes, train_labels)).min()))
        classifier = (LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=folds, max_iter=5000, random_state=seed,
                                           **current_defaults(LogisticRegressionCV))
                      if folds >= 2 else LogisticRegression(max_iter=5000, random_state=seed))
        model = make_pipeline(StandardScaler(), classifier)
        model.fit(train_features, train_labels.astype(np.int64))
        probabilities = np.zeros((len(test_features), max(num_classes or 0, int(classes.max()) + 1)))
        probabilities[:, classes] = model.predict_proba(test_features)
        return probabilities
    if problem_type == "regression":
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        model.fit(train_features, train_labels.astype(np.float64))
        return model.predict(test_features)
    raise ValueError(f"unknown problem_type {problem_type!r}; use 'classification' or 'regression'")


# the values scikit-learn ≥ 1.8 asks to be set explicitly (today's behaviour, no FutureWarning)
EXPLICIT = {"l1_ratios": (0.0,), "scoring": "accuracy", "use_legacy_attributes": False}


def current_defaults(estimator: type) -> dict:
    """EXPLICIT on a scikit-learn that has the new parameters; nothing on older ones (which never warn)."""
    return EXPLICIT if "use_legacy_attributes" in inspect.signature(estimator).parameters else {}


def composition_features(sequences: Sequence[str]) -> np.ndarray:
    """N x 420 features: 20 amino-acid fractions, then 400 dipeptide fractions (first residue major).

    Case is ignored. Non-standard residues (X, B, Z, U, O, gaps, ...) are ignored: they count
    neither as residues nor in any dipeptide, and a pair that touches one is not counted (no
    artificial pair is made across it). A sequence without standard residues gives zeros.
    """
    features = np.zeros((len(sequences), 20 + 400))
    for row, sequence in enumerate(sequences):
        features[row] = _composition(sequence)
    return features


def _composition(sequence: str) -> np.ndarray:
    """Composition vector of one sequence; fractions of standard residues and of standard pairs."""
    codes = np.frombuffer(sequence.upper().encode("ascii", errors="replace"), dtype=np.uint8)
    index = _RESIDUE_INDEX[codes]
    residues = index[index >= 0]
    first, second = index[:-1], index[1:]
    both_standard = (first >= 0) & (second >= 0)
    pairs = first[both_standard] * 20 + second[both_standard]
    return np.concatenate([_fractions(residues, 20), _fractions(pairs, 400)])


def _fractions(codes: np.ndarray, size: int) -> np.ndarray:
    """Counts of each code as fractions of all codes; zeros when there are none."""
    counts = np.bincount(codes, minlength=size).astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else counts
