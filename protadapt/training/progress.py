"""Training progress: Lightning's bars on a terminal, one plain line per epoch elsewhere.

A log file or CI console fed with `\\r` bars grows by megabytes; `--progress` (config `progress`)
forces the bars anyway, `--quiet` shows neither.
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import Callback

from protadapt.config import RunConfig


def progress_bars(config: RunConfig) -> bool:
    """Lightning's bars: on a terminal, or when asked for with --progress; never when quiet."""
    return not config.quiet and (config.progress or sys.stderr.isatty())


def progress_callbacks(config: RunConfig) -> list[Callback]:
    return [] if config.quiet or progress_bars(config) else [EpochLines()]


class EpochLines(Callback):
    """`epoch 3/20 train_loss=0.512 val_auroc=0.731` on stderr after each epoch (rank 0 only)."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        values = " ".join(f"{name}={float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items())
                          if getattr(value, "numel", lambda: 1)() == 1)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {values}".rstrip(), file=sys.stderr, flush=True)
