"""`ProteinPredictor` = backbone + adapter + head: its forward, parameter groups, and persistence.

A run directory's `adapter.safetensors` holds what the method trained (plus the head) and
`adapter.json` the backbone, adapter and head settings and the run's metadata (task, problem
type, class labels); `ProteinPredictor.load` rebuilds the whole predictor from the two.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from protadapt.adapters import AdapterConfig, AdapterError, DecomposedLinear, Method, adapter_state_dict, apply_method, \
    get_method, linear_adapters
from protadapt.adapters.base import load_state_exact, load_tensors, save_tensors
from protadapt.adapters.dora import mean_orthogonality_penalty
from protadapt.backbones import Architecture, Backbone, load_backbone, rebuild
from protadapt.heads import Head, HeadConfig, pool
from protadapt.rundir import check_complete

FORMAT_VERSION = 1


class ProteinPredictor(nn.Module):
    """Token batch → class logits `[B, C]` or regression values `[B]`."""

    def __init__(self, backbone: Backbone, head_config: HeadConfig, adapter_config: AdapterConfig):
        super().__init__()
        self.backbone = backbone
        self.head_config = head_config
        self.adapter_config = adapter_config
        self.adapted_layers = apply_method(backbone, adapter_config)
        self.head = Head(backbone.embed_dim, head_config)
        self.labels: list = []  # class labels in output order; saved as the run's metadata
        self.embeddings_file: str | None = None  # a probe on precomputed vectors (data.embeddings_file); saved

    @property
    def method(self) -> Method:
        return get_method(self.adapter_config.method)

    @property
    def problem_type(self) -> str:
        return self.head_config.problem_type

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(tokens), tokens))

    def pool(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return pool(hidden, tokens, self.backbone, self.head_config.pooling)

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities for classification, the value itself for regression."""
        return scores(self.problem_type, output)

    # ------------------------------------------------------------ parameter groups

    def decomposed_layers(self) -> list[DecomposedLinear]:
        return [layer for layer in linear_adapters(self).values() if isinstance(layer, DecomposedLinear)]

    def magnitude_parameters(self) -> list[nn.Parameter]:
        """DoRA magnitudes m: BiDoRA's upper-level variables."""
        return [p for layer in self.decomposed_layers() for p in layer.magnitude_parameters()]

    def direction_parameters(self) -> list[nn.Parameter]:
        """Everything trainable that is not a magnitude: adapter directions, prompts, the head."""
        magnitudes = {id(p) for p in self.magnitude_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in magnitudes]

    def orthogonality_penalty(self) -> torch.Tensor:
        return mean_orthogonality_penalty(self.decomposed_layers())  # one batched pass per layer shape

    # ------------------------------------------------------------ save / load

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a run must keep: head + adapter tensors, or the whole backbone for full fine-tuning."""
        if self.method.trains_backbone:
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
            **({"embeddings_file": self.embeddings_file} if self.embeddings_file else {}),
            **(metadata or {}),
        }
        save_tensors(self.trainable_state(), metadata, Path(directory))

    def load_trained(self, directory: str | Path) -> dict:
        """Load saved adapter + head into this predictor; its backbone, method and rank must match."""
        directory = Path(directory)
        state, metadata = load_tensors(directory)
        self.load_saved(state, metadata, directory)
        return metadata

    def load_saved(self, state: dict[str, torch.Tensor], metadata: dict, directory: Path) -> None:
        check_compatible(metadata, self.backbone.architecture, self.adapter_config, directory)
        load_state_exact(self, state, set(self.trainable_state()), directory / "adapter.safetensors")

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone | str | None = None) -> tuple["ProteinPredictor", dict]:
        """Rebuild a saved predictor. `backbone` defaults to the one named in the saved metadata."""
        directory = Path(directory)
        check_complete(directory)  # an unfinished or altered run is refused before anything is read
        state, metadata = load_tensors(directory)
        if backbone is None:
            backbone = backbone_from_metadata(metadata["backbone"])
        elif isinstance(backbone, str):
            backbone = load_backbone(backbone)
        predictor = cls(backbone, HeadConfig.from_dict(metadata["head"]), AdapterConfig.from_dict(metadata["adapter"]))
        predictor.load_saved(state, metadata, directory)
        predictor.labels = list(metadata.get("labels", []))
        predictor.embeddings_file = metadata.get("embeddings_file")
        return predictor.eval(), metadata


def scores(problem_type: str, output: torch.Tensor) -> torch.Tensor:
    """Class probabilities for classification, the value itself for regression."""
    return output.float().softmax(-1) if problem_type == "classification" else output.float()


SHAPE_KEYS = ("family", "num_layers", "embed_dim", "attention_heads")


def check_compatible(metadata: dict, architecture: Architecture, adapter: AdapterConfig, directory: Path) -> None:
    """Saved weights fit this backbone and adapter: same shape, same method and the settings it uses."""
    saved = metadata.get("backbone", {})
    if any(saved.get(key) != getattr(architecture, key) for key in SHAPE_KEYS):
        raise AdapterError(
            f"{directory}: saved for backbone {saved.get('name')} ({saved.get('num_layers')} layers, "
            f"width {saved.get('embed_dim')}), but this backbone is {architecture.name} "
            f"({architecture.num_layers} layers, width {architecture.embed_dim})")
    saved_adapter = metadata.get("adapter", {})
    for key in ("method", *get_method(adapter.method).settings):
        value = getattr(adapter, key)
        value = list(value) if isinstance(value, tuple) else value
        if saved_adapter.get(key) != value:
            raise AdapterError(f"{directory}: saved with {key}={saved_adapter.get(key)}, but this model has {key}={value}")


def backbone_from_metadata(saved: dict) -> Backbone:
    """The backbone a run was trained on: rebuilt from its seed (random init) or loaded again."""
    return rebuild(saved)  # random init: weights are overwritten only where trained; see README
