"""The two input formats: FASTA (labels in headers) and CSV/TSV tables, read as text.

`read_text` turns every way a file can be unreadable into a one-line `DataError`; the parsers
return raw records (id, sequence, label as text, ``_line`` = the file line of each record) that
`io.read_sequences` validates.
"""

from __future__ import annotations

import csv
import logging
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from protadapt.data.errors import DataError
from protadapt.data.labels import MISSING_VALUES

logger = logging.getLogger(__name__)

FASTA_SUFFIXES = frozenset({".fasta", ".fa", ".faa", ".fas", ".fsa", ".pep"})
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def read_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """A CSV/TSV as text columns (so ids like 'NA' survive) and the file line of each row."""
    text = read_text(path)
    separator = TABLE_SEPARATORS.get(path.suffix.lower())
    if separator is None:
        separator = "\t" if "\t" in text.lstrip().splitlines()[0] else ","
    lines = _row_lines(text, separator, path.name)
    try:
        table = pd.read_csv(StringIO(text), sep=separator, dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise DataError(f"{path.name}: cannot parse as a table ({reason}); check quoting and separators") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table, lines if len(lines) == len(table) else [row + 2 for row in range(len(table))]


def read_text(path: Path) -> str:
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


def is_fasta(path: Path, text: str) -> bool:
    """Decide the format by suffix, else by whether the first non-blank character is '>'."""
    suffix = path.suffix.lower()
    if suffix in FASTA_SUFFIXES:
        return True
    if suffix in TABLE_SEPARATORS:
        return False
    return text.lstrip().startswith(">")


def parse_fasta(text: str, name: str, label_key: str) -> tuple[pd.DataFrame, bool]:
    """Parse FASTA with Biopython; labels come from 'label=VALUE' in the header."""
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


def parse_table(
    text: str, path: Path, sequence_column: str, label_column: str, id_column: str
) -> tuple[pd.DataFrame, bool]:
    """Read CSV/TSV as text; extra columns get their dtypes back."""
    table, lines = read_table(path)
    if sequence_column not in table.columns:
        raise DataError(
            f"{path.name} line 1: no column '{sequence_column}' (columns: {', '.join(table.columns)}); "
            "rename it or pass data.sequence_column=NAME"
        )
    records = pd.DataFrame(index=table.index)
    if id_column in table.columns:
        records["id"] = table[id_column].str.strip()
    else:
        records["id"] = [f"{path.stem}_{row}" for row in range(len(table))]
    records["sequence"] = table[sequence_column]
    has_labels = label_column in table.columns
    records["label"] = table[label_column] if has_labels else None
    records["_line"] = lines
    used = {sequence_column, label_column, id_column}
    for column in table.columns:
        if column not in used:
            records[_extra_name(column, records.columns)] = _infer_dtype(table[column])
    return records.astype({"id": object, "sequence": object, "label": object}), has_labels


def _checked_rows(rows, name: str):
    """The csv module's own errors (a field over its size limit, a NUL byte) as one line naming the row."""
    try:
        yield from rows
    except csv.Error as error:
        raise DataError(f"{name} line {rows.line_num + 1}: cannot parse ({error}); check quoting and separators") from None


def _row_lines(text: str, separator: str, name: str) -> list[int]:
    """The file line each data row starts on; a row with more or fewer fields than the header is an error."""
    rows = csv.reader(StringIO(text), delimiter=separator)
    header, lines, previous = None, [], 0
    for row in _checked_rows(rows, name):
        start, previous = previous + 1, rows.line_num
        if not row:  # blank line
            continue
        if header is None:
            header = row
        elif len(row) != len(header):
            raise DataError(f"{name} line {start}: {len(row)} fields but the header has {len(header)}; "
                            "check quoting and separators on that line")
        else:
            lines.append(start)
    return lines


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
