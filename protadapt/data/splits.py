"""Seeded, deterministic splits that keep every class (or label range) and every group intact.

All functions take labels (and optionally one group id per example) and return numpy index
arrays into them, sorted ascending. Classification is stratified by class; regression by
quantile bins of the target (rank-based, ``n_bins`` of them, fewer when the set is small).
Examples that share a group (`split_groups`: identity groups and/or a column such as organism)
always land on the same side.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

from protadapt.data.identity import identity_groups, number_by_first_appearance, warn_if_one_group_dominates

DEFAULT_BINS = 5


class SplitError(ValueError):
    """A split that cannot keep its promises (every class on both sides, groups intact)."""


def inner_split(
    labels: Sequence,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    problem_type: str,
    groups: Sequence | None = None,
    n_bins: int = DEFAULT_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into (inner_train_idx, inner_val_idx), BiDoRA's lower and upper level.

    Each class (or regression bin) puts ``round(val_fraction * count)`` examples in the validation
    part, clipped to at least one and at most all but one. With groups, whole groups are added to
    it greedily (largest first, ties in seeded random order) while that brings the per-class
    counts closer to those targets.
    """
    parts = ("inner train", "validation")
    return _holdout(labels, val_fraction, seed, problem_type, groups, n_bins, parts)


def kfold_splits(
    labels: Sequence,
    k: int,
    repeats: int = 1,
    seed: int = 0,
    *,
    problem_type: str,
    groups: Sequence | None = None,
    n_bins: int = DEFAULT_BINS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (grouped) k-fold, repeated with fresh shuffles: ``k * repeats`` (train, test) pairs."""
    if k < 2 or repeats < 1:
        raise ValueError(f"need k >= 2 and repeats >= 1, got k={k}, repeats={repeats}")
    labels = np.asarray(labels)
    strata = _strata(labels, problem_type, n_bins, min_per_stratum=k, purpose=f"{k}-fold cross-validation")
    placeholder = np.zeros(len(labels))
    if groups is None:
        splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
        folds = list(splitter.split(placeholder, strata))
    else:
        groups = _check_groups(groups, len(labels))
        if len(np.unique(groups)) < k:
            raise SplitError(f"only {len(np.unique(groups))} groups for {k}-fold cross-validation; lower k or the identity threshold")
        folds = []
        for repeat_seed in np.random.default_rng(seed).integers(2**31 - 1, size=repeats):
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(repeat_seed))
            folds.extend(splitter.split(placeholder, strata, groups))
    folds = [(np.sort(train), np.sort(test)) for train, test in folds]
    if problem_type == "classification":
        for number, (train, test) in enumerate(folds):
            _check_classes_on_both_sides(labels, train, test, (f"fold {number} train", f"fold {number} test"))
    return folds


def split_groups(frame: pd.DataFrame, data) -> np.ndarray | None:
    """The groups a split of `frame` keeps whole, from a DataConfig; None when it asks for none.

    ``data.identity_threshold`` links near-duplicate sequences (`identity_groups`);
    ``data.group_by`` names a column whose equal values share a group (e.g. ``organism``). With
    both, rows linked by either share a group.
    """
    parts = []
    if data.identity_threshold:
        parts.append(identity_groups(frame["sequence"].tolist(), data.identity_threshold))
    if data.group_by:
        if data.group_by not in frame:
            columns = ", ".join(map(str, frame.columns))
            raise SplitError(f"data.group_by={data.group_by}: the data has no such column (it has {columns}); "
                             "name one of them or leave data.group_by unset")
        parts.append(column_groups(frame[data.group_by]))
        groups = merge_groups(*parts)
        warn_if_one_group_dominates(groups, f"grouping by {data.group_by}", "group by something finer")
        return groups
    return parts[0] if parts else None


def column_groups(values: Sequence) -> np.ndarray:
    """Group ids by equal value (numbered by first appearance); a missing value is a group of its own."""
    codes, _ = pd.factorize(pd.Series(values), sort=False)
    missing = codes < 0
    codes[missing] = codes.max() + 1 + np.arange(missing.sum())
    return number_by_first_appearance(codes)


def merge_groups(*partitions: np.ndarray) -> np.ndarray:
    """The finest grouping that keeps every given grouping's groups whole (rows linked by any share one)."""
    n = len(partitions[0])
    rows, nodes, offset = [], [], n
    for groups in partitions:
        rows.append(np.arange(n))
        nodes.append(offset + groups)
        offset += int(groups.max()) + 1 if n else 0
    rows, nodes = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(rows)), (rows, nodes)), shape=(offset, offset))
    return number_by_first_appearance(connected_components(graph, directed=False)[1][:n])


