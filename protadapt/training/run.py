"""`fit` and `cross_validate`: a RunConfig in, a run directory with weights and metrics out.

A run directory holds `config.yaml` (resolved), `adapter.safetensors` + `adapter.json` (head
included), `metrics.json` (validation and test), `predictions.csv` (test set), `run.json`
(wall time, memory, parameter counts, versions), `logs/` (Lightning CSV logs, and TensorBoard
event files with `trainer.logger=csv,tensorboard`) and `checkpoints/` (for `--resume`).

Under DDP every process runs `fit`; the processes train together, and afterwards only global
rank 0 evaluates and writes files, so a run directory is written once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import CombinedLoader

from protadapt.adapters import count_trainable
from protadapt.backbones import load_backbone
from protadapt.config import ConfigError, DataConfig, RunConfig, check_choices
from protadapt.data.datamodule import ProteinDataModule
from protadapt.data.io import write_csv_atomic
from protadapt.data.splits import identity_groups, kfold_splits
from protadapt.data.tasks import Task, custom_task, get_task
from protadapt.evaluation.metrics import METRIC_DIRECTION
from protadapt.evaluation.plots import plot_regression_scatter, plot_roc_pr, plot_training_curves
from protadapt.heads import ProteinPredictor
from protadapt.inference import evaluate_frame, prediction_frame, predict_scores
from protadapt.training.bilevel import BiDoRAModule, RetrainModule, reset_for_retraining
from protadapt.training.module import AdapterModule

log = logging.getLogger(__name__)

# Lightning/torch messages that say nothing to a protadapt user: epoch metrics are computed from
# rows gathered over all ranks (the same on each), and the rest are deprecations inside Lightning.
NOISE = (".*when logging on epoch level in distributed setting.*",
         ".*torch.distributed.nn.functional.all_gather is deprecated.*",
         ".*isinstance\\(treespec, LeafSpec\\).* is deprecated.*",
         ".*You defined a `validation_step` but have no `val_dataloader`.*")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # empty on DDP ranks other than 0, which write nothing
    is_global_zero: bool = True


def fit(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
        train: pd.DataFrame | None = None, test: pd.DataFrame | None = None) -> RunResult:
    """Train one model and write its run directory; `train`/`test` override the task's split."""
    started = time.perf_counter()
    check_choices(config)
    task = resolve_task(config.data)
    if train is None:
        frame = task.load()
        train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    run_dir = Path(run_dir or default_run_dir(config))
    L.seed_everything(config.seed, workers=True, verbose=False)

    predictor = build_predictor(config, task, train)  # before the run directory: a missing backbone leaves nothing
    run_dir.mkdir(parents=True, exist_ok=True)
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NOISE[2])
            loaders = CombinedLoader({"inner_train": datamodule.inner_train_dataloader(),
                                      "inner_val": datamodule.inner_val_dataloader()}, mode="max_size_cycle")
        # a fixed search budget (official protocol): inner_val trains the magnitudes, so it picks no epoch
        _train(search, config, run_dir, "search", loaders, datamodule.val_dataloader(), None, None, resume)
        if config.bilevel.retrain:
            reset_for_retraining(predictor, config.seed)
            epochs = config.bilevel.retrain_epochs or config.optim.max_epochs
            retrain_optim = replace(config.optim, max_epochs=epochs, lr=config.bilevel.retrain_lr or config.optim.lr)
            orthogonality = config.bilevel.orthogonality if config.bilevel.retrain_orthogonality else 0.0
            _train(RetrainModule(predictor, retrain_optim, orthogonality), config, run_dir, "retrain",
                   datamodule.full_train_dataloader(), None, None, None, resume=False)
    else:
        _train(AdapterModule(predictor, config.optim), config, run_dir, "fit", datamodule.train_dataloader(),
               datamodule.val_dataloader(), monitor, mode, resume)
    ranks = ranks_agree(predictor)
    if global_rank() != 0:  # DDP: the weights are identical on every rank; rank 0 writes them
        return RunResult(run_dir, {}, is_global_zero=False)

    metadata = {"task": task.name, "problem_type": task.problem_type, "labels": class_labels(task, train),
                "seed": config.seed}
    predictor.save(run_dir, metadata)
    config.save(run_dir / "config.yaml")
    precision = inference_precision(config.trainer.precision)
    metrics = {"val": evaluate_frame(predictor, datamodule.inner_val_df, task.problem_type, config.data.batch_size,
                                     precision=precision)}
    if config.adapter.method == "bidora" and config.bilevel.retrain:
        metrics["val_note"] = "BiDoRA retrains on all training data, inner validation split included"
    if test is not None and not test.empty:
        test = test.reset_index(drop=True)
        scores = predict_scores(predictor, test, config.data.batch_size, precision=precision)
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
        **({"distributed": ranks} if ranks else {}),
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


