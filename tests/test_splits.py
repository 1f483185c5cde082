"""Split invariants over many seeds: disjoint, complete, every class on every side, groups whole."""

from itertools import combinations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protadapt.data.splits import SplitError, identity_groups, inner_split, kfold_splits, stratified_holdout

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**31 - 1)
fractions = st.floats(0.1, 0.5)


@st.composite
def class_labels(draw, min_per_class=2):
    counts = draw(st.lists(st.integers(min_per_class, 40), min_size=2, max_size=4))
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels[np.random.default_rng(draw(seeds)).permutation(len(labels))]


@st.composite
def grouped_labels(draw):
    labels = draw(class_labels(min_per_class=4))
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(labels), max_size=len(labels)))
    groups = np.repeat(np.arange(len(sizes)), sizes)[: len(labels)]
    return labels, np.random.default_rng(draw(seeds)).permutation(groups)


def assert_partition(train, test, n):
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def assert_groups_whole(groups, train, test):
    assert not set(groups[train]) & set(groups[test])


# --- holdout / inner split -----------------------------------------------------------------


@SETTINGS
@given(labels=class_labels(), fraction=fractions, seed=seeds)
def test_holdout_classification_invariants(labels, fraction, seed):
    train, test = stratified_holdout(labels, fraction, seed, "classification")
    assert_partition(train, test, len(labels))
    for label in np.unique(labels):
        count = (labels == label).sum()
        assert (labels[test] == label).sum() == np.clip(np.rint(count * fraction), 1, count - 1)
        assert (labels[train] == label).sum() >= 1
    again = stratified_holdout(labels, fraction, seed, "classification")
    assert np.array_equal(again[1], test)


@SETTINGS
@given(values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=200), fraction=fractions, seed=seeds)
def test_holdout_regression_bins_balanced(values, fraction, seed):
    labels = np.array(values)
    train, test = stratified_holdout(labels, fraction, seed, "regression")
    assert_partition(train, test, len(labels))
    bins = min(5, len(labels) // 2)
    ranks = np.argsort(np.argsort(labels, kind="stable"), kind="stable")
    bin_of = ranks * bins // len(labels)
    for bin_id in range(bins):
        size = (bin_of == bin_id).sum()
        assert (bin_of[test] == bin_id).sum() == np.clip(np.rint(size * fraction), 1, size - 1)


@SETTINGS
@given(data=grouped_labels(), fraction=fractions, seed=seeds)
def test_holdout_with_groups_keeps_groups_whole(data, fraction, seed):
    labels, groups = data
    try:
        train, test = stratified_holdout(labels, fraction, seed, "classification", groups=groups)
    except SplitError as error:
        assert "without splitting a group" in str(error)
        return
    assert_partition(train, test, len(labels))
    assert_groups_whole(groups, train, test)
    assert set(labels[train]) == set(labels[test]) == set(labels)
    assert np.array_equal(stratified_holdout(labels, fraction, seed, "classification", groups=groups)[1], test)


def test_grouped_holdout_is_close_to_the_target_fraction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    groups = rng.integers(0, 200, 500)
    train, test = stratified_holdout(labels, 0.2, 0, "classification", groups=groups)
    assert abs(len(test) / 500 - 0.2) < 0.02
    assert_groups_whole(groups, train, test)


def test_different_seeds_give_different_splits():
    labels = np.repeat([0, 1], 50)
    tests = {tuple(inner_split(labels, 0.2, seed, problem_type="classification")[1]) for seed in range(10)}
    assert len(tests) == 10


def test_inner_split_message_for_single_example_class():
    with pytest.raises(SplitError) as caught:
        inner_split([0, 0, 0, 1], problem_type="classification")
    assert str(caught.value) == "class 1 has only 1 example; the inner train/validation split needs at least 2 per class"


def test_inner_split_tiny_set_keeps_every_class_on_both_sides():
    inner_train, inner_val = inner_split([0, 1, 0, 1], 0.2, 3, problem_type="classification")
    assert sorted(np.array([0, 1, 0, 1])[inner_val]) == [0, 1]
    assert len(inner_train) == 2


def test_group_holding_a_whole_class_is_refused():
    labels = np.array([0, 0, 0, 0, 1, 1])
    groups = np.array([0, 1, 2, 3, 4, 4])
    with pytest.raises(SplitError, match="class 1 has no example"):
        inner_split(labels, 0.3, 0, problem_type="classification", groups=groups)


@pytest.mark.parametrize(
    ("labels", "kwargs", "fragment"),
    [
        ([1, 1, 1], {"problem_type": "classification"}, "only one class"),
        ([0.1, np.nan, 0.3, 0.4], {"problem_type": "regression"}, "contain NaN"),
        ([0.1], {"problem_type": "regression"}, "only 1 examples"),
    ],
)
def test_impossible_holdouts(labels, kwargs, fragment):
    with pytest.raises(SplitError, match=fragment):
        inner_split(labels, **kwargs)


def test_argument_errors():
    with pytest.raises(ValueError, match="fraction"):
        stratified_holdout([0, 1, 0, 1], 1.5, 0, "classification")
    with pytest.raises(ValueError, match="problem_type"):
        stratified_holdout([0, 1, 0, 1], 0.5, 0, "ranking")
    with pytest.raises(ValueError, match="one id per example"):
        stratified_holdout([0, 1, 0, 1], 0.5, 0, "classification", groups=[0, 1])


# --- k-fold --------------------------------------------------------------------------------


@SETTINGS
@given(labels=class_labels(min_per_class=5), k=st.integers(2, 5), repeats=st.integers(1, 3), seed=seeds)
def test_kfold_classification_invariants(labels, k, repeats, seed):
    folds = kfold_splits(labels, k, repeats, seed, problem_type="classification")
    assert len(folds) == k * repeats
    for repeat in range(repeats):
        chunk = folds[repeat * k : (repeat + 1) * k]
        assert np.array_equal(np.sort(np.concatenate([test for _, test in chunk])), np.arange(len(labels)))
        for train, test in chunk:
            assert_partition(train, test, len(labels))
            assert set(labels[train]) == set(labels[test]) == set(labels)
    again = kfold_splits(labels, k, repeats, seed, problem_type="classification")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


@SETTINGS
@given(values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=10, max_size=150), k=st.integers(2, 5), seed=seeds)
def test_kfold_regression_partitions(values, k, seed):
    labels = np.array(values)
    folds = kfold_splits(labels, k, 1, seed, problem_type="regression")
    assert np.array_equal(np.sort(np.concatenate([test for _, test in folds])), np.arange(len(labels)))
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 5  # stratification by bins keeps folds near n/k


