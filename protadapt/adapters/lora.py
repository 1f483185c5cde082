"""LoRA (Hu et al. 2021, arXiv 2106.09685): `W = W0 + (α/r)·B·A`, B zero-initialised."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from protadapt.adapters.base import AdapterConfig, LinearAdapter, adapter_dtype
from protadapt.adapters.registry import linear_method, register_method

LOW_RANK_SETTINGS = ("rank", "alpha", "include_ffn", "targets")  # what shapes and scales the saved A, B


class LoRALinear(LinearAdapter):
    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__(base_layer)
        weight = base_layer.weight
        dtype = adapter_dtype(weight)  # fp32 also over a bf16-stored base weight
        self.rank = config.rank
        self.scaling = config.alpha / config.rank
        self.down = nn.Parameter(torch.empty(config.rank, self.in_features, dtype=dtype, device=weight.device))  # A
        self.up = nn.Parameter(torch.empty(self.out_features, config.rank, dtype=dtype, device=weight.device))  # B
        self.reset_low_rank()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        return config.rank * (in_features + out_features)

    def direction_parameters(self) -> list[nn.Parameter]:
        return [self.down, self.up]

    def reset_parameters(self) -> None:
        self.reset_low_rank()

    @torch.no_grad()
    def reset_low_rank(self) -> None:
        """A Kaiming-uniform (as nn.Linear), B = 0: the update starts at zero."""
        if self.down.device.type != "meta":
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        nn.init.zeros_(self.up)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_low_rank(self.base_layer(x), self.dropout(x))

    def add_low_rank(self, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """result + (α/r)·B·A·x without forming B·A; B·(A·x) is accumulated into `result` by one GEMM
        (no separate out-wide product, scaling and sum: ~5 % off an adapted layer's forward + backward)."""
        hidden = F.linear(x, self.down)
        return torch.addmm(result.flatten(0, -2), hidden.flatten(0, -2), self.up.T,
                           alpha=self.scaling).view_as(result)

    def delta_weight(self) -> torch.Tensor:
        return (self.up @ self.down) * self.scaling


register_method(linear_method("lora", LoRALinear, settings=LOW_RANK_SETTINGS))
