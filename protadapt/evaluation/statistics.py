"""Seed-level statistics for comparing methods on 3–10 paired runs: t-intervals, Wilcoxon, Holm, Nadeau–Bengio.

With so few pairs the percentile bootstrap undercovers (75 / 85 / 91 % for a nominal 95 % at
n = 3 / 5 / 10), so the paired-difference CI is Student's t-interval (exact for normal
differences, ≥ 0.93 at n = 5 for skewness up to 1, see tests/test_statistics.py). Wilcoxon
treats differences below 1e-12 × the values' scale as zero and such near-equal |differences| as
ties, so float noise (5.6e-17) is not evidence. Repeated cross-validation folds share training
rows, so their differences are tested with the Nadeau–Bengio corrected resampled t instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.multitest import multipletests

FLOAT_TIE_RTOL = 1e-12  # |d| below this × max(|a|, |b|) is a zero; |d|s closer than it are tied


def compare_to_reference(
    df: pd.DataFrame,
    metric: str,
    reference_method: str,
    pair_on: Sequence[str] = ("seed", "fold"),
    test_train_ratio: float | None = None,
) -> pd.DataFrame:
    """One row per task x method: mean, sd, n, and the paired statistics of (method − reference).

    `df` is long format, one row per run, with columns `task`, `method`, the `pair_on` columns
    and `metric`. Runs are paired with the reference run of the same task and `pair_on` key;
    the reference's own row and methods with no paired run carry NaN in the comparison columns.
    `diff_ci_low/high` is the 95 % t-interval of the mean difference, or the Nadeau–Bengio
    interval when `test_train_ratio` (n_test / n_train of the CV folds) is given; `p_value` is
    the Wilcoxon signed-rank p, `p_nb` the Nadeau–Bengio p (NaN without a ratio), `min_p` the
    smallest p Wilcoxon can reach with this many nonzero differences.
    """
    pair_on = list(pair_on)
    missing = [c for c in ["task", "method", metric, *pair_on] if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; add them or change metric/pair_on")
    duplicated = df.duplicated(["task", "method", *pair_on])
    if duplicated.any():
        first = df.loc[duplicated, ["task", "method", *pair_on]].iloc[0].to_dict()
        raise ValueError(f"two runs share the key {first}; give each run its own {pair_on} value")
    rows = []
    for task, task_runs in df.groupby("task", sort=False):
        reference = task_runs[task_runs["method"] == reference_method]
        for method, runs in task_runs.groupby("method", sort=False):
            mean, sd = summarise(runs[metric])
            row = {"task": task, "method": method, "mean": mean, "sd": sd, "n": len(runs)}
            row.update(_paired_comparison(runs, reference, metric, pair_on, method == reference_method,
                                          test_train_ratio))
            rows.append(row)
    return pd.DataFrame(rows)


def across_tasks(df: pd.DataFrame, reference_method: str, metric_of: Mapping[str, tuple[str, bool]]) -> pd.DataFrame:
    """Wilcoxon over (task, seed) pairs, the paper's pairing unit: one row per method against the reference.

    `metric_of` maps each task to (metric, higher_is_better); differences are oriented so that
    > 0 means the method beat the reference. CV folds are averaged within a (task, seed) first.
    """
    frames = []
    for task, (metric, higher_is_better) in metric_of.items():
        runs = df[df["task"] == task].groupby(["method", "seed"], as_index=False)[metric].mean()
        frames.append(runs.assign(task=task, value=runs[metric] * (1.0 if higher_is_better else -1.0)))
    pooled = pd.concat(frames, ignore_index=True)
    reference = pooled[pooled["method"] == reference_method]
    rows = []
    for method, runs in pooled[pooled["method"] != reference_method].groupby("method", sort=False):
        paired = runs.merge(reference, on=["task", "seed"], suffixes=("", "_reference"))
        a, b = paired["value"].to_numpy(), paired["value_reference"].to_numpy()
        d = tolerant_differences(a, b)
        rows.append({"method": method, "tasks": paired["task"].nunique(), "n_pairs": len(paired),
                     "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
                     "p_value": wilcoxon_paired(a, b), "min_p": wilcoxon_min_p(int((d != 0).sum()))})
    return pd.DataFrame(rows, columns=["method", "tasks", "n_pairs", "wins", "losses", "ties", "p_value", "min_p"])


def summarise(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample sd (ddof=1) over seeds; sd is NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return float("nan"), float("nan")
    sd = float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
    return float(np.mean(values)), sd


def paired_t_interval(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences a − b and its Student t-interval (n − 1 df); NaN bounds below 2 pairs."""
    a, b = _paired_arrays(a, b)
    return corrected_resampled_t(a - b, 0.0, level)[:3] if len(a) else (float("nan"),) * 3


