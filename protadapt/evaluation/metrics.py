"""Task metrics for protadapt predictions, computed with scikit-learn and scipy."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

# Which way is better, for early stopping and checkpoint selection.
METRIC_DIRECTION: dict[str, str] = {
    "loss": "min",
    "accuracy": "max",
    "precision": "max",
    "recall": "max",
    "f1": "max",
    "f1_macro": "max",
    "mcc": "max",
    "auroc": "max",
    "mse": "min",
    "mae": "min",
    "pearson": "max",
    "spearman": "max",
    "r2": "max",
    "ece": "min",
}


def compute_metrics(problem_type: str, y_true: ArrayLike, y_score: ArrayLike) -> dict[str, float]:
    """All metrics of one task; undefined values are NaN so one bad split never stops a run.

    Classification: `y_true` integer labels (N), `y_score` class probabilities (N x C); a 1-D
    `y_score` is read as the probability of class 1 of a binary task. Precision, recall and F1
    are weighted by class support, as the BiDoRA paper reports them.
    Regression: `y_true` targets (N), `y_score` predictions (N).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if len(y_true) != len(y_score):
        counts = f"y_true has {len(y_true)} rows but y_score has {len(y_score)}"
        raise ValueError(f"{counts}; give one score row per example")
    if problem_type == "classification":
        return _classification_metrics(y_true.astype(np.int64), as_probability_matrix(y_score))
    if problem_type == "regression":
        return _regression_metrics(y_true.astype(np.float64).ravel(), y_score.ravel())
    raise ValueError(f"unknown problem_type {problem_type!r}; use 'classification' or 'regression'")


def as_probability_matrix(y_score: np.ndarray) -> np.ndarray:
    """Turn a binary task's 1-D probability of class 1 into the N x 2 matrix used everywhere."""
    if y_score.ndim == 1:
        return np.column_stack([1.0 - y_score, y_score])
    if y_score.ndim != 2:
        raise ValueError(f"classification y_score must be N x C class probabilities, got shape {y_score.shape}")
    return y_score


def _classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Label metrics on the argmax prediction plus AUROC on the probabilities."""
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="weighted", zero_division=0
    )
    with warnings.catch_warnings():  # MCC of a constant prediction is 0 by definition; no warning needed
        warnings.simplefilter("ignore", RuntimeWarning)
        mcc = skm.matthews_corrcoef(y_true, y_pred)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mcc": float(mcc),
        "auroc": _auroc(y_true, probabilities),
    }


def _auroc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary AUROC on P(class 1); multiclass one-vs-rest weighted by support; NaN with one class."""
    if len(np.unique(y_true)) < 2:
        return float("nan")
    num_classes = probabilities.shape[1]
    if num_classes == 2:
        return float(skm.roc_auc_score(y_true, probabilities[:, 1]))
    with warnings.catch_warnings():  # a class absent from y_true has weight 0 in the weighted mean
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(
            skm.roc_auc_score(
                y_true, probabilities, multi_class="ovr", average="weighted", labels=np.arange(num_classes)
            )
        )


def _regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Errors always; correlations and R² only where they are defined, NaN otherwise."""
    return {
        "mse": float(skm.mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "pearson": _correlation(stats.pearsonr, y_true, y_pred),
        "spearman": _correlation(stats.spearmanr, y_true, y_pred),
        "r2": float(skm.r2_score(y_true, y_pred)) if _varies(y_true) else float("nan"),
    }


def _correlation(method, x: np.ndarray, y: np.ndarray) -> float:
    """A scipy correlation, NaN when either side is constant or there are fewer than 2 points."""
    if not (_varies(x) and _varies(y)):
        return float("nan")
    return float(method(x, y)[0])


def _varies(values: np.ndarray) -> bool:
    """True when there are at least two distinct values, so a correlation is defined."""
    return len(values) >= 2 and bool(np.ptp(values) > 0)
