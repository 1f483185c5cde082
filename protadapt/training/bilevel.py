"""BiDoRA: DoRA trained by bi-level optimisation (methods.md), as a manual-optimisation module.

Lower level: directions V = {A, B} and the head minimise L_tr(V, M) + λ·R(V) on `inner_train`,
magnitudes M fixed. Upper level: M minimises L_val(V*(M), M) on `inner_val` through a
hypergradient: Betty's `darts` (the official one), its one-sided form, the DARTS paper's unrolled
estimator, or the first-order ablation. Each level has its own AdamW and schedule. Gradients
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
        upper = torch.optim.AdamW(self.predictor.magnitude_parameters(), lr=self.bilevel.magnitude_lr,
                                  weight_decay=self.bilevel.magnitude_weight_decay)
        upper_steps = max(1, total // self.bilevel.unroll_steps)
        return [lower, upper], [warmup_schedule(lower, self.optim, total), warmup_schedule(upper, self.optim, upper_steps)]

    def lower_objective(self, batch: dict) -> torch.Tensor:
        """L_tr + λ·R: task loss on inner_train plus the orthogonality regulariser."""
        return with_orthogonality(self.loss(self(batch["tokens"]), batch["labels"]), self.predictor,
                                  self.bilevel.orthogonality)

    def upper_objective(self, batch: dict) -> torch.Tensor:
        return self.loss(self(batch["tokens"]), batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        lower_opt, upper_opt = self.optimizers()
        lower_schedule, upper_schedule = self.lr_schedulers()
        directions = self.predictor.direction_parameters()
        magnitudes = self.predictor.magnitude_parameters()
        inner_train, inner_val = batch["inner_train"], batch["inner_val"]

        upper_now = (batch_idx + 1) % self.bilevel.unroll_steps == 0
        # darts_unrolled (virtual step V − ξ∇_V L_tr) and darts_one_sided (∇_M L_tr at the centre)
        # take what they need from the lower step's own pass (same batch, same dropout noise), so
        # they are evaluated at V before the lower step moves it; darts and first_order, like Betty,
        # at the V the lower step has just produced.
        reuse = upper_now and self.bilevel.hypergradient in ("darts_one_sided", "darts_unrolled")
        noise_seed = new_noise_seed() if reuse else None
        centre_wanted = reuse and self.bilevel.hypergradient == "darts_one_sided"
        lower = lambda: self.lower_objective(inner_train)  # noqa: E731
        with same_noise(noise_seed) if reuse else contextlib.nullcontext():
            lower_loss = lower() if centre_wanted else graph_only_for(lower, directions, self.predictor)()
        grads = torch.autograd.grad(lower_loss, directions + magnitudes if centre_wanted else directions)
        lower_grads, centre = list(grads[: len(directions)]), list(grads[len(directions):]) or None
        hyper = self.hypergradient(inner_train, inner_val, lower_opt.param_groups[0]["lr"], lower_grads, centre,
                                   noise_seed) if reuse else None
        self._step(lower_opt, directions, lower_grads)
        lower_schedule.step()

        if upper_now:
            if hyper is None:
                hyper = self.hypergradient(inner_train, inner_val, lower_opt.param_groups[0]["lr"])
            self._step(upper_opt, magnitudes, hyper)
            upper_schedule.step()
        self.log_dict({"lower_loss": lower_loss.detach()}, prog_bar=True, batch_size=len(inner_train["tokens"]))

    def hypergradient(self, inner_train: dict, inner_val: dict, lower_lr: float,
                      lower_grads: list[torch.Tensor] | None = None, centre: list[torch.Tensor] | None = None,
                      noise_seed: int | None = None) -> list[torch.Tensor]:
        """The magnitude gradient `bilevel.hypergradient` names, at the directions as they are now."""
        directions, magnitudes = self.predictor.direction_parameters(), self.predictor.magnitude_parameters()
        upper: Loss = lambda: self.upper_objective(inner_val)  # noqa: E731
        # The finite-difference passes differentiate the lower loss L_tr + λ·R with respect to M
        # only. R is a function of the directions alone (D̂ = V/‖V‖ has no m in it), so ∇_M R = 0
        # and those passes need the task term alone: one R evaluation fewer per pass, same numbers
        # (tests/test_bilevel.py checks the two are equal).
        # They need ∇_M alone: built with every other parameter frozen, their backward computes no
        # direction or head weight gradient (tests/test_bilevel.py: the estimators' numbers unchanged).
        task: Loss = graph_only_for(lambda: self.loss(self(inner_train["tokens"]), inner_train["labels"]),
                                    magnitudes, self.predictor)
        kind = self.bilevel.hypergradient
        if kind == "first_order":
            return first_order_hypergradient(graph_only_for(upper, magnitudes, self.predictor), magnitudes)
        if kind == "darts":
            return darts_hypergradient(task, upper, directions, magnitudes)
        if kind == "darts_one_sided":
            return darts_one_sided_hypergradient(task, upper, directions, magnitudes, centre=centre,
                                                 noise_seed=noise_seed)
        xi = lower_lr if self.bilevel.unrolled_xi is None else self.bilevel.unrolled_xi
        return darts_unrolled_hypergradient(lambda: self.lower_objective(inner_train), upper, directions, magnitudes,
                                            xi, train_grads=lower_grads, noise_seed=noise_seed,
                                            magnitude_lower_loss=task)

    def _step(self, optimizer, parameters: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        for parameter, grad in zip(parameters, grads):
            parameter.grad = average_across_processes(grad.detach())
        self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class RetrainModule(PredictorModule):
    """BiDoRA's retrain phase: directions + head on all training rows, magnitudes frozen, loss L + λ·R."""

    def __init__(self, predictor: ProteinPredictor, optim: OptimConfig, orthogonality: float):
        super().__init__(predictor, optim)
        self.orthogonality = orthogonality

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        task = self.loss(self(batch["tokens"]), batch["labels"])
        self.log("train_loss", task, prog_bar=True, batch_size=len(batch["tokens"]), sync_dist=True)
        return with_orthogonality(task, self.predictor, self.orthogonality)


