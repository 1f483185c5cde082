"""Seed-level statistics for comparing adaptation methods: mean ± sd, paired Wilcoxon, bootstrap CI."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats


def compare_to_reference(
    df: pd.DataFrame,
    metric: str,
    reference_method: str,
    pair_on: Sequence[str] = ("seed", "fold"),
) -> pd.DataFrame:
    """One row per task x method: mean, sd, n, and the paired test and CI of (method − reference).

    `df` is long format, one row per run, with columns `task`, `method`, the `pair_on` columns
    and `metric`. Runs are paired with the reference run of the same task and `pair_on` key;
    the reference's own row and methods with no paired run carry NaN in the comparison columns.
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
            row.update(_paired_comparison(runs, reference, metric, pair_on, method == reference_method))
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample sd (ddof=1) over seeds; sd is NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return float("nan"), float("nan")
    sd = float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
    return float(np.mean(values)), sd


def wilcoxon_paired(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of a vs b.

    Zero differences are dropped (scipy's default `zero_method="wilcox"`). scipy's p is exact for
    n <= 50 without ties or zeros, an exhaustive sign-flip permutation test with them up to n = 13,
    and the normal approximation beyond. Returns 1.0 when every difference is zero (no evidence
    of a difference) and NaN for fewer than two pairs (no test is possible).
    """
    a, b = _paired_arrays(a, b)
    if len(a) < 2:
        return float("nan")
    if np.all(a == b):
        return 1.0
    return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)


def bootstrap_mean_diff_ci(
    a: ArrayLike, b: ArrayLike, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of the paired differences a − b and its percentile bootstrap CI (pairs resampled together)."""
    a, b = _paired_arrays(a, b)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    differences = a - b
    rng = np.random.default_rng(seed)
    resampled = rng.integers(0, len(differences), size=(n_boot, len(differences)))
    boot_means = differences[resampled].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot_means, [tail, 1.0 - tail])
    return float(differences.mean()), float(lo), float(hi)


def _paired_comparison(
    runs: pd.DataFrame, reference: pd.DataFrame, metric: str, pair_on: list[str], is_reference: bool
) -> dict[str, float]:
    """Wilcoxon p and bootstrap CI of the method's runs against the reference runs with the same key."""
    paired = runs[[*pair_on, metric]].merge(reference[[*pair_on, metric]], on=pair_on, suffixes=("", "_reference"))
    no_comparison = {"p_value": np.nan, "diff_mean": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan}
    if is_reference or paired.empty:
        return {"n_pairs": len(paired), **no_comparison}
    method_values, reference_values = paired[metric], paired[f"{metric}_reference"]
    diff_mean, lo, hi = bootstrap_mean_diff_ci(method_values, reference_values)
    return {
        "n_pairs": len(paired),
        "p_value": wilcoxon_paired(method_values, reference_values),
        "diff_mean": diff_mean,
        "diff_ci_low": lo,
        "diff_ci_high": hi,
    }


def _paired_arrays(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as float arrays of equal length, the precondition of every paired statistic."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)}); give one b value per a value")
    return a, b
