"""Prompt tuning (Lester et al. 2021, arXiv 2104.08691): `p` learnable input vectors after BOS/CLS.

The backbone stays frozen; its forward inserts `backbone.prompt()` after the first position,
extends the padding mask, and drops those positions from its output, so pooling and the head see
only the real tokens. Rotary families (ESM-2, ESM C) take the vectors as input embeddings: their
positions are relative, so the shifted residues keep their pairwise geometry. BERT takes them after
its embedding layer, so the residues keep their learned positions. ESM-1b is refused: its learned
absolute positions are added inside fair-esm's forward, and would all move.

Initialisation: each vector is the first layer's view of a random canonical amino acid
(`Backbone.prompt_init`: for ESM-2 the input embedding scaled by `embed_scale` and token dropout's
1 − 0.15·0.8). Unlike the other methods the model is NOT unchanged at init — the residues attend to
the extra tokens — so the spec's identity requirement (a) cannot hold; the tests check instead that
the frozen weights are untouched and that predictions depend on the prompt vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from protadapt.adapters.base import Adapter, AdapterConfig, AdapterError
from protadapt.adapters.registry import Method, register_method
from protadapt.backbones import Architecture, Backbone

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


class PromptEmbedding(Adapter):
    """`num_prompts × embed_dim` learnable vectors; calling it returns them."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.vectors = nn.Parameter(vectors)

    def forward(self) -> torch.Tensor:
        return self.vectors


def amino_acid_init(backbone: Backbone, num_prompts: int) -> torch.Tensor:
    """First-layer vectors of `num_prompts` random canonical amino acids (global RNG, as other inits)."""
    indices = torch.tensor([backbone.tokenizer.get_idx(aa) for aa in AMINO_ACIDS])
    chosen = indices[torch.randint(len(indices), (num_prompts,))]
    return backbone.prompt_init(chosen).detach().clone()


def apply(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Set `backbone.prompt`; wraps no layer, so the list of adapted paths is empty."""
    if backbone.PROMPT_REFUSAL:
        raise AdapterError(f"{backbone.PROMPT_REFUSAL} ({backbone.architecture.name}), so use lora, dora or wegeft with it")
    if config.num_prompts < 1:
        raise AdapterError(f"prompt tuning needs num_prompts >= 1, got {config.num_prompts}")
    backbone.prompt = PromptEmbedding(amino_acid_init(backbone, config.num_prompts))
    return []


def count(architecture: Architecture, config: AdapterConfig) -> int:
    """p·E."""
    return config.num_prompts * architecture.embed_dim


register_method(Method("prompt", apply, count, settings=("num_prompts",)))
