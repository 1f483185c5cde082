"""DoRA (Liu et al. 2024, arXiv 2402.09353): `W = m ⊙ V / ‖V‖`, `V = W0 + (α/r)·B·A`.

Norm axis: ONE MAGNITUDE PER OUTPUT FEATURE. For the `out × in` weight of `nn.Linear`, ‖V‖ is the
norm of each row (`dim=1`), and `m` has `out` entries. (Hugging Face PEFT does the same; the
official DoRA/BiDoRA code uses `dim=0`, one magnitude per input feature.) Rows are therefore the
"direction vectors" everywhere in protadapt, the ΔM/ΔD analysis included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protadapt.adapters.base import AdapterConfig, DecomposedLinear
from protadapt.adapters.lora import LOW_RANK_SETTINGS, LoRALinear, low_rank_grads
from protadapt.adapters.registry import linear_method, register_method
from protadapt.backbones.base import frozen_linear

NORM_DIM = 1  # rows of the out × in weight: one magnitude per output feature


class DoRALinear(LoRALinear, DecomposedLinear):
    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__(base_layer, config)
        self.detach_norm = config.detach_norm
        self.magnitude = nn.Parameter(self.direction_norm().detach().clone())  # m, = ‖W0‖ so W = W0 at init

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        return config.rank * (in_features + out_features) + out_features

    def magnitude_parameters(self) -> list[nn.Parameter]:
        return [self.magnitude]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Directions as LoRA's, then m = ‖W0‖, so W = W0 again."""
        self.reset_low_rank()
        self.magnitude.copy_(self.direction_norm())

    def direction_norm(self) -> torch.Tensor:
        """Row norms of V = W0 + s·B·A without materialising V (see `_direction_norm_sq`)."""
        return self._direction_norm_sq().clamp_min(0).sqrt()

    def _direction_norm_sq(self) -> torch.Tensor:
        """‖v_i‖² = ‖w0_i‖² + 2s·⟨b_i, (W0·Aᵀ)_i⟩ + s²·b_i·(A·Aᵀ)·b_iᵀ — memory out×r instead of out×in."""
        w0 = self.base_layer.weight
        s = self.scaling
        with torch.no_grad():  # W0 is frozen; recomputed rather than cached, so it follows .to(dtype)
            base_row_sq = w0.to(self.down.dtype).pow(2).sum(NORM_DIM)  # fp32 also for a bf16-stored W0
        cross = (self.up * frozen_linear(self.down, w0).T).sum(NORM_DIM)  # W0·Aᵀ
        low_rank = ((self.up @ (self.down @ self.down.T)) * self.up).sum(NORM_DIM)
        return base_row_sq + 2 * s * cross + s * s * low_rank

    def scale(self) -> torch.Tensor:
        """m / ‖V‖ per output feature; ‖V‖ optionally detached (the paper's memory trick)."""
        norm = self.direction_norm()
        return self.magnitude / (norm.detach() if self.detach_norm else norm)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        # W·x + b = (m/‖V‖) ⊙ (W0·x + s·B·A·x) + b, written so that at init (scale exactly 1) the
        # result is bit-identical to the base layer: (base(x) + lora)·scale − (scale − 1)·b.
        if self.fuses(x):
            base = self.base_layer
            return _FusedDoRA.apply(x, base.weight, base.bias, self.down, self.up, self.magnitude, self.scaling,
                                    self.detach_norm)
        scale = self.scale()
        result = self.add_low_rank(self.base_layer(x), self.dropout(x)) * scale
        bias = self.base_layer.bias
        return result if bias is None else result - (scale - 1) * bias

    def effective_weight(self) -> torch.Tensor:
        if self.merged:
            return self.base_layer.weight
        return (self.base_layer.weight + self.delta_weight()) * self.scale().unsqueeze(NORM_DIM)

    def orthogonality_penalty(self) -> torch.Tensor:
        """‖D̂·D̂ᵀ − I‖_F over the unit direction rows D̂ (BiDoRA's regulariser R); see `orthogonality_penalties`."""
        return orthogonality_penalties([self])[0]


