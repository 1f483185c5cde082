"""Request bodies → the data layer's validated frame, so the service checks records as `predict` does.

FASTA (or CSV/TSV) text is handed to `read_sequences` as a file named `request.fasta`, so its
one-line errors name the line and id of the bad record. JSON records go through the same reader as
a CSV, and its messages are renamed to point at `sequences[i]` instead of a line.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pandas as pd

from protadapt.data.io import DataError, read_sequences

TABLE_SUFFIXES = {"text/csv": ".csv", "text/tab-separated-values": ".tsv"}  # any other text is FASTA
JSON_SHAPE = 'a JSON list of sequences, or {"sequences": [{"id": "...", "sequence": "..."}, ...]}'


class RequestError(ValueError):
    """A request the service refuses, with the HTTP status to answer and a one-line reason."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


def parse_body(body: bytes, content_type: str, max_length: int) -> pd.DataFrame:
    """JSON when the client says so (or sends no text type and a body that starts like JSON), else FASTA text."""
    if not body.strip():
        raise RequestError(400, f"empty request body; send FASTA text or {JSON_SHAPE}")
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or (not media.startswith("text/") and body.lstrip()[:1] in (b"{", b"[")):
        records = json_records(body)
        try:
            return _read_file(records.to_csv(index=False).encode(), "request.csv", max_length)
        except DataError as error:
            raise DataError(_json_names(str(error))) from None
    return _read_file(body, "request" + TABLE_SUFFIXES.get(media, ".fasta"), max_length)


def json_records(body: bytes) -> pd.DataFrame:
    """Columns id and sequence from either JSON shape; a record without an id is named seqN."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = f"{error.msg} at line {error.lineno} column {error.colno}" if hasattr(error, "lineno") else "not UTF-8"
        raise RequestError(400, f"request body is not valid JSON ({reason}); send {JSON_SHAPE}") from None
    items = payload
    if isinstance(payload, dict):
        unknown = sorted(set(payload) - {"sequences"})
        if unknown:
            raise RequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))} in the request; send {JSON_SHAPE}")
        items = payload.get("sequences")
    if not isinstance(items, list):
        raise RequestError(400, f"expected {JSON_SHAPE}")
    return pd.DataFrame([_json_record(index, item) for index, item in enumerate(items)], columns=["id", "sequence"])


def _json_record(index: int, item: object) -> tuple[str, str]:
    where = f"sequences[{index}]"
    if isinstance(item, str):
        return f"seq{index + 1}", item
    if not isinstance(item, dict) or not isinstance(item.get("sequence"), str):
        raise RequestError(422, f'{where}: expected a string or {{"id": "...", "sequence": "..."}}, '
                                f"got {json.dumps(item)[:60]}")
    unknown = sorted(set(item) - {"id", "sequence"})
    if unknown:
        raise RequestError(422, f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                                "a record has only 'id' and 'sequence'")
    record_id = item.get("id", f"seq{index + 1}")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise RequestError(422, f"{where}: id must be a string or an integer, got {json.dumps(record_id)[:60]}")
    return str(record_id), item["sequence"]


def _read_file(data: bytes, name: str, max_length: int) -> pd.DataFrame:
    with tempfile.TemporaryDirectory(prefix="protadapt-serve-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return read_sequences(path, require_labels=False, max_length=max_length)


def _json_names(message: str) -> str:
    """'request.csv line 3' → 'sequences[1]': the CSV's header is line 1, its first record line 2."""
    def indices(match: re.Match) -> str:
        return ", ".join(f"sequences[{int(line) - 2}]" for line in match.group(1).split(", "))

    return re.sub(r"request\.csv lines? (\d+(?:, \d+)*)", indices, message).replace("request.csv", "sequences")
