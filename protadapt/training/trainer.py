"""One Lightning fit of one phase: trainer set-up, loggers, warning filters, checkpoints, resume.

The messages filtered here say nothing to a protadapt user: epoch metrics are computed from rows
gathered over all ranks (the same on each), and the rest are deprecations inside Lightning.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from protadapt.config import ConfigError, RunConfig
from protadapt.training.module import PredictorModule
from protadapt.training.progress import progress_bars, progress_callbacks
from protadapt.training.resume import EpochCheckpoint, continue_log, finished, mark_finished, restore_finished

NOISE = (".*when logging on epoch level in distributed setting.*",
         ".*torch.distributed.nn.functional.all_gather is deprecated.*",
         ".*isinstance\\(treespec, LeafSpec\\).* is deprecated.*",
         ".*You defined a `validation_step` but have no `val_dataloader`.*",
         ".*does not have many workers.*",
         ".*The number of training batches.*")


@dataclass
class Phase:
    """One training phase: its name (checkpoints/<name>, logs/<name>), loaders, and what it monitors."""

    name: str
    train_loader: object
    val_loader: object = None
    monitor: tuple[str, str] | None = None  # (logged metric, "min" | "max"): early stopping and the best checkpoint
    resume: bool = False


def train(module: PredictorModule, config: RunConfig, run_dir: Path, phase: Phase) -> int:
    """Run one Lightning fit; load the best checkpoint when the phase monitors a metric; return its epoch."""
    metric, mode = phase.monitor or (None, "min")
    folder = run_dir / "checkpoints" / phase.name
    last = folder / "last.ckpt"
    callbacks = progress_callbacks(config)
    if metric:
        callbacks += [EarlyStopping(monitor=metric, mode=mode, patience=config.optim.patience),
                      ModelCheckpoint(dirpath=folder, filename="best", monitor=metric, mode=mode, save_top_k=1,
                                      enable_version_counter=False)]
    callbacks.append(EpochCheckpoint(last))  # last: its checkpoint holds the others' states of this epoch
    prepare_backbone(module, config)
    resuming = phase.resume and last.exists()
    trainer = make_trainer(module, config, run_dir, phase.name, callbacks)
    if resuming and finished(folder):  # this phase ended before the interruption: its last state, its RNG
        epoch = restore_finished(module, last)
    else:
        with warnings.catch_warnings(), packed_while_training(module.predictor.backbone, config.data.packing):
            for noise in NOISE:
                warnings.filterwarnings("ignore", message=noise)
            if config.quiet or phase.resume:
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            with continue_log(run_dir / "logs" / phase.name / "metrics.csv", resuming):
                trainer.fit(module, train_dataloaders=phase.train_loader, val_dataloaders=phase.val_loader,
                            ckpt_path=str(last) if resuming else None, weights_only=True)
        mark_finished(folder, trainer)
        epoch = trainer.current_epoch
    if metric and (folder / "best.ckpt").is_file():
        state = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"], strict=False)
        epoch = int(state["epoch"])
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU: evaluate where it trained
    return epoch


def prepare_backbone(module: PredictorModule, config: RunConfig) -> None:
    """`trainer.checkpointing` and `trainer.compile` on the module's backbone (compiled once, in place:
    `nn.Module.compile` keeps the parameter names, so checkpoints and saved adapters are unchanged)."""
    backbone = module.predictor.backbone
    backbone.checkpointing = config.trainer.checkpointing
    if config.trainer.compile and getattr(backbone, "_compiled_call_impl", None) is None:
        backbone.compile()


@contextlib.contextmanager
def packed_while_training(backbone, packing: str) -> Iterator[None]:
    """`data.packing` for the training loop only (its steps and validation): scoring after it — calibration,
    evaluation, `predict` — runs padded, so a run's saved predictions are the bits `predict` reproduces."""
    backbone.packing = packing  # read by ESM-2 backbones (backbones/packing.py), ignored by others
    try:
        yield
    finally:
        backbone.packing = "off"


def make_trainer(module: PredictorModule, config: RunConfig, run_dir: Path, phase: str, callbacks: list) -> L.Trainer:
    """A `lightning.Trainer` from the run's trainer settings (gradient clipping by hand in manual optimisation)."""
    quiet_lightning(config.quiet)
    manual = not module.automatic_optimization
    return L.Trainer(
        max_epochs=module.optim.max_epochs, callbacks=callbacks,
        logger=make_loggers(config, run_dir, phase) or False,
        enable_progress_bar=progress_bars(config), enable_model_summary=False,
        gradient_clip_val=None if manual else module.optim.grad_clip,
        accelerator=config.trainer.accelerator, devices=config.trainer.devices, strategy=make_strategy(config),
        num_nodes=config.trainer.num_nodes, precision=config.trainer.precision,
        deterministic=config.trainer.deterministic, log_every_n_steps=config.trainer.log_every_n_steps,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )


def make_strategy(config: RunConfig):
    """`trainer.strategy` for Lightning: `fsdp` is protadapt's FSDP2 strategy (training/fsdp.py), anything else a name."""
    if config.trainer.strategy != "fsdp":
        return config.trainer.strategy
    from protadapt.training import fsdp

    return fsdp.make_strategy(config)


def make_loggers(config: RunConfig, run_dir: Path, phase: str) -> list[Logger]:
    """`trainer.logger`: csv (default), tensorboard, or both as `csv,tensorboard`; none with `none`.

    The names were checked by `check_choices` when the config was loaded."""
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


def inference_precision(trainer_precision: str | int) -> str:
    """The autocast dtype of Lightning's precision setting, for the run's own evaluation."""
    text = str(trainer_precision)
    return "bf16" if text.startswith("bf16") else "fp16" if text.startswith("16") else "32"