def with_orthogonality(loss: torch.Tensor, predictor: ProteinPredictor, weight: float) -> torch.Tensor:
    """loss + λ·R(V), R the mean orthogonality penalty of the DoRA layers (methods.md); λ = 0: loss."""
    return loss + weight * predictor.orthogonality_penalty() if weight else loss


def graph_only_for(loss: Loss, wanted: list[nn.Parameter], module: nn.Module) -> Loss:
    """`loss` evaluated with every other trainable parameter of `module` frozen while it runs, so its
    graph — and the backward through it — reaches `wanted` only: no weight gradients for the rest."""
    def run() -> torch.Tensor:
        keep = {id(p) for p in wanted}
        others = [p for p in module.parameters() if p.requires_grad and id(p) not in keep]
        for parameter in others:
            parameter.requires_grad_(False)
        try:
            return loss()
        finally:
            for parameter in others:
                parameter.requires_grad_(True)
    return run


# ---------------------------------------------------------------- hypergradient estimators


def darts_hypergradient(lower_loss: Loss, upper_loss: Loss, directions: list[nn.Parameter],
                        magnitudes: list[nn.Parameter], *, noise_seed: int | None = None) -> list[torch.Tensor]:
    """Betty's `darts`, the official BiDoRA estimator (methods.md, "What Betty computes"):

        ∇_M L_val(V, M) + [∇_M L_tr(V − εv, M) − ∇_M L_tr(V + εv, M)] / 2ε,
        v = ∇_V L_val(V, M) at the current directions (no virtual step), ε = 0.01 / ‖v‖,

    a central difference for ∇_M L_val − ∇²_{M,V} L_tr · v, with no learning-rate factor.
    ∇_M L_val and v come from one pass; the two lower passes see the same dropout noise, so the
    difference measures the move of V alone. V is restored bit for bit (unlike Betty's `add`).
    """
    magnitude_grads, v = validation_gradients(upper_loss, magnitudes, directions)
    eps = finite_difference_step(v)
    if eps is None:
        return magnitude_grads
    noise_seed = new_noise_seed() if noise_seed is None else noise_seed
    with displaced(directions) as move:
        move(eps, v)
        plus = magnitude_gradient(lower_loss, magnitudes, noise_seed)
        move(-eps, v)
        minus = magnitude_gradient(lower_loss, magnitudes, noise_seed)
    return [g + (n - p) / (2 * eps) for g, n, p in zip(magnitude_grads, minus, plus)]


def darts_one_sided_hypergradient(lower_loss: Loss, upper_loss: Loss, directions: list[nn.Parameter],
                                  magnitudes: list[nn.Parameter], *, centre: list[torch.Tensor] | None = None,
                                  noise_seed: int | None = None) -> list[torch.Tensor]:
    """The one-sided form of `darts_hypergradient`, first- instead of second-order accurate in ε:

        ∇_M L_val(V, M) + [∇_M L_tr(V, M) − ∇_M L_tr(V + εv, M)] / ε,   v, ε as there.

    `centre` = ∇_M L_tr(V, M) computed under `same_noise(noise_seed)` — in training, the lower
    step's own pass — so one forward/backward pass fewer than the central difference.
    """
    if centre is not None and noise_seed is None:
        raise ValueError("centre must come with the noise_seed it was computed under")
    noise_seed = new_noise_seed() if noise_seed is None else noise_seed
    if centre is None:
        centre = magnitude_gradient(lower_loss, magnitudes, noise_seed)
    magnitude_grads, v = validation_gradients(upper_loss, magnitudes, directions)
    eps = finite_difference_step(v)
    if eps is None:
        return magnitude_grads
    with displaced(directions) as move:
        move(eps, v)
        plus = magnitude_gradient(lower_loss, magnitudes, noise_seed)
    return [g + (c - p) / eps for g, c, p in zip(magnitude_grads, centre, plus)]


