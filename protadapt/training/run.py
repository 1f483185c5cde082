"""`fit` and `cross_validate`: a RunConfig in, a run directory with weights and metrics out.

A run directory holds `config.yaml` (resolved), `adapter.safetensors` + `adapter.json` (head
included), `metrics.json` (validation and test), `predictions.csv` (test set), `run.json`
(wall time, memory, parameter counts, versions), `logs/` (Lightning CSV logs) and `checkpoints/`
(for `--resume`).
"""

from __future__ import annotations

import json
import logging
import resource
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import CombinedLoader

from protadapt.adapters import count_trainable
from protadapt.backbones import load_backbone
from protadapt.config import ConfigError, DataConfig, RunConfig
from protadapt.data.datamodule import ProteinDataModule
from protadapt.data.io import write_csv_atomic
from protadapt.data.splits import identity_groups, kfold_splits
from protadapt.data.tasks import Task, custom_task, get_task
from protadapt.evaluation.metrics import METRIC_DIRECTION
from protadapt.evaluation.plots import plot_regression_scatter, plot_roc_pr, plot_training_curves
from protadapt.heads import HeadConfig, ProteinPredictor
from protadapt.inference import evaluate_frame, prediction_frame, predict_scores
from protadapt.training.bilevel import BiDoRAModule, reset_for_retraining
from protadapt.training.module import AdapterModule

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict


