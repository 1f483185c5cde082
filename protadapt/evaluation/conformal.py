"""Conformal prediction on a model's scores: prediction sets and intervals that hold 1 − alpha coverage.

Two ways to calibrate, both from nonconformity scores of rows the model did not train on:

- `split`: one model, scored on a calibration part held out from its training (Vovk et al. 2005;
  Lei et al. 2018). New scores come from that same model.
- `cv+`: K cross-validation fold models, each row scored by the fold model that did not see it
  (out-of-fold). New points are scored by every fold model, and each calibration row is compared
  with its own fold model's score of the new point: CV+ intervals of Barber et al. (2021) and, for
  classification, the cross-validation sets of Romano et al. (2020, algorithm 2). Coverage is at
  least 1 − 2·alpha in theory and close to 1 − alpha in practice.

Scores: classification `lac` (1 − p of the label) or `aps` (the probability mass of labels at least
as likely as the label, non-randomised: the set is {y : score ≤ threshold}, which may be empty);
regression `absolute` (|y − ŷ|) or `normalized` (|y − ŷ| / sigma, sigma a per-row difficulty, e.g.
the ensemble spread). `class_conditional` (Mondrian by label, split only) calibrates every class on
its own rows, so coverage holds within each class, not only on average.

The state is the calibration scores themselves (not a threshold), so any alpha can be applied later;
`to_json`/`from_json` store it with the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

FORMAT = 1
METHODS = ("split", "cv+")
SCORES = {"classification": ("lac", "aps"), "regression": ("absolute", "normalized")}
_TOLERANCE = 1e-9  # (n + 1)(1 − alpha) computed in floating point must not round 180 up to 181
_CHUNK = 2_000_000  # matrix cells per block in the CV+ interval computation


class ConformalError(ValueError):
    """Bad calibration input or a stored calibration that cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Conformal:
    """Calibration state of one run: the nonconformity scores of its calibration rows and how they were made."""

    problem_type: str
    method: str
    score: str
    alpha: float
    scores: np.ndarray  # (n,) nonconformity score of each calibration row at its true label / value
    labels: np.ndarray | None = None  # (n,) true class of each row: classification only
    folds: np.ndarray | None = None  # (n,) index of the fold model that scored each row: cv+ only
    num_classes: int | None = None
    class_conditional: bool = False
    members: tuple[str, ...] = ()  # cv+: run-directory names of the fold models, in fold-index order

    def prediction_sets(self, probabilities: ArrayLike, alpha: float | None = None) -> np.ndarray:
        """N x C booleans, True where the class is in the set; cv+ takes K x N x C (one slice per fold model)."""
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        if self.problem_type != "classification":
            raise ConformalError("prediction sets are for classification runs; use intervals() for regression")
        probabilities = np.asarray(probabilities, dtype=np.float64)
        expected = 3 if self.method == "cv+" else 2
        folds = int(self.folds.max()) + 1 if self.method == "cv+" else None
        if probabilities.ndim != expected or probabilities.shape[-1] != self.num_classes or \
                (folds and len(probabilities) != folds):
            shape = f"K x N x C with K = {folds}" if folds else "N x C"
            raise ConformalError(f"{self.method} sets need {shape} probabilities with C = {self.num_classes}, "
                                 f"got shape {probabilities.shape}")
        if self.method == "cv+":
            return _cv_plus_sets(self, probabilities, alpha)
        candidate = class_scores(probabilities, self.score)
        if not self.class_conditional:
            return candidate <= split_threshold(self.scores, alpha)
        thresholds = [split_threshold(self.scores[self.labels == k], alpha) for k in range(self.num_classes)]
        return candidate <= np.asarray(thresholds)[None, :]

    def intervals(self, predictions: ArrayLike, sigmas: ArrayLike | None = None,
                  alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds per row; cv+ takes K x N predictions (one row per fold model)."""
        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        if self.problem_type != "regression":
            raise ConformalError("intervals are for regression runs; use prediction_sets() for classification")
        predictions = np.asarray(predictions, dtype=np.float64)
        if self.method == "cv+":
            if predictions.ndim != 2 or len(predictions) != int(self.folds.max()) + 1:
                raise ConformalError(f"cv+ intervals need K x N predictions from the {int(self.folds.max()) + 1} "
                                     f"fold models, got shape {predictions.shape}")
            return _cv_plus_intervals(self.scores, self.folds, predictions, alpha)
        half_width = split_threshold(self.scores, alpha) * _sigmas(self.score, sigmas, predictions.shape)
        return predictions - half_width, predictions + half_width

    def to_json(self) -> str:
        """The state as JSON text (floats written exactly, so a reloaded state gives the same sets)."""
        return json.dumps({
            "format": FORMAT, "problem_type": self.problem_type, "method": self.method, "score": self.score,
            "alpha": self.alpha, "class_conditional": self.class_conditional, "num_classes": self.num_classes,
            "n": int(len(self.scores)), "members": list(self.members), "scores": self.scores.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "folds": None if self.folds is None else self.folds.tolist(),
        })

    @classmethod
    def from_json(cls, text: str) -> Conformal:
        """Rebuild a state written by to_json; anything else is a ConformalError."""
        try:
            state = json.loads(text)
            if state.get("format") != FORMAT:
                raise ConformalError(f"conformal state format {state.get('format')!r}; this protadapt reads {FORMAT}")
            return calibrate_from_scores(
                state["problem_type"], np.asarray(state["scores"], dtype=np.float64), alpha=state["alpha"],
                method=state["method"], score=state["score"], class_conditional=state["class_conditional"],
                num_classes=state["num_classes"], members=tuple(state["members"]),
                labels=None if state["labels"] is None else np.asarray(state["labels"]),
                folds=None if state["folds"] is None else np.asarray(state["folds"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ConformalError(f"not a protadapt conformal state ({error.__class__.__name__}: {error})") from None

    def save(self, path: str | Path) -> Path:
        """Write the JSON state (e.g. RUN_DIR/conformal.json)."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Conformal:
        """Read a state written by save; the error names the file."""
        try:
            return cls.from_json(Path(path).read_text())
        except ConformalError as error:
            raise ConformalError(f"{path}: {error}; refit the run or delete the file") from None


def calibrate(problem_type: str, scores: ArrayLike, targets: ArrayLike, *, alpha: float, method: str,
              score: str, class_conditional: bool = False, folds: ArrayLike | None = None,
              sigmas: ArrayLike | None = None, members: tuple[str, ...] = ()) -> Conformal:
    """Calibrate from a model's scores of held-out rows and their true labels/values.

    `scores`: N x C class probabilities or N predictions; for cv+ these are out-of-fold, with
    `folds` (N) naming the fold model that scored each row (0..K−1). `sigmas` (N): per-row
    difficulty for the `normalized` regression score.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if len(scores) != len(targets) or len(scores) == 0:
        raise ConformalError(f"calibration needs one score row per target and at least one row; "
                             f"got {len(scores)} score rows and {len(targets)} targets")
    if problem_type == "classification":
        if scores.ndim != 2:
            raise ConformalError(f"classification calibration needs N x C probabilities, got shape {scores.shape}")
        labels = targets.astype(np.int64)
        if labels.min() < 0 or labels.max() >= scores.shape[1]:
            raise ConformalError(f"calibration labels must be 0..{scores.shape[1] - 1}, found {sorted(set(labels))}")
        if score not in SCORES["classification"]:
            raise ConformalError(f"unknown classification score {score!r}; choose one of lac, aps")
        nonconformity = class_scores(scores, score)[np.arange(len(labels)), labels]
        return calibrate_from_scores(problem_type, nonconformity, alpha=alpha, method=method, score=score,
                                     class_conditional=class_conditional, num_classes=scores.shape[1],
                                     labels=labels, folds=folds, members=members)
    if problem_type == "regression":
        predictions = scores.ravel()
        residuals = np.abs(targets.astype(np.float64).ravel() - predictions)
        nonconformity = residuals / _sigmas(score, sigmas, predictions.shape) if score == "normalized" else residuals
        return calibrate_from_scores(problem_type, nonconformity, alpha=alpha, method=method, score=score,
                                     class_conditional=class_conditional, folds=folds, members=members)
    raise ConformalError(f"unknown problem_type {problem_type!r}; use 'classification' or 'regression'")


def calibrate_from_scores(problem_type: str, scores: np.ndarray, *, alpha: float, method: str, score: str,
                          class_conditional: bool = False, num_classes: int | None = None,
                          labels: ArrayLike | None = None, folds: ArrayLike | None = None,
                          members: tuple[str, ...] = ()) -> Conformal:
    """A checked Conformal from nonconformity scores already computed (calibrate's and from_json's last step)."""
    _check_alpha(alpha)
    if problem_type not in SCORES or score not in SCORES[problem_type]:
        raise ConformalError(f"score {score!r} does not fit problem_type {problem_type!r}; "
                             f"choose one of {', '.join(SCORES.get(problem_type, ()))}")
    if method not in METHODS:
        raise ConformalError(f"unknown conformal method {method!r}; choose one of {', '.join(METHODS)}")
    if not np.all(np.isfinite(scores)):
        raise ConformalError("calibration scores contain NaN or infinity; check the model's predictions")
    if class_conditional and (method != "split" or problem_type != "classification"):
        raise ConformalError("class_conditional calibration is for split conformal classification only")
    if method == "cv+":
        folds = np.asarray(folds if folds is not None else [], dtype=np.int64)
        if len(folds) != len(scores) or set(folds.tolist()) != set(range(int(folds.max(initial=-1)) + 1)):
            raise ConformalError("cv+ needs a fold index 0..K-1 for every calibration row, each fold present")
        if members and len(members) != int(folds.max()) + 1:
            raise ConformalError(f"cv+ has {int(folds.max()) + 1} folds but {len(members)} member runs")
        if problem_type == "regression" and score != "absolute":
            raise ConformalError("cv+ regression uses the absolute residual score")
    elif folds is not None:
        raise ConformalError("fold indices are for cv+ only; split conformal takes one model's scores")
    return Conformal(problem_type, method, score, float(alpha), np.asarray(scores, dtype=np.float64),
                     None if labels is None else np.asarray(labels, dtype=np.int64), folds,
                     None if num_classes is None else int(num_classes), bool(class_conditional), tuple(members))


def class_scores(probabilities: np.ndarray, score: str) -> np.ndarray:
    """Nonconformity of every candidate class (same shape as probabilities): lac 1 − p, aps mass at least as likely."""
    if score == "lac":
        return 1.0 - probabilities
    above = probabilities[..., None, :] > probabilities[..., :, None]  # [.., y, j]: class j more likely than y
    return (probabilities[..., None, :] * above).sum(axis=-1) + probabilities


def split_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 − alpha))-th smallest score; +inf when that rank exceeds n (too few rows)."""
    rank = math.ceil((len(scores) + 1) * (1.0 - alpha) - _TOLERANCE)
    if rank > len(scores):
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


def _cv_plus_sets(conformal: Conformal, probabilities: np.ndarray, alpha: float) -> np.ndarray:
    """Label y is in the set when fewer than (1 − alpha)(n + 1) rows score below their fold model's score of y."""
    candidate = class_scores(probabilities, conformal.score)  # K x N x C
    below = np.zeros(candidate.shape[1:], dtype=np.int64)
    for fold in range(candidate.shape[0]):
        ordered = np.sort(conformal.scores[conformal.folds == fold])
        below += np.searchsorted(ordered, candidate[fold], side="left")
    return below < (1.0 - alpha) * (len(conformal.scores) + 1) - _TOLERANCE


def _cv_plus_intervals(residuals: np.ndarray, folds: np.ndarray, predictions: np.ndarray,
                       alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Barber et al.'s CV+: quantiles over rows i of μ_{k(i)}(x) ∓ R_i."""
    n = len(residuals)
    low_rank = math.floor(alpha * (n + 1) + _TOLERANCE)
    high_rank = math.ceil((1.0 - alpha) * (n + 1) - _TOLERANCE)
    per_row = predictions[folds]  # n x N: each calibration row's own fold model on every new point
    lower, upper = np.full(per_row.shape[1], -np.inf), np.full(per_row.shape[1], np.inf)
    step = max(1, _CHUNK // n)
    for start in range(0, per_row.shape[1], step):
        block = per_row[:, start:start + step]
        if low_rank >= 1:
            lower[start:start + step] = np.partition(block - residuals[:, None], low_rank - 1, axis=0)[low_rank - 1]
        if high_rank <= n:
            upper[start:start + step] = np.partition(block + residuals[:, None], high_rank - 1, axis=0)[high_rank - 1]
    return lower, upper


def _sigmas(score: str, sigmas: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray | float:
    """Per-row difficulty for the normalized score (checked positive and finite); 1 for absolute."""
    if score != "normalized":
        return 1.0
    if sigmas is None:
        raise ConformalError("the normalized score needs per-row sigmas (e.g. the ensemble spread)")
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sigmas.shape != shape or not np.all(np.isfinite(sigmas)) or sigmas.min() <= 0:
        raise ConformalError(f"sigmas must be {shape[0]} positive finite numbers, one per row")
    return sigmas


def _check_alpha(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise ConformalError(f"alpha must be between 0 and 1 (e.g. 0.1 for 90% coverage), got {alpha}")
    return float(alpha)


def prediction_columns(conformal: Conformal, scores: ArrayLike, class_labels: list | tuple = (),
                       sigmas: ArrayLike | None = None, alpha: float | None = None) -> dict[str, list | np.ndarray]:
    """Columns `predict` adds: `set_{alpha}` ('0|1', '' for an empty set) and `set_size_{alpha}`, or
    `lower_{alpha}` and `upper_{alpha}` (±inf when the calibration part is too small for that alpha)."""
    alpha = _check_alpha(conformal.alpha if alpha is None else alpha)
    tag = f"{alpha:g}"
    if conformal.problem_type == "classification":
        sets = conformal.prediction_sets(scores, alpha)
        names = list(class_labels) or list(range(sets.shape[1]))
        return {f"set_{tag}": ["|".join(str(names[k]) for k in np.flatnonzero(row)) for row in sets],
                f"set_size_{tag}": sets.sum(axis=1)}
    lower, upper = conformal.intervals(scores, sigmas, alpha)
    return {f"lower_{tag}": lower.round(6), f"upper_{tag}": upper.round(6)}
