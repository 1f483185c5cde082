"""Read labelled protein sequences from FASTA or CSV/TSV into one validated DataFrame.

Every problem in an input file is reported as a `DataError` whose message is one line naming the
file, the line and the record id, and saying what to do. Nothing is dropped silently: the only
records ever removed are label conflicts under ``conflicts="drop"``, and that is logged with counts.

Policies (documented once here, tested in tests/test_data_io.py):

* Alphabet: the 20 standard amino acids plus ``X B Z U O`` (ESM has a token for each), accepted
  as-is. Letters are upper-cased and all whitespace inside a sequence is removed. One terminal
  ``*`` (a translated stop codon) is removed, with a logged count; ``*`` anywhere else, gaps
  (``-``, ``.``), digits and any other character are errors.
* Length: a sequence longer than ``max_length`` (ESM-2's 1022 residues by default) is an error,
  unless ``truncate=True`` (CLI: ``data.truncate=true``; predict: ``--truncate``), which keeps the
  first ``max_length`` residues and logs a warning with the number of records truncated.
* FASTA labels: a header ``>pep1 label=1`` (a whitespace-separated ``label=VALUE`` token anywhere
  after the id) or ``>pep1|label=1`` (a ``|label=VALUE`` suffix on the id). The key is
  ``label_column``, so ``>pep1 mic=0.3`` is read with ``label_column="mic"``.
  ``labels_file`` instead joins the records with a CSV/TSV of ``id_column,label_column``.
* Labels (`labels`): text labels, or integers with at most 20 distinct values, are classification,
  other numbers regression (``problem_type`` overrides). Classes are mapped to 0..C−1 in sorted
  order, the names kept in ``df.attrs["classes"]``; pass ``classes`` to map with a run's classes.
  Without ``require_labels`` (prediction), labels that cannot be used are ignored with a warning.
* Ids: a repeated id is an error, or with ``duplicate_ids="suffix"`` the repeats become
  ``id_2``, ``id_3``, ... (logged).
* Conflicts: identical sequences with different labels are an error (``conflicts="error"``), or
  every copy is dropped with a logged warning (``conflicts="drop"``); no copy is trusted over
  another.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from protadapt.data import labels as label_rules
from protadapt.data.errors import DataError
from protadapt.data.formats import is_fasta, parse_fasta, parse_table, read_text

logger = logging.getLogger(__name__)

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
EXTRA_RESIDUES = "XBZUO"  # unknown, Asx, Glx, selenocysteine, pyrrolysine: all ESM tokens
ALLOWED_RESIDUES = frozenset(STANDARD_AMINO_ACIDS + EXTRA_RESIDUES)
PROBLEM_TYPES = ("classification", "regression")
CONFLICT_POLICIES = ("error", "drop")
DUPLICATE_ID_POLICIES = ("error", "suffix")
_ALLOWED_TEXT = f"{STANDARD_AMINO_ACIDS} plus {' '.join(EXTRA_RESIDUES)}"


def read_sequences(
    path: str | os.PathLike, *, sequence_column: str = "sequence", label_column: str = "label",
    id_column: str = "id", problem_type: str | None = None, require_labels: bool = False,
    max_length: int | None = 1022, truncate: bool = False, conflicts: str = "error", min_class_count: int = 2,
    classes: Sequence | None = None, duplicate_ids: str = "error", labels_file: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Read and validate a FASTA/CSV/TSV file into columns id, sequence, label (+ CSV extras).

    ``label`` is int64 class indices for classification (nullable Int64 if some labels are
    missing), float64 for regression, and all-NaN float64 when the file has no labels.
    ``df.attrs`` records ``source``, the resolved ``problem_type`` (None without labels) and
    ``classes`` (the class names in index order). With ``require_labels`` (training data) a class
    needs ``min_class_count`` examples: 2 lets it reach both parts of a split; pass 1 for
    evaluation files.
    """
    _check_policies(problem_type, conflicts, duplicate_ids)
    path = Path(path)
    text = read_text(path)
    fasta = is_fasta(path, text)
    records, has_labels = parse_fasta(text, path.name, label_column) if fasta else \
        parse_table(text, path, sequence_column, label_column, id_column)
    if records.empty:
        raise DataError(f"{path.name}: no records found; add at least one sequence")
    locate = _Locator(path.name, records)
    records = _check_ids(records, duplicate_ids, locate)
    locate = _Locator(path.name, records)
    if labels_file is not None:
        records, has_labels = _join_labels_file(records, has_labels, labels_file, id_column, label_column, locate)
    if require_labels and not has_labels:
        raise DataError(_no_labels_message(path.name, fasta, label_column))

    records["sequence"] = _normalise_sequences(records["sequence"], path.name)
    _check_residues(records, locate)
    records["label"], problem_type, classes = _labels(records["label"], problem_type, require_labels, locate, classes)
    records = _apply_length_policy(records, max_length, truncate, locate)
    records = label_rules.resolve_conflicts(records, conflicts, locate)
    if problem_type == "classification" and require_labels:
        label_rules.check_class_counts(records, min_class_count, classes, locate)

    frame = records.drop(columns="_line").reset_index(drop=True).astype({"id": str, "sequence": str})
    frame.attrs = {"source": str(path), "problem_type": problem_type, "classes": list(classes)}
    return frame


