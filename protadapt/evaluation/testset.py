"""Paired tests of two models on one fixed test set: McNemar's exact test and DeLong's test for AUROC.

Both compare the rows of one test set scored by two models (e.g. two methods trained with the
same seed), so they test "do these two fitted models differ on these rows", not "does the
method differ": seed-to-seed variation is what the seed-level statistics test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar


def compare_predictions(method: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """McNemar (and, for binary tasks, DeLong) of two predictions.csv tables, rows matched by `id`.

    Returns the discordant counts `only_method` / `only_reference` (rows only that model got
    right), `n_rows`, `p_mcnemar`, and `auroc_diff` (method − reference) and `p_delong`
    (NaN unless there are two classes with at least two rows each).
    """
    both = method.merge(reference, on="id", suffixes=("", "_reference"), validate="one_to_one")
    if len(both) != len(method) or len(both) != len(reference):
        raise ValueError(f"the two predictions.csv tables hold different ids ({len(method)} and {len(reference)} rows, "
                         f"{len(both)} shared); compare runs on the same test set")
    truth = both["label"].astype(str)
    only_method, only_reference, p = mcnemar_exact(both["prediction"].astype(str) == truth,
                                                   both["prediction_reference"].astype(str) == truth)
    result = {"n_rows": len(both), "only_method": only_method, "only_reference": only_reference, "p_mcnemar": p,
              "auroc_diff": float("nan"), "p_delong": float("nan")}
    prob_columns = [c for c in method.columns if c.startswith("prob_")]
    is_positive = truth == prob_columns[-1].removeprefix("prob_") if prob_columns else None
    if len(prob_columns) == 2 and min(is_positive.sum(), (~is_positive).sum()) >= 2:
        positive = prob_columns[1]
        auc_m, auc_r, p_delong = delong_test(is_positive, both[positive], both[f"{positive}_reference"])
        result.update(auroc_diff=auc_m - auc_r, p_delong=p_delong)
    return result


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[int, int, float]:
    """Rows only a got right, rows only b got right, and McNemar's exact (binomial) two-sided p (statsmodels)."""
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    table = [[int((correct_a & correct_b).sum()), only_a], [only_b, int((~correct_a & ~correct_b).sum())]]
    return only_a, only_b, float(mcnemar(table, exact=True).pvalue)


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> tuple[float, float, float]:
    """AUROC of a, AUROC of b, and DeLong's two-sided p for their difference on the same rows.

    The fast algorithm of Sun & Xu (2014): placement values from midranks, O(n log n). Not in
    scipy or statsmodels. p = 1 when the difference and its variance are both zero.
    """
    y = np.asarray(y_true, dtype=bool).ravel()
    if min(y.sum(), (~y).sum()) < 2:
        raise ValueError("DeLong's test needs at least two rows of each class among the test rows")
    scores = np.vstack([np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)])
    aucs, positive_placements, negative_placements = _placements(scores[:, y], scores[:, ~y])
    covariance = (np.cov(positive_placements) / y.sum() + np.cov(negative_placements) / (~y).sum())
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = aucs[0] - aucs[1]
    if variance <= 0:
        return float(aucs[0]), float(aucs[1]), 1.0 if difference == 0 else 0.0
    p = 2.0 * stats.norm.sf(abs(difference) / np.sqrt(variance))
    return float(aucs[0]), float(aucs[1]), float(p)


def _placements(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per score row: AUROC, the positives' placements V10 (share of negatives below) and the negatives' V01."""
    m, n = positives.shape[1], negatives.shape[1]
    rank_positive = stats.rankdata(positives, axis=1)
    rank_negative = stats.rankdata(negatives, axis=1)
    rank_all = stats.rankdata(np.hstack([positives, negatives]), axis=1)
    v10 = (rank_all[:, :m] - rank_positive) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_negative) / m
    return v10.mean(axis=1), v10, v01
