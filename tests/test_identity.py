"""Identity as defined (shorter length, paid internal gaps, free end gaps) and its exact prefilter."""

import logging
import time
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protadapt.data.identity import (
    MIN_LINK_LENGTH,
    WORD,
    _fewest_shared_words,
    _most_identities,
    identity,
    identity_groups,
    metrics_below_identity,
    nearest_train_identity,
)
from protadapt.evaluation.metrics import compute_metrics

AMINO_ACIDS = list("ACDEFGHIKLMNPQRSTVWY")


def random_peptides(count: int, length_range: tuple[int, int], seed: int, alphabet=AMINO_ACIDS) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(alphabet, rng.integers(*length_range, endpoint=True))) for _ in range(count)]


def brute_force_groups(sequences, threshold):
    """The definition with no shortcuts: every pair's identity, components by relabelling."""
    label = list(range(len(sequences)))
    for i, j in combinations(range(len(sequences)), 2):
        a, b = sequences[i], sequences[j]
        if a == b or (min(len(a), len(b)) >= MIN_LINK_LENGTH and identity(a, b) >= threshold - 1e-9):
            old, new = label[j], label[i]
            label = [new if value == old else value for value in label]
    first_seen = {}
    return np.array([first_seen.setdefault(value, len(first_seen)) for value in label])


def lcs(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


# --- the definition ------------------------------------------------------------------------


def test_issue_pair_is_one_mismatch_over_the_shorter_length():
    long_, short = "AAAAAAAAAAGIGKFLHSAKKFGKAFVGEIMNS", "GIGKALHSAKKFGKAFVGEIMNS"
    assert identity(long_, short) == pytest.approx(22 / 23)
    assert identity_groups([long_, short], threshold=0.9).tolist() == [0, 0]


def test_identity_examples():
    base = "MKTAYIAKQRQISFVKSHFS"
    assert identity("MKTAYIAKQR", base) == 1.0  # a fragment inside: end gaps are free, no length gate
    assert identity("ACDEFGHIKL", "WACDEFGHIKLW") == 1.0  # a 10-mer inside a 12-mer
    assert identity(base, "MKTAYIAKQRQISFVKSHFA") == pytest.approx(19 / 20)  # one mismatch
    assert identity(base, "MKTAYIAKQRISFVKSHFSW") == pytest.approx(19 / 20)  # one internal gap buys 9 identities
    assert identity(base, base) == 1.0 and identity("", base) == 0.0
    # scattered identities are not collected: LCS is 5 but a paid gap per identity is not worth it
    assert lcs("ACDEF", "AWWWCWWWDWWWEWWWF") == 5
    assert identity("ACDEF", "AWWWCWWWDWWWEWWWF") == pytest.approx(1 / 5)


@settings(max_examples=150, deadline=None)
@given(a=st.text(alphabet="ACDE", min_size=1, max_size=15), b=st.text(alphabet="ACDE", min_size=1, max_size=15))
def test_identity_is_symmetric_and_within_both_bounds(a, b):
    value = identity(a, b)
    shorter = min(len(a), len(b))
    shared = sum(min(a.count(x), b.count(x)) for x in set(a))
    assert value == pytest.approx(identity(b, a))
    assert value * shorter <= lcs(a, b) + 1e-9 <= shared + 1e-9  # the two prefilter bounds hold
    if a in b or b in a:
        assert value == 1.0


@st.composite
def related_pairs(draw):
    """A sequence and an edited copy (substitutions, insertions, deletions), often highly identical."""
    a = draw(st.text(alphabet="ACDEGK", min_size=1, max_size=40))
    b = list(a)
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(b)))
        edit = draw(st.sampled_from(["substitute", "insert", "delete"]))
        if edit == "insert" or not b:
            b.insert(position, draw(st.sampled_from("ACDEGKW")))
        elif edit == "delete" and len(b) > 1:
            del b[min(position, len(b) - 1)]
        else:
            b[min(position, len(b) - 1)] = draw(st.sampled_from("ACDEGKW"))
    return a, "".join(b)