# --- reading -------------------------------------------------------------------------------


def _no_labels_message(name: str, fasta: bool, label_column: str) -> str:
    if fasta:
        return (
            f"{name}: no header has a '{label_column}=' tag but labels are required; "
            f"write headers as '>id {label_column}=1' or give data.labels_file=CSV of id,label"
        )
    return (f"{name} line 1: no label column '{label_column}' but labels are required; add it, pass "
            "data.label_column=NAME, or give data.labels_file=CSV of id,label")


# --- validation ----------------------------------------------------------------------------


class _Locator:
    """Formats 'file line N (id X)' for any record, so every message names the same things."""

    def __init__(self, name: str, records: pd.DataFrame):
        self.name = name
        self.lines = dict(zip(records.index, records["_line"]))
        self.ids = dict(zip(records.index, records["id"]))

    def __call__(self, row) -> str:
        return f"{self.name} line {self.lines[row]} (id {self.ids[row]!r})"

    def many(self, rows) -> str:
        lines = ", ".join(str(self.lines[row]) for row in rows)
        ids = ", ".join(repr(self.ids[row]) for row in rows)
        return f"{self.name} lines {lines} (ids {ids})"

    def first(self, rows: pd.Index, problem: str, advice: str) -> DataError:
        """Error for the first offending record, with a count of the others."""
        more = len(rows) - 1
        tail = f" ({more} more record{'s' if more > 1 else ''} with the same problem)" if more else ""
        return DataError(f"{self(rows[0])}: {problem}; {advice}{tail}")


def _check_ids(records: pd.DataFrame, policy: str, locate: _Locator) -> pd.DataFrame:
    """Empty ids are errors; repeated ids too, or renamed id_2, id_3, ... under ``policy="suffix"``."""
    empty = records.index[records["id"].str.len() == 0]
    if len(empty):
        raise locate.first(empty, "empty id", "give every record an id")
    repeated = records.index[records["id"].duplicated()]
    if not len(repeated):
        return records
    if policy == "error":
        row = repeated[0]
        first_row = records.index[records["id"] == records.at[row, "id"]][0]
        raise locate.first(repeated, f"id already used on line {locate.lines[first_row]}",
                           "make ids unique or pass data.duplicate_ids=suffix")
    taken = set(records["id"])
    renamed = records["id"].copy()
    for row in repeated:
        number = 2
        while f"{records.at[row, 'id']}_{number}" in taken:
            number += 1
        renamed[row] = f"{records.at[row, 'id']}_{number}"
        taken.add(renamed[row])
    logger.warning("%s: renamed %d repeated id(s) with a _N suffix (first: %s)", locate.name, len(repeated),
                   f"{records.at[repeated[0], 'id']!r} -> {renamed[repeated[0]]!r}")
    return records.assign(id=renamed)


