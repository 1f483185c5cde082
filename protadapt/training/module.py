"""Single-level training (every method but BiDoRA's search) as a `LightningModule`.

The module holds the predictor and the step logic; data and splits come from the datamodule, and
the loop, progress bars, checkpoints, precision and DDP from the `Trainer`.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from protadapt.config import OptimConfig
from protadapt.evaluation.metrics import compute_metrics
from protadapt.model import ProteinPredictor


class PredictorModule(L.LightningModule):
    """Trains any single-level method (adapters, prompts, full, head): loss, steps, AdamW and its schedule."""

    def __init__(self, predictor: ProteinPredictor, optim: OptimConfig):
        super().__init__()
        self.predictor = predictor
        self.optim = optim
        self.problem_type = predictor.head_config.problem_type
        self.strict_loading = False  # checkpoints hold trainable tensors only, not the frozen backbone
        self._outputs: dict[str, list] = {}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.predictor(tokens)

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.problem_type == "classification":
            return F.cross_entropy(output.float(), labels.long())
        scale = self.predictor.head_config.target_scale  # MSE of standardised targets (HeadConfig)
        return F.mse_loss(output.float() / scale, labels.float() / scale)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["tokens"]), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["tokens"]), sync_dist=True)
        return loss

    # ------------------------------------------------------------ evaluation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def _collect(self, stage: str, batch: dict) -> None:
        output = self(batch["tokens"])
        loss = self.loss(output, batch["labels"])
        self._outputs.setdefault(stage, []).append(
            (loss.detach() * len(output), self.predictor.scores(output).detach(), batch["labels"].detach()))

    def _log_metrics(self, stage: str) -> None:
        outputs = self._outputs.pop(stage, [])
        if not outputs:
            return
        total = torch.stack([o[0] for o in outputs]).sum()
        count = sum(len(o[2]) for o in outputs)
        y_score = gather_rows(self, torch.cat([o[1] for o in outputs]))
        y_true = gather_rows(self, torch.cat([o[2] for o in outputs]))
        metrics = compute_metrics(self.problem_type, y_true.cpu().numpy(), y_score.float().cpu().numpy())
        logged = {f"{stage}_loss": total / count}
        logged.update({f"{stage}_{k}": float(v) for k, v in metrics.items() if np.isfinite(v)})
        self.log_dict(logged, prog_bar=stage == "val", sync_dist=False, rank_zero_only=False)

    def configure_model(self) -> None:
        """Under `trainer.strategy=fsdp` the strategy shards the predictor here (training/fsdp.py)."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None:
            shard(self.predictor)

    # ------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        parameters = [p for p in self.predictor.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(decay_groups(parameters, self.optim.weight_decay), lr=self.optim.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": warmup_schedule(optimizer, self.optim, total), "interval": "step"}}

    # ------------------------------------------------------------ lean checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"predictor.{k}" for k in self.predictor.trainable_state()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}


def gather_rows(module: L.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors of different lengths (evaluation under DDP)."""
    if module.trainer.world_size == 1:
        return tensor
    sizes = module.all_gather(torch.tensor(len(tensor), device=tensor.device)).reshape(-1)
    padded = tensor.new_zeros((int(sizes.max()), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = module.all_gather(padded)
    return torch.cat([gathered[rank, : int(size)] for rank, size in enumerate(sizes)])


def decay_groups(parameters: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and magnitude vectors are not decayed."""
    matrices = [p for p in parameters if p.dim() >= 2]
    vectors = [p for p in parameters if p.dim() < 2]
    return [g for g in ({"params": matrices, "weight_decay": weight_decay},
                        {"params": vectors, "weight_decay": 0.0}) if g["params"]]


def warmup_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine, linear or constant decay.

    `optim.schedule` is one of `config.SCHEDULES`: `check_choices` rejected anything else at load."""
    warmup = int(optim.warmup_fraction * total_steps)
    kind = optim.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
