"""DoRA (Liu et al. 2024, arXiv 2402.09353): `W = m ⊙ V / ‖V‖`, `V = W0 + (α/r)·B·A`.

Norm axis: ONE MAGNITUDE PER OUTPUT FEATURE. For the `out × in` weight of `nn.Linear`, ‖V‖ is the
norm of each row (`dim=1`), and `m` has `out` entries. (Hugging Face PEFT does the same; the
official DoRA/BiDoRA code uses `dim=0`, one magnitude per input feature.) Rows are therefore the
"direction vectors" everywhere in protadapt, the ΔM/ΔD analysis included.
"""

from __future__ import annotations

import torch
from torch import nn

from protadapt.adapters.base import AdapterConfig, DecomposedLinear
from protadapt.adapters.lora import LOW_RANK_SETTINGS, LoRALinear
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
        scale = self.scale()
        result = self.add_low_rank(self.base_layer(x), self.dropout(x)) * scale
        bias = self.base_layer.bias
        return result if bias is None else result - (scale - 1) * bias

    def effective_weight(self) -> torch.Tensor:
        if self.merged:
            return self.base_layer.weight
        return (self.base_layer.weight + self.delta_weight()) * self.scale().unsqueeze(NORM_DIM)

    def orthogonality_penalty(self) -> torch.Tensor:
        """‖D̂·D̂ᵀ − I‖_F over the unit direction rows D̂ (BiDoRA's regulariser R).

        diag(D̂D̂ᵀ) = 1, so ‖D̂D̂ᵀ − I‖²_F = ‖D̂D̂ᵀ‖²_F − out. With V·Vᵀ = K + Q·S·Qᵀ (K = W0·W0ᵀ
        constant, Q = [W0·Aᵀ | B], S = [[0, s], [s, s²·A·Aᵀ]]) and μ_i = 1/‖v_i‖²,
            ‖D̂D̂ᵀ‖²_F = μᵀ(K∘K)μ + 2·tr(S·(μQ)ᵀK(μQ)) + tr((S·Qᵀ·diag(μ)·Q)²),
        so the trainable part costs out²·2r and no out × out tensor enters the graph: R is ~3× cheaper
        than through the Gram matrix of D̂ (benchmarks/results/train_step.md). When out > in, the
        in × in Gram matrix is the smaller one and is used directly.
        """
        w0, down, up, s = self.base_layer.weight, self.down, self.up, self.scaling
        rows = w0.shape[0]
        if rows > w0.shape[1]:
            direction = w0 + self.delta_weight()
            unit = direction / direction.norm(dim=NORM_DIM, keepdim=True)
            return ((unit.T @ unit).pow(2).sum() - rows).clamp_min(0).sqrt()
        with torch.no_grad():
            base_gram = w0.to(down.dtype) @ w0.to(down.dtype).T
            base_gram_sq = base_gram.square()
        inverse_sq = 1 / self._direction_norm_sq()  # μ
        q = torch.cat([frozen_linear(down, w0).T, up], dim=1)  # out × 2r
        rank = down.shape[0]
        eye = torch.eye(rank, dtype=down.dtype, device=w0.device)
        core = torch.cat([torch.cat([torch.zeros_like(eye), s * eye], 1),
                          torch.cat([s * eye, (s * s) * (down @ down.T)], 1)], 0)  # S, symmetric 2r × 2r
        weighted = q * inverse_sq[:, None]  # diag(μ)·Q
        constant = inverse_sq @ (base_gram_sq @ inverse_sq)
        mixed = 2 * (core * (weighted.T @ (base_gram @ weighted))).sum()  # tr(S·M) = Σ S∘M, both symmetric
        small = core @ (q.T @ weighted)  # S·Qᵀ·diag(μ)·Q
        low_rank = (small * small.T).sum()  # tr(X²) = Σ X∘Xᵀ
        return (constant + mixed + low_rank - rows).clamp_min(0).sqrt()


register_method(linear_method("dora", DoRALinear, settings=LOW_RANK_SETTINGS))
# DoRA's parameterisation; what differs is the bi-level training (protadapt.training.bilevel)
register_method(linear_method("bidora", DoRALinear, bilevel=True, settings=LOW_RANK_SETTINGS))
