"""`fit`: a RunConfig in, a run directory with weights and metrics out.

A run directory holds `config.yaml` (resolved), `adapter.safetensors` + `adapter.json` (head
included), `metrics.json` (validation and test), `predictions.csv` (test set), `run.json`
(wall time, memory, parameter counts, versions), `logs/` (Lightning CSV logs, and TensorBoard
event files with `trainer.logger=csv,tensorboard`) and `checkpoints/` (for `--resume`); and for
uncertainty (training/calibrate.py) `training_sequences.json`, `conformal.json` (with
`data.calibration_fraction`), `calibration.json` (with `uncertainty.temperature`) and
`test_reliability.png` (classification).

Under DDP every process runs `fit`; the processes train together, and afterwards only global
rank 0 evaluates and writes files, so a run directory is written once.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from protadapt import rundir
from protadapt.adapters import count_trainable
from protadapt.backbones import load_backbone, store_frozen_weights
from protadapt.config import RunConfig, with_method_defaults
from protadapt.data.datamodule import ProteinDataModule
from protadapt.data.io import DataError
from protadapt.data.splits import split_groups
from protadapt.data.tasks import Task, resolve_task
from protadapt.embeddings.cache import EmbeddingCache
from protadapt.evaluation.metrics import METRIC_DIRECTION
from protadapt.evaluation.plots import (plot_regression_scatter, plot_reliability_diagram, plot_roc_pr,
                                        plot_training_curves)
from protadapt.files import write_csv_atomic, write_json_atomic
from protadapt.inference import evaluate_frame, predict_scores
from protadapt.model import ProteinPredictor
from protadapt.training.calibrate import calibrate_run, calibration_split, evaluated_predictions
from protadapt.training.bilevel import BiDoRAModule, RetrainModule, reset_for_retraining
from protadapt.training.distributed import global_rank, ranks_agree
from protadapt.training.module import PredictorModule
from protadapt.training.refit import initial_state, refits, restore_initial, standardise_on
from protadapt.training.resume import check_resume_config, interruptible, save_resume_config
from protadapt.training.trainer import Phase, inference_precision, train
from protadapt.uncertainty import scaled_scores

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # empty on DDP ranks other than 0, which write nothing
    is_global_zero: bool = True


def fit(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
        train: pd.DataFrame | None = None, test: pd.DataFrame | None = None,
        refit_default: bool = False, figures: bool = True) -> RunResult:
    """Train one model and write its run directory; `train`/`test` override the task's split.

    `refit_default`: whether an unset `optim.refit` refits (`compare` passes True). An unset `optim.lr` is
    the method's default (`config.METHOD_DEFAULTS`); run.json records which settings were defaulted.
    `figures`: draw the test-set figures (`cv` folds do not: ~1 s of CPU each, more than a warm probe fold)."""
    run_dir = Path(run_dir or default_run_dir(config))
    config, defaulted = with_method_defaults(config)
    check_resume_config(run_dir, config, resume)
    with rundir.claim(run_dir, resume=resume, overwrite=overwrite), interruptible():
        result = fit_claimed(config, run_dir, resume, train, test, refit_default, defaulted, figures)
        if result.is_global_zero:
            rundir.mark_complete(run_dir)  # last: a run without it is incomplete
        return result


def fit_claimed(config: RunConfig, run_dir: Path, resume: bool, train: pd.DataFrame | None,
                test: pd.DataFrame | None, refit_default: bool = False, defaulted: dict | None = None,
                figures: bool = True) -> RunResult:
    """`fit` inside its run directory's lock."""
    started = time.perf_counter()
    task = resolve_task(config.data)
    if train is None:
        frame = task.load()
        train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    test = None if test is None or test.empty else test.reset_index(drop=True)
    L.seed_everything(config.seed, workers=True, verbose=False)

    predictor = build_predictor(config, task, train)  # a missing backbone leaves nothing
    limit = predictor.backbone.max_residues
    train = limit_lengths(train, limit, config.data.truncate, f"{task.name} training")
    test = None if test is None else limit_lengths(test, limit, config.data.truncate, f"{task.name} test")
    train, calibration = calibration_split(train, config, task.problem_type)
    datamodule = build_datamodule(config, predictor, train.reset_index(drop=True), test)
    save_resume_config(run_dir, config)  # after validation: a refused run leaves no directory
    trained = train_predictor(predictor, datamodule, config, run_dir, monitored_metric(config, task), resume,
                              refit_default)
    ranks = ranks_agree(predictor)
    if global_rank() != 0:  # DDP: the weights are identical on every rank; rank 0 writes them
        return RunResult(run_dir, {}, is_global_zero=False)

    predictor.save(run_dir, {"task": task.name, "problem_type": predictor.problem_type,
                             "labels": predictor.labels, "seed": config.seed})
    config.save(run_dir / "config.yaml")
    calibrate_run(predictor, run_dir, train, datamodule.inner_val_df, calibration, config.uncertainty,
                  config.data.batch_size, inference_precision(config.trainer.precision))
    evaluated = evaluate_run(predictor, datamodule.inner_val_df, test, config, run_dir, refit_default, figures)
    metrics = {**evaluated, **trained}
    write_json_atomic(metrics, run_dir / "metrics.json")
    record = run_record(predictor, time.perf_counter() - started, ranks)
    write_json_atomic({**record, "optim_lr": config.optim.lr, "method_defaults": defaulted or {}},
                      run_dir / "run.json")
    return RunResult(run_dir, metrics)