@SETTINGS
@given(data=grouped_labels(), k=st.integers(2, 4), seed=seeds)
def test_kfold_groups_never_straddle(data, k, seed):
    labels, groups = data
    try:
        folds = kfold_splits(labels, k, 2, seed, problem_type="classification", groups=groups)
    except SplitError:
        return
    for train, test in folds:
        assert_partition(train, test, len(labels))
        assert_groups_whole(groups, train, test)
        assert set(labels[test]) == set(labels)


def test_kfold_repeats_reshuffle():
    labels = np.repeat([0, 1], 30)
    folds = kfold_splits(labels, 3, 2, 0, problem_type="classification")
    assert not np.array_equal(folds[0][1], folds[3][1])


def test_kfold_needs_k_examples_per_class():
    with pytest.raises(SplitError, match="class 1 has only 3 examples; 5-fold cross-validation needs at least 5 per class"):
        kfold_splits([0] * 10 + [1] * 3, 5, problem_type="classification")


# --- identity groups -----------------------------------------------------------------------


def lcs(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def brute_force_groups(sequences, threshold):
    """The documented rule, with no shortcuts: every pair aligned, components by relabelling."""
    label = list(range(len(sequences)))
    for i, j in combinations(range(len(sequences)), 2):
        short, long_ = sorted((len(sequences[i]), len(sequences[j])))
        if short / long_ >= threshold - 1e-12 and lcs(sequences[i], sequences[j]) / short >= threshold - 1e-12:
            old, new = label[j], label[i]
            label = [new if value == old else value for value in label]
    first_seen = {}
    return np.array([first_seen.setdefault(value, len(first_seen)) for value in label])


@settings(max_examples=80, deadline=None)
@given(
    sequences=st.lists(st.text(alphabet="ACG", min_size=1, max_size=12), min_size=1, max_size=14),
    threshold=st.sampled_from([0.5, 0.7, 0.8, 0.9, 1.0]),
)
def test_identity_groups_match_brute_force(sequences, threshold):
    assert np.array_equal(identity_groups(sequences, threshold), brute_force_groups(sequences, threshold))


def test_identity_exactly_at_threshold_links():
    assert identity_groups(["AAAAAAAAAA", "AAAAAAA"], threshold=0.7).tolist() == [0, 0]  # 7/10 == 0.7
    assert identity_groups(["AAAAAAAAAA", "AAAAAA"], threshold=0.7).tolist() == [0, 1]


def test_identity_groups_examples():
    base = "MKTAYIAKQRQISFVKSHFS"
    one_mutation = "MKTAYIAKQRQISFVKSHFA"  # 19/20 = 0.95
    two_indels = "MKTAYIAKQRISFVKSHFSW"  # LCS 19 of 20
    fragment = "MKTAYIAKQR"  # identical but half the length
    unrelated = "GGGGPPPPWWWWCCCCDDDD"
    groups = identity_groups([base, unrelated, one_mutation, fragment, two_indels, base], threshold=0.9)
    assert groups.tolist() == [0, 1, 0, 2, 0, 0]
    assert identity_groups([base, one_mutation], threshold=0.96).tolist() == [0, 1]


def test_identity_groups_on_bbb_sequences():
    from protadapt.data.tasks import get_task

    frame = get_task("bbb").load()
    groups = identity_groups(frame["sequence"].tolist())
    assert len(groups) == len(frame) and groups.max() + 1 >= 0.95 * len(frame)  # CD-HIT 90 % reduced set