# --- helpers -------------------------------------------------------------------------------


def _holdout(labels, fraction, seed, problem_type, groups, n_bins, parts) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise ValueError(f"the {parts[1]} fraction must be between 0 and 1, got {fraction}")
    labels = np.asarray(labels)
    purpose = f"the {parts[0]}/{parts[1]} split"
    strata = _strata(labels, problem_type, n_bins, min_per_stratum=2, purpose=purpose)
    groups = np.arange(len(labels)) if groups is None else _check_groups(groups, len(labels))
    rng = np.random.default_rng(seed)
    held_out = _greedy_group_holdout(strata, groups, fraction, rng)
    train, test = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if problem_type == "classification":
        _check_classes_on_both_sides(labels, train, test, parts)
    elif not len(train) or not len(test):
        raise SplitError(f"{purpose} left the {parts[0] if not len(train) else parts[1]} part empty; groups are too large for this set")
    return train, test


def _greedy_group_holdout(strata: np.ndarray, groups: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Mark groups as held out, largest first, while that moves per-stratum counts towards target."""
    _, group_of = np.unique(groups, return_inverse=True)
    composition = np.zeros((group_of.max() + 1, strata.max() + 1))
    np.add.at(composition, (group_of, strata), 1)
    totals = composition.sum(axis=0)
    targets = np.clip(np.rint(totals * fraction), 1, np.maximum(totals - 1, 1))
    order = rng.permutation(len(composition))
    order = order[np.argsort(-composition[order].sum(axis=1), kind="stable")]
    taken = np.zeros_like(targets)
    held_out_groups = np.zeros(len(composition), dtype=bool)
    for group in order:
        after = taken + composition[group]
        if np.square(after - targets).sum() < np.square(taken - targets).sum():
            taken = after
            held_out_groups[group] = True
    return held_out_groups[group_of]


def _strata(labels: np.ndarray, problem_type: str, n_bins: int, min_per_stratum: int, purpose: str) -> np.ndarray:
    """Class codes (classification) or rank-based quantile bins (regression), each big enough."""
    if labels.ndim != 1 or not len(labels):
        raise ValueError("labels must be a non-empty 1-D array")
    if problem_type == "classification":
        classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise SplitError(f"only one class ({classes[0]}) in the labels; {purpose} needs at least 2 classes")
        rare = np.flatnonzero(counts < min_per_stratum)
        if len(rare):
            count = counts[rare[0]]
            raise SplitError(
                f"class {classes[rare[0]]} has only {count} example{'s' if count != 1 else ''}; "
                f"{purpose} needs at least {min_per_stratum} per class"
            )
        return codes
    if problem_type != "regression":
        raise ValueError(f"problem_type must be 'classification' or 'regression', not {problem_type!r}")
    if np.isnan(labels.astype(float)).any():
        raise SplitError(f"regression labels contain NaN; {purpose} needs every label")
    if len(labels) < min_per_stratum:
        raise SplitError(f"only {len(labels)} examples; {purpose} needs at least {min_per_stratum}")
    bins = max(1, min(n_bins, len(labels) // min_per_stratum))
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[np.argsort(labels, kind="stable")] = np.arange(len(labels))
    return ranks * bins // len(labels)


def _check_groups(groups: Sequence, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one id per example ({n}), got shape {groups.shape}")
    return groups


def _check_classes_on_both_sides(labels: np.ndarray, train: np.ndarray, test: np.ndarray, parts) -> None:
    for name, index in zip(parts, (train, test)):
        missing = np.setdiff1d(np.unique(labels), labels[index])
        if len(missing):
            raise SplitError(
                f"class {missing[0]} has no example in the {name} part without splitting a group; "
                "use a higher identity threshold or fewer folds"
            )
