"""Adapter methods by name: how each one changes a backbone, and how many parameters it trains."""

from __future__ import annotations

from collections.abc import Callable


from protadapt.adapters.base import (
    Adapter,
    AdapterConfig,
    AdapterError,
    LinearAdapter,
    adapter_state_dict,
    count_trainable,
    find_targets,
    freeze,
    linear_adapters,
    merge_adapters,
    replace_linears,
    unmerge_adapters,
)
from protadapt.adapters.dora import DoRALinear
from protadapt.adapters.lora import LoRALinear
from protadapt.backbones import Architecture, Backbone

# Methods that wrap target linears with one layer class each.
LINEAR_METHODS: dict[str, type[LinearAdapter]] = {
    "lora": LoRALinear,
    "dora": DoRALinear,
    "bidora": DoRALinear,  # DoRA's parameterisation; what differs is the bi-level training
}
OTHER_METHODS = ("full", "head")


def method_names() -> list[str]:
    return list(LINEAR_METHODS) + list(_EXTRA_METHODS) + list(OTHER_METHODS)


def apply_method(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Freeze the backbone and add the method's trainable parts; returns the wrapped module paths."""
    if config.method == "full":
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        return []
    freeze(backbone)
    if config.method == "head":
        return []
    if config.method in LINEAR_METHODS:
        layer_class = LINEAR_METHODS[config.method]
        return replace_linears(backbone.model, config.target_patterns(backbone.architecture), lambda _, linear: layer_class(linear, config))
    if config.method in _EXTRA_METHODS:
        return _EXTRA_METHODS[config.method][0](backbone, config)
    raise AdapterError(f"unknown method '{config.method}'; choose one of: {', '.join(method_names())}")


def expected_trainable(architecture: Architecture, config: AdapterConfig) -> int:
    """Trainable backbone parameters the method adds, from the spec's formulas (head excluded)."""
    if config.method == "head":
        return 0
    if config.method == "full":
        return backbone_parameter_count(architecture)
    if config.method in LINEAR_METHODS:
        layer_class = LINEAR_METHODS[config.method]
        return sum(layer_class.num_params(i, o, config) for _, i, o in target_shapes(architecture, config))
    if config.method in _EXTRA_METHODS:
        return _EXTRA_METHODS[config.method][1](architecture, config)
    raise AdapterError(f"unknown method '{config.method}'; choose one of: {', '.join(method_names())}")


def target_shapes(architecture: Architecture, config: AdapterConfig) -> list[tuple[str, int, int]]:
    """(path, in, out) of every linear the targets select, derived from the architecture alone."""
    import re

    from protadapt.backbones import linear_shapes

    patterns = [re.compile(p) for p in config.target_patterns(architecture)]
    return [entry for entry in linear_shapes(architecture) if any(p.fullmatch(entry[0]) for p in patterns)]


def backbone_parameter_count(architecture: Architecture) -> int:
    """All parameters of the architecture, counted on the meta device (no memory allocated)."""
    import torch

    from protadapt.backbones import build_model

    with torch.device("meta"):
        model, _ = build_model(architecture)
    return sum(p.numel() for p in model.parameters())


# Methods registered by their own modules: name -> (apply(backbone, config), count(architecture, config)).
_EXTRA_METHODS: dict[str, tuple[Callable[[Backbone, AdapterConfig], list[str]], Callable[[Architecture, AdapterConfig], int]]] = {}


def register_method(name: str, apply: Callable, count: Callable) -> None:
    _EXTRA_METHODS[name] = (apply, count)


__all__ = [
    "Adapter", "AdapterConfig", "AdapterError", "DoRALinear", "LinearAdapter", "LoRALinear",
    "adapter_state_dict", "apply_method", "count_trainable", "expected_trainable", "find_targets",
    "linear_adapters", "merge_adapters", "method_names", "register_method", "target_shapes",
    "unmerge_adapters",
]

from protadapt.adapters import prompt, wegeft  # noqa: E402, F401 — each registers itself
