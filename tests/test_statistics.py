"""Seed and test-set statistics against hand-computed values, enumerations, slow reference formulas, simulation."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from protadapt.evaluation.statistics import (
    across_tasks,
    compare_to_reference,
    corrected_resampled_t,
    holm,
    paired_t_interval,
    summarise,
    tolerant_differences,
    wilcoxon_min_p,
    wilcoxon_paired,
)
from protadapt.evaluation.testset import compare_predictions, delong_test, mcnemar_exact

T_975_DF4 = 2.7764451051977987  # Student t 97.5 % quantile, 4 df (printed tables: 2.776)


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
    assert [wilcoxon_min_p(n) for n in (0, 3, 5, 6, 10)] == [1.0, 0.25, 0.0625, 0.03125, 2 / 1024]


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


def test_float_noise_is_no_difference_and_float_near_ties_are_ties():
    # 0.1 + 0.2 − 0.3 = 5.55e-17: without the tolerance it is a fifth positive pair and p = 0.0625
    a, b = [0.1 + 0.2, 0.81, 0.83, 0.80, 0.86], [0.3, 0.80, 0.80, 0.75, 0.85]
    assert a[0] - b[0] == pytest.approx(5.55e-17, rel=0.01)
    assert tolerant_differences(a, b)[0] == 0.0
    assert wilcoxon_paired(a, b) == pytest.approx(2 / 2**4)  # four nonzero pairs, all positive
    # 0.15 − 0.1 and 0.1 − 0.05 differ in the last bit; as decimals they tie with rank 1.5
    a, b = [0.15, 0.1, 0.3, -0.2, 0.5, 0.9], [0.1, 0.05, 0.1, 0.1, 0.1, 0.1]
    assert (0.15 - 0.1) != (0.1 - 0.05)
    d = tolerant_differences(a, b)
    assert d[0] == d[1]
    exact = exact_wilcoxon_p([5, 5, 20, -30, 40, 80], [0] * 6)  # the same differences in hundredths
    assert wilcoxon_paired(a, b) == pytest.approx(exact)


def test_wilcoxon_degenerate_cases():
    assert wilcoxon_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0
    assert math.isnan(wilcoxon_paired([0.5], [0.4]))
    with pytest.raises(ValueError, match="length"):
        wilcoxon_paired([1, 2, 3], [1, 2])


def test_t_interval_hand_computed():
    # d = 1..5: mean 3, sd = sqrt(2.5), se = sqrt(2.5 / 5) = sqrt(0.5); half-width = t(0.975, 4) · se
    mean, lo, hi = paired_t_interval([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    half = T_975_DF4 * math.sqrt(0.5)
    assert (mean, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half), rel=1e-12)
    assert round(lo, 3) == 1.037 and round(hi, 3) == 4.963
    assert paired_t_interval([1.25, 2.25, 3.25], [1.0, 2.0, 3.0]) == pytest.approx((0.25, 0.25, 0.25))
    mean, lo, hi = paired_t_interval([0.7], [0.5])
    assert mean == pytest.approx(0.2) and math.isnan(lo) and math.isnan(hi)


def test_t_interval_coverage_by_simulation():
    """Seeded: 20 000 samples per n of paired differences, normal and skewed (gamma shape 4, skewness 1)."""
    rng = np.random.default_rng(20240601)
    coverage = {}
    for name, draw, true_mean in [("normal", lambda size: rng.normal(0.02, 0.03, size), 0.02),
                                  ("gamma(4)", lambda size: rng.gamma(4.0, 0.01, size), 0.04),
                                  ("exponential", lambda size: rng.exponential(0.01, size), 0.01)]:
        for n in (3, 5, 10):
            d = draw((20_000, n))
            half = stats.t.ppf(0.975, n - 1) * d.std(axis=1, ddof=1) / math.sqrt(n)
            covered = np.abs(d.mean(axis=1) - true_mean) <= half
            coverage[(name, n)] = float(covered.mean())
            mean, lo, hi = paired_t_interval(d[0], np.zeros(n))  # the function gives the simulated interval
            assert (lo, hi) == pytest.approx((mean - half[0], mean + half[0]), rel=1e-12)
    print("\nt-interval coverage (nominal 0.95): " + ", ".join(f"{k[0]} n={k[1]}: {v:.3f}" for k, v in coverage.items()))
    assert coverage[("normal", 5)] >= 0.94 and coverage[("gamma(4)", 5)] >= 0.93
    assert min(coverage[("normal", n)] for n in (3, 5, 10)) >= 0.94
    assert coverage[("gamma(4)", 3)] >= 0.92 and coverage[("gamma(4)", 10)] >= 0.92
    assert coverage[("exponential", 5)] < 0.9  # the documented limit: strong skew (skewness 2) undercovers


def test_holm_hand_computed_and_nan_kept():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    adjusted = holm([0.2, float("nan"), 0.5])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def test_nadeau_bengio_hand_computed():
    # d = 1, 2, 3, 4 from 2 repeats × 2 folds, n_test/n_train = 1: s² = 5/3, se = sqrt((1/4 + 1)·5/3) = 5/sqrt(12)
    # t = 2.5 / (5/sqrt(12)) = sqrt(3); with 3 df, P(T > sqrt(3)) = 1/4 − 1/(2π), so p = 1/2 − 1/π
    mean, lo, hi, p = corrected_resampled_t([1, 2, 3, 4], 1.0)
    assert mean == 2.5 and p == pytest.approx(0.5 - 1 / math.pi, rel=1e-10)
    half = 3.182446305284263 * 5 / math.sqrt(12)  # t(0.975, 3) · se
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half))
    uncorrected = corrected_resampled_t([1, 2, 3, 4], 0.0)[3]
    assert uncorrected < 0.05 < p  # the correction is what keeps overlapping folds from looking significant
    assert corrected_resampled_t([0.25, 0.25, 0.25], 0.25)[3] == 0.0 and corrected_resampled_t([0, 0], 0.25)[3] == 1.0


def test_mcnemar_exact_hand_computed():
    # 1 row only a right, 6 only b right: p = 2 · P(X ≤ 1 | 7, 1/2) = 2 · 8/128
    a = np.array([True] * 10 + [True] + [False] * 6 + [False] * 3)
    b = np.array([True] * 10 + [False] + [True] * 6 + [False] * 3)
    assert mcnemar_exact(a, b) == (1, 6, pytest.approx(0.125))
    assert mcnemar_exact([True] * 5, [False] * 5) == (5, 0, pytest.approx(2 / 32))
    assert mcnemar_exact([True, False], [True, False])[2] == pytest.approx(1.0)


def slow_delong(y, score_a, score_b):
    """DeLong et al. (1988) by its definition: ψ over every (positive, negative) pair, O(n²)."""
    y = np.asarray(y, bool)
    components = []
    for score in (np.asarray(score_a, float), np.asarray(score_b, float)):
        x, z = score[y][:, None], score[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        components.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    s10 = np.cov(np.vstack([c[1] for c in components]))
    s01 = np.cov(np.vstack([c[2] for c in components]))
    s = s10 / y.sum() + s01 / (~y).sum()
    z = (components[0][0] - components[1][0]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return components[0][0], components[1][0], 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.4
    score_a = np.round(y * 0.8 + rng.normal(0, 1, 60), 1)  # rounded: ties within and across classes
    score_b = np.round(y * 0.3 + 0.5 * score_a + rng.normal(0, 1, 60), 1)
    fast = delong_test(y, score_a, score_b)
    assert fast == pytest.approx(slow_delong(y, score_a, score_b), rel=1e-10)
    assert fast[0] == pytest.approx(roc_auc_score(y, score_a)) and fast[1] == pytest.approx(roc_auc_score(y, score_b))


def test_delong_edge_cases():
    y = [1, 1, 0, 0]
    assert delong_test(y, [0.9, 0.8, 0.2, 0.1], [0.9, 0.8, 0.2, 0.1]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="two rows of each class"):
        delong_test([1, 1, 0], [0.2, 0.3, 0.1], [0.1, 0.5, 0.2])


def test_compare_predictions_matches_rows_by_id():
    method = pd.DataFrame({"id": ["a", "b", "c", "d"], "prediction": [1, 0, 1, 0], "prob_0": [0.2, 0.7, 0.4, 0.9],
                           "prob_1": [0.8, 0.3, 0.6, 0.1], "label": [1, 1, 0, 0]})
    reference = method.iloc[::-1].assign(prediction=[1, 1, 1, 1], prob_1=[0.9, 0.8, 0.7, 0.6])
    result = compare_predictions(method, reference)
    # method right on a, d; reference (all 1) right on a, b: one row only each got right
    assert (result["only_method"], result["only_reference"], result["n_rows"]) == (1, 1, 4)
    assert result["p_mcnemar"] == pytest.approx(1.0)
    # method: positives a .8, b .3 over negatives c .6, d .1 → 3 of 4 pairs; reference (reversed rows):
    # positives a .6, b .7 below negatives c .8, d .9 → 0
    assert result["auroc_diff"] == pytest.approx(0.75)
    y, a, b = [1, 1, 0, 0], [0.8, 0.3, 0.6, 0.1], [0.6, 0.7, 0.8, 0.9]
    assert result["p_delong"] == pytest.approx(slow_delong(y, a, b)[2])
    with pytest.raises(ValueError, match="different ids"):
        compare_predictions(method, reference.iloc[:3])
    one_positive = compare_predictions(method.assign(label=[1, 0, 0, 0]), reference.assign(label=[0, 0, 0, 1]))
    assert math.isnan(one_positive["p_delong"]) and one_positive["n_rows"] == 4  # DeLong needs 2 of each class


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
    assert row["n"] == 5 and row["n_pairs"] == 5 and row["n_nonzero"] == 5
    assert row["p_value"] == pytest.approx(0.0625) and row["min_p"] == pytest.approx(0.0625)
    # differences 0.03, 0.04, 0.02, 0.03, 0.05: mean 0.034, squared deviations sum to 0.00052, t-interval
    half = T_975_DF4 * math.sqrt(0.00052 / 4 / 5)
    assert (row["diff_mean"], row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((0.034, 0.034 - half,
                                                                                          0.034 + half))
    assert math.isnan(row["p_nb"])
    reference = table.loc[("bbp", "dora")]
    assert reference["mean"] == pytest.approx(np.mean(dora)) and math.isnan(reference["p_value"])
    assert table.loc[("bbp", "majority"), "diff_mean"] == pytest.approx(0.5 - np.mean(dora))
    mic = table.loc[("mic", "bidora")]  # seeds 1, 2 are shared with the reference
    assert mic["n"] == 3 and mic["n_pairs"] == 2 and mic["diff_mean"] == pytest.approx(0.1)
    with_nb = compare_to_reference(df, "f1", "dora", test_train_ratio=0.25).set_index(["task", "method"])
    expected = corrected_resampled_t(np.subtract(bidora, dora), 0.25)
    assert with_nb.loc[("bbp", "bidora"), ["diff_mean", "diff_ci_low", "diff_ci_high", "p_nb"]].tolist() == \
        pytest.approx(list(expected))


def test_across_tasks_pairs_task_and_seed():
    rows = []
    for seed, (acc_ref, acc, mse_ref, mse) in enumerate([(0.8, 0.9, 0.5, 0.4), (0.7, 0.75, 0.5, 0.45),
                                                          (0.6, 0.6, 0.5, 0.6)]):
        rows += [{"task": "bbb", "method": "dora", "seed": seed, "accuracy": acc_ref, "mse": None},
                 {"task": "bbb", "method": "bidora", "seed": seed, "accuracy": acc, "mse": None},
                 {"task": "mic", "method": "dora", "seed": seed, "accuracy": None, "mse": mse_ref},
                 {"task": "mic", "method": "bidora", "seed": seed, "accuracy": None, "mse": mse}]
    result = across_tasks(pd.DataFrame(rows), "dora", {"bbb": ("accuracy", True), "mic": ("mse", False)})
    row = result.iloc[0]
    # oriented differences: bbb +0.1, +0.05, 0; mic (−mse) +0.1, +0.05, −0.1 → 4 better, 1 worse, 1 tie
    assert (row.method, row.tasks, row.n_pairs, row.wins, row.losses, row.ties) == ("bidora", 2, 6, 4, 1, 1)
    # nonzero |d| 0.1, 0.05, 0.1, 0.05, 0.1 → ranks 4, 1.5, 4, 1.5, 4; W− = 4
    assert row.p_value == pytest.approx(exact_wilcoxon_p([10, 5, 10, 5, -10], [0] * 5))
    assert row.min_p == pytest.approx(0.0625)


def test_compare_to_reference_errors_name_the_problem():
    df, _, _ = results_table()
    with pytest.raises(ValueError, match="fold"):
        compare_to_reference(df.drop(columns="fold"), "f1", "dora")
    with pytest.raises(ValueError, match="share the key"):
        compare_to_reference(pd.concat([df, df.iloc[:1]]), "f1", "dora")
    table = compare_to_reference(df.drop(columns="fold"), "f1", "dora", pair_on=("seed",))
    assert len(table) == 5