def darts_unrolled_hypergradient(lower_loss: Loss, upper_loss: Loss, directions: list[nn.Parameter],
                                 magnitudes: list[nn.Parameter], xi: float, *,
                                 train_grads: list[torch.Tensor] | None = None, noise_seed: int | None = None,
                                 magnitude_lower_loss: Loss | None = None) -> list[torch.Tensor]:
    """The DARTS paper's unrolled estimator (Liu et al. 2019, eq. 7–8), not the official BiDoRA one:

        ∇_M L_val(V′, M) − ξ·[∇_M L_tr(V⁺, M) − ∇_M L_tr(V⁻, M)] / 2ε,
        V′ = V − ξ∇_V L_tr(V, M), V± = V ± ε·∇_V′ L_val(V′, M), ε = 0.01 / ‖∇_V′ L_val‖.

    Reuse: `train_grads` = ∇_V L_tr(V) computed under `same_noise(noise_seed)`;
    `magnitude_lower_loss`, the part of L_tr that depends on M, for the passes at V±.
    """
    if train_grads is not None and noise_seed is None:
        raise ValueError("train_grads must come with the noise_seed they were computed under")
    noise_seed = new_noise_seed() if noise_seed is None else noise_seed
    magnitude_lower_loss = magnitude_lower_loss or lower_loss
    if train_grads is None:
        with same_noise(noise_seed):
            train_grads = torch.autograd.grad(lower_loss(), directions)
    train_grads = [g.detach().clone() for g in train_grads]  # the caller may clip its copy in place
    with displaced(directions) as move:
        move(-xi, train_grads)  # V′
        magnitude_grads, v = validation_gradients(upper_loss, magnitudes, directions)
        eps = finite_difference_step(v)
        if eps is None:
            return magnitude_grads
        move(eps, v)
        plus = magnitude_gradient(magnitude_lower_loss, magnitudes, noise_seed)
        move(-eps, v)
        minus = magnitude_gradient(magnitude_lower_loss, magnitudes, noise_seed)
    return [g - xi * (p - n) / (2 * eps) for g, p, n in zip(magnitude_grads, plus, minus)]


def first_order_hypergradient(upper_loss: Loss, magnitudes: list[nn.Parameter]) -> list[torch.Tensor]:
    """∇_M L_val(V, M) with the directions held fixed: the cheap ablation (no second-order term)."""
    return list(torch.autograd.grad(upper_loss(), magnitudes))


def validation_gradients(upper_loss: Loss, magnitudes: list[nn.Parameter],
                         directions: list[nn.Parameter]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(∇_M L_val, ∇_V L_val) from one forward/backward pass."""
    grads = torch.autograd.grad(upper_loss(), magnitudes + directions, allow_unused=True)
    return (_zeros_for_none(grads[: len(magnitudes)], magnitudes),
            [g.detach() for g in _zeros_for_none(grads[len(magnitudes):], directions)])


def finite_difference_step(v: list[torch.Tensor]) -> torch.Tensor | None:
    """ε = 0.01 / ‖v‖ over all direction tensors together (Betty's darts_alpha = 0.01); None if v = 0."""
    norm = torch.sqrt(sum(g.pow(2).sum() for g in v))
    return None if norm == 0 else 0.01 / norm


def magnitude_gradient(loss: Loss, magnitudes: list[nn.Parameter], noise_seed: int) -> list[torch.Tensor]:
    """∇_M of `loss` at the parameters as they are now, under the given dropout noise."""
    with same_noise(noise_seed):
        return list(torch.autograd.grad(loss(), magnitudes))


@contextlib.contextmanager
def displaced(directions: list[nn.Parameter]) -> Iterator[Callable[[float, list[torch.Tensor]], None]]:
    """Yields move(scale, vector): V ← V₀ + scale·vector (V₀ = V on entry); V₀ is put back bit for bit on exit."""
    original = [d.detach().clone() for d in directions]

    def move(scale, vector: list[torch.Tensor]) -> None:
        _assign(directions, [o + scale * g for o, g in zip(original, vector)])

    try:
        yield move
    finally:
        _assign(directions, original)


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