def limit_lengths(rows: pd.DataFrame, max_residues: int, truncate: bool, part: str) -> pd.DataFrame:
    """Rows longer than the backbone takes: cut to `max_residues` with `data.truncate=true` (logged), else an error."""
    lengths = rows["sequence"].str.len()
    long = lengths > max_residues
    if not long.any():
        return rows
    first = rows.loc[long.idxmax()]
    if not truncate:
        raise DataError(f"{part} record {first['id']!r} has {lengths[long.idxmax()]} residues, more than the backbone's "
                        f"{max_residues} ({int(long.sum())} such records); pass data.truncate=true to keep the first "
                        f"{max_residues}")
    log.warning("%s: truncated %d sequence(s) longer than %d residues (first: %s)", part, int(long.sum()),
                max_residues, first["id"])
    rows = rows.copy()
    rows.loc[long, "sequence"] = rows.loc[long, "sequence"].str[:max_residues]
    return rows


def build_predictor(config: RunConfig, task: Task, train: pd.DataFrame) -> ProteinPredictor:
    """The backbone with the configured method and a head sized for the task's classes."""
    backbone = store_frozen_weights(load_backbone(config.backbone, random_init=config.random_init),
                                    config.backbone_dtype)
    labels = class_labels(task, train)
    head = replace(config.head, problem_type=task.problem_type,
                   num_classes=max(2, len(labels)) if task.problem_type == "classification" else 1)
    predictor = ProteinPredictor(backbone, head, config.adapter)
    predictor.labels = labels
    return predictor


def build_datamodule(config: RunConfig, predictor: ProteinPredictor, train: pd.DataFrame,
                     test: pd.DataFrame | None) -> ProteinDataModule:
    """Loaders over the run's rows, with the inner split made once (near-duplicates kept together)."""
    groups = split_groups(train, config.data)
    datamodule = ProteinDataModule(
        predictor.backbone.alphabet, train=train, test=test, problem_type=predictor.problem_type,
        batch_size=config.data.batch_size, val_fraction=config.data.val_fraction, seed=config.seed, groups=groups,
        num_workers=config.data.num_workers)
    datamodule.setup("fit")
    return datamodule


def train_predictor(predictor: ProteinPredictor, datamodule: ProteinDataModule, config: RunConfig, run_dir: Path,
                    monitor: tuple[str, str], resume: bool, refit_default: bool = False) -> dict:
    """One single-level fit (optionally refit on all of train), or a bi-level method's search then retraining.

    Returns what the final weights trained on: `train_rows` and, after a refit, `refit_epochs`."""
    if predictor.method.fit is not None:  # its own procedure (the probe's scikit-learn fit, on every training row)
        predictor.method.fit(predictor, datamodule, config, run_dir)
        return {"train_rows": len(datamodule.train)}
    standardise_on(predictor, datamodule.inner_train_df)
    if not predictor.method.bilevel:
        initial = initial_state(predictor) if refits(config.optim.refit, refit_default) else None
        best_epoch = train(PredictorModule(predictor, config.optim), config, run_dir,
                           Phase("fit", datamodule.train_dataloader(), datamodule.val_dataloader(), monitor, resume))
        if initial is None:
            return {"train_rows": len(datamodule.inner_train_df)}
        restore_initial(predictor, initial)
        standardise_on(predictor, datamodule.train)
        epochs = best_epoch + 1  # the best checkpoint's epoch is 0-based
        train(PredictorModule(predictor, replace(config.optim, max_epochs=epochs)), config, run_dir,
              Phase("refit", datamodule.full_train_dataloader(), resume=resume))
        return {"train_rows": len(datamodule.train), "refit_epochs": epochs}
    search = BiDoRAModule(predictor, config.optim, config.bilevel)
    # a fixed search budget (official protocol): inner_val trains the magnitudes, so it picks no epoch
    train(search, config, run_dir,
          Phase("search", datamodule.bilevel_dataloader(), datamodule.val_dataloader(), None, resume))
    if config.bilevel.retrain:
        reset_for_retraining(predictor, config.seed)
        standardise_on(predictor, datamodule.train)
        epochs = config.bilevel.retrain_epochs or config.optim.max_epochs
        optim = replace(config.optim, max_epochs=epochs, lr=config.bilevel.retrain_lr or config.optim.lr)
        orthogonality = config.bilevel.orthogonality if config.bilevel.retrain_orthogonality else 0.0
        train(RetrainModule(predictor, optim, orthogonality), config, run_dir,
              Phase("retrain", datamodule.full_train_dataloader()))
    # directions on inner_train, magnitudes on inner_val: every training row is used either way
    return {"train_rows": len(datamodule.train)}