def _normalise_sequences(sequences: pd.Series, name: str) -> pd.Series:
    """Upper-case, remove whitespace and one terminal stop '*' (logged)."""
    cleaned = sequences.fillna("").astype(str).str.upper().str.replace(r"\s+", "", regex=True)
    has_stop = cleaned.str.endswith("*")
    if has_stop.any():
        logger.warning("%s: removed a terminal '*' (stop codon) from %d sequence(s)", name, int(has_stop.sum()))
        cleaned = cleaned.mask(has_stop, cleaned.str[:-1])
    return cleaned


def _check_residues(records: pd.DataFrame, locate: _Locator) -> None:
    sequences = records["sequence"]
    empty = records.index[sequences.str.len() == 0]
    if len(empty):
        raise locate.first(empty, "empty sequence", "remove the record or add its sequence")
    bad = {row: _first_bad_residue(seq) for row, seq in sequences.items()}
    bad_rows = pd.Index([row for row, hit in bad.items() if hit is not None])
    if len(bad_rows):
        position, character = bad[bad_rows[0]]
        hint = "alignment gaps are not residues, remove them" if character in "-." else f"allowed: {_ALLOWED_TEXT}"
        raise locate.first(
            bad_rows, f"character {character!r} at position {position} is not an amino acid", hint
        )


def _first_bad_residue(sequence: str) -> tuple[int, str] | None:
    if ALLOWED_RESIDUES.issuperset(sequence):
        return None
    return next((i + 1, c) for i, c in enumerate(sequence) if c not in ALLOWED_RESIDUES)


def _labels(raw: pd.Series, problem_type: str | None, require_labels: bool, locate: _Locator,
            classes: Sequence | None) -> tuple[pd.Series, str | None, tuple]:
    """`labels.parse_labels`; when labels are not required, unusable ones are ignored with a warning."""
    try:
        return label_rules.parse_labels(raw, problem_type, require_labels, locate, classes)
    except DataError as error:
        if require_labels:
            raise
        logger.warning("%s: label column ignored (%s)", locate.name, error)
        return pd.Series(np.nan, index=raw.index, dtype=np.float64), None, ()


def _join_labels_file(records: pd.DataFrame, has_labels: bool, labels_file, id_column: str, label_column: str,
                      locate: _Locator) -> tuple[pd.DataFrame, bool]:
    if has_labels:
        raise DataError(f"{locate.name}: has labels and data.labels_file was also given; use one or the other")
    return label_rules.join_labels_file(records, labels_file, id_column, label_column, locate), True


def _check_policies(problem_type: str | None, conflicts: str, duplicate_ids: str) -> None:
    for key, value, allowed in (("problem_type", problem_type, (None, *PROBLEM_TYPES)),
                                ("conflicts", conflicts, CONFLICT_POLICIES),
                                ("duplicate_ids", duplicate_ids, DUPLICATE_ID_POLICIES)):
        if value not in allowed:
            choices = ", ".join(str(choice) for choice in allowed if choice is not None)
            raise DataError(f"data.{key}={value} is not a choice; use one of: {choices}")


def _apply_length_policy(
    records: pd.DataFrame, max_length: int | None, truncate: bool, locate: _Locator
) -> pd.DataFrame:
    if max_length is None:
        return records
    lengths = records["sequence"].str.len()
    too_long = records.index[lengths > max_length]
    if not len(too_long):
        return records
    if not truncate:
        raise locate.first(
            too_long,
            f"sequence has {lengths[too_long[0]]} residues, more than max_length={max_length}",
            f"pass data.truncate=true (predict: --truncate) to keep the first {max_length} or split the protein into domains",
        )
    logger.warning(
        "%s: truncated %d sequence(s) longer than %d residues to their first %d (first: %s)",
        locate.name, len(too_long), max_length, max_length, locate(too_long[0]),
    )
    records = records.copy()
    records.loc[too_long, "sequence"] = records.loc[too_long, "sequence"].str[:max_length]
    return records


