"""Sequence identity for leakage-free splits and honest reports (near-duplicates of training rows).

identity(a, b) = identical aligned residue pairs / length of the shorter sequence, counted in the
first optimal alignment (co-optimal ones may differ in identities; the shorter sequence goes
first, so the choice is symmetric) of Biopython's ``PairwiseAligner`` in global mode, scores
match 1, mismatch 0, internal gap open -4 and extend -0.5 (per residue after the first), end
gaps free. Free end gaps let a fragment sit inside a longer sequence (a 10-mer inside a 12-mer
scores 1.0); paid internal gaps stop unrelated sequences from collecting scattered matches (with
free gaps identity is the LCS ratio: 97 of 100 random 20-mers then chain at 0.4). A gap is opened
only where it buys at least 5 more identities. There is no length-ratio gate.

Exact prefilter: bounds that skip only pairs which cannot reach the threshold. Write m for the
shorter length, I for the identities of the optimal alignment, ``shared_k`` for the number of
common k-mers counted with multiplicity (sum over words w of min(count_a(w), count_b(w))).
1. Composition: each identical column pairs one residue of ``a`` with an equal residue of ``b``,
   each used once, so I <= shared_1.
2. Words (k = 3): the optimal score is >= 0 (the alignment with no aligned pair scores 0), and it
   is I minus the gap costs (mismatches score 0), so the R internal gap runs cost 4R <= I. In the
   shorter sequence, the I identical residues are cut into runs by its m - I other residues and
   by the <= R gap runs inserted into it; a run of L residues keeps L - k + 1 of its k-mers whole
   and on one diagonal, i.e. present in the other sequence, each at its own position. Hence
       shared_k >= I - (m - I + floor(I / 4) + 1) * (k - 1),
   which grows with I: a pair below this at the fewest identities that reach the threshold is
   skipped. At 0.9 this bound alone leaves 64 of thermostability's 1.93 M pairs.
3. LCS, one C score call: no alignment has more identities than the longest common subsequence,
   the optimal score under match 1, mismatch 0 and free gaps.
Bounds 1 and 2 are sparse matrix products over k-mer "tokens" (word, its occurrence number), whose
dot product is exactly shared_k. Conversely, with match 1 and every other score <= 0, a score is at
most its identities, so a pair whose optimal score reaches the threshold is linked without the
(dearer) traceback.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

logger = logging.getLogger(__name__)

TOLERANCE = 1e-9  # so that identity exactly at the threshold (e.g. 7/10 vs 0.7) counts as reaching it
GAP_OPEN = 4.0  # the identities a gap must buy, less one; bound 2 relies on it (module docstring)
SCORES = {"match_score": 1.0, "mismatch_score": 0.0, "open_gap_score": -GAP_OPEN, "extend_gap_score": -0.5}
WORD = 3  # k of the shared-word bound
# Shorter sequences link only to identical copies: 12 mic training peptides of 2-3 residues are
# "contained" in ~1,700 others and chained 1,880 of 4,050 into one group at 0.9 (180 without them).
MIN_LINK_LENGTH = 4
CHUNK = 256  # rows per bound computation (a CHUNK x n dense block)


def identity(a: str, b: str) -> float:
    """Identical aligned residues over the shorter length (module docstring); 0.0 if either is empty."""
    if not a or not b:
        return 0.0
    if a == b:
        return 1.0
    return _identities(a, b) / min(len(a), len(b))


def identity_groups(sequences: Sequence[str], threshold: float = 0.9) -> np.ndarray:
    """Group ids such that sequences linked by identity >= threshold share a group (single linkage).

    Union-find over pairs; a pair is aligned only if the exact bounds (module docstring) let it
    reach the threshold and its two sequences are not yet in one group. Groups are numbered 0, 1,
    ... by first appearance. A sequence shorter than ``MIN_LINK_LENGTH`` links only to identical
    copies. Logs a warning when one group holds more than half the sequences.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sequences = [str(sequence) for sequence in sequences]
    lengths = np.array([len(sequence) for sequence in sequences])
    tokens, codes = _Tokens(sequences), _encode(sequences)
    first_copy = {}
    parent = np.array([first_copy.setdefault(sequence, i) for i, sequence in enumerate(sequences)])
    for start in range(0, len(sequences), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(sequences)))
        shorter = np.minimum(lengths[rows, None], lengths[None, :])
        need = np.ceil(threshold * shorter - TOLERANCE)  # the fewest identities that reach the threshold
        residues, words = tokens.shared(rows, np.arange(len(sequences)))
        possible = (shorter >= MIN_LINK_LENGTH) & (residues >= need) & (words >= _fewest_shared_words(need, shorter))
        for i, allowed in zip(rows, possible):
            for j in np.flatnonzero(allowed[i + 1:]) + i + 1:
                root_i, root_j = _find(parent, i), _find(parent, j)
                if root_i != root_j and _reaches(sequences[i], sequences[j], codes[i], codes[j], threshold):
                    parent[root_j] = root_i
    groups = number_by_first_appearance(np.array([_find(parent, i) for i in range(len(sequences))]))
    warn_if_one_group_dominates(groups, f"identity grouping at {threshold:g}", "raise data.identity_threshold")
    return groups