def evaluate_run(predictor: ProteinPredictor, inner_val: pd.DataFrame, test: pd.DataFrame | None,
                 config: RunConfig, run_dir: Path, refit_default: bool = False, figures: bool = True) -> dict:
    """Validation and test metrics, the test predictions and the figures, at the training precision."""
    precision = inference_precision(config.trainer.precision)
    batch_size = config.data.batch_size
    cache = EmbeddingCache(config.cache) if config.cache.enabled else None
    val_scores = predict_scores(predictor, inner_val, batch_size, precision=precision, cache=cache)
    metrics = {"val": evaluate_frame(predictor, inner_val, batch_size=batch_size, scores=val_scores)}
    if predictor.method.bilevel and config.bilevel.retrain:
        metrics["val_note"] = "BiDoRA retrains on all training data, inner validation split included"
    elif predictor.method.fit is not None:
        metrics["val_note"] = f"{predictor.method.name} fits on all training rows, inner validation split included"
    elif refits(config.optim.refit, refit_default):
        metrics["val_note"] = "refit on all training data, inner validation split included"
    if test is not None:
        scores = scaled_scores(run_dir, predict_scores(predictor, test, batch_size, precision=precision, cache=cache))
        table, test_extra, extra = evaluated_predictions(predictor, run_dir, test, scores, config.uncertainty)
        metrics["test"] = evaluate_frame(predictor, test, batch_size=batch_size, scores=scores) | test_extra
        metrics |= extra
        write_csv_atomic(table, run_dir / "predictions.csv")
        if figures:
            plot_predictions(test["label"].to_numpy(), scores, predictor.problem_type, run_dir,
                             config.uncertainty.ece_bins)
    for curves in sorted((run_dir / "logs").glob("*/metrics.csv")):
        plot_training_curves(curves, run_dir / f"training_curves_{curves.parent.name}.png")
    return metrics


def run_record(predictor: ProteinPredictor, wall_time_s: float, ranks: dict | None) -> dict:
    """run.json: what the run cost, what it trained, and with which versions."""
    return {
        "wall_time_s": round(wall_time_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": count_trainable_saved(predictor),
        "backbone": predictor.backbone.architecture.name, "pretrained": predictor.backbone.pretrained,
        "torch": torch.__version__, "lightning": L.__version__,
        **({"distributed": ranks} if ranks else {}),
    }


def plot_predictions(y_true: np.ndarray, scores: np.ndarray, problem_type: str, run_dir: Path, ece_bins: int) -> None:
    """Test-set figures next to metrics.json: ROC + PR curves and the reliability diagram, or predicted vs true."""
    if problem_type == "classification":
        plot_roc_pr(y_true, scores, run_dir / "test_roc_pr.png")
        plot_reliability_diagram(y_true, scores, run_dir / "test_reliability.png", ece_bins)
    else:
        plot_regression_scatter(y_true, scores, run_dir / "test_scatter.png")


def class_labels(task: Task, train: pd.DataFrame) -> list:
    """The task's class names in index order (the data layer maps labels to 0..C−1)."""
    return list(task.classes) if task.problem_type == "classification" else []


def monitored_metric(config: RunConfig, task: Task) -> tuple[str, str]:
    metric = config.optim.monitor or task.primary_metric
    return f"val_{metric}", METRIC_DIRECTION.get(metric.removeprefix("val_"), "min" if "loss" in metric else "max")


def count_trainable_saved(predictor: ProteinPredictor) -> int:
    """Parameters the run trained (magnitudes frozen for retraining still count)."""
    if predictor.method.trains_backbone:
        return count_trainable(predictor)
    return sum(t.numel() for t in predictor.trainable_state().values())


def default_run_dir(config: RunConfig) -> Path:
    return Path(config.out) / rundir.default_name(config)
