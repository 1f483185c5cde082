"""The mechanism every adapter shares: choose target linears by full module path, wrap them,
freeze the rest, count, merge/unmerge, and save/load adapter-only weights (safetensors + JSON).

Targets are regular expressions matched against the *whole* module path inside the backbone's
fair-esm model (e.g. `layers.3.self_attn.q_proj`). A pattern never matches a suffix, so the
task head — which lives outside the backbone — can never be wrapped by accident (PEFT's bare
`dense` target also hits `classifier.dense` on ESM).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from protadapt.files import read_json, read_safetensors

ATTENTION_TARGETS = (r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",)
FFN_TARGETS = (r"layers\.\d+\.(fc1|fc2)",)


class AdapterError(ValueError):
    """A one-line, user-facing problem with adapter configuration or saved adapter files."""


@dataclass
class AdapterConfig:
    """How the backbone is adapted. Fields a method does not use are ignored by it."""

    method: str = "lora"  # lora | dora | bidora | wegeft | prompt | full | head | probe
    rank: int = 8  # r
    alpha: float = 16.0  # α; the low-rank update is scaled by α / r
    dropout: float = 0.0  # on the low-rank input path only
    include_ffn: bool = False  # also adapt the feed-forward linears fc1 / fc2
    targets: tuple[str, ...] | None = None  # full-path regexes; overrides the two fields above
    detach_norm: bool = False  # DoRA: ‖V‖ treated as a constant in backward (DoRA paper §4.3)
    shared: bool = False  # WeGeFT: one generator pair per projection kind and shape
    num_prompts: int = 16  # prompt tuning: p learnable vectors after BOS
    probe_layers: tuple[int, ...] = (-1,)  # probe: candidate layers (0 embeddings … -1 last); best by internal CV

    def target_patterns(self, architecture=None) -> tuple[str, ...]:
        """`targets`, else the backbone family's attention (+ FFN) linears; ESM's without an architecture."""
        if self.targets:
            return tuple(self.targets)
        attention, ffn = (ATTENTION_TARGETS, FFN_TARGETS) if architecture is None else architecture.target_patterns()
        return attention + (ffn if self.include_ffn else ())

    @classmethod
    def from_dict(cls, values: dict) -> "AdapterConfig":
        check_known_keys(cls, values, "adapter")
        values = dict(values)
        if values.get("targets") is not None:
            values["targets"] = tuple(values["targets"])
        return cls(**values)


def check_known_keys(cls: type, values: dict, what: str) -> None:
    """Saved or given settings may only name fields of `cls`: a typo is an error, never ignored."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AdapterError(f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


class Adapter(nn.Module):
    """Marker base: a module whose own parameters and buffers are adapter state.

    A wrapped frozen layer is always held as `base_layer` and is never adapter state.
    """


class LinearAdapter(Adapter):
    """Wraps a frozen `nn.Linear`; a method defines its update, this base merges it exactly.

    A method implements `adapted_forward` (the unmerged forward), `delta_weight` (ΔW with
    W = W0 + ΔW) and `reset_parameters` (its initial state, W = W0 where the method allows it); a
    method whose W is not W0 + ΔW overrides `effective_weight`. Merging swaps W into the base layer
    and keeps W0 aside untouched, so unmerging restores the frozen weight bit for bit.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        base_layer.weight.requires_grad_(False)
        if base_layer.bias is not None:
            base_layer.bias.requires_grad_(False)
        # W0 while merged (a buffer, so it follows .to(); not persistent, so never saved)
        self.register_buffer("unmerged_weight", None, persistent=False)

    @property
    def merged(self) -> bool:
        return self.unmerged_weight is not None

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) if self.merged else self.adapted_forward(x)

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer applies, as one `out × in` tensor (for merging and analysis)."""
        if self.merged:
            return self.base_layer.weight
        return self.base_layer.weight + self.delta_weight()

    def merged_weight(self) -> torch.Tensor:
        """What merging writes into the base layer; a method may compute it more precisely."""
        return self.effective_weight()

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            merged = self.merged_weight().to(weight.dtype)
            self.unmerged_weight = weight.data
            weight.data = merged

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.data = self.unmerged_weight
            self.unmerged_weight = None


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapter parameters train in at least fp32, also over a frozen weight stored in bf16 (`backbone_dtype`)."""
    return torch.promote_types(weight.dtype, torch.float32)


class DecomposedLinear(LinearAdapter):
    """A layer with a magnitude–direction split (DoRA): BiDoRA trains the magnitudes separately."""

    def magnitude_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def orthogonality_penalty(self) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------- finding and wrapping targets


def find_targets(root: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Paths of `nn.Linear` modules under `root` whose full path matches one of `patterns`."""
    compiled = [re.compile(p) for p in patterns]
    return [name for name, module in root.named_modules()
            if isinstance(module, nn.Linear) and any(p.fullmatch(name) for p in compiled)]


