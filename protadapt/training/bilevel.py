"""BiDoRA: DoRA trained by bi-level optimisation (methods.md), as a manual-optimisation module.

Lower level: directions V = {A, B} and the head minimise L_tr(V, M) + λ·R(V) on `inner_train`,
magnitudes M fixed. Upper level: M minimises L_val(V*(M), M) on `inner_val` through the DARTS
hypergradient (or its first-order variant). Each level has its own AdamW and schedule. Gradients
come from `torch.autograd.grad` over explicit parameter lists — no optimiser toggling, which
would freeze the very directions the hypergradient differentiates through — and are averaged
across processes by hand, so magnitudes and directions stay identical on every DDP rank.

Under Lightning's DDP strategy the module is still wrapped in DistributedDataParallel, but DDP's
reducer hooks fire only when a backward pass accumulates into `.grad`; `torch.autograd.grad`
bypasses them, so DDP neither reduces nor complains, and `average_across_processes` is the one
synchronisation (tests/test_ddp.py checks that every rank ends with the same magnitudes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from protadapt.adapters import linear_adapters
from protadapt.config import HYPERGRADIENTS, BilevelConfig, OptimConfig
from protadapt.model import ProteinPredictor
from protadapt.training.module import PredictorModule, decay_groups, warmup_schedule

Loss = Callable[[], torch.Tensor]


class BiDoRAModule(PredictorModule):
    """The search phase. Batches are `{"inner_train": batch, "inner_val": batch}`."""

    def __init__(self, predictor: ProteinPredictor, optim: OptimConfig, bilevel: BilevelConfig):
        super().__init__(predictor, optim)
        if not predictor.magnitude_parameters():
            raise ValueError("BiDoRA needs DoRA layers (method 'bidora'); this model has no magnitudes")
        if bilevel.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"unknown hypergradient '{bilevel.hypergradient}'; choose one of: {', '.join(HYPERGRADIENTS)}")
        self.bilevel = bilevel
        self.automatic_optimization = False

    def configure_optimizers(self):
        total = max(1, int(self.trainer.estimated_stepping_batches))
        lower = torch.optim.AdamW(decay_groups(self.predictor.direction_parameters(), self.optim.weight_decay),
                                  lr=self.optim.lr)
        upper = torch.optim.AdamW(self.predictor.magnitude_parameters(), lr=self.bilevel.arch_lr,
                                  weight_decay=self.bilevel.arch_weight_decay)
        upper_steps = max(1, total // self.bilevel.unroll_steps)
        return [lower, upper], [warmup_schedule(lower, self.optim, total), warmup_schedule(upper, self.optim, upper_steps)]

    def lower_objective(self, batch: dict) -> torch.Tensor:
        """L_tr + λ·R: task loss on inner_train plus the orthogonality regulariser."""
        loss = self.loss(self(batch["tokens"]), batch["labels"])
        if self.bilevel.orthogonality:
            loss = loss + self.bilevel.orthogonality * self.predictor.orthogonality_penalty()
        return loss

    def upper_objective(self, batch: dict) -> torch.Tensor:
        return self.loss(self(batch["tokens"]), batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        lower_opt, upper_opt = self.optimizers()
        lower_schedule, upper_schedule = self.lr_schedulers()
        directions = self.predictor.direction_parameters()
        magnitudes = self.predictor.magnitude_parameters()
        inner_train, inner_val = batch["inner_train"], batch["inner_val"]

        upper_now = (batch_idx + 1) % self.bilevel.unroll_steps == 0
        darts_now = upper_now and self.bilevel.hypergradient != "first_order"
        one_sided = self.bilevel.hypergradient == "darts_one_sided"
        upper_loss: Loss = lambda: self.upper_objective(inner_val)  # noqa: E731
        # DARTS needs ∇_V L_tr at the current V for its virtual step (and the one-sided difference
        # ∇_M L_tr there): take both from the lower step's pass (same batch, same dropout noise) and
        # evaluate the hypergradient before that step moves V.
        noise_seed = new_noise_seed() if darts_now else None
        with same_noise(noise_seed) if darts_now else contextlib.nullcontext():
            lower_loss = self.lower_objective(inner_train)
        wanted = directions + magnitudes if darts_now and one_sided else directions
        grads = torch.autograd.grad(lower_loss, wanted)
        lower_grads, centre_grads = list(grads[: len(directions)]), list(grads[len(directions):]) or None
        if darts_now:
            hyper = darts_hypergradient(
                lambda: self.lower_objective(inner_train), upper_loss, directions, magnitudes,
                lower_opt.param_groups[0]["lr"], one_sided=one_sided, train_grads=lower_grads,
                train_magnitude_grads=centre_grads, noise_seed=noise_seed,
                # ∇_M R(V) = 0: the finite-difference passes need the task loss only
                magnitude_lower_loss=lambda: self.loss(self(inner_train["tokens"]), inner_train["labels"]))
        self._step(lower_opt, directions, lower_grads)
        lower_schedule.step()
        logs = {"lower_loss": lower_loss.detach()}

        if upper_now:
            if not darts_now:
                hyper = first_order_hypergradient(upper_loss, magnitudes)
            self._step(upper_opt, magnitudes, hyper)
            upper_schedule.step()
        self.log_dict(logs, prog_bar=True, batch_size=len(inner_train["tokens"]))

    def _step(self, optimizer, parameters: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        for parameter, grad in zip(parameters, grads):
            parameter.grad = average_across_processes(grad.detach())
        self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def darts_hypergradient(lower_loss: Loss, upper_loss: Loss, directions: list[nn.Parameter],
                        magnitudes: list[nn.Parameter], xi: float, *, one_sided: bool = False,
                        train_grads: list[torch.Tensor] | None = None,
                        train_magnitude_grads: list[torch.Tensor] | None = None, noise_seed: int | None = None,
                        magnitude_lower_loss: Loss | None = None) -> list[torch.Tensor]:
    """∇_M L_val(V′, M) − ξ·[∇_M L_tr(V⁺, M) − ∇_M L_tr(V⁻, M)] / 2ε, with V′ = V − ξ∇_V L_tr,
    V± = V ± ε·∇_V′ L_val and ε = 0.01 / ‖∇_V′ L_val‖ (DARTS, Liu et al. 2019, eq. 7–8).

    `one_sided`: [∇_M L_tr(V⁺, M) − ∇_M L_tr(V, M)] / ε instead — first- rather than second-order
    accurate in ε, and one forward/backward pass fewer, because ∇_M L_tr at V comes with the lower
    step's own pass (`train_magnitude_grads`).

    All lower-loss evaluations see the same random numbers (dropout), so the finite difference
    measures the change of V alone. The directions are restored on return.

    Reuse, to save passes: `train_grads` = ∇_V L_tr(V) and `train_magnitude_grads` = ∇_M L_tr(V),
    already computed under `same_noise(noise_seed)`; `magnitude_lower_loss`, the part of L_tr that
    depends on M, for the passes at V± (e.g. without the orthogonality term).
    """
    if (train_grads is not None or train_magnitude_grads is not None) and noise_seed is None:
        raise ValueError("train_grads must come with the noise_seed they were computed under")
    original = [d.detach().clone() for d in directions]
    noise_seed = new_noise_seed() if noise_seed is None else noise_seed
    magnitude_lower_loss = magnitude_lower_loss or lower_loss
    try:
        if train_grads is None:
            with same_noise(noise_seed):
                train_grads = torch.autograd.grad(lower_loss(), directions)
        if one_sided and train_magnitude_grads is None:
            with same_noise(noise_seed):
                train_magnitude_grads = torch.autograd.grad(magnitude_lower_loss(), magnitudes)
        train_grads = [g.detach().clone() for g in train_grads]  # the caller may clip its copy in place
        _assign(directions, [o - xi * g for o, g in zip(original, train_grads)])  # V′

        val_grads = torch.autograd.grad(upper_loss(), magnitudes + directions, allow_unused=True)
        magnitude_grads = _zeros_for_none(val_grads[: len(magnitudes)], magnitudes)
        direction_grads = _zeros_for_none(val_grads[len(magnitudes):], directions)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in direction_grads))
        if norm == 0:
            return magnitude_grads
        eps = 0.01 / norm

        _assign(directions, [o + eps * g for o, g in zip(original, direction_grads)])  # V⁺
        with same_noise(noise_seed):
            plus = torch.autograd.grad(magnitude_lower_loss(), magnitudes)
        if one_sided:
            return [gm - xi * (p - c) / eps for gm, p, c in zip(magnitude_grads, plus, train_magnitude_grads)]
        _assign(directions, [o - eps * g for o, g in zip(original, direction_grads)])  # V⁻
        with same_noise(noise_seed):
            minus = torch.autograd.grad(magnitude_lower_loss(), magnitudes)
    finally:
        _assign(directions, original)
    return [gm - xi * (p - m) / (2 * eps) for gm, p, m in zip(magnitude_grads, plus, minus)]


def first_order_hypergradient(upper_loss: Loss, magnitudes: list[nn.Parameter]) -> list[torch.Tensor]:
    """ξ = 0: the magnitudes follow the validation gradient with directions held fixed."""
    return list(torch.autograd.grad(upper_loss(), magnitudes))


def reset_for_retraining(predictor: ProteinPredictor, seed: int) -> None:
    """BiDoRA's retrain phase: directions and head back to their initial state, magnitudes frozen."""
    magnitudes = predictor.magnitude_parameters()
    searched = [m.detach().clone() for m in magnitudes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in linear_adapters(predictor).values():
            layer.reset_parameters()
        for module in predictor.head.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    with torch.no_grad():
        for magnitude, value in zip(magnitudes, searched):
            magnitude.copy_(value)  # what the search found, kept bit for bit
            magnitude.requires_grad_(False)


def new_noise_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


def average_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


@contextlib.contextmanager
def same_noise(seed: int) -> Iterator[None]:
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def _assign(parameters: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    for parameter, value in zip(parameters, values):
        parameter.copy_(value)


def _zeros_for_none(grads, parameters) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, parameters)]
