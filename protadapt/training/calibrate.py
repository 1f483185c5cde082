"""`fit`'s and `cv`'s uncertainty steps: the calibration part, temperature, conformal state, ECE and domain.

The calibration part is carved from the training rows before anything else (stratified, identity
and `group_by` groups whole), so no step of training sees it: early stopping picks the checkpoint
on the inner validation split, and BiDoRA trains its magnitudes (and retrains) on that split, so
neither could calibrate honestly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protadapt.config import RunConfig, UncertaintyConfig
from protadapt.data.splits import inner_split, split_groups
from protadapt.domain import domain_columns, metrics_out_of_domain, write_training_sequences
from protadapt.ensemble import calibrate_cv
from protadapt.evaluation.calibration import expected_calibration_error
from protadapt.inference import predict_scores, prediction_frame
from protadapt.model import ProteinPredictor
from protadapt.uncertainty import (CONFORMAL_FILE, scaled_scores, uncertainty_columns, write_split_conformal,
                                   write_temperature)


def calibration_split(train: pd.DataFrame, config: RunConfig, problem_type: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(rows to train on, conformal calibration part); no part when `data.calibration_fraction` is 0."""
    train = train.reset_index(drop=True)
    if not config.data.calibration_fraction:
        return train, None
    rest, part = inner_split(train["label"].to_numpy(), config.data.calibration_fraction, config.seed,
                             problem_type=problem_type, groups=split_groups(train, config.data))
    return train.iloc[rest].reset_index(drop=True), train.iloc[part].reset_index(drop=True)


def calibrate_run(predictor: ProteinPredictor, run_dir: Path, train: pd.DataFrame, inner_val: pd.DataFrame,
                  calibration: pd.DataFrame | None, settings: UncertaintyConfig, batch_size: int, precision: str) -> None:
    """After the weights are saved: training sequences, the temperature (optional), the split conformal state."""
    write_training_sequences(run_dir, train["sequence"].tolist(), settings.min_identity, settings.identity_floor)
    classification = predictor.problem_type == "classification"
    if settings.temperature and classification:
        scores = predict_scores(predictor, inner_val, batch_size, precision=precision)
        write_temperature(run_dir, scores, inner_val["label"].to_numpy(), settings.ece_bins)
    if calibration is not None:
        scores = scaled_scores(run_dir, predict_scores(predictor, calibration, batch_size, precision=precision))
        write_split_conformal(run_dir, predictor.problem_type, scores, calibration["label"].to_numpy(),
                              alpha=settings.alpha, score=settings.set_score if classification else "absolute",
                              class_conditional=settings.class_conditional and classification)


def evaluated_predictions(predictor: ProteinPredictor, run_dir: Path, test: pd.DataFrame, scores: np.ndarray,
               settings: UncertaintyConfig) -> tuple[pd.DataFrame, dict, dict]:
    """predictions.csv with sets/intervals and identity columns, test-metric additions, metrics.json additions."""
    _, columns = uncertainty_columns(run_dir, {run_dir.name: scores}, predictor.problem_type, predictor.labels)
    table = prediction_frame(predictor, test, scores).assign(**columns, **domain_columns([run_dir], test["sequence"]))
    extra = {"ece": expected_calibration_error(test["label"].to_numpy(), scores, settings.ece_bins)} \
        if predictor.problem_type == "classification" else {}
    extra |= conformal_coverage(table, settings.alpha)
    return table, extra, metrics_out_of_domain(table, settings.min_identity, predictor.problem_type)


def conformal_coverage(table: pd.DataFrame, alpha: float) -> dict[str, float]:
    """Share of test rows whose label is in its set (interval), and the mean set size (interval width)."""
    tag = f"{alpha:g}"
    if f"set_{tag}" in table:
        covered = [str(label) in members.split("|") for label, members in zip(table["label"], table[f"set_{tag}"])]
        return {f"coverage_{tag}": float(np.mean(covered)), f"set_size_{tag}": float(table[f"set_size_{tag}"].mean())}
    if f"lower_{tag}" in table:
        lower, upper = table[f"lower_{tag}"], table[f"upper_{tag}"]
        covered = (lower <= table["label"]) & (table["label"] <= upper)
        return {f"coverage_{tag}": float(covered.mean()), f"width_{tag}": float((upper - lower).mean())}
    return {}


def write_cv_conformal(out: Path, config: RunConfig, problem_type: str) -> Path:
    """CV+ state of a `cv` output from repeat 0's out-of-fold predictions, for `predict OUT`."""
    score = config.uncertainty.set_score if problem_type == "classification" else "absolute"
    return calibrate_cv(out, alpha=config.uncertainty.alpha, score=score).save(out / CONFORMAL_FILE)