def corrected_resampled_t(
    differences: ArrayLike, test_train_ratio: float, level: float = 0.95
) -> tuple[float, float, float, float]:
    """Mean difference, CI and two-sided p of the Nadeau–Bengio (2003) corrected resampled t-test.

    For J paired differences from resampled train/test splits (r repeats × k folds), the sample
    variance s² is inflated to (1/J + n_test/n_train)·s², which accounts for the overlap of the
    training sets; t = mean / sqrt(that), J − 1 df. With `test_train_ratio` 0 it is the plain
    paired t (the interval of `paired_t_interval`). A zero variance gives a point interval and
    p = 1 for a zero mean, 0 otherwise.
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    mean = float(d.mean()) if len(d) else float("nan")
    if len(d) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    se = float(np.sqrt((1.0 / len(d) + test_train_ratio) * d.var(ddof=1)))
    if se == 0.0:
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2.0, len(d) - 1)) * se
    p = float(2.0 * stats.t.sf(abs(mean) / se, len(d) - 1))
    return mean, mean - half, mean + half, p


def wilcoxon_paired(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of a vs b, float noise treated as zero or tied.

    Zero differences are dropped (`zero_method="wilcox"`). scipy's p is exact for n <= 50 without
    ties or zeros, an exhaustive sign-flip permutation test with them up to n = 13, and the
    normal approximation beyond. Returns 1.0 when every difference is zero (no evidence of a
    difference) and NaN for fewer than two pairs (no test is possible).
    """
    a, b = _paired_arrays(a, b)
    if len(a) < 2:
        return float("nan")
    d = tolerant_differences(a, b)
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def wilcoxon_min_p(n_nonzero: int) -> float:
    """Smallest two-sided exact Wilcoxon p with n nonzero differences: 2 / 2^n (all of one sign); 0.0625 at n = 5."""
    return min(1.0, 2.0 / 2.0**n_nonzero) if n_nonzero > 0 else 1.0


def tolerant_differences(a: ArrayLike, b: ArrayLike, rtol: float = FLOAT_TIE_RTOL) -> np.ndarray:
    """a − b with |d| < rtol·scale set to 0 and |d|s within rtol·scale of each other made equal (ties)."""
    a, b = _paired_arrays(a, b)
    d = a - b
    if len(d) == 0:
        return d
    tolerance = rtol * max(float(np.abs(a).max()), float(np.abs(b).max()), np.finfo(np.float64).tiny)
    magnitude = np.abs(d)
    magnitude[magnitude < tolerance] = 0.0
    order = np.argsort(magnitude, kind="stable")
    group_value = magnitude[order[0]]
    for index in order[1:]:
        if magnitude[index] - group_value < tolerance:
            magnitude[index] = group_value
        else:
            group_value = magnitude[index]
    return np.sign(d) * magnitude


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels `multipletests`) over the non-NaN entries; NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    adjusted = np.full_like(p, np.nan)
    present = ~np.isnan(p)
    if present.any():
        adjusted[present] = multipletests(p[present], method="holm")[1]
    return adjusted


def _paired_comparison(runs: pd.DataFrame, reference: pd.DataFrame, metric: str, pair_on: list[str],
                       is_reference: bool, test_train_ratio: float | None) -> dict[str, float]:
    """Wilcoxon p, CI (t or Nadeau–Bengio) and the attainable-p floor against the reference's matched runs."""
    paired = runs[[*pair_on, metric]].merge(reference[[*pair_on, metric]], on=pair_on, suffixes=("", "_reference"))
    paired = paired.dropna(subset=[metric, f"{metric}_reference"])
    nan = float("nan")
    empty = {"p_value": nan, "diff_mean": nan, "diff_ci_low": nan, "diff_ci_high": nan, "p_nb": nan,
             "n_nonzero": 0, "min_p": nan}
    if is_reference or paired.empty:
        return {"n_pairs": len(paired), **empty}
    a, b = paired[metric].to_numpy(np.float64), paired[f"{metric}_reference"].to_numpy(np.float64)
    diff_mean, lo, hi, p_nb = corrected_resampled_t(a - b, test_train_ratio or 0.0)
    n_nonzero = int((tolerant_differences(a, b) != 0).sum())
    return {"n_pairs": len(paired), "p_value": wilcoxon_paired(a, b), "diff_mean": diff_mean, "diff_ci_low": lo,
            "diff_ci_high": hi, "p_nb": p_nb if test_train_ratio is not None else nan, "n_nonzero": n_nonzero,
            "min_p": wilcoxon_min_p(n_nonzero)}


def _paired_arrays(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as float arrays of equal length, the precondition of every paired statistic."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)}); give one b value per a value")
    return a, b