def mean_orthogonality_penalty(layers: list) -> torch.Tensor:
    """The mean R over DoRA layers (BiDoRA's regulariser): layers of one shape go through one batched set of
    products, ~25 small ops per layer → per shape (8M: 24 layers, R fwd + bwd ~3× cheaper)."""
    return orthogonality_penalties(layers).mean() if layers else torch.zeros(())


def orthogonality_penalties(layers: list[DoRALinear]) -> torch.Tensor:
    """R of each layer, in order. Layers with out > in take the in × in Gram matrix of D̂ directly (the
    smaller one); the rest are grouped by shape, scaling, dtype and device for `_batched_penalty`."""
    penalties: list = [None] * len(layers)
    groups: dict[tuple, list[int]] = {}
    for index, layer in enumerate(layers):
        w0 = layer.base_layer.weight
        if w0.shape[0] > w0.shape[1]:
            direction = w0.to(layer.down.dtype) + layer.delta_weight()
            unit = direction / direction.norm(dim=NORM_DIM, keepdim=True)
            penalties[index] = ((unit.T @ unit).pow(2).sum() - w0.shape[0]).clamp_min(0).sqrt()
        else:
            key = (tuple(w0.shape), layer.down.shape[0], layer.scaling, w0.dtype, w0.device)
            groups.setdefault(key, []).append(index)
    for indices in groups.values():
        group = [layers[i] for i in indices]
        for index, penalty in zip(indices, _batched_penalty(group).unbind()):
            penalties[index] = penalty
    return torch.stack(penalties)


def _batched_penalty(layers: list[DoRALinear]) -> torch.Tensor:
    """R for layers of one shape (out ≤ in), stacked: ‖D̂D̂ᵀ − I‖²_F = ‖D̂D̂ᵀ‖²_F − out since diag(D̂D̂ᵀ) = 1.

    With V·Vᵀ = K + Q·S·Qᵀ (K = W0·W0ᵀ constant, Q = [W0·Aᵀ | B], S = [[0, s], [s, s²·A·Aᵀ]]) and
    μ_i = 1/‖v_i‖²,  ‖D̂D̂ᵀ‖²_F = μᵀ(K∘K)μ + 2·tr(S·(μQ)ᵀK(μQ)) + tr((S·Qᵀ·diag(μ)·Q)²),
    so the trainable part costs out²·2r and no out × out tensor enters the graph: R is ~3× cheaper
    than through the Gram matrix of D̂ (benchmarks/results/train_step.md).
    """
    s = layers[0].scaling
    with torch.no_grad():
        w0 = torch.stack([layer.base_layer.weight for layer in layers]).to(layers[0].down.dtype)  # L × out × in, fp32
        base_gram = w0 @ w0.transpose(1, 2)
        base_gram_sq = base_gram.square()
        base_row_sq = w0.pow(2).sum(2)
    down = torch.stack([layer.down for layer in layers])  # L × r × in
    up = torch.stack([layer.up for layer in layers])  # L × out × r
    projected = w0 @ down.transpose(1, 2)  # W0·Aᵀ, L × out × r
    down_gram = down @ down.transpose(1, 2)  # A·Aᵀ
    norm_sq = base_row_sq + 2 * s * (up * projected).sum(2) + s * s * ((up @ down_gram) * up).sum(2)
    inverse_sq = 1 / norm_sq  # μ, L × out
    q = torch.cat([projected, up], dim=2)  # L × out × 2r
    rank = down.shape[1]
    eye = torch.eye(rank, dtype=w0.dtype, device=w0.device).expand(len(layers), rank, rank)
    core = torch.cat([torch.cat([torch.zeros_like(eye), s * eye], 2),
                      torch.cat([s * eye, (s * s) * down_gram], 2)], 1)  # S, symmetric, L × 2r × 2r
    weighted = q * inverse_sq[:, :, None]  # diag(μ)·Q
    constant = (inverse_sq[:, None, :] @ (base_gram_sq @ inverse_sq[:, :, None])).flatten()
    mixed = 2 * (core * (weighted.transpose(1, 2) @ (base_gram @ weighted))).sum((1, 2))  # tr(S·M) = Σ S∘M
    small = core @ (q.transpose(1, 2) @ weighted)  # S·Qᵀ·diag(μ)·Q
    low_rank = (small * small.transpose(1, 2)).sum((1, 2))  # tr(X²) = Σ X∘Xᵀ
    return (constant + mixed + low_rank - w0.shape[1]).clamp_min(0).sqrt()


