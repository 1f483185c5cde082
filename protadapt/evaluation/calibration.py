"""Are a classifier's probabilities honest? Expected calibration error, reliability bins, temperature scaling.

ECE is the top-label one of Guo et al. (2017): rows are put in `n_bins` equal-width bins of
(0, 1] by the probability of their predicted class (bin b holds ((b−1)/B, b/B]), and ECE is the
row-weighted mean |accuracy − mean confidence| over the bins. Temperature scaling divides the
logits by one scalar T > 0 fitted on validation rows by minimising the negative log-likelihood;
T > 1 softens an over-confident model. It never changes the predicted class. Log-probabilities
are valid logits (softmax is unchanged by a per-row constant), so a run that kept only
probabilities can still be scaled: `logits_from_probabilities`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from protadapt.evaluation.metrics import as_probability_matrix

_LOG_T_BOUNDS = (-5.0, 5.0)  # T between e^-5 and e^5: far beyond any useful temperature
_EPSILON = 1e-12  # floor on probabilities before the log


def expected_calibration_error(y_true: ArrayLike, probabilities: ArrayLike, n_bins: int) -> float:
    """Top-label ECE in [0, 1] over `n_bins` equal-width confidence bins; 0 for perfectly calibrated scores."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    return float((bins["count"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / bins["count"].sum())


def reliability_bins(y_true: ArrayLike, probabilities: ArrayLike, n_bins: int) -> pd.DataFrame:
    """One row per non-empty bin: lower, upper, count, confidence (mean top probability), accuracy."""
    labels, probabilities = _check(y_true, probabilities)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (lo, hi] bins
    table = pd.DataFrame({"bin": index, "confidence": confidence, "accuracy": correct.astype(np.float64)})
    grouped = table.groupby("bin").agg(count=("accuracy", "size"), confidence=("confidence", "mean"),
                                       accuracy=("accuracy", "mean")).reset_index()
    grouped.insert(1, "lower", grouped["bin"] / n_bins)
    grouped.insert(2, "upper", (grouped["bin"] + 1) / n_bins)
    return grouped.drop(columns="bin")


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """The T > 0 minimising the mean negative log-likelihood of softmax(logits / T) on these rows."""
    labels = np.asarray(y_true).astype(np.int64)
    logits = _as_logit_matrix(logits)
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"temperature scaling needs one logit row per label; got {len(logits)} and {len(labels)}")

    def nll(log_t: float) -> float:
        return -float(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """N x C probabilities softmax(logits / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(_as_logit_matrix(logits) / temperature, axis=1)


def logits_from_probabilities(probabilities: ArrayLike) -> np.ndarray:
    """log p (floored at 1e-12): logits up to a per-row constant, which softmax ignores."""
    probabilities = as_probability_matrix(np.asarray(probabilities, dtype=np.float64))
    return np.log(np.clip(probabilities, _EPSILON, 1.0))


def _check(y_true: ArrayLike, probabilities: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true).astype(np.int64).ravel()
    probabilities = as_probability_matrix(np.asarray(probabilities, dtype=np.float64))
    if len(labels) != len(probabilities) or len(labels) == 0:
        raise ValueError(f"calibration needs one probability row per label; got {len(probabilities)} and {len(labels)}")
    return labels, probabilities


def _as_logit_matrix(logits: ArrayLike) -> np.ndarray:
    """A binary task's 1-D logit of class 1 as the N x 2 logits [0, z]."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.column_stack([np.zeros_like(logits), logits]) if logits.ndim == 1 else logits
