"""Adapter methods: the registry, the shared adapter mechanism, and the methods registering themselves."""

from __future__ import annotations

from protadapt.adapters.base import (
    Adapter,
    AdapterConfig,
    AdapterError,
    DecomposedLinear,
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
from protadapt.adapters.registry import Method, get_method, method_names, register_method, target_shapes
from protadapt.backbones import Architecture, Backbone

# Each module registers its methods on import; the import order is the order `method_names()` lists.
from protadapt.adapters import lora, dora, prompt, wegeft, full  # noqa: E402, F401, I001
from protadapt.embeddings import method as probe_method  # noqa: E402, F401 — registers `probe`
from protadapt.adapters.dora import DoRALinear  # noqa: E402
from protadapt.adapters.lora import LoRALinear  # noqa: E402


def apply_method(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Freeze the backbone (unless the method trains it) and add the method's trainable parts."""
    method = get_method(config.method)
    if not method.trains_backbone:
        freeze(backbone)
    return method.apply(backbone, config)


def expected_trainable(architecture: Architecture, config: AdapterConfig) -> int:
    """Trainable backbone parameters the method adds, from the spec's formulas (head excluded)."""
    return get_method(config.method).count(architecture, config)


__all__ = [
    "Adapter", "AdapterConfig", "AdapterError", "DecomposedLinear", "DoRALinear", "LinearAdapter", "LoRALinear",
    "Method", "adapter_state_dict", "apply_method", "count_trainable", "expected_trainable", "find_targets",
    "get_method", "linear_adapters", "merge_adapters", "method_names", "register_method", "replace_linears",
    "target_shapes", "unmerge_adapters",
]
