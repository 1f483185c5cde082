"""A run's uncertainty files: what `fit`/`cv` write next to the weights and what `predict` applies to new scores.

- `calibration.json` (classification, optional): the temperature fitted on the inner validation
  split, with the validation ECE before and after. Every later score of the run is scaled by it.
- `conformal.json`: split conformal state of a run (from its calibration part), or the CV+ state
  of a `cv` directory (from its folds' out-of-fold predictions).
- `training_sequences.json` (protadapt/domain.py): the applicability domain.

`predict_runs` / `annotated_predictions` make the table `predict` writes and `serve` returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from protadapt.domain import domain_columns

from protadapt.ensemble import average_scores, member_scores
from protadapt.evaluation.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                              logits_from_probabilities)
from protadapt.evaluation.conformal import Conformal, ConformalError, calibrate, prediction_columns
from protadapt.files import read_json
from protadapt.inference import predict_scores, prediction_frame
from protadapt.model import ProteinPredictor

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
    advice = "refit the run or delete the file"
    try:
        temperature = float(read_json(path, ConformalError, advice)["temperature"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConformalError(f"{path}: unreadable (no temperature: {error.__class__.__name__}); {advice}") from None
    return apply_temperature(logits_from_probabilities(scores), temperature)


def write_split_conformal(run_dir: str | Path, problem_type: str, scores: ArrayLike, targets: ArrayLike, *,
                          alpha: float, score: str, class_conditional: bool) -> Conformal:
    """Calibrate on the run's calibration part (scores already temperature-scaled) and write conformal.json."""
    conformal = calibrate(problem_type, scores, targets, alpha=alpha, method="split", score=score,
                          class_conditional=class_conditional)
    conformal.save(Path(run_dir) / CONFORMAL_FILE)
    return conformal


def uncertainty_columns(source: str | Path | None, scores_by_run: dict[str, np.ndarray], problem_type: str,
                        labels: list, alpha: float | None = None) -> tuple[np.ndarray, dict[str, list | np.ndarray]]:
    """Scores to report (the mean over runs) and the extra columns: `spread` (several runs) and the
    conformal set/interval when `source` (the one run or cv directory predict was given) holds conformal.json."""
    ensemble = average_scores(list(scores_by_run.values()), problem_type)
    columns: dict[str, list | np.ndarray] = {}
    if len(scores_by_run) > 1:
        columns["spread"] = ensemble.spread.round(6)
    path = None if source is None else Path(source) / CONFORMAL_FILE
    if path is not None and path.is_file():
        conformal = Conformal.load(path)
        if conformal.method == "cv+":
            columns |= prediction_columns(conformal, member_scores(conformal, scores_by_run), labels, alpha=alpha)
        elif len(scores_by_run) == 1:
            columns |= prediction_columns(conformal, ensemble.mean, labels, alpha=alpha)
    return ensemble.mean, columns


def predict_runs(runs: Sequence[Path], source: Path | None, frame: pd.DataFrame, first: ProteinPredictor, *,
                 device, alpha: float | None = None, **inference) -> pd.DataFrame:
    """`predict`'s table over one or several runs (`first`: runs[0]'s predictor, loaded; the others are
    loaded one at a time): mean scores, spread, sets/intervals and the applicability-domain columns."""
    scores_by_run: dict[str, np.ndarray] = {}
    for key, run in zip(run_keys(runs), runs):
        predictor = first if run == runs[0] else ProteinPredictor.load(run)[0].to(device)
        scores_by_run[key] = scaled_scores(run, predict_scores(predictor, frame, **inference))
        del predictor
    return annotated_predictions(first, runs, source, frame, scores_by_run, alpha)


def annotated_predictions(predictor: ProteinPredictor, runs: Sequence[Path], source: Path | None, frame: pd.DataFrame,
                          scores_by_run: dict[str, np.ndarray], alpha: float | None = None) -> pd.DataFrame:
    """prediction_frame of the mean scores plus `uncertainty_columns` and `domain_columns` (predict and serve)."""
    mean, columns = uncertainty_columns(source, scores_by_run, predictor.problem_type, predictor.labels, alpha)
    columns |= domain_columns(runs, frame["sequence"].tolist())
    return prediction_frame(predictor, frame, mean).assign(**columns)


def run_keys(runs: Sequence[Path]) -> list[str]:
    """Each run's name (what cv+ calibration names its fold models), or its path where names repeat."""
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]
