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
  unless ``truncate=True``, which keeps the first ``max_length`` residues and logs a warning with
  the number of records truncated.
* FASTA labels: a header ``>pep1 label=1`` (a whitespace-separated ``label=VALUE`` token anywhere
  after the id) or ``>pep1|label=1`` (a ``|label=VALUE`` suffix on the id). The key is
  ``label_column``, so ``>pep1 mic=0.3`` is read with ``label_column="mic"``.
* Problem type, when not given: labels that are all integers with at most 20 distinct values are
  classification, anything else regression. Pass ``problem_type`` to override.
* Conflicts: identical sequences with different labels are an error (``conflicts="error"``), or
  every copy is dropped with a logged warning (``conflicts="drop"``); no copy is trusted over
  another.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
EXTRA_RESIDUES = "XBZUO"  # unknown, Asx, Glx, selenocysteine, pyrrolysine: all ESM tokens
ALLOWED_RESIDUES = frozenset(STANDARD_AMINO_ACIDS + EXTRA_RESIDUES)
PROBLEM_TYPES = ("classification", "regression")
CONFLICT_POLICIES = ("error", "drop")
MAX_INFERRED_CLASSES = 20
FASTA_SUFFIXES = frozenset({".fasta", ".fa", ".faa", ".fas", ".fsa", ".pep"})
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
MISSING_VALUES = frozenset({"", "na", "nan", "none", "null", "n/a"})
_ALLOWED_TEXT = f"{STANDARD_AMINO_ACIDS} plus {' '.join(EXTRA_RESIDUES)}"


class DataError(ValueError):
    """A problem with input data, described in one line that names the file and record."""

    def __init__(self, message: str):
        super().__init__(message.replace("\r", " ").replace("\n", " "))


def read_sequences(
    path: str | os.PathLike,
    *,
    sequence_column: str = "sequence",
    label_column: str = "label",
    id_column: str = "id",
    problem_type: str | None = None,
    require_labels: bool = False,
    max_length: int | None = 1022,
    truncate: bool = False,
    conflicts: str = "error",
    min_class_count: int = 2,
) -> pd.DataFrame:
    """Read and validate a FASTA/CSV/TSV file into columns id, sequence, label (+ CSV extras).

    ``label`` is int64 for classification (nullable Int64 if some labels are missing), float64
    for regression, and all-NaN float64 when the file has no labels. ``df.attrs`` records
    ``source`` and the resolved ``problem_type`` (None without labels). With ``require_labels``
    (training data) a class needs ``min_class_count`` examples: 2 lets it reach both parts of a
    split; pass 1 for evaluation files.
    """
    if problem_type not in (None, *PROBLEM_TYPES):
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES} or None, not {problem_type!r}")
    if conflicts not in CONFLICT_POLICIES:
        raise ValueError(f"conflicts must be one of {CONFLICT_POLICIES}, not {conflicts!r}")
    path = Path(path)
    text = _read_text(path)
    fasta = _is_fasta(path, text)
    if fasta:
        records, has_labels = _parse_fasta(text, path.name, label_column)
    else:
        records, has_labels = _parse_table(text, path, sequence_column, label_column, id_column)
    if records.empty:
        raise DataError(f"{path.name}: no records found; add at least one sequence")
    if require_labels and not has_labels:
        raise DataError(_no_labels_message(path.name, fasta, label_column))

    locate = _Locator(path.name, records)
    _check_ids(records, locate)
    records["sequence"] = _normalise_sequences(records["sequence"], path.name)
    _check_residues(records, locate)
    labels, problem_type = _parse_labels(records["label"], problem_type, require_labels, locate)
    records["label"] = labels
    records = _apply_length_policy(records, max_length, truncate, locate)
    records = _resolve_conflicts(records, conflicts, locate)
    if problem_type == "classification" and require_labels:
        _check_class_counts(records, min_class_count, locate)

    frame = records.drop(columns="_line").reset_index(drop=True).astype({"id": str, "sequence": str})
    frame.attrs = {"source": str(path), "problem_type": problem_type}
    return frame


# --- reading -------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Return the file's text, turning every way it can be unreadable into a DataError."""
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass a FASTA, CSV or TSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path.name}: byte {error.start} is not UTF-8 text; save the file as UTF-8 FASTA/CSV/TSV"
        ) from None
    if not text.strip():
        raise DataError(
            f"{path.name}: file is empty; expected FASTA ('>id' headers) or CSV/TSV with a header row"
        )
    return text


def _is_fasta(path: Path, text: str) -> bool:
    """Decide the format by suffix, else by whether the first non-blank character is '>'."""
    suffix = path.suffix.lower()
    if suffix in FASTA_SUFFIXES:
        return True
    if suffix in TABLE_SEPARATORS:
        return False
    return text.lstrip().startswith(">")


