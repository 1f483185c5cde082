"""Pooling, task heads, and `ProteinPredictor` = backbone + adapter + head, saved and loaded whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from protadapt.adapters import AdapterConfig, AdapterError, adapter_state_dict, apply_method, linear_adapters
from protadapt.adapters.base import check_known_keys, load_state_exact, load_tensors, save_tensors
from protadapt.backbones import Architecture, Backbone, load_backbone, rebuild

FORMAT_VERSION = 1


@dataclass
class HeadConfig:
    problem_type: str = "classification"  # classification | regression
    num_classes: int = 2  # ignored for regression
    pooling: str = "mean"  # mean over residues (BOS/EOS/padding excluded) | bos
    dropout: float = 0.1
    hidden_dim: int | None = None  # None: a single linear layer on the pooled vector

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.problem_type == "classification" else 1

    @classmethod
    def from_dict(cls, values: dict) -> "HeadConfig":
        check_known_keys(cls, values, "head")
        return cls(**values)


def residue_mask(tokens: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """True at amino-acid positions; False at BOS, EOS and padding."""
    return backbone.residue_mask(tokens)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class Head(nn.Module):
    """Dropout → (optional hidden layer) → linear to `num_outputs`; regression output is squeezed."""

    def __init__(self, embed_dim: int, config: HeadConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        width = embed_dim
        if config.hidden_dim:
            layers += [nn.Linear(embed_dim, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        layers.append(nn.Linear(width, config.num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.layers(pooled)
        return out.squeeze(-1) if self.config.problem_type == "regression" else out


class ProteinPredictor(nn.Module):
    """Token batch → class logits `[B, C]` or regression values `[B]`."""

    def __init__(self, backbone: Backbone, head_config: HeadConfig, adapter_config: AdapterConfig):
        super().__init__()
        self.backbone = backbone
        self.head_config = head_config
        self.adapter_config = adapter_config
        self.adapted_layers = apply_method(backbone, adapter_config)
        self.head = Head(backbone.embed_dim, head_config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(tokens), tokens))

    def pool(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.head_config.pooling == "bos":
            return hidden[:, 0]
        if self.head_config.pooling == "mean":
            return mean_pool(hidden, residue_mask(tokens, self.backbone))
        raise AdapterError(f"unknown pooling '{self.head_config.pooling}'; choose mean or bos")

    # ------------------------------------------------------------ parameter groups

    def magnitude_parameters(self) -> list[nn.Parameter]:
        """DoRA magnitudes m: BiDoRA's upper-level variables."""
        return [p for layer in linear_adapters(self).values() if hasattr(layer, "magnitude_parameters")
                for p in layer.magnitude_parameters()]

    def direction_parameters(self) -> list[nn.Parameter]:
        """Everything trainable that is not a magnitude: adapter directions, prompts, the head."""
        magnitudes = {id(p) for p in self.magnitude_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in magnitudes]

    def orthogonality_penalty(self) -> torch.Tensor:
        penalties = [layer.orthogonality_penalty() for layer in linear_adapters(self).values()
                     if hasattr(layer, "orthogonality_penalty")]
        return torch.stack(penalties).mean() if penalties else torch.zeros(())

    # ------------------------------------------------------------ save / load

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a run must keep: head + adapter tensors, or the whole backbone for full fine-tuning."""
        if self.adapter_config.method == "full":
            if any(layer.merged for layer in linear_adapters(self).values()):
                raise AdapterError("unmerge adapters before saving")
            return dict(self.state_dict())
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"backbone.{k}": v for k, v in adapter_state_dict(self.backbone).items()})
        return state

    def save(self, directory: str | Path, metadata: dict | None = None) -> None:
        metadata = {
            "format": FORMAT_VERSION,
            "backbone": asdict(self.backbone.architecture) | {"pretrained": self.backbone.pretrained,
                                                               "source": self.backbone.source},
            "adapter": asdict(self.adapter_config),
            "head": asdict(self.head_config),
            **(metadata or {}),
        }
        save_tensors(self.trainable_state(), metadata, Path(directory))

    def load_trained(self, directory: str | Path) -> dict:
        """Load saved adapter + head into this predictor; its backbone, method and rank must match."""
        directory = Path(directory)
        state, metadata = load_tensors(directory)
        check_compatible(metadata, self.backbone.architecture, self.adapter_config, directory)
        load_state_exact(self, state, set(self.trainable_state()), directory / "adapter.safetensors")
        return metadata

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone | str | None = None) -> tuple["ProteinPredictor", dict]:
        """Rebuild a saved predictor. `backbone` defaults to the one named in the saved metadata."""
        directory = Path(directory)
        _, metadata = load_tensors(directory)
        if backbone is None:
            saved = metadata["backbone"]
            backbone = _backbone_from_metadata(saved)
        elif isinstance(backbone, str):
            backbone = load_backbone(backbone)
        predictor = cls(backbone, HeadConfig.from_dict(metadata["head"]), AdapterConfig.from_dict(metadata["adapter"]))
        predictor.load_trained(directory)
        return predictor.eval(), metadata


def check_compatible(metadata: dict, architecture: Architecture, adapter: AdapterConfig, directory: Path) -> None:
    saved = metadata.get("backbone", {})
    shape = ("family", "num_layers", "embed_dim", "attention_heads")
    if any(saved.get(key) != getattr(architecture, key) for key in shape):
        raise AdapterError(
            f"{directory}: saved for backbone {saved.get('name')} ({saved.get('num_layers')} layers, "
            f"width {saved.get('embed_dim')}), but this backbone is {architecture.name} "
            f"({architecture.num_layers} layers, width {architecture.embed_dim})")
    saved_adapter = metadata.get("adapter", {})
    unused = {"rank": ("full", "head", "prompt"), "alpha": ("full", "head", "prompt", "wegeft")}  # by method
    for key in ("method", "rank", "alpha", "include_ffn", "targets", "shared", "num_prompts"):
        value = getattr(adapter, key)
        saved_value = saved_adapter.get(key)
        if isinstance(value, tuple):
            value = list(value)
        if saved_value != value and adapter.method not in unused.get(key, ()):
            raise AdapterError(f"{directory}: saved with {key}={saved_value}, but this model has {key}={value}")


def _backbone_from_metadata(saved: dict) -> Backbone:
    return rebuild(saved)  # random init: weights are overwritten only where trained; see README