def global_rank() -> int:
    """This process's rank in an initialised torch.distributed group (DDP), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and float32 bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().float().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(predictor: ProteinPredictor) -> dict | None:
    """Under DDP: digests of every rank's trained tensors, gathered; an error if any rank differs.

    Returns None in a single process, else {"world_size", "trained_sha256", "magnitudes_sha256"}.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    state = predictor.trainable_state()
    magnitudes = {k: v for k, v in state.items() if k.endswith("magnitude")}
    mine = (state_digest(state), state_digest(magnitudes))
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    if len(set(gathered)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights ({len(set(gathered))} distinct states); "
                           "please report this with `protadapt doctor` output")
    return {"world_size": len(gathered), "trained_sha256": [g[0] for g in gathered],
            "magnitudes_sha256": [g[1] for g in gathered] if magnitudes else []}


def make_loggers(config: RunConfig, run_dir: Path, phase: str) -> list[Logger]:
    """`trainer.logger`: csv (default), tensorboard, or both as `csv,tensorboard`; none with `none`.

    The names were checked by `check_choices` before the run started."""
    names = [name.strip() for name in config.trainer.logger.split(",") if name.strip() != "none"]
    loggers: list[Logger] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(run_dir, name="logs", version=phase))
        else:
            try:
                from lightning.pytorch.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(run_dir, name="logs", version=phase, default_hp_metric=False))
            except ModuleNotFoundError:
                raise ConfigError("trainer.logger=tensorboard needs the tensorboard package: pip install tensorboard") from None
    return loggers


def quiet_lightning(quiet: bool) -> None:
    """Lightning's info lines ("GPU available: ...", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES") off when quiet."""
    if quiet:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)


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
    quiet_lightning(config.quiet)
    trainer = L.Trainer(
        max_epochs=module.optim.max_epochs, callbacks=callbacks,
        logger=make_loggers(config, run_dir, phase) or False,
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
        for noise in NOISE:
            warnings.filterwarnings("ignore", message=noise)
        if config.quiet or resume:
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        resuming = resume and last.exists()
        with keep_earlier_logs(run_dir / "logs" / phase / "metrics.csv", resuming):
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                        ckpt_path=str(last) if resuming else None)
    epoch = trainer.current_epoch
    if monitor and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"], strict=False)
        epoch = int(state["epoch"])
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU: evaluate where it trained
    return epoch


def inference_precision(trainer_precision: str | int) -> str:
    """The autocast dtype of Lightning's precision setting, for the run's own evaluation."""
    text = str(trainer_precision)
    return "bf16" if text.startswith("bf16") else "fp16" if text.startswith("16") else "32"


@contextlib.contextmanager
def keep_earlier_logs(metrics_csv: Path, resuming: bool) -> Iterator[None]:
    """CSVLogger starts its file afresh; on --resume, put back the rows logged before the checkpoint."""
    earlier = pd.read_csv(metrics_csv) if resuming and metrics_csv.is_file() and metrics_csv.stat().st_size else None
    try:
        yield
    finally:  # also when the resumed fit is interrupted again
        if earlier is not None and "step" in earlier:
            later = pd.read_csv(metrics_csv) if metrics_csv.is_file() and metrics_csv.stat().st_size else earlier[:0]
            if len(later):  # rows past the checkpoint (an epoch cut short) were logged again after it
                earlier = earlier[earlier["step"] < later["step"].min()]
            write_csv_atomic(pd.concat([earlier, later], ignore_index=True), metrics_csv)


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
    from tqdm.auto import tqdm

    progress = tqdm(list(splits), desc="cv folds", unit="fold", disable=config.quiet or global_rank() != 0)
    for number, (train_idx, test_idx) in enumerate(progress):
        repeat, fold = divmod(number, folds)
        result = fit(config, out / f"repeat{repeat}-fold{fold}",
                     train=train.iloc[train_idx], test=train.iloc[test_idx])
        if result.is_global_zero:
            rows.append({"repeat": repeat, "fold": fold, **result.metrics["test"]})
    if global_rank() != 0:
        return pd.DataFrame(rows)
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