def fit(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
        train: pd.DataFrame | None = None, test: pd.DataFrame | None = None) -> RunResult:
    """Train one model and write its run directory; `train`/`test` override the task's split."""
    started = time.perf_counter()
    task = resolve_task(config.data)
    if train is None:
        frame = task.load()
        train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    run_dir = Path(run_dir or default_run_dir(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)

    predictor = build_predictor(config, task, train)
    groups = identity_groups(train["sequence"].tolist(), config.data.identity_threshold) \
        if config.data.identity_threshold else None
    datamodule = ProteinDataModule(
        predictor.backbone.alphabet, train=train.reset_index(drop=True),
        test=None if test is None or test.empty else test.reset_index(drop=True),
        problem_type=task.problem_type, batch_size=config.data.batch_size, val_fraction=config.data.val_fraction,
        seed=config.seed, groups=groups, num_workers=config.data.num_workers)
    datamodule.setup("fit")

    monitor, mode = monitored_metric(config, task)
    if config.adapter.method == "bidora":
        search = BiDoRAModule(predictor, config.optim, config.bilevel)
        loaders = CombinedLoader({"inner_train": datamodule.inner_train_dataloader(),
                                  "inner_val": datamodule.inner_val_dataloader()}, mode="max_size_cycle")
        best_epoch = _train(search, config, run_dir, "search", loaders, datamodule.val_dataloader(),
                            monitor, mode, resume)
        if config.bilevel.retrain:
            reset_for_retraining(predictor, config.seed)
            epochs = config.bilevel.retrain_epochs or best_epoch + 1
            retrain_optim = replace(config.optim, max_epochs=epochs, lr=config.bilevel.retrain_lr or config.optim.lr)
            _train(AdapterModule(predictor, retrain_optim), config, run_dir, "retrain",
                   datamodule.full_train_dataloader(), None, None, None, resume=False)
    else:
        _train(AdapterModule(predictor, config.optim), config, run_dir, "fit", datamodule.train_dataloader(),
               datamodule.val_dataloader(), monitor, mode, resume)

    metadata = {"task": task.name, "problem_type": task.problem_type, "labels": class_labels(task, train),
                "seed": config.seed}
    predictor.save(run_dir, metadata)
    config.save(run_dir / "config.yaml")
    metrics = {"val": evaluate_frame(predictor, datamodule.inner_val_df, task.problem_type, config.data.batch_size)}
    if config.adapter.method == "bidora" and config.bilevel.retrain:
        metrics["val_note"] = "BiDoRA retrains on all training data, inner validation split included"
    if test is not None and not test.empty:
        test = test.reset_index(drop=True)
        scores = predict_scores(predictor, test, config.data.batch_size)
        metrics["test"] = evaluate_frame(predictor, test, task.problem_type, config.data.batch_size, scores=scores)
        write_csv_atomic(prediction_frame(test, scores, task.problem_type, metadata["labels"]), run_dir / "predictions.csv")
        plot_predictions(test["label"].to_numpy(), scores, task.problem_type, run_dir)
    for curves in sorted((run_dir / "logs").glob("*/metrics.csv")):
        plot_training_curves(curves, run_dir / f"training_curves_{curves.parent.name}.png")
    _write_json(run_dir / "metrics.json", metrics)
    _write_json(run_dir / "run.json", {
        "wall_time_s": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": count_trainable_saved(predictor),
        "backbone": predictor.backbone.architecture.name, "pretrained": predictor.backbone.pretrained,
        "torch": torch.__version__, "lightning": L.__version__,
    })
    return RunResult(run_dir, metrics)


def resolve_task(data: DataConfig) -> Task:
    if data.task != "custom":
        return get_task(data.task)
    if not data.train_file:
        raise ConfigError("the custom task needs a labelled file: data.train_file=PATH (CSV, TSV or FASTA)")
    return custom_task(data.train_file, problem_type=data.problem_type, test_path=data.test_file,
                       truncate=data.truncate)


def plot_predictions(y_true: np.ndarray, scores: np.ndarray, problem_type: str, run_dir: Path) -> None:
    """Test-set figures next to metrics.json: ROC + PR curves, or predicted vs true."""
    if problem_type == "classification":
        plot_roc_pr(y_true, scores, run_dir / "test_roc_pr.png")
    else:
        plot_regression_scatter(y_true, scores, run_dir / "test_scatter.png")


def build_predictor(config: RunConfig, task: Task, train: pd.DataFrame) -> ProteinPredictor:
    backbone = load_backbone(config.backbone, random_init=config.random_init)
    head = replace(config.head, problem_type=task.problem_type,
                   num_classes=max(2, len(class_labels(task, train))) if task.problem_type == "classification" else 1)
    return ProteinPredictor(backbone, head, config.adapter)


def class_labels(task: Task, train: pd.DataFrame) -> list:
    """Classes as 0..C−1; any other labelling is a one-line error, not a silent remap."""
    if task.problem_type != "classification":
        return []
    present = sorted(int(v) for v in pd.unique(train["label"]))
    expected = list(range(max(present) + 1))
    if present != expected:
        raise ValueError(f"task {task.name}: class labels must be 0..C-1, found {present}")
    return expected


def monitored_metric(config: RunConfig, task: Task) -> tuple[str, str]:
    metric = config.optim.monitor or task.primary_metric
    return f"val_{metric}", METRIC_DIRECTION.get(metric.removeprefix("val_"), "min" if "loss" in metric else "max")


def count_trainable_saved(predictor: ProteinPredictor) -> int:
    """Parameters the run trained (magnitudes frozen for retraining still count)."""
    return sum(t.numel() for t in predictor.trainable_state().values()) if predictor.adapter_config.method != "full" \
        else count_trainable(predictor)


def default_run_dir(config: RunConfig) -> Path:
    return Path(config.out) / f"{config.data.task}-{config.adapter.method}-seed{config.seed}"


def _train(module: AdapterModule, config: RunConfig, run_dir: Path, phase: str, train_loader, val_loader,
           monitor: str | None, mode: str | None, resume: bool) -> int:
    """Run one Lightning fit; load the best checkpoint when a monitor is given; return its epoch."""
    callbacks = []
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints" / phase, filename="best",
                                 monitor=monitor, mode=mode or "min", save_top_k=1 if monitor else 0, save_last=True)
    callbacks.append(checkpoint)
    if monitor:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=config.optim.patience))
    manual = not module.automatic_optimization
    trainer = L.Trainer(
        max_epochs=module.optim.max_epochs, callbacks=callbacks,
        logger=CSVLogger(run_dir, name="logs", version=phase),
        enable_progress_bar=not config.quiet, enable_model_summary=False,
        gradient_clip_val=None if manual else module.optim.grad_clip,
        accelerator=config.trainer.accelerator, devices=config.trainer.devices, strategy=config.trainer.strategy,
        num_nodes=config.trainer.num_nodes, precision=config.trainer.precision,
        deterministic=config.trainer.deterministic, log_every_n_steps=config.trainer.log_every_n_steps,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    last = run_dir / "checkpoints" / phase / "last.ckpt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                    ckpt_path=str(last) if resume and last.exists() else None)
    if not monitor or not checkpoint.best_model_path:
        return trainer.current_epoch
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"], strict=False)
    return int(state["epoch"])


def cross_validate(config: RunConfig, folds: int = 5, repeats: int = 1, out: str | Path | None = None) -> pd.DataFrame:
    """k-fold (× repeats) CV on the task's training split; each fold does its own inner split."""
    task = resolve_task(config.data)
    frame = task.load()
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    groups = identity_groups(train["sequence"].tolist(), config.data.identity_threshold) \
        if config.data.identity_threshold else None
    out = Path(out or Path(config.out) / f"cv-{task.name}-{config.adapter.method}-seed{config.seed}")
    rows = []
    splits = kfold_splits(train["label"].to_numpy(), folds, repeats=repeats, seed=config.seed,
                          problem_type=task.problem_type, groups=groups)
    for number, (train_idx, test_idx) in enumerate(splits):
        repeat, fold = divmod(number, folds)
        result = fit(config, out / f"repeat{repeat}-fold{fold}",
                     train=train.iloc[train_idx], test=train.iloc[test_idx])
        rows.append({"repeat": repeat, "fold": fold, **result.metrics["test"]})
    table = pd.DataFrame(rows)
    write_csv_atomic(table, out / "folds.csv")
    summary = summarise_folds(table)
    write_csv_atomic(summary, out / "summary.csv")
    (out / "summary.md").write_text(summary_markdown(summary, task, config, folds, repeats))
    return table


def summarise_folds(table: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in table.columns if c not in ("repeat", "fold")]
    return pd.DataFrame({"metric": metrics, "mean": [table[m].mean() for m in metrics],
                         "sd": [table[m].std(ddof=1) for m in metrics], "n": len(table)})


def summary_markdown(summary: pd.DataFrame, task: Task, config: RunConfig, folds: int, repeats: int) -> str:
    lines = [f"# Cross-validation: {task.name}, {config.adapter.method}",
             "", f"{folds} folds × {repeats} repeat(s), seed {config.seed}, backbone {config.backbone}"
             f"{' (random init)' if config.random_init else ''}.", "", "| metric | mean ± sd |", "|---|---|"]
    lines += [f"| {r.metric} | {r.mean:.4f} ± {r.sd:.4f} |" for r in summary.itertuples()]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=_json_number) + "\n")


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