def replace_linears(root: nn.Module, patterns: tuple[str, ...],
                    factory: Callable[[str, nn.Linear], LinearAdapter]) -> list[str]:
    """Wrap every matching linear with `factory(path, linear)`; error when nothing matches."""
    names = find_targets(root, patterns)
    if not names:
        raise AdapterError(f"no linear layer matches the target pattern(s) {', '.join(patterns)}")
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child_name, factory(name, getattr(parent, child_name)))
        if hasattr(parent, "enable_torch_version"):
            # fair-esm's fused attention path (ESM-1b) reads q/k/v weights directly, bypassing wrappers
            parent.enable_torch_version = False
    return names


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def adapters(root: nn.Module) -> Iterator[tuple[str, Adapter]]:
    return ((name, m) for name, m in root.named_modules() if isinstance(m, Adapter))


def linear_adapters(root: nn.Module) -> dict[str, LinearAdapter]:
    return {name: m for name, m in root.named_modules() if isinstance(m, LinearAdapter)}


def merge_adapters(root: nn.Module) -> None:
    """Fold every adapter into its base weight, so inference costs what the bare backbone costs."""
    for layer in linear_adapters(root).values():
        layer.merge()


def unmerge_adapters(root: nn.Module) -> None:
    for layer in linear_adapters(root).values():
        layer.unmerge()


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------- adapter-only save / load


def adapter_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """Own parameters and buffers of every adapter under `root`, never the base layers they wrap."""
    state = {}
    for path, module in adapters(root):
        for key, tensor in module.state_dict().items():
            if not key.startswith("base_layer.") and ".base_layer." not in key:
                state[f"{path}.{key}" if path else key] = tensor
    return state


def save_tensors(state: dict[str, torch.Tensor], metadata: dict, directory: Path, stem: str = "adapter") -> None:
    """Write `<stem>.safetensors` and `<stem>.json` (no pickle anywhere)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    unique = {key: tensor.detach().contiguous().clone() for key, tensor in state.items()}
    save_file(unique, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(metadata, indent=2, default=_jsonable) + "\n")


def load_tensors(directory: Path, stem: str = "adapter") -> tuple[dict[str, torch.Tensor], dict]:
    weights, config = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    for path in (weights, config):
        if not path.exists():
            raise AdapterError(f"{path}: missing; a saved adapter is {stem}.safetensors plus {stem}.json")
    state = read_safetensors(weights, AdapterError)
    return state, read_json(config, AdapterError, "save the run again with `protadapt fit`")


def load_state_exact(module: nn.Module, state: dict[str, torch.Tensor], expected: set[str], source: Path) -> None:
    """Copy `state` into `module`; its keys must be exactly `expected`, shapes must match."""
    own = module.state_dict()
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise AdapterError(f"{source}: {len(missing)} tensor(s) missing (e.g. {missing[0]})")
    if unexpected:
        raise AdapterError(f"{source}: {len(unexpected)} tensor(s) the model does not have (e.g. {unexpected[0]})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise AdapterError(f"{source}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}")
    module.load_state_dict(state, strict=False)


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