class _FusedDoRA(torch.autograd.Function):
    """DoRA's W·x + b by one GEMM with W = diag(m/‖V‖)·V, V = W0 + s·B·A formed, ‖V‖ taken from it.

    The LoRA path's one-GEMM layer (`lora._FusedLowRank`) plus the magnitude and the norm by hand:
    with w_i = Σ_rows g_i·(out_i − b_i) (the output is saved: it is what v_proj hands to attention
    anyway), ∂L/∂m = w/m and ∂L/∂‖V‖ = −w/‖V‖, which reaches A and B through ∂‖v_i‖/∂v_i = v_i/‖v_i‖
    — two out·in·r GEMMs, none rows-wide (`detach_norm` drops that part). Replaces ~25 small autograd
    ops of the low-rank norm per layer. At init ‖V‖ = ‖W0‖ = m bit for bit, so W = W0 exactly.
    """

    @staticmethod
    def forward(ctx, x, w0, bias, down, up, magnitude, scaling, detach):
        direction, norm = _direction(w0, down, up, scaling)
        ctx.scaling, ctx.detach = scaling, detach
        out = F.linear(x, direction * (magnitude / norm)[:, None], bias)
        # the output only for ∂L/∂m and ∂L/∂‖V‖: not when m is frozen (BiDoRA's lower step, retrain) and ‖V‖ detached
        keep = magnitude.requires_grad or (not detach and (down.requires_grad or up.requires_grad))
        ctx.save_for_backward(x, w0, bias, down, up, magnitude, out if keep else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w0, bias, down, up, magnitude, out = ctx.saved_tensors
        s, needed = ctx.scaling, ctx.needs_input_grad
        direction, norm = _direction(w0, down, up, s)
        scale = magnitude / norm
        g = grad.reshape(-1, grad.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        grad_x = (g @ (direction * scale[:, None])).view_as(x) if needed[0] else None
        grad_down, grad_up = low_rank_grads(g, rows, down, up, s, needed[3:5], scale)
        grad_magnitude = None
        if out is not None:
            weighted = (g * out.reshape(g.shape)).sum(0)  # scale ⊙ Σ_rows g ⊙ (V·x)
            if bias is not None:
                weighted = weighted - bias * g.sum(0)
            if needed[5]:
                grad_magnitude = _magnitude_grad(weighted, magnitude, g, rows, direction, norm)
            if not ctx.detach:
                coefficient = -weighted / norm.square()  # ∂L/∂‖v_i‖ / ‖v_i‖
                if needed[3]:
                    grad_down = grad_down + s * (coefficient[:, None] * up).T @ direction
                if needed[4]:
                    grad_up = grad_up + s * coefficient[:, None] * (direction @ down.T)
        return grad_x, None, None, grad_down, grad_up, grad_magnitude, None, None


def _magnitude_grad(weighted, magnitude, g, rows, direction, norm) -> torch.Tensor:
    """∂L/∂m = Σ_rows g ⊙ (V·x) / ‖V‖ = weighted / m; a zero m's row takes V·x directly."""
    zero = magnitude == 0
    grad = weighted / torch.where(zero, 1, magnitude)  # (no 0/0 in a double backward)
    if zero.any():
        grad[zero] = (g[:, zero] * (rows @ direction[zero].T)).sum(0) / norm[zero]
    return grad


def _direction(w0: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scaling: float):
    """V = W0 + s·B·A and its row norms (as `pow(2).sum` of W0 at init: the bits of `direction_norm`)."""
    direction = torch.addmm(w0, up, down, alpha=scaling)
    return direction, direction.pow(2).sum(NORM_DIM).sqrt()


register_method(linear_method("dora", DoRALinear, settings=LOW_RANK_SETTINGS))
# DoRA's parameterisation; what differs is the bi-level training (protadapt.training.bilevel)
register_method(linear_method("bidora", DoRALinear, bilevel=True, settings=LOW_RANK_SETTINGS))