def _parse_fasta(text: str, name: str, label_key: str) -> tuple[pd.DataFrame, bool]:
    """Parse FASTA with Biopython; labels come from 'label=VALUE' in the header."""
    from io import StringIO

    from Bio import SeqIO

    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip())
    if not lines[first].startswith(">"):
        raise DataError(
            f"{name} line {first + 1}: text before the first '>' header; "
            "a FASTA file must start with a '>id' line (use .csv/.tsv for tables)"
        )
    header_lines = [i + 1 for i, line in enumerate(lines) if line.startswith(">")]
    ids, sequences, labels = [], [], []
    for record in SeqIO.parse(StringIO("\n".join(lines[first:])), "fasta"):
        record_id, label = _split_header(record.id, record.description, label_key)
        ids.append(record_id)
        sequences.append(str(record.seq))
        labels.append(label)
    records = pd.DataFrame(
        {"id": ids, "sequence": sequences, "label": labels, "_line": header_lines[: len(ids)]},
        dtype=object,
    )
    return records, any(label is not None for label in labels)


def _split_header(record_id: str, description: str, label_key: str) -> tuple[str, str | None]:
    """Take the label out of '>id label=1' or '>id|label=1'; other header text is ignored."""
    tag = f"{label_key}="
    label = None
    stem, _, last_field = record_id.rpartition("|")
    if stem and last_field.startswith(tag):
        record_id, label = stem, last_field[len(tag):]
    for token in description.split()[1:]:
        if token.startswith(tag):
            label = token[len(tag):]
    return record_id, label


def _parse_table(
    text: str, path: Path, sequence_column: str, label_column: str, id_column: str
) -> tuple[pd.DataFrame, bool]:
    """Read CSV/TSV as text so that ids and sequences like 'NA' survive; extras get dtypes back."""
    from io import StringIO

    separator = TABLE_SEPARATORS.get(path.suffix.lower())
    if separator is None:
        separator = "\t" if "\t" in text.lstrip().splitlines()[0] else ","
    try:
        table = pd.read_csv(StringIO(text), sep=separator, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise DataError(f"{path.name}: cannot parse as a table ({reason}); check quoting and separators") from None
    table.columns = [str(column).strip() for column in table.columns]
    if sequence_column not in table.columns:
        raise DataError(
            f"{path.name} line 1: no column '{sequence_column}' (columns: {', '.join(table.columns)}); "
            "rename it or pass sequence_column="
        )
    records = pd.DataFrame(index=table.index)
    if id_column in table.columns:
        records["id"] = table[id_column].str.strip()
    else:
        records["id"] = [f"{path.stem}_{row}" for row in range(len(table))]
    records["sequence"] = table[sequence_column]
    has_labels = label_column in table.columns
    records["label"] = table[label_column] if has_labels else None
    records["_line"] = _table_line_numbers(text, len(table))
    used = {sequence_column, label_column, id_column}
    for column in table.columns:
        if column not in used:
            records[_extra_name(column, records.columns)] = _infer_dtype(table[column])
    return records.astype({"id": object, "sequence": object, "label": object}), has_labels


def _table_line_numbers(text: str, rows: int) -> list[int]:
    """Line number of each data row (blank lines skipped, header on the first non-blank line)."""
    non_blank = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip()][1:]
    if len(non_blank) == rows:
        return non_blank
    return [row + 2 for row in range(rows)]  # quoted multi-line fields: fall back to row + header


def _extra_name(column: str, taken: pd.Index) -> str:
    """Keep an extra column, renaming it if it clashes with id/sequence/label."""
    if column not in taken:
        return column
    renamed = f"{column}_original"
    logger.info("column '%s' is kept as '%s' because '%s' is taken by a canonical column", column, renamed, column)
    return renamed


def _infer_dtype(column: pd.Series) -> pd.Series:
    """Numeric if every non-missing value parses as a number, else text; missing becomes NaN."""
    stripped = column.str.strip()
    missing = stripped.str.lower().isin(MISSING_VALUES)
    values = stripped.mask(missing)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric[~missing].isna().any():
        return values
    if not missing.any() and pd.api.types.is_integer_dtype(numeric):
        return numeric.astype(np.int64)
    return numeric.astype(np.float64)


def _no_labels_message(name: str, fasta: bool, label_column: str) -> str:
    if fasta:
        return (
            f"{name}: no header has a '{label_column}=' tag but labels are required; "
            f"write headers as '>id {label_column}=1'"
        )
    return f"{name} line 1: no label column '{label_column}' but labels are required; add it or pass label_column="


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


