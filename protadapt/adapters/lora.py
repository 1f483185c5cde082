"""LoRA (Hu et al. 2021, arXiv 2106.09685): `W = W0 + (α/r)·B·A`, B zero-initialised."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from protadapt.adapters.base import AdapterConfig, LinearAdapter
from protadapt.adapters.registry import linear_method, register_method

LOW_RANK_SETTINGS = ("rank", "alpha", "include_ffn", "targets")  # what shapes and scales the saved A, B


class LoRALinear(LinearAdapter):
    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.rank = config.rank
        self.scaling = config.alpha / config.rank
        self.down = nn.Parameter(torch.empty(config.rank, self.in_features, dtype=weight.dtype, device=weight.device))  # A
        self.up = nn.Parameter(torch.empty(self.out_features, config.rank, dtype=weight.dtype, device=weight.device))  # B
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
        if self.fuses(x):
            return fused_low_rank_linear(x, self.base_layer, self.down, self.up, self.scaling)
        return self.add_low_rank(self.base_layer(x), self.dropout(x))

    def fuses(self, x: torch.Tensor) -> bool:
        """Whether the forward takes `fused_low_rank_linear`: no dropout (it needs one input for both
        paths), frozen base tensors, and enough rows that forming the out × in weight is the cheaper
        side (rows·(in+out) ≥ in·out: on 8M, 64 rows and more)."""
        base = self.base_layer
        frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
        rows = x.numel() // self.in_features
        return (isinstance(self.dropout, nn.Identity) and frozen
                and rows * (self.in_features + self.out_features) >= self.in_features * self.out_features)

    def add_low_rank(self, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """result + (α/r)·B·A·x without forming B·A; B·(A·x) is accumulated into `result` by one GEMM
        (no separate out-wide product, scaling and sum: ~5 % off an adapted layer's forward + backward)."""
        hidden = F.linear(x, self.down)
        return torch.addmm(result.flatten(0, -2), hidden.flatten(0, -2), self.up.T,
                           alpha=self.scaling).view_as(result)

    def delta_weight(self) -> torch.Tensor:
        return (self.up @ self.down) * self.scaling


def fused_low_rank_linear(x: torch.Tensor, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float,
                          scale: torch.Tensor | None = None) -> torch.Tensor:
    """x·Wᵀ + b with W = (W0 + s·B·A), or diag(scale)·(W0 + s·B·A) for DoRA, by one frozen-sized GEMM."""
    return _FusedLowRank.apply(x, base.weight, base.bias, down, up, scaling, scale)


class _FusedLowRank(torch.autograd.Function):
    """The adapted linear as one GEMM each way, with gradients for A, B (and DoRA's per-row scale) only.

    Forward forms W (out·in·r, cheaper than the rows·(in+out)·r of the two-GEMM path) and applies it
    in one GEMM of the frozen layer's size, so an adapted layer's forward costs what the bare one does.
    Backward saves x only (plus, for a trainable scale, the output: its gradient is
    Σ_rows g ⊙ (out − b) / scale, and the output of v_proj is the tensor attention keeps anyway),
    recomputes W and A·x, and computes grad x by one GEMM with W and grad A, grad B by four r-thin
    GEMMs (laid out r × rows) — never W0's out × in weight gradient. At init (B = 0, scale = 1) W is W0 bit for bit.
    """

    @staticmethod
    def forward(ctx, x, w0, bias, down, up, scaling, scale):
        weight = _fused_weight(w0, down, up, scaling, scale)
        out = F.linear(x, weight, bias)
        ctx.scaling = scaling
        keep_out = scale is not None and scale.requires_grad
        ctx.save_for_backward(x, w0, bias, down, up, scale, out if keep_out else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w0, bias, down, up, scale, out = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        grad_x = grad_down = grad_up = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ _fused_weight(w0, down, up, s, scale)).view_as(x)
        # the r-thin products as r × rows (A·xᵀ, Bᵀ·gᵀ): ~2× faster on the CPU than rows × r
        up_scaled = up if scale is None else up * scale[:, None]
        if ctx.needs_input_grad[3]:
            grad_down = (up_scaled.T @ g.T) @ rows * s
        if ctx.needs_input_grad[4]:
            grad_up = (down @ rows.T @ g).T * (s if scale is None else s * scale[:, None])
        if out is not None:
            weighted = (g * out.reshape(g.shape)).sum(0)
            grad_scale = (weighted if bias is None else weighted - bias * g.sum(0)) / scale
        return grad_x, None, None, grad_down, grad_up, None, grad_scale


def _fused_weight(w0, down, up, scaling, scale):
    weight = torch.addmm(w0, up, down, alpha=scaling)
    return weight if scale is None else weight * scale[:, None]


register_method(linear_method("lora", LoRALinear, settings=LOW_RANK_SETTINGS))
