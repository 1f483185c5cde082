"""Labels of a sequence file: numbers for regression, class indices 0..C−1 for classification.

Class labels may be any text or numbers (``BBB+``/``BBB-``, ``yes``/``no``, ``1``/``2``): the
classes are sorted (numbers numerically, text alphabetically) and label ``classes[i]`` becomes
index ``i``; the names are kept in ``df.attrs["classes"]`` and saved with a run, so predictions
print them. A file read for an existing run or task is mapped with that run's ``classes``, and a
label outside them is an error. Identical sequences with different labels are resolved here too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from protadapt.data.errors import DataError

logger = logging.getLogger(__name__)

MISSING_VALUES = frozenset({"", "na", "nan", "none", "null", "n/a"})
MAX_INFERRED_CLASSES = 20


def parse_labels(raw: pd.Series, problem_type: str | None, require_labels: bool, locate,
                 classes: Sequence | None = None) -> tuple[pd.Series, str | None, tuple]:
    """Label text → (labels, problem type, class names); infers the problem type when not given."""
    text = raw.fillna("").astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_VALUES)
    values = pd.to_numeric(text.mask(missing), errors="coerce").astype(np.float64)
    numeric = ~values.isna() | missing
    if require_labels and missing.any():
        raise locate.first(raw.index[missing], "no label but labels are required", "add the label")
    if problem_type is None:
        problem_type = _infer_problem_type(values, numeric, classes, locate.name)
    if problem_type == "regression":
        return _regression(values, numeric, text, locate), problem_type, ()
    labels, classes = _classification(text.mask(missing), values, numeric, classes, locate)
    return labels, problem_type, classes


def join_labels_file(records: pd.DataFrame, path: str | Path, id_column: str, label_column: str,
                     locate) -> pd.DataFrame:
    """Labels for a FASTA/table from a separate CSV/TSV of id,label; every id must match once."""
    from protadapt.data.formats import read_table

    path = Path(path)
    table, lines = read_table(path)
    for column in (id_column, label_column):
        if column not in table.columns:
            raise DataError(f"{path.name} line 1: no column '{column}' (columns: {', '.join(table.columns)}); "
                            f"rename it or pass data.{'id' if column == id_column else 'label'}_column=")
    ids = table[id_column].str.strip()
    repeated = ids.index[ids.duplicated()]
    if len(repeated):
        raise DataError(f"{path.name} line {lines[repeated[0]]}: id {ids[repeated[0]]!r} has a second label; "
                        "give each id one row")
    known = set(records["id"])
    extra = ids.index[~ids.isin(known)]
    if len(extra):
        raise DataError(f"{path.name} line {lines[extra[0]]}: id {ids[extra[0]]!r} is not in {locate.name} "
                        f"({len(extra)} such id(s)); remove the row or fix the id")
    labelled = dict(zip(ids, table[label_column]))
    unlabelled = records.index[~records["id"].isin(labelled)]
    if len(unlabelled):
        raise locate.first(unlabelled, f"no row in {path.name}", f"add '{records.at[unlabelled[0], 'id']},LABEL' to it")
    return records.assign(label=records["id"].map(labelled).astype(object))


def resolve_conflicts(records: pd.DataFrame, policy: str, locate) -> pd.DataFrame:
    """Find identical sequences with different labels; raise, or drop every copy with a warning."""
    labelled = records[records["label"].notna()]
    label_counts = labelled.groupby("sequence", sort=False)["label"].nunique()
    conflicting = label_counts.index[label_counts > 1]
    if conflicting.empty:
        _log_duplicates(records, locate.name)
        return records
    rows = records.index[records["sequence"].isin(conflicting) & records["label"].notna()]
    if policy == "error":
        copies = rows[records.loc[rows, "sequence"] == records.at[rows[0], "sequence"]]
        labels = sorted(records.loc[copies, "label"].unique().tolist())
        extra = len(conflicting) - 1
        tail = f" ({extra} more conflicting sequence{'s' if extra > 1 else ''})" if extra else ""
        raise DataError(f"{locate.many(copies)}: identical sequences have different labels {labels}; "
                        f"fix the labels or pass data.conflicts=drop to drop every copy{tail}")
    logger.warning(
        "%s: dropped %d record(s) of %d sequence(s) that appear with different labels (ids: %s)",
        locate.name, len(rows), len(conflicting), ", ".join(map(repr, records.loc[rows, "id"][:6])),
    )
    kept = records.drop(index=rows)
    _log_duplicates(kept, locate.name)
    return kept


def check_class_counts(records: pd.DataFrame, min_count: int, classes: tuple, locate) -> None:
    """Every class needs ``min_count`` examples (2: both sides of a split)."""
    labels = records["label"].dropna()
    counts = labels.value_counts().sort_index()
    rare = counts[counts < min_count]
    if rare.empty:
        return
    label = rare.index[0]
    first_row = labels.index[labels == label][0]
    name = classes[int(label)] if classes else label
    raise DataError(
        f"{locate(first_row)}: class {name!r} has only {rare.iloc[0]} example(s); every class needs "
        f"at least {min_count} so that it can appear on both sides of a split — add examples or remove the class"
    )


# --- helpers -------------------------------------------------------------------------------


def _infer_problem_type(values: pd.Series, numeric: pd.Series, classes: Sequence | None, name: str) -> str | None:
    """Text labels or few integers: classification; other numbers: regression."""
    present = values.dropna()
    if classes:
        return "classification"
    if not numeric.all():
        problem_type = "classification"
    elif present.empty:
        return None
    else:
        integral = bool((present == present.round()).all())
        problem_type = "classification" if integral and present.nunique() <= MAX_INFERRED_CLASSES else "regression"
    logger.info("%s: labels read as %s (pass data.problem_type= to override)", name, problem_type)
    return problem_type


def _regression(values: pd.Series, numeric: pd.Series, text: pd.Series, locate) -> pd.Series:
    not_numeric = values.index[~numeric]
    if len(not_numeric):
        raise locate.first(not_numeric, f"label {text[not_numeric[0]]!r} is not a number",
                           "regression labels must be numeric (data.problem_type=classification for classes)")
    infinite = values.index[np.isinf(values)]
    if len(infinite):
        raise locate.first(infinite, f"label {text[infinite[0]]!r} is not finite", "use a finite number")
    return values


def _classification(text: pd.Series, values: pd.Series, numeric: pd.Series, classes: Sequence | None,
                    locate) -> tuple[pd.Series, tuple]:
    """Names (ints when every label is an integer, else text) → indices into the sorted classes."""
    present = values.dropna()
    if numeric.all() and (present == present.round()).all():
        names = pd.Series([None if np.isnan(v) else int(v) for v in values], index=values.index, dtype=object)
    elif numeric.all():
        row = present.index[present != present.round()][0]
        raise locate.first(present.index[present != present.round()], f"label {text[row]!r} is not a class",
                           "class labels are integers or names (pass data.problem_type=regression for continuous targets)")
    else:
        names = text.astype(object)
    found = tuple(sorted(set(names.dropna()), key=lambda name: (isinstance(name, str), name)))
    if classes is None:
        classes = found
    index = {str(name): i for i, name in enumerate(classes)}
    unknown = names.index[names.notna() & ~names.map(str).isin(index)]
    if len(unknown):
        raise locate.first(unknown, f"label {names[unknown[0]]!r} is not one of the classes "
                           f"{', '.join(map(str, classes))}", "remove the record or retrain with this class")
    if list(classes) != list(range(len(classes))):
        logger.info("%s: class labels mapped to indices: %s", locate.name,
                    ", ".join(f"{name}={i}" for i, name in enumerate(classes)))
    labels = pd.Series([pd.NA if pd.isna(name) else index[str(name)] for name in names], index=names.index)
    return labels.astype("Int64" if labels.isna().any() else np.int64), tuple(classes)


def _log_duplicates(records: pd.DataFrame, name: str) -> None:
    """Warn about repeated sequences, which leak across splits unless they share a group."""
    repeated = records["sequence"].duplicated(keep=False)
    if repeated.any():
        logger.warning(
            "%s: %d record(s) repeat an earlier record's sequence without a label conflict; kept "
            "(splits.identity_groups keeps copies on one side of a split)",
            name, int(records["sequence"].duplicated().sum()),
        )
