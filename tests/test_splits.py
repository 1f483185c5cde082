"""Split invariants over many seeds: disjoint, complete, every class on every side, groups whole."""

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protadapt.config import DataConfig
from protadapt.data.splits import SplitError, column_groups, inner_split, kfold_splits, merge_groups, split_groups

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


# --- inner split -----------------------------------------------------------------


@SETTINGS
@given(labels=class_labels(), fraction=fractions, seed=seeds)
def test_inner_split_classification_invariants(labels, fraction, seed):
    train, test = inner_split(labels, fraction, seed, problem_type="classification")
    assert_partition(train, test, len(labels))
    for label in np.unique(labels):
        count = (labels == label).sum()
        assert (labels[test] == label).sum() == np.clip(np.rint(count * fraction), 1, count - 1)
        assert (labels[train] == label).sum() >= 1
    again = inner_split(labels, fraction, seed, problem_type="classification")
    assert np.array_equal(again[1], test)


@SETTINGS
@given(values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=200), fraction=fractions, seed=seeds)
def test_inner_split_regression_bins_balanced(values, fraction, seed):
    labels = np.array(values)
    train, test = inner_split(labels, fraction, seed, problem_type="regression")
    assert_partition(train, test, len(labels))
    bins = min(5, len(labels) // 2)
    ranks = np.argsort(np.argsort(labels, kind="stable"), kind="stable")
    bin_of = ranks * bins // len(labels)
    for bin_id in range(bins):
        size = (bin_of == bin_id).sum()
        assert (bin_of[test] == bin_id).sum() == np.clip(np.rint(size * fraction), 1, size - 1)


@SETTINGS
@given(data=grouped_labels(), fraction=fractions, seed=seeds)
def test_inner_split_with_groups_keeps_groups_whole(data, fraction, seed):
    labels, groups = data
    try:
        train, test = inner_split(labels, fraction, seed, problem_type="classification", groups=groups)
    except SplitError as error:
        assert "without splitting a group" in str(error)
        return
    assert_partition(train, test, len(labels))
    assert_groups_whole(groups, train, test)
    assert set(labels[train]) == set(labels[test]) == set(labels)
    assert np.array_equal(inner_split(labels, fraction, seed, problem_type="classification", groups=groups)[1], test)


def test_grouped_inner_split_is_close_to_the_target_fraction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    groups = rng.integers(0, 200, 500)
    train, test = inner_split(labels, 0.2, 0, problem_type="classification", groups=groups)
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
        inner_split([0, 1, 0, 1], 1.5, 0, problem_type="classification")
    with pytest.raises(ValueError, match="problem_type"):
        inner_split([0, 1, 0, 1], 0.5, 0, problem_type="ranking")
    with pytest.raises(ValueError, match="one id per example"):
        inner_split([0, 1, 0, 1], 0.5, 0, problem_type="classification", groups=[0, 1])


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


# --- groups from a config ------------------------------------------------------------------


def test_split_groups_by_column_with_missing_values_apart():
    frame = pd.DataFrame({"sequence": ["MKT", "GGG", "PPP", "WWW", "CCC"],
                          "organism": ["E. coli", "H. sapiens", "E. coli", None, None]})
    assert split_groups(frame, DataConfig(group_by="organism")).tolist() == [0, 1, 0, 2, 3]
    assert split_groups(frame, DataConfig()) is None


def test_split_groups_merges_identity_and_column():
    frame = pd.DataFrame({"sequence": ["MKTAYIAKQR", "MKTAYIAKQR", "GGGGPPPPWW", "CCCCDDDDEE", "HHHHIIIIKK"],
                          "organism": ["a", "b", "b", "c", "d"]})
    assert split_groups(frame, DataConfig(identity_threshold=0.9)).tolist() == [0, 0, 1, 2, 3]
    assert split_groups(frame, DataConfig(identity_threshold=0.9, group_by="organism")).tolist() == [0, 0, 0, 1, 2]


def test_split_groups_names_a_missing_column():
    frame = pd.DataFrame({"sequence": ["MKT"], "label": [1]})
    with pytest.raises(SplitError) as caught:
        split_groups(frame, DataConfig(group_by="organism"))
    assert str(caught.value) == ("data.group_by=organism: the data has no such column (it has sequence, label); "
                                 "name one of them or leave data.group_by unset")


def test_split_groups_warns_when_one_organism_dominates(caplog):
    frame = pd.DataFrame({"sequence": list("ACDEF"), "organism": ["x", "x", "x", "y", "z"]})
    with caplog.at_level(logging.WARNING):
        split_groups(frame, DataConfig(group_by="organism"))
    assert [record.getMessage() for record in caplog.records] == [
        "grouping by organism put 3 of 5 rows in one group; splits will be lopsided or fail (group by something finer)"]


def test_column_groups_and_merge():
    assert column_groups(["b", "a", "b", np.nan, "a"]).tolist() == [0, 1, 0, 2, 1]
    assert merge_groups(np.array([0, 0, 1, 2, 3]), np.array([0, 1, 1, 2, 2])).tolist() == [0, 0, 0, 1, 1]


def test_grouped_outer_folds_keep_organisms_whole():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"sequence": ["M"] * 60, "label": rng.integers(0, 2, 60),
                          "organism": rng.integers(0, 15, 60).astype(str)})
    groups = split_groups(frame, DataConfig(group_by="organism"))
    for train, test in kfold_splits(frame["label"], 3, 2, 0, problem_type="classification", groups=groups):
        assert not set(frame["organism"][train]) & set(frame["organism"][test])


def test_compare_cv_outer_folds_keep_identity_groups_whole(tmp_path):
    from dataclasses import replace

    from protadapt.compare import Grid, plan
    from protadapt.config import RunConfig
    from protadapt.data.identity import identity_groups

    base = RunConfig()
    base = replace(base, data=replace(base.data, identity_threshold=0.5))
    cells = [c for c in plan(base, Grid(tasks=["bbb"], methods=["lora"], seeds=[0], cv=3, baselines=()), tmp_path)
             if c.method == "lora"]  # (each fold also gets the probe row)
    assert len(cells) == 3
    pool = pd.concat([cells[0].train, cells[0].test], ignore_index=True)
    group_of = dict(zip(pool["id"], identity_groups(pool["sequence"].tolist(), 0.5)))
    for cell in cells:
        assert not {group_of[i] for i in cell.train["id"]} & {group_of[i] for i in cell.test["id"]}