def nearest_train_identity(query: Sequence[str], train: Sequence[str], floor: float = 0.0) -> np.ndarray:
    """Highest identity of each query sequence to any training sequence: how novel each test row is.

    Best first: training sequences are tried in decreasing order of bounds 1 and 2 (module
    docstring), the search stops once the bound cannot beat the best identity found, and a pair is
    aligned only if its LCS bound can beat it, so the result is the exact maximum over ``train``.
    Where that maximum is below ``floor`` the value is NaN ("below the floor"), found without
    aligning pairs the bounds rule out: unrelated long proteins are then cheap (floor 0.9).
    """
    train = [str(sequence) for sequence in train]
    if not train:
        raise ValueError("nearest_train_identity needs at least one training sequence")
    query = [str(sequence) for sequence in query]
    lengths = np.array([len(sequence) for sequence in query + train])
    tokens, codes = _Tokens(query + train), _encode(query + train)
    train_rows = np.arange(len(query), len(query) + len(train))
    best = np.zeros(len(query))
    for start in range(0, len(query), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(query)))
        shorter = np.minimum(lengths[rows, None], lengths[train_rows])
        residues, words = tokens.shared(rows, train_rows)
        bounds = np.minimum(residues, _most_identities(words, shorter)) / np.maximum(shorter, 1)
        for row, bound in zip(rows, bounds):
            for j in np.argsort(-bound, kind="stable"):
                if bound[j] <= max(best[row], floor - 2 * TOLERANCE) + TOLERANCE:
                    break
                lcs = _aligner(free_gaps=True).score(codes[row], codes[train_rows[j]])
                if lcs / max(shorter[row - start, j], 1) > max(best[row], floor - 2 * TOLERANCE) + TOLERANCE:
                    best[row] = max(best[row], identity(query[row], train[j]))
    return np.where(best < floor - TOLERANCE, np.nan, best)


def metrics_below_identity(predictions: pd.DataFrame, threshold: float, problem_type: str) -> dict[str, float]:
    """Metrics on the rows whose ``nearest_train_identity`` is below ``threshold`` (+ their count ``n``; only ``n`` if none).

    ``predictions`` is a predictions.csv frame with labels: ``label`` and ``prediction`` (regression)
    or ``prob_<class>`` columns in class order (classification). NaN identities (below the floor
    of `nearest_train_identity`) count as below: exact when the threshold is at least that floor.
    """
    from protadapt.evaluation.metrics import compute_metrics

    for column in ("nearest_train_identity", "label"):
        if column not in predictions:
            raise ValueError(f"predictions have no {column!r} column; metrics below an identity need it")
    values = predictions["nearest_train_identity"]
    rows = predictions[values.isna() | (values < threshold - TOLERANCE)]
    if not len(rows):
        return {"n": 0}
    if problem_type == "classification":
        classes = [column[len("prob_"):] for column in predictions.columns if column.startswith("prob_")]
        codes = rows["label"].astype(str).map({name: code for code, name in enumerate(classes)})
        if codes.isna().any():
            raise ValueError(f"label {rows['label'][codes.isna()].iloc[0]!r} has no prob_ column in the predictions")
        y_true, y_score = codes.to_numpy(), rows[[f"prob_{name}" for name in classes]].to_numpy()
    else:
        y_true, y_score = rows["label"].to_numpy(), rows["prediction"].to_numpy()
    return {"n": len(rows), **compute_metrics(problem_type, y_true, y_score)}


