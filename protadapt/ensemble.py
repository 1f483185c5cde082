"""Several trained runs as one predictor: find them, check they are alike, average their scores, keep the spread.

A `cv` output directory holds one run per fold, `OUT/repeat{r}-fold{k}/` (see
training/run.py `cross_validate`), each with `adapter.safetensors` + `adapter.json` and
`predictions.csv` of its own test fold (out-of-fold predictions, which CV+ conformal calibrates on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from protadapt.evaluation.conformal import Conformal, calibrate
from protadapt.files import read_json
from protadapt.rundir import check_complete

FOLD_DIR = re.compile(r"^repeat(\d+)-fold(\d+)$")
SHARED = ("task", "problem_type", "labels")  # adapter.json fields every member must agree on


class EnsembleError(ValueError):
    """Run directories that cannot be combined; the message names the directory and what differs."""


@dataclass(frozen=True)
class EnsembleScores:
    mean: np.ndarray  # N x C mean class probabilities, or N mean values
    spread: np.ndarray  # N: sd over members of the predicted class's probability, or of the value
    members: np.ndarray  # K x N x C or K x N: each member's scores, for CV+ conformal


def average_scores(member_scores: Sequence[ArrayLike], problem_type: str) -> EnsembleScores:
    """Mean over members and the per-row disagreement (population sd, so one member gives 0)."""
    if not member_scores:
        raise EnsembleError("an ensemble needs at least one member's scores")
    shapes = {np.shape(scores) for scores in member_scores}
    if len(shapes) != 1:
        raise EnsembleError(f"ensemble members gave scores of different shapes {sorted(shapes)}")
    stacked = np.stack([np.asarray(scores, dtype=np.float64) for scores in member_scores])
    mean = stacked.mean(axis=0)
    if problem_type == "classification":
        if stacked.ndim != 3:
            raise EnsembleError(f"classification members need N x C probabilities, got shape {stacked.shape[1:]}")
        predicted = mean.argmax(axis=1)
        spread = stacked[:, np.arange(len(predicted)), predicted].std(axis=0)
    elif problem_type == "regression":
        stacked = stacked.reshape(len(stacked), -1)
        mean, spread = stacked.mean(axis=0), stacked.std(axis=0)
    else:
        raise EnsembleError(f"unknown problem_type {problem_type!r}; use 'classification' or 'regression'")
    return EnsembleScores(mean, spread, stacked)


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by `paths`: each is a run directory or a `cv` output (its folds, in order)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "adapter.safetensors").is_file():
            runs.append(path)
            continue
        folds = fold_dirs(path)
        if not folds:
            check_complete(path)  # a damaged or unfinished run says so, and how to finish it
            raise EnsembleError(f"{path}: neither a run directory (adapter.safetensors) nor a cv output "
                                "(repeat*-fold*/); give `protadapt fit` or `protadapt cv` output")
        runs.extend(folds)
    if len(set(map(Path.resolve, runs))) != len(runs):
        raise EnsembleError("the same run directory is named twice; give each run once")
    check_alike(runs)
    return runs


def fold_dirs(cv_dir: Path) -> list[Path]:
    """`repeat{r}-fold{k}` subdirectories sorted by (r, k); each must hold a finished run."""
    found = sorted(((int(m[1]), int(m[2])), child) for child in cv_dir.iterdir() if child.is_dir()
                   and (m := FOLD_DIR.match(child.name))) if cv_dir.is_dir() else []
    for _, child in found:
        if not (child / "adapter.safetensors").is_file():
            raise EnsembleError(f"{child}: no adapter.safetensors (the fold did not finish); rerun `protadapt cv`")
    return [child for _, child in found]


def check_alike(runs: Sequence[Path]) -> dict:
    """The metadata the runs share (task, problem_type, labels, backbone name); an error names the first misfit."""
    first = _shared_metadata(runs[0])
    for run in runs[1:]:
        other = _shared_metadata(run)
        for field in first:
            if other[field] != first[field]:
                raise EnsembleError(f"{run}: {field} {other[field]!r} differs from {runs[0]}'s {first[field]!r}; "
                                    "an ensemble combines runs of one task, backbone and label set")
    return first


def out_of_fold_scores(runs: Sequence[Path], problem_type: str, labels: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, true labels/values and fold index of every row in the runs' predictions.csv (their test folds).

    For CV+ the runs must be the folds of one repeat: together their test folds are the training
    split, each row scored once, by the fold model that did not train on it.
    """
    frames = []
    for fold, run in enumerate(runs):
        path = run / "predictions.csv"
        if not path.is_file():
            raise EnsembleError(f"{path}: missing; cv+ needs each fold's test predictions (rerun `protadapt cv`)")
        frame = pd.read_csv(path)
        if "label" not in frame:
            raise EnsembleError(f"{path}: no label column; cv+ needs the true labels of the fold's test rows")
        frames.append(frame.assign(fold=fold))
    table = pd.concat(frames, ignore_index=True)
    if table["id"].duplicated().any():
        repeated = table.loc[table["id"].duplicated(), "id"].iloc[0]
        raise EnsembleError(f"id {repeated!r} is in more than one fold's predictions.csv; give the folds of one repeat")
    if problem_type != "classification":
        return table["prediction"].to_numpy(dtype=np.float64), table["label"].to_numpy(), table["fold"].to_numpy()
    scores = table[[f"prob_{label}" for label in labels]].to_numpy(dtype=np.float64)
    codes = table["label"].astype(str).map({str(label): code for code, label in enumerate(labels)})
    if codes.isna().any():  # predictions.csv holds class names (Negative, 1, ...); conformal needs 0..C-1
        raise EnsembleError(f"label {table['label'][codes.isna()].iloc[0]!r} in a fold's predictions.csv is not "
                            f"one of the run's classes {', '.join(map(str, labels))}; rerun `protadapt cv`")
    return scores, codes.to_numpy(dtype=np.int64), table["fold"].to_numpy()


def calibrate_cv(cv_dir: str | Path, *, alpha: float, score: str, repeat: int = 0) -> Conformal:
    """CV+ calibration of a `cv` output from one repeat's folds (their test folds partition the training split)."""
    runs = [run for run in fold_dirs(Path(cv_dir)) if run.name.startswith(f"repeat{repeat}-")]
    if not runs:
        raise EnsembleError(f"{cv_dir}: no repeat{repeat}-fold*/ run directories; give `protadapt cv` output")
    metadata = check_alike(runs)
    scores, targets, folds = out_of_fold_scores(runs, metadata["problem_type"], metadata["labels"])
    return calibrate(metadata["problem_type"], scores, targets, alpha=alpha, method="cv+", score=score, folds=folds,
                     members=tuple(run.name for run in runs))


def member_scores(conformal: Conformal, scores_by_run: dict[str, np.ndarray]) -> np.ndarray:
    """K x N (x C) scores in the order of a cv+ calibration's fold models, keyed by run-directory name."""
    missing = [name for name in conformal.members if name not in scores_by_run]
    if missing:
        raise EnsembleError(f"cv+ calibration needs the fold runs {', '.join(missing)}; predict with the whole cv directory")
    return np.stack([np.asarray(scores_by_run[name], dtype=np.float64) for name in conformal.members])


def _shared_metadata(run: Path) -> dict:
    metadata = read_json(run / "adapter.json", EnsembleError, f"is {run} a protadapt run? refit it if it is")
    backbone = metadata.get("backbone", {})
    return {field: metadata.get(field) for field in SHARED} | {"backbone": backbone.get("name")}
