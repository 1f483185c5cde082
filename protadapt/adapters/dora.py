"""DoRA (Liu et al. 2024, arXiv 2402.09353): `W = m ⊙ V / ‖V‖`, `V = W0 + (α/r)·B·A`.

Norm axis: ONE MAGNITUDE PER OUTPUT FEATURE. For the `out × in` weight of `nn.Linear`, ‖V‖ is the
norm of each row (`dim=1`), and `m` has `out` entries. (Hugging Face PEFT does the same; the
official DoRA/BiDoRA code uses `dim=0`, one magnitude per input feature.) Rows are therefore the
"direction vectors" everywhere in protadapt, the ΔM/ΔD analysis included.
"""

from __future__ import annotations

import torch
from torch import nn

from protadapt.adapters.base import AdapterConfig
from protadapt.adapters.lora import LoRALinear

NORM_DIM = 1  # rows of the out × in weight: one magnitude per output feature


class DoRALinear(LoRALinear):
    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__(base_layer, config)
        self.detach_norm = config.detach_norm
        # ‖w0_i‖², cached: the base weight is frozen, and the norm of V is expanded around it.
        self.register_buffer("base_row_sq", base_layer.weight.detach().pow(2).sum(NORM_DIM), persistent=False)
        self.magnitude = nn.Parameter(self.direction_norm().detach().clone())  # m, = ‖W0‖ so W = W0 at init
        self.register_buffer("merge_scale", torch.ones_like(self.magnitude), persistent=False)

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        return config.rank * (in_features + out_features) + out_features

    def magnitude_parameters(self) -> list[nn.Parameter]:
        return [self.magnitude]

    def direction_norm(self) -> torch.Tensor:
        """Row norms of V = W0 + s·B·A without materialising V.

        ‖v_i‖² = ‖w0_i‖² + 2s·⟨b_i, (W0·Aᵀ)_i⟩ + s²·b_i·(A·Aᵀ)·b_iᵀ — memory out×r instead of out×in.
        """
        w0 = self.base_layer.weight
        s = self.scaling
        cross = (self.up * (w0 @ self.down.T)).sum(NORM_DIM)
        low_rank = ((self.up @ (self.down @ self.down.T)) * self.up).sum(NORM_DIM)
        return (self.base_row_sq + 2 * s * cross + s * s * low_rank).clamp_min(0).sqrt()

    def scale(self) -> torch.Tensor:
        """m / ‖V‖ per output feature; ‖V‖ optionally detached (the paper's memory trick)."""
        norm = self.direction_norm()
        return self.magnitude / (norm.detach() if self.detach_norm else norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
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

        Uses ‖D̂D̂ᵀ‖_F = ‖D̂ᵀD̂‖_F and diag(D̂D̂ᵀ) = 1 to work with the smaller Gram matrix.
        """
        direction = self.base_layer.weight + self.delta_weight()
        unit = direction / direction.norm(dim=NORM_DIM, keepdim=True)
        gram = unit.T @ unit if unit.shape[0] > unit.shape[1] else unit @ unit.T
        return (gram.pow(2).sum() - unit.shape[0]).clamp_min(0).sqrt()

    def _merge(self) -> None:
        scale = self.scale()
        self.merge_scale.copy_(scale)
        weight = self.base_layer.weight
        weight += self.delta_weight()
        weight *= scale.unsqueeze(NORM_DIM)

    def _unmerge(self) -> None:
        weight = self.base_layer.weight
        weight /= self.merge_scale.unsqueeze(NORM_DIM)
        weight -= self.delta_weight()
