"""Pooling over residues and the task head that maps the pooled vector to outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protadapt.adapters.base import AdapterError, check_known_keys
from protadapt.backbones import Backbone

POOLINGS = ("mean", "bos")


@dataclass
class HeadConfig:
    problem_type: str = "classification"  # classification | regression
    num_classes: int = 2  # ignored for regression
    pooling: str = "mean"  # mean over residues (BOS/EOS/padding excluded) | bos
    dropout: float = 0.1
    hidden_dim: int | None = None  # None: a single linear layer on the pooled vector
    # regression: outputs are `z·target_scale + target_mean`, z the linear layer's; `fit` sets both from
    # the mean and sd of the rows the model trains on, so the loss sees standardised targets
    target_mean: float = 0.0
    target_scale: float = 1.0

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


def pool(hidden: torch.Tensor, tokens: torch.Tensor, backbone: Backbone, pooling: str) -> torch.Tensor:
    """One vector per sequence: the BOS state, or the mean over residues."""
    if pooling == "bos":
        return hidden[:, 0]
    if pooling == "mean":
        return mean_pool(hidden, residue_mask(tokens, backbone))
    raise AdapterError(f"unknown pooling '{pooling}'; choose one of: {', '.join(POOLINGS)}")


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
        if self.config.problem_type != "regression":
            return out
        return out.squeeze(-1) * self.config.target_scale + self.config.target_mean  # label space

    @torch.no_grad()
    def standardise_targets(self, labels: np.ndarray) -> None:
        """Regression: scale outputs by the labels' sd, shift by their mean, output bias 0 (the mean)."""
        if self.config.problem_type != "regression":
            return
        labels = np.asarray(labels, dtype=np.float64)
        sd = float(labels.std(ddof=1)) if len(labels) > 1 else 0.0
        self.config.target_mean = float(labels.mean()) if len(labels) else 0.0
        self.config.target_scale = sd if np.isfinite(sd) and sd > 0 else 1.0
        self.layers[-1].bias.zero_()
