"""A run's uncertainty files: what `fit`/`cv` write next to the weights and what `predict` applies to new scores.

- `calibration.json` (classification, optional): the temperature fitted on the inner validation
  split, with the validation ECE before and after. Every later score of the run is scaled by it.
- `conformal.json`: split conformal state of a run (from its calibration part), or the CV+ state
  of a `cv` directory (from its folds' out-of-fold predictions).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from protadapt.ensemble import average_scores, member_scores
from protadapt.evaluation.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                              logits_from_probabilities)
from protadapt.evaluation.conformal import Conformal, ConformalError, calibrate, prediction_columns

CALIBRATION_FILE = "calibration.json"
CONFORMAL_FILE = "conformal.json"


def write_temperature(run_dir: str | Path, val_scores: ArrayLike, val_labels: ArrayLike, n_bins: int) -> dict:
    """Fit T on validation probabilities (as log-probability logits), write calibration.json, return its content."""
    val_scores = np.asarray(val_scores, dtype=np.float64)
    temperature = fit_temperature(logits_from_probabilities(val_scores), val_labels)
    scaled = apply_temperature(logits_from_probabilities(val_scores), temperature)
    state = {"temperature": temperature, "fitted_on": "inner_val", "n": int(len(val_scores)), "ece_bins": int(n_bins),
             "val_ece_before": expected_calibration_error(val_labels, val_scores, n_bins),
             "val_ece_after": expected_calibration_error(val_labels, scaled, n_bins)}
    (Path(run_dir) / CALIBRATION_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return state


def scaled_scores(run_dir: str | Path, scores: ArrayLike) -> np.ndarray:
    """The run's scores after its temperature (unchanged when it has no calibration.json)."""
    scores = np.asarray(scores, dtype=np.float64)
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return scores
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConformalError(f"{path}: unreadable ({error.__class__.__name__}); refit the run or delete the file") from None
    return apply_temperature(logits_from_probabilities(scores), temperature)


def write_split_conformal(run_dir: str | Path, problem_type: str, scores: ArrayLike, targets: ArrayLike, *,
                          alpha: float, score: str, class_conditional: bool) -> Conformal:
    """Calibrate on the run's calibration part (scores already temperature-scaled) and write conformal.json."""
    conformal = calibrate(problem_type, scores, targets, alpha=alpha, method="split", score=score,
                          class_conditional=class_conditional)
    conformal.save(Path(run_dir) / CONFORMAL_FILE)
    return conformal


def uncertainty_columns(source: str | Path, scores_by_run: dict[str, np.ndarray], problem_type: str,
                        labels: list, alpha: float | None = None) -> tuple[np.ndarray, dict[str, list | np.ndarray]]:
    """Scores to report (the mean over runs) and the extra columns: `spread` (several runs) and the
    conformal set/interval when `source` (the run or cv directory predict was given) holds conformal.json."""
    ensemble = average_scores(list(scores_by_run.values()), problem_type)
    columns: dict[str, list | np.ndarray] = {}
    if len(scores_by_run) > 1:
        columns["spread"] = ensemble.spread.round(6)
    path = Path(source) / CONFORMAL_FILE
    if path.is_file():
        conformal = Conformal.load(path)
        if conformal.method == "cv+":
            columns |= prediction_columns(conformal, member_scores(conformal, scores_by_run), labels, alpha=alpha)
        elif len(scores_by_run) == 1:
            columns |= prediction_columns(conformal, ensemble.mean, labels, alpha=alpha)
    return ensemble.mean, columns
