"""Prompt tuning (Lester et al. 2021, arXiv 2104.08691): `p` learnable input vectors after BOS.

The backbone stays frozen; `Backbone.forward` inserts `backbone.prompt()` after the BOS embedding,
extends the padding mask, and drops those positions from its output, so pooling and the head see
only the real tokens. ESM-2 only: its rotary positions are relative, so the shifted residues keep
their pairwise geometry; ESM-1b's learned absolute positions would all move.

Initialisation: each vector is the input embedding of a random canonical amino acid, scaled as the
first layer sees real tokens (`embed_scale`, and token dropout's 1 − 0.15·0.8 factor). Unlike the
other methods the model is NOT unchanged at init — the residues attend to the extra tokens — so
the spec's identity requirement (a) cannot hold; the tests check instead that the frozen weights
are untouched and that predictions depend on the prompt vectors.
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
    """Input vectors of `num_prompts` random canonical amino acids (global RNG, as other inits)."""
    model, alphabet = backbone.model, backbone.alphabet
    indices = torch.tensor([alphabet.get_idx(aa) for aa in AMINO_ACIDS])
    chosen = indices[torch.randint(len(indices), (num_prompts,))]
    vectors = model.embed_tokens.weight.detach()[chosen.to(model.embed_tokens.weight.device)] * model.embed_scale
    if model.token_dropout:
        vectors = vectors * (1 - 0.15 * 0.8)  # what Backbone.forward does to unmasked tokens
    return vectors.clone()


def apply(backbone: Backbone, config: AdapterConfig) -> list[str]:
    """Set `backbone.prompt`; wraps no layer, so the list of adapted paths is empty."""
    if backbone.architecture.family != "esm2":
        raise AdapterError(f"prompt tuning needs a rotary ESM-2 backbone; {backbone.architecture.name} "
                           f"has learned positions, so use lora, dora or wegeft with it")
    if config.num_prompts < 1:
        raise AdapterError(f"prompt tuning needs num_prompts >= 1, got {config.num_prompts}")
    backbone.prompt = PromptEmbedding(amino_acid_init(backbone, config.num_prompts))
    return []


def count(architecture: Architecture, config: AdapterConfig) -> int:
    """p·E."""
    return config.num_prompts * architecture.embed_dim


register_method(Method("prompt", apply, count, settings=("num_prompts",)))