def shared_words(a: str, b: str, k: int) -> int:
    words = [[s[i:i + k] for i in range(len(s) - k + 1)] for s in (a, b)]
    return sum(min(words[0].count(w), words[1].count(w)) for w in set(words[0]))


@settings(max_examples=300, deadline=None)
@given(pair=related_pairs())
def test_word_bound_holds_for_the_optimal_alignment(pair):
    a, b = pair
    shorter = min(len(a), len(b))
    identities = round(identity(a, b) * shorter)
    words = shared_words(a, b, WORD)
    assert words >= _fewest_shared_words(np.array(identities), np.array(shorter))
    assert identities <= _most_identities(np.array(words), np.array(shorter))


# --- groups: exactness of the prefilter, the warning, timing -----------------------------


@settings(max_examples=60, deadline=None)
@given(
    sequences=st.lists(st.text(alphabet="ACG", min_size=1, max_size=12), min_size=1, max_size=14),
    threshold=st.sampled_from([0.5, 0.7, 0.8, 0.9, 1.0]),
)
def test_identity_groups_match_brute_force(sequences, threshold):
    assert np.array_equal(identity_groups(sequences, threshold), brute_force_groups(sequences, threshold))


@pytest.mark.parametrize("threshold", [0.6, 0.75, 0.9])
def test_prefilter_is_exact_on_200_related_peptides(threshold):
    """Mutated copies and fragments of a few parents, so many pairs sit near every threshold."""
    rng = np.random.default_rng(7)
    parents = random_peptides(20, (8, 20), seed=3, alphabet=list("AGKLR"))
    sequences = []
    for _ in range(200):
        sequence = list(parents[rng.integers(20)])
        for position in rng.choice(len(sequence), rng.integers(0, 3), replace=False):
            sequence[position] = rng.choice(list("AGKLR"))
        start = rng.integers(0, 3)
        sequences.append("".join(sequence[start:]))
    started = time.perf_counter()
    fast = identity_groups(sequences, threshold)
    print(f"200 peptides at {threshold}: {fast.max() + 1} groups in {time.perf_counter() - started:.2f} s")
    assert np.array_equal(fast, brute_force_groups(sequences, threshold))


def test_random_20mers_are_not_chained_at_0_4(caplog):
    peptides = random_peptides(100, (20, 20), seed=0)
    with caplog.at_level(logging.WARNING):
        groups = identity_groups(peptides, threshold=0.4)
    print(f"100 random 20-mers at 0.4: {groups.max() + 1} groups, largest {np.bincount(groups).max()}")
    assert groups.max() + 1 >= 95 and not caplog.records


def test_one_group_holding_most_rows_is_announced(caplog):
    peptides = random_peptides(100, (20, 20), seed=0)
    with caplog.at_level(logging.WARNING):
        groups = identity_groups(peptides, threshold=0.1)  # 2 identities of 20 link nearly anything
    size = np.bincount(groups).max()
    assert size > 50
    assert [record.getMessage() for record in caplog.records] == [
        f"identity grouping at 0.1 put {size} of 100 rows in one group; splits will be lopsided or fail "
        "(raise data.identity_threshold)"]


def test_very_short_sequences_link_only_to_copies():
    assert identity("KK", "GKKLLG") == 1.0
    assert identity_groups(["GKKLLG", "KK", "AKKW", "KK", "KKLL"], threshold=0.9).tolist() == [0, 1, 2, 1, 0]


def test_identity_exactly_at_threshold_links():
    assert identity_groups(["AAAAAAAAAA", "AAAAAAAGGG"], threshold=0.7).tolist() == [0, 0]  # 7/10 == 0.7
    assert identity_groups(["AAAAAAAAAA", "AAAAAAGGGG"], threshold=0.7).tolist() == [0, 1]


def test_identity_threshold_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        identity_groups(["A"], threshold=0)


def test_identity_groups_on_bbb_sequences():
    from protadapt.data.tasks import get_task

    frame = get_task("bbb").load()
    groups = identity_groups(frame["sequence"].tolist())
    print(f"bbb at 0.9: {groups.max() + 1} groups of {len(frame)} peptides")
    assert len(groups) == len(frame) and groups.max() + 1 >= 0.9 * len(frame)


