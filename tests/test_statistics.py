"""Seed statistics against hand-computed values: exact Wilcoxon by enumeration, seeded bootstrap."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from protadapt.evaluation.statistics import (
    bootstrap_mean_diff_ci,
    compare_to_reference,
    summarise,
    wilcoxon_paired,
)


def exact_wilcoxon_p(a, b):
    """Two-sided signed-rank p by enumerating every sign flip of the nonzero differences."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[d != 0]
    ranks = rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    null = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    null = np.array(null)
    lower, upper = np.mean(null <= observed + 1e-9), np.mean(null >= observed - 1e-9)
    return min(1.0, 2 * min(lower, upper))


def test_summarise_uses_sample_sd():
    mean, sd = summarise([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert sd == pytest.approx(math.sqrt(5 / 3))  # squared deviations 2.25+0.25+0.25+2.25 over n-1=3
    assert summarise([7.0])[0] == 7.0 and math.isnan(summarise([7.0])[1])


def test_smallest_two_sided_p_with_five_seeds_is_0_0625():
    a, b = [0.81, 0.83, 0.80, 0.86, 0.84], [0.80, 0.80, 0.75, 0.85, 0.79]
    assert wilcoxon_paired(a, b) == pytest.approx(2 / 2**5) == pytest.approx(0.0625)
    assert exact_wilcoxon_p(a, b) == pytest.approx(0.0625)
    assert wilcoxon_paired([3, -1, 5, 7, 2, 9], [0] * 6) == pytest.approx(4 / 64)  # n=6, W- = 1


@pytest.mark.parametrize(
    "a, b",
    [
        ([3, -1, 5, 7, 2, 9], [0] * 6),  # W- = 1: p = 2 * 2/64
        ([4, -1, 6, -3, 2, 8, -5], [0] * 7),
        ([1, 1, -2, 3, 3, 0, 4], [0] * 7),  # ties and a zero: scipy's sign-flip permutation test
    ],
)
def test_wilcoxon_matches_enumeration(a, b):
    assert wilcoxon_paired(a, b) == pytest.approx(exact_wilcoxon_p(a, b))


def test_wilcoxon_degenerate_cases():
    assert wilcoxon_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0
    assert math.isnan(wilcoxon_paired([0.5], [0.4]))
    with pytest.raises(ValueError, match="length"):
        wilcoxon_paired([1, 2, 3], [1, 2])


def test_bootstrap_matches_seeded_reimplementation():
    a = np.array([0.9, 0.7, 0.8, 0.95, 0.6])
    b = np.array([0.85, 0.72, 0.7, 0.9, 0.61])
    d = a - b
    rng = np.random.default_rng(3)
    means = np.array([d[rng.integers(0, 5, size=5)].mean() for _ in range(2000)])
    expected = (d.mean(), np.quantile(means, 0.05), np.quantile(means, 0.95))
    assert bootstrap_mean_diff_ci(a, b, n_boot=2000, level=0.9, seed=3) == pytest.approx(expected)


def test_bootstrap_of_constant_difference_is_degenerate():
    assert bootstrap_mean_diff_ci([1.25, 2.25, 3.25], [1.0, 2.0, 3.0]) == (0.25, 0.25, 0.25)
    mean, lo, hi = bootstrap_mean_diff_ci([0.3, 0.4, 0.5, 0.6], [0.2, 0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 20), rng.normal(0, 1, 20)
    mean, lo, hi = bootstrap_mean_diff_ci(a, b, seed=7)
    assert lo < mean < hi
    assert bootstrap_mean_diff_ci(a, b, seed=7) == (mean, lo, hi)


def results_table():
    """Two tasks, three methods, seeds 0-4 on one fold; BiDoRA beats DoRA on every seed of task 'bbp'."""
    dora = [0.80, 0.82, 0.79, 0.85, 0.81]
    bidora = [0.83, 0.86, 0.81, 0.88, 0.86]
    majority = [0.5] * 5
    rows = []
    for method, values in [("dora", dora), ("bidora", bidora), ("majority", majority)]:
        for seed, value in enumerate(values):
            rows.append({"task": "bbp", "method": method, "seed": seed, "fold": 0, "f1": value})
    for seed in range(3):
        rows.append({"task": "mic", "method": "dora", "seed": seed, "fold": 0, "f1": 0.3})
        rows.append({"task": "mic", "method": "bidora", "seed": seed + 1, "fold": 0, "f1": 0.4})
    return pd.DataFrame(rows), dora, bidora


def test_compare_to_reference_per_task_and_method():
    df, dora, bidora = results_table()
    table = compare_to_reference(df, "f1", reference_method="dora").set_index(["task", "method"])
    row = table.loc[("bbp", "bidora")]
    assert row["mean"] == pytest.approx(np.mean(bidora))
    assert row["sd"] == pytest.approx(np.std(bidora, ddof=1))
    assert row["n"] == 5 and row["n_pairs"] == 5
    assert row["p_value"] == pytest.approx(0.0625)
    diff, lo, hi = bootstrap_mean_diff_ci(bidora, dora)
    assert (row["diff_mean"], row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((diff, lo, hi))
    assert row["diff_mean"] == pytest.approx(0.034)
    reference = table.loc[("bbp", "dora")]
    assert reference["mean"] == pytest.approx(np.mean(dora)) and math.isnan(reference["p_value"])
    assert table.loc[("bbp", "majority"), "diff_mean"] == pytest.approx(0.5 - np.mean(dora))
    mic = table.loc[("mic", "bidora")]  # seeds 1, 2 are shared with the reference
    assert mic["n"] == 3 and mic["n_pairs"] == 2 and mic["diff_mean"] == pytest.approx(0.1)


def test_compare_to_reference_errors_name_the_problem():
    df, _, _ = results_table()
    with pytest.raises(ValueError, match="fold"):
        compare_to_reference(df.drop(columns="fold"), "f1", "dora")
    with pytest.raises(ValueError, match="share the key"):
        compare_to_reference(pd.concat([df, df.iloc[:1]]), "f1", "dora")
    table = compare_to_reference(df.drop(columns="fold"), "f1", "dora", pair_on=("seed",))
    assert len(table) == 5
