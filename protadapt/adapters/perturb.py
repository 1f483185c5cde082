"""A stand-in for training, for checks and benchmarks that need an adapted model that is not its base.

At initialisation a low-rank adapter is the identity (B = 0; DoRA's magnitudes are W0's row norms), so
an exactness test or a merged-weights benchmark run on a fresh model would compare the base model
with itself. Tests and benchmarks move the trainable parameters with this one function instead.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_as_if_trained(module: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Add seeded N(0, std²) noise to every trainable parameter of `module` (frozen ones untouched); returns it."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        if parameter.requires_grad:
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(std * noise.to(device=parameter.device, dtype=parameter.dtype))
    return module