@pytest.mark.slow
def test_mic_timing():
    """Printed, not asserted: the machine is shared."""
    import os

    frame = pd.read_csv(os.path.join(os.environ["PROTADAPT_DATA_DIR"], "mic", "mic.csv"))
    started = time.perf_counter()
    groups = identity_groups(frame["sequence"].tolist(), 0.9)
    grouping = time.perf_counter() - started
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    started = time.perf_counter()
    nearest = nearest_train_identity(test["sequence"].tolist(), train["sequence"].tolist())
    print(f"mic: {len(frame)} sequences -> {groups.max() + 1} groups (largest {np.bincount(groups).max()}) in "
          f"{grouping:.1f} s; nearest_train_identity {len(test)} vs {len(train)} in {time.perf_counter() - started:.1f} s, "
          f"{(nearest >= 0.9).sum()} test rows >= 0.9, load {os.getloadavg()[0]:.1f}")
    assert len(groups) == len(frame) and nearest.shape == (len(test),)


# --- nearest training identity and metrics below it ----------------------------------------


def test_nearest_train_identity_is_the_exact_maximum():
    query = random_peptides(40, (3, 15), seed=1, alphabet=list("AGKL"))
    train = random_peptides(60, (3, 25), seed=2, alphabet=list("AGKL"))
    expected = [max(identity(q, t) for t in train) for q in query]
    assert np.allclose(nearest_train_identity(query, train), expected, atol=1e-12)


def test_nearest_train_identity_floor_leaves_nan_below_it():
    query = random_peptides(40, (5, 15), seed=4, alphabet=list("AGKL"))
    train = random_peptides(60, (5, 25), seed=5, alphabet=list("AGKL"))
    exact = nearest_train_identity(query, train)
    floored = nearest_train_identity(query, train, floor=0.8)
    assert 0 < np.isnan(floored).sum() < len(query)
    assert np.array_equal(np.isnan(floored), exact < 0.8 - 1e-9)
    assert np.allclose(floored[~np.isnan(floored)], exact[exact >= 0.8 - 1e-9])


def test_nearest_train_identity_examples():
    train = ["AAAAAAAAAAGIGKFLHSAKKFGKAFVGEIMNS", "WWWWWWWWWW"]
    result = nearest_train_identity(["GIGKALHSAKKFGKAFVGEIMNS", "WWWWWCCCCC", "WWWWW"], train)
    assert result.tolist() == pytest.approx([22 / 23, 0.5, 1.0])


def test_metrics_below_identity_regression():
    frame = pd.DataFrame({"prediction": [1.0, 2.0, 3.5, 0.0], "label": [1.5, 2.0, 3.0, 9.0],
                          "nearest_train_identity": [0.3, 0.5, 0.6, 1.0]})
    result = metrics_below_identity(frame, 0.6, "regression")
    assert result["n"] == 2
    assert result["mse"] == pytest.approx(0.125)
    assert result == {"n": 2, **compute_metrics("regression", [1.5, 2.0], [1.0, 2.0])}
    assert metrics_below_identity(frame, 0.2, "regression") == {"n": 0}
    frame.loc[3, "nearest_train_identity"] = np.nan  # below nearest_train_identity's floor
    assert metrics_below_identity(frame, 0.6, "regression")["n"] == 3


def test_metrics_below_identity_classification_maps_labels_to_probability_columns():
    frame = pd.DataFrame({"prediction": ["pos", "neg", "pos", "neg"], "prob_neg": [0.2, 0.9, 0.4, 0.6],
                          "prob_pos": [0.8, 0.1, 0.6, 0.4], "label": ["pos", "neg", "neg", "pos"],
                          "nearest_train_identity": [0.1, 0.2, 0.3, 0.95]})
    result = metrics_below_identity(frame, 0.9, "classification")
    expected = compute_metrics("classification", [1, 0, 0], [[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    assert result == {"n": 3, **expected} and result["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no 'nearest_train_identity' column"):
        metrics_below_identity(frame.drop(columns="nearest_train_identity"), 0.9, "classification")
