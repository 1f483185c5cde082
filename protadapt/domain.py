"""Applicability domain: how close each new sequence is to what the run trained on, and whether that is close enough.

`fit` stores the training rows' sequences in `training_sequences.json` (with the run's
`uncertainty.min_identity` and `uncertainty.identity_floor`), so `predict` and `serve` compute
`nearest_train_identity` offline; `in_domain` is false below `min_identity`. An ensemble's domain
is the union of its members' training sequences.

Identities below the floor are not computed (blank): exact identity of a long protein to every
training protein costs ~1 s per query at floor 0.5 on thermostability (1,768 training proteins),
~0.04 s at 0.9. The default floor is 0 for peptide sets (median length at most PEPTIDE_LENGTH)
and 0.9 for longer proteins; there a blank `in_domain` means "below the floor, not decided".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from protadapt.data.identity import TOLERANCE, metrics_below_identity, nearest_train_identity
from protadapt.files import read_json, write_json_atomic

TRAINING_FILE = "training_sequences.json"
FORMAT = 1
PEPTIDE_LENGTH = 100  # median training length up to which the floor defaults to 0 (bbb, mic)
PROTEIN_FLOOR = 0.9  # the default floor above it (thermostability)


class DomainError(ValueError):
    """A training_sequences.json that cannot be read; the message names the file."""


def write_training_sequences(run_dir: str | Path, sequences: Sequence[str], min_identity: float | None,
                             floor: float | None) -> Path:
    """The run's training sequences and domain settings (floor None: by length, see above), for predict."""
    sequences = [str(sequence) for sequence in sequences]
    if floor is None:
        floor = 0.0 if np.median([len(sequence) for sequence in sequences]) <= PEPTIDE_LENGTH else PROTEIN_FLOOR
    digest = hashlib.sha256("\n".join(sequences).encode()).hexdigest()
    state = {"format": FORMAT, "min_identity": min_identity, "identity_floor": floor, "n": len(sequences),
             "sha256": digest, "sequences": sequences}
    path = Path(run_dir) / TRAINING_FILE
    write_json_atomic(state, path)
    return path


def domain_columns(run_dirs: Sequence[str | Path], query: Sequence[str]) -> dict[str, np.ndarray | pd.Series]:
    """`nearest_train_identity` (blank below the floor) and `in_domain`; none when a run predates the file."""
    state = read_training_sequences(run_dirs)
    if state is None:
        return {}
    floor, threshold = state["identity_floor"], state["min_identity"]
    nearest = nearest_train_identity(list(query), state["sequences"], floor=floor)
    columns: dict[str, np.ndarray | pd.Series] = {"nearest_train_identity": nearest.round(4)}
    if threshold is not None:
        flag = pd.Series(np.nan_to_num(nearest, nan=-1.0) >= threshold - TOLERANCE, dtype="boolean")
        if floor > threshold:  # blank = below the floor, which is above the threshold: undecided
            flag[np.isnan(nearest)] = pd.NA
        columns["in_domain"] = flag
    return columns


def read_training_sequences(run_dirs: Sequence[str | Path]) -> dict | None:
    """The union of the runs' training sequences with the first run's settings; None if any run lacks the file."""
    paths = [Path(run) / TRAINING_FILE for run in run_dirs]
    if not paths or not all(path.is_file() for path in paths):
        return None
    states = [_read(path) for path in paths]
    sequences = list(dict.fromkeys(sequence for state in states for sequence in state["sequences"]))
    return {"sequences": sequences, "min_identity": states[0]["min_identity"],
            "identity_floor": states[0]["identity_floor"]}


def metrics_out_of_domain(table: pd.DataFrame, min_identity: float | None, problem_type: str) -> dict:
    """Test metrics on the rows below `min_identity` (with their count): how the model does off its domain."""
    if min_identity is None or "nearest_train_identity" not in table or "label" not in table:
        return {}
    metrics = metrics_below_identity(table, min_identity, problem_type)
    return {"test_below_min_identity": {"min_identity": min_identity,
                                        **{key: int(value) if key == "n" else float(value) for key, value in metrics.items()}}}


def _read(path: Path) -> dict:
    advice = "refit the run or delete the file"
    state = read_json(path, DomainError, advice)
    if state.get("format") != FORMAT or not isinstance(state.get("sequences"), list):
        raise DomainError(f"{path}: unreadable (not training sequences of format {FORMAT}); {advice}")
    return state