def warn_if_one_group_dominates(groups: np.ndarray, what: str, remedy: str) -> None:
    """One log line when a single group holds more than half the rows: splits will be lopsided."""
    if not len(groups):
        return
    size = int(np.bincount(groups).max())
    if size > len(groups) / 2:
        logger.warning(f"{what} put {size} of {len(groups)} rows in one group; splits will be lopsided or fail ({remedy})")


def number_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel groups 0, 1, ... in the order they first appear, so group ids do not depend on internals."""
    _, first_seen, group_ids = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first_seen))[group_ids].astype(np.int64)


# --- helpers -------------------------------------------------------------------------------


def _reaches(a: str, b: str, codes_a: np.ndarray, codes_b: np.ndarray, threshold: float) -> bool:
    """identity(a, b) >= threshold: the LCS bound, then the score (a lower bound), then the traceback."""
    if not a or not b:
        return False
    need = threshold * min(len(a), len(b)) - TOLERANCE
    if a == b:
        return True
    if _aligner(free_gaps=True).score(codes_a, codes_b) < need:
        return False
    return _aligner().score(codes_a, codes_b) >= need or _identities(a, b) >= need


def _encode(sequences: list[str]) -> list[np.ndarray]:
    """Code points as int32, the form the aligner works on: converted once, not once per pair."""
    return [np.frombuffer(sequence.encode("utf-32-le"), dtype=np.int32) for sequence in sequences]


def _identities(a: str, b: str) -> int:
    """Identical columns of the first optimal alignment (shorter, then smaller, sequence first)."""
    a, b = sorted((a, b), key=lambda sequence: (len(sequence), sequence))  # so identity is symmetric
    coordinates = _aligner().align(a, b)[0].coordinates
    count = 0
    for (start_a, start_b), (end_a, end_b) in zip(coordinates.T[:-1], coordinates.T[1:]):
        if end_a > start_a and end_b > start_b:  # an aligned block (both advance equally)
            count += sum(map(str.__eq__, a[start_a:end_a], b[start_b:end_b]))
    return count


@lru_cache(maxsize=2)
def _aligner(free_gaps: bool = False):
    """The identity aligner (module docstring), or with every gap free: its score is then the LCS."""
    from Bio.Align import PairwiseAligner

    if free_gaps:
        return PairwiseAligner(mode="global", match_score=1.0, mismatch_score=0.0, gap_score=0.0)
    aligner = PairwiseAligner(mode="global", **SCORES)
    aligner.end_gap_score = 0.0
    return aligner


class _Tokens:
    """Residue and k-mer tokens (word, occurrence number) per sequence: their dot products are shared_1, shared_k."""

    def __init__(self, sequences: list[str]):
        self.residues, self.words = _token_matrix(sequences, 1), _token_matrix(sequences, WORD)

    def shared(self, rows: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense (len(rows), len(columns)) blocks of shared_1 and shared_k."""
        return tuple((matrix[rows] @ matrix[columns].T).toarray() for matrix in (self.residues, self.words))


def _token_matrix(sequences: list[str], k: int) -> csr_matrix:
    vocabulary, rows, columns = {}, [], []
    for row, sequence in enumerate(sequences):
        seen: dict[str, int] = {}
        for start in range(len(sequence) - k + 1):
            word = sequence[start:start + k]
            seen[word] = seen.get(word, 0) + 1
            columns.append(vocabulary.setdefault((word, seen[word]), len(vocabulary)))
            rows.append(row)
    shape = (len(sequences), max(len(vocabulary), 1))
    return csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, columns)), shape=shape)


def _fewest_shared_words(identities: np.ndarray, shorter: np.ndarray) -> np.ndarray:
    """Bound 2: the fewest shared k-mers an optimal alignment with this many identities implies."""
    return identities - (shorter - identities + np.floor(identities / GAP_OPEN) + 1) * (WORD - 1)


def _most_identities(words: np.ndarray, shorter: np.ndarray) -> np.ndarray:
    """Bound 2 inverted (floor(I / 4) <= I / 4): the most identities that many shared k-mers allow."""
    return np.floor((words + (shorter + 1) * (WORD - 1)) / (WORD - (WORD - 1) / GAP_OPEN) + TOLERANCE)


def _find(parent: np.ndarray, node: int) -> int:
    """Union-find root with path halving."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node
