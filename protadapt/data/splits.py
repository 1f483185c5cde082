"""Seeded, deterministic splits that keep every class (or label range) and every group intact.

All functions take labels (and optionally one group id per example) and return numpy index
arrays into them, sorted ascending. Classification is stratified by class; regression by
quantile bins of the target (rank-based, ``n_bins`` of them, fewer when the set is small).
Examples that share a group (e.g. from `identity_groups`) always land on the same side.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

DEFAULT_BINS = 5
TOLERANCE = 1e-9  # so that identity exactly at the threshold (e.g. 7/10 vs 0.7) counts as reaching it


class SplitError(ValueError):
    """A split that cannot keep its promises (every class on both sides, groups intact)."""


def stratified_holdout(
    labels: Sequence,
    test_size: float,
    seed: int,
    problem_type: str,
    groups: Sequence | None = None,
    n_bins: int = DEFAULT_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Split into (train_idx, test_idx) with every class on both sides and groups unbroken.

    Each class (or regression bin) puts ``round(test_size * count)`` examples in the test part,
    clipped to at least one and at most all but one. With groups, whole groups are added to the
    test part greedily (largest first, ties in seeded random order) while that brings the
    per-class counts closer to those targets.
    """
    return _holdout(labels, test_size, seed, problem_type, groups, n_bins, ("train", "test"))


def inner_split(
    labels: Sequence,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    problem_type: str,
    groups: Sequence | None = None,
    n_bins: int = DEFAULT_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into (inner_train_idx, inner_val_idx), BiDoRA's lower and upper level."""
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


def identity_groups(sequences: Sequence[str], threshold: float = 0.9) -> np.ndarray:
    """Group ids such that sequences linked by identity >= threshold share a group (single linkage).

    identity(a, b) = LCS(a, b) / len(shorter): the most identical residue pairs any gapped
    global alignment of a and b can have (Biopython ``PairwiseAligner``, match 1, mismatch 0,
    gaps 0), over the shorter length. As in CD-HIT's length-difference cutoff, a pair is only
    linked when also len(shorter) / len(longer) >= threshold, so a short fragment is not a copy
    of a long protein. Exact: two cheap bounds (length ratio; shared residue composition, which
    caps the LCS) skip only pairs that cannot be linked. Cost is O(n^2) vectorised bound checks
    plus one O(len^2) alignment (~0.3 ms at 400 residues) per surviving pair. Measured on one
    core: bbb (238 peptides) 0.1 s, mic (4559 peptides) 1.3 s, thermostability (1965 proteins)
    5 s. The worst case (every pair passes the bounds, few link) is one alignment per pair,
    n^2/2 x 0.3 ms: about 10 minutes for 2000 proteins of 400 residues.
    Groups are numbered 0, 1, ... in order of first appearance.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    from Bio.Align import PairwiseAligner

    sequences = [str(sequence) for sequence in sequences]
    n = len(sequences)
    aligner = PairwiseAligner(mode="global", match_score=1.0, mismatch_score=0.0, gap_score=0.0)
    lengths = np.array([len(sequence) for sequence in sequences])
    composition = _composition(sequences)
    parent = np.arange(n)
    for i in range(n - 1):
        others = np.arange(i + 1, n)
        shorter = np.minimum(lengths[i], lengths[others])
        longer = np.maximum(lengths[i], lengths[others])
        shared = np.minimum(composition[i], composition[others]).sum(axis=1)
        candidates = others[(shorter >= threshold * longer - TOLERANCE) & (shared >= threshold * shorter - TOLERANCE)]
        for j in candidates:
            if _find(parent, i) == _find(parent, j):
                continue
            need = threshold * min(lengths[i], lengths[j])
            if sequences[i] == sequences[j] or aligner.score(sequences[i], sequences[j]) >= need - TOLERANCE:
                parent[_find(parent, j)] = _find(parent, i)
    roots = np.array([_find(parent, i) for i in range(n)], dtype=np.int64)
    _, first_seen, group_ids = np.unique(roots, return_index=True, return_inverse=True)
    renumber = np.argsort(np.argsort(first_seen))
    return renumber[group_ids].astype(np.int64)


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


def _composition(sequences: list[str]) -> np.ndarray:
    """Character counts per sequence; the overlap of two rows bounds any alignment's matches."""
    alphabet = {character: column for column, character in enumerate(sorted(set().union(*sequences)))}
    counts = np.zeros((len(sequences), max(len(alphabet), 1)), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        for character, count in Counter(sequence).items():
            counts[row, alphabet[character]] = count
    return counts


def _find(parent: np.ndarray, node: int) -> int:
    """Union-find root with path halving."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node
