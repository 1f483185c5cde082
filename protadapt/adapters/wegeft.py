"""WeGeFT (Savadikar, Song, Wu, ICML 2025, arXiv 2312.00700): `W = W0 + (α/r)·W0·Φ1·Φ2`.

The update is generated from the frozen weight itself by two linear maps, Φ1 ∈ R^{in×r} (`up`,
zero-initialised so `W = W0` at init) and Φ2 ∈ R^{r×in} (`down`, Kaiming-uniform as LoRA's A).
The forward never forms the update: `W·x + b = W0·(x + s·Φ1·Φ2·x) + b` with s = α/r, which for the
row-vector batches of `nn.Linear` is `base_layer(x + s·(x·Φ2ᵀ)·Φ1ᵀ)`. The α/r factor is the one the
official WeGeFT code applies (as LoRA's); `AdapterConfig.alpha` is therefore a saved setting.

Two modes. Per layer: every wrapped linear owns its Φ1, Φ2 (2·in·r parameters each). Shared
(`AdapterConfig.shared`): one Φ pair per kind of layer and shape (every `q_proj`; `fc1` and `fc2`
separately), held once in `backbone.wegeft_generators`; a wrapped layer keeps only an unregistered
reference to it, so each tensor is saved and counted exactly once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from protadapt.adapters.base import Adapter, AdapterConfig, LinearAdapter, replace_linears
from protadapt.adapters.registry import Method, register_method, target_shapes
from protadapt.backbones import Architecture, Backbone


class WeGeFTGenerators(Adapter):
    """Shared Φ pairs by key (the layer kind, e.g. `q_proj`): `up[key]` = Φ1, `down[key]` = Φ2."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        self.up = nn.ParameterDict()
        self.down = nn.ParameterDict()
        self.shapes: dict[str, tuple[int, int]] = {}  # key -> (in, out) of the layers sharing it

    def key_for(self, kind: str, linear: nn.Linear) -> str:
        """The kind itself, unless that kind already has generators for a different layer shape."""
        shape = (linear.in_features, linear.out_features)
        key = kind if self.shapes.get(kind, shape) == shape else f"{kind}_{shape[0]}x{shape[1]}"
        if key not in self.shapes:
            self.shapes[key] = shape
            self.up[key], self.down[key] = new_generators(linear.in_features, self.rank, linear.weight)
        return key

    def reset_parameters(self) -> None:
        for key in self.shapes:
            reset_generators(self.up[key], self.down[key])


def new_generators(in_features: int, rank: int, like: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """Φ1 (`in × r`, zeros) and Φ2 (`r × in`, Kaiming-uniform), on the device and dtype of `like`."""
    up = nn.Parameter(torch.empty(in_features, rank, dtype=like.dtype, device=like.device))
    down = nn.Parameter(torch.empty(rank, in_features, dtype=like.dtype, device=like.device))
    reset_generators(up, down)
    return up, down


@torch.no_grad()
def reset_generators(up: nn.Parameter, down: nn.Parameter) -> None:
    """Φ1 = 0 (so W = W0), Φ2 Kaiming-uniform as LoRA's A."""
    nn.init.zeros_(up)
    if down.device.type != "meta":
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))


class WeGeFTLinear(LinearAdapter):
    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float,
                 shared: tuple[WeGeFTGenerators, str] | None = None):
        super().__init__(base_layer)
        self.rank = rank
        self.scaling = alpha / rank  # s = α/r
        # A plain tuple, not a submodule: the shared generators are registered once, on the backbone.
        self.shared = shared
        if shared is None:
            self.up, self.down = new_generators(self.in_features, rank, base_layer.weight)  # Φ1, Φ2

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        return 2 * in_features * config.rank  # per-layer mode; shared mode is counted per kind

    def generators(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Φ1, Φ2): this layer's own, or its kind's shared pair."""
        if self.shared is None:
            return self.up, self.down
        module, key = self.shared
        return module.up[key], module.down[key]

    def reset_parameters(self) -> None:
        """This layer's own generators; shared ones are reset by `WeGeFTGenerators.reset_parameters`."""
        if self.shared is None:
            reset_generators(self.up, self.down)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = self.generators()
        return self.base_layer(x + ((x @ down.T) @ up.T) * self.scaling)  # W0·(x + s·Φ1·Φ2·x) + b

    def delta_weight(self) -> torch.Tensor:
        up, down = self.generators()
        return ((self.base_layer.weight @ up) @ down) * self.scaling  # s·W0·Φ1·Φ2

    def merged_weight(self) -> torch.Tensor:
        """W0 + s·W0·Φ1·Φ2 in float64, rounded once to the weight's dtype."""
        weight = self.base_layer.weight.double()
        up, down = (g.double() for g in self.generators())
        return weight + ((weight @ up) @ down) * self.scaling


def apply(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Wrap the target linears; in shared mode first register `backbone.wegeft_generators`."""
    if not config.shared:
        return replace_linears(backbone.model, config.target_patterns(backbone.architecture),
                               lambda _, linear: WeGeFTLinear(linear, config.rank, config.alpha))
    generators = WeGeFTGenerators(config.rank)
    backbone.wegeft_generators = generators

    def wrap(path: str, linear: nn.Linear) -> WeGeFTLinear:
        kind = path.rpartition(".")[2]
        return WeGeFTLinear(linear, config.rank, config.alpha, shared=(generators, generators.key_for(kind, linear)))

    return replace_linears(backbone.model, config.target_patterns(backbone.architecture), wrap)


def count(architecture: Architecture, config: AdapterConfig) -> int:
    """2·in·r per target layer; shared: 2·in·r per distinct (kind, in, out)."""
    shapes = target_shapes(architecture, config)
    if config.shared:
        shapes = list({(path.rpartition(".")[2], i, o) for path, i, o in shapes})
    return sum(2 * i * config.rank for _, i, _ in shapes)


register_method(Method("wegeft", apply, count, layer=WeGeFTLinear, settings=("rank", "alpha", "include_ffn", "targets", "shared")))