def _check_ids(records: pd.DataFrame, locate: _Locator) -> None:
    empty = records.index[records["id"].str.len() == 0]
    if len(empty):
        raise locate.first(empty, "empty id", "give every record an id")
    repeated = records.index[records["id"].duplicated()]
    if len(repeated):
        row = repeated[0]
        first_row = records.index[records["id"] == records.at[row, "id"]][0]
        raise locate.first(
            repeated, f"id already used on line {locate.lines[first_row]}", "make ids unique"
        )


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


def _parse_labels(
    raw: pd.Series, problem_type: str | None, require_labels: bool, locate: _Locator
) -> tuple[pd.Series, str | None]:
    """Turn label text into numbers, check them against the problem type, and infer it if absent."""
    text = raw.fillna("").astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_VALUES)
    values = pd.to_numeric(text.mask(missing), errors="coerce").astype(np.float64)
    not_numeric = raw.index[values.isna() & ~missing]
    if len(not_numeric):
        label = text[not_numeric[0]]
        raise locate.first(not_numeric, f"label {label!r} is not a number", "labels must be numeric")
    infinite = raw.index[np.isinf(values)]
    if len(infinite):
        raise locate.first(infinite, f"label {text[infinite[0]]!r} is not finite", "use a finite number")
    if require_labels and missing.any():
        raise locate.first(raw.index[missing], "no label but labels are required", "add the label")
    present = values.dropna()
    if present.empty:
        return values, problem_type
    if problem_type is None:
        integral = bool((present == present.round()).all())
        few = present.nunique() <= MAX_INFERRED_CLASSES
        problem_type = "classification" if integral and few else "regression"
        logger.info("%s: labels read as %s (pass problem_type= to override)", locate.name, problem_type)
    if problem_type == "regression":
        return values, problem_type
    not_class = present.index[(present != present.round()) | (present < 0)]
    if len(not_class):
        raise locate.first(
            not_class,
            f"label {text[not_class[0]]!r} is not a class index",
            "classification labels are integers 0, 1, ... (pass problem_type='regression' for continuous targets)",
        )
    if missing.any():
        return values.astype("Int64"), problem_type
    return values.astype(np.int64), problem_type


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
            f"pass truncate=True to keep the first {max_length} or split the protein into domains",
        )
    logger.warning(
        "%s: truncated %d sequence(s) longer than %d residues to their first %d (first: %s)",
        locate.name, len(too_long), max_length, max_length, locate(too_long[0]),
    )
    records = records.copy()
    records.loc[too_long, "sequence"] = records.loc[too_long, "sequence"].str[:max_length]
    return records


def _resolve_conflicts(records: pd.DataFrame, policy: str, locate: _Locator) -> pd.DataFrame:
    """Find identical sequences with different labels; raise, or drop every copy with a warning."""
    labelled = records[records["label"].notna()]
    label_counts = labelled.groupby("sequence", sort=False)["label"].nunique()
    conflicting = label_counts.index[label_counts > 1]
    if conflicting.empty:
        _log_duplicates(records, locate.name)
        return records
    in_conflict = records["sequence"].isin(conflicting) & records["label"].notna()
    rows = records.index[in_conflict]
    if policy == "error":
        copies = rows[records.loc[rows, "sequence"] == records.at[rows[0], "sequence"]]
        labels = sorted(records.loc[copies, "label"].unique().tolist())
        where = locate.many(copies)
        extra = len(conflicting) - 1
        tail = f" ({extra} more conflicting sequence{'s' if extra > 1 else ''})" if extra else ""
        raise DataError(
            f"{where}: identical sequences have different labels {labels}; "
            f"fix the labels or pass conflicts='drop' to drop every copy{tail}"
        )
    logger.warning(
        "%s: dropped %d record(s) of %d sequence(s) that appear with different labels (ids: %s)",
        locate.name, len(rows), len(conflicting), ", ".join(map(repr, records.loc[rows, "id"][:6])),
    )
    kept = records.drop(index=rows)
    _log_duplicates(kept, locate.name)
    return kept


def _log_duplicates(records: pd.DataFrame, name: str) -> None:
    """Warn about repeated sequences, which leak across splits unless they share a group."""
    repeated = records["sequence"].duplicated(keep=False)
    if repeated.any():
        logger.warning(
            "%s: %d record(s) repeat an earlier record's sequence without a label conflict; kept "
            "(splits.identity_groups keeps copies on one side of a split)",
            name, int(records["sequence"].duplicated().sum()),
        )


def _check_class_counts(records: pd.DataFrame, min_count: int, locate: _Locator) -> None:
    labels = records["label"].dropna()
    counts = labels.value_counts().sort_index()
    rare = counts[counts < min_count]
    if rare.empty:
        return
    label = rare.index[0]
    first_row = labels.index[labels == label][0]
    raise DataError(
        f"{locate(first_row)}: class {label} has only {rare.iloc[0]} example(s); every class needs "
        f"at least {min_count} so that it can appear on both sides of a split — add examples or remove the class"
    )
