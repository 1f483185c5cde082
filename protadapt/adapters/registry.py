"""The methods by name: how each changes a backbone, what it trains, and what it can do.

A method is one `Method` registered from its own module; everything else (model assembly, the
training loop, compare, analyze, the CLI) asks this registry, never matches a method's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from protadapt.adapters.base import AdapterConfig, AdapterError, LinearAdapter, replace_linears
from protadapt.backbones import Architecture, Backbone, linear_shapes


@dataclass(frozen=True)
class Method:
    """One adaptation method and its capabilities."""

    name: str
    apply: Callable[[Backbone, AdapterConfig], list[str]]  # adds the trainable parts; returns wrapped paths
    count: Callable[[Architecture, AdapterConfig], int]  # trainable backbone parameters, from the shape alone
    layer: type | None = None  # the adapter layer class it wraps target linears with, if any
    bilevel: bool = False  # trained by BiDoRA's bi-level search (magnitudes on inner validation)
    trains_backbone: bool = False  # every backbone weight is trainable and saved (full fine-tuning)
    settings: tuple[str, ...] = ()  # AdapterConfig fields that shape its saved tensors
    frozen_features: bool = False  # the output is the head on pooled frozen-backbone states (cacheable)
    fit: Callable | None = None  # fit(predictor, datamodule, config, run_dir): its own training, not a Lightning loop


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` available by name (to configs, `fit`, `predict`, compare and the CLI)."""
    if method.name in METHODS:
        raise AdapterError(f"method '{method.name}' is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise AdapterError(f"unknown method '{name}'; choose one of: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return list(METHODS)


def linear_method(name: str, layer: type[LinearAdapter], **capabilities) -> Method:
    """A method that wraps every target linear with `layer(linear, config)`."""

    def apply(backbone: Backbone, config: AdapterConfig) -> list[str]:
        return replace_linears(backbone.model, config.target_patterns(backbone.architecture),
                               lambda _, linear: layer(linear, config))

    def count(architecture: Architecture, config: AdapterConfig) -> int:
        return sum(layer.num_params(i, o, config) for _, i, o in target_shapes(architecture, config))

    return Method(name, apply, count, layer=layer, **capabilities)


def target_shapes(architecture: Architecture, config: AdapterConfig) -> list[tuple[str, int, int]]:
    """(path, in, out) of every linear the targets select, derived from the architecture alone."""
    patterns = [re.compile(p) for p in config.target_patterns(architecture)]
    return [entry for entry in linear_shapes(architecture) if any(p.fullmatch(entry[0]) for p in patterns)]
