"""Exact `--resume`: what a checkpoint must hold beyond Lightning's own, and Ctrl-C / SIGTERM.

Lightning keeps model, optimisers, schedules and callback states; `EpochCheckpoint` adds the RNG
states and writes `last.ckpt` atomically at the end of EVERY epoch (Lightning's `save_last`
follows the best checkpoint only), and drives the bucketed batch sampler's epoch, which Lightning
never sets (it calls `set_epoch` on `sampler` and `batch_sampler.sampler` only). A resumed run
therefore continues from the last finished epoch with the same batches and random numbers as an
uninterrupted one; work since that epoch ended is redone.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import Checkpoint

from protadapt.config import ConfigError, RunConfig
from protadapt.files import write_csv_atomic, write_text_atomic
from protadapt.rundir import RunInterrupted, is_rank_zero

SAVED_CONFIG = "resume-config.yaml"
IGNORED_KEYS = {"quiet", "out", "progress"}  # settings that change nothing a resumed run computes


class EpochCheckpoint(Checkpoint):
    """`last.ckpt` after every epoch, with RNG states; the batch sampler's epoch set by the trainer.

    A `Checkpoint`, so Lightning runs it after the other callbacks' epoch-end hooks: listed after the
    best-model `ModelCheckpoint` and `EarlyStopping`, the states it saves include this epoch's."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def state_dict(self) -> dict:
        return {"rng": rng_states()}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:  # restored before the first resumed batch is drawn
            set_rng_states(state["rng"])

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for loader in trainer.fit_loop._combined_loader.flattened:
            sampler = getattr(loader, "batch_sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(temporary, weights_only=False)
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
        trainer.strategy.barrier()


FINISHED = "finished"  # checkpoints/PHASE/finished: the phase's fit returned (early stopping included)


def finished(folder: Path) -> bool:
    return (folder / FINISHED).is_file()


def mark_finished(folder: Path, trainer: L.Trainer) -> None:
    """Written after a phase's fit returns, so a resume never trains a finished (early-stopped) phase again."""
    if trainer.is_global_zero and not trainer.interrupted:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FINISHED).write_text(f"epoch {trainer.current_epoch}\n")


def restore_finished(module: L.LightningModule, last: Path) -> int:
    """A finished phase on --resume: the weights and RNG states it ended with, not a new fit."""
    state = torch.load(last, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=False)
    for callback_state in state.get("callbacks", {}).values():
        if isinstance(callback_state, dict) and "rng" in callback_state:
            set_rng_states(callback_state["rng"])
    return int(state["epoch"])


def rng_states() -> dict:
    """Every generator's state in types a weights-only checkpoint load accepts (no numpy objects)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]
    states = {"python": list(random.getstate()), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `RunInterrupted` (the CLI prints the resume hint and exits 130)."""
    def interrupt(signum, frame):
        raise RunInterrupted(signal.Signals(signum).name)

    try:
        previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_resume_config(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """`--resume` keeps the settings the run started with: others are one line naming the key."""
    path = run_dir / "checkpoints" / SAVED_CONFIG
    if not (resume and path.is_file()):
        return
    saved, current = flatten(yaml.safe_load(path.read_text()) or {}), flatten(config.to_dict())
    for key in sorted(set(saved) | set(current)):
        if key.split(".")[0] not in IGNORED_KEYS and saved.get(key) != current.get(key):
            raise ConfigError(f"{run_dir}: --resume with {key}={current.get(key)}, but the run was started "
                              f"with {key}={saved.get(key)}; resume with the same settings, or --overwrite")


def save_resume_config(run_dir: Path, config: RunConfig) -> None:
    """The settings `--resume` must match, kept from the start (config.yaml is written at the end)."""
    if not is_rank_zero():  # DDP: rank 0 keeps the run's files
        return
    path = run_dir / "checkpoints" / SAVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), path)


def flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextlib.contextmanager
def continue_log(metrics_csv: Path, resuming: bool) -> Iterator[None]:
    """CSVLogger starts its file afresh; on --resume, put back the rows logged before the checkpoint.

    The earlier rows are first kept in `.earlier.csv` beside the log, so a resumed fit killed again
    (kill -9: no `finally`) loses nothing: the next resume merges that file in."""
    sidecar = metrics_csv.with_name(".earlier.csv")
    earlier = None
    if resuming:
        earlier = merge_rows(read_rows(sidecar), read_rows(metrics_csv))
        if earlier is not None:
            write_csv_atomic(earlier, sidecar)
    try:
        yield
    finally:  # also when the resumed fit is interrupted again
        if earlier is not None:
            merged = merge_rows(earlier, read_rows(metrics_csv))
            write_csv_atomic(merged, metrics_csv)
            sidecar.unlink(missing_ok=True)


def read_rows(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else None


def merge_rows(earlier: pd.DataFrame | None, later: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of `earlier` before the first step of `later` (an epoch cut short is logged again), then `later`."""
    if earlier is None or "step" not in earlier or later is None or not len(later):
        return later if earlier is None else earlier
    return pd.concat([earlier[earlier["step"] < later["step"].min()], later], ignore_index=True)
