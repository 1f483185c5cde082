"""The two methods without adapter layers: full fine-tuning and a trained head on a frozen backbone."""

from __future__ import annotations

import torch

from protadapt.adapters.base import AdapterConfig
from protadapt.adapters.registry import Method, register_method
from protadapt.backbones import Architecture, Backbone, build_model


def unfreeze(backbone: Backbone, config: AdapterConfig) -> list[str]:
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    return []


def backbone_parameter_count(architecture: Architecture, config: AdapterConfig | None = None) -> int:
    """All parameters of the architecture, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model, _ = build_model(architecture)
    return sum(p.numel() for p in model.parameters())


register_method(Method("full", unfreeze, backbone_parameter_count, trains_backbone=True))
register_method(Method("head", lambda backbone, config: [], lambda architecture, config: 0, frozen_features=True))
