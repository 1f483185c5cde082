"""The interface every backbone family implements, and the record that describes one.

A backbone turns a token batch `[B, T]` into per-residue hidden states `[B, T, E]`; it owns its
tokenizer (specials included), says which positions are residues, where prompt vectors go in,
which linears adapters target by default, and how long an input may be. `Architecture` is what a
run saves about it, so a reload can rebuild it (random init) or check that it matches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


# `backbone_dtype`: how the frozen weights are stored (bfloat16 halves their bytes; see `store_frozen_weights`)
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class BackboneError(RuntimeError):
    """A one-line, user-facing problem with finding or reading backbone weights."""


@dataclass(frozen=True)
class Architecture:
    """The shape of a backbone: enough to build it, count adapter parameters, or check a match."""

    name: str
    family: str  # "esm2" (rotary) | "esm1b" (learned positions) | "esmc" | "bert"
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True
    intermediate_size: int | None = None  # None: 4 × embed_dim, as ESM-2 and ESM-1b have
    hf_config: dict | None = None  # transformers families: the whole config, to rebuild the model exactly

    @property
    def ffn_dim(self) -> int:
        return self.intermediate_size or 4 * self.embed_dim

    def target_patterns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(attention q/k/v/out, feed-forward) full-path regexes of this family's linears."""
        return family(self.family).ATTENTION_TARGETS, family(self.family).FFN_TARGETS

    @classmethod
    def from_record(cls, record: dict) -> "Architecture":
        """The architecture a run saved (`asdict` plus extra keys, which are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


class Backbone(nn.Module):
    """Token batch in, final-layer per-residue states out (no LM head). Families subclass it.

    `prompt`, when set by prompt tuning, is a module returning `p × E` vectors that the family's
    forward inserts after the first (CLS/BOS) position; the output drops those positions again,
    so it stays aligned with `tokens`.
    """

    ATTENTION_TARGETS: tuple[str, ...] = ()
    FFN_TARGETS: tuple[str, ...] = ()
    MAX_RESIDUES: int = 1022
    PROMPT_REFUSAL: str | None = None  # why this family cannot take prompt tuning, if it cannot

    def __init__(self, model: nn.Module, tokenizer, architecture: Architecture, pretrained: bool, source: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.pretrained = pretrained
        self.source = source
        self.prompt: nn.Module | None = None
        self.output_layer: int | None = None  # stop after this many blocks (a probe's layer); None: the last
        self.checkpointing = False  # `trainer.checkpointing`: layers recomputed in backward (`run_layer`)

    def hidden_states(self, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Per-residue states after each requested block (0: embeddings; the last: the final output)."""
        if layers == [self.architecture.num_layers] and self.output_layer is None:
            return {layers[0]: self(tokens)}
        raise BackboneError(f"states of inner layers need an ESM-2 backbone; {self.architecture.name} "
                            "gives its last layer only (use probe_layers=[-1] / --layers -1)")

    @property
    def alphabet(self):
        """The tokenizer under fair-esm's name, which the data layer reads (`tok_to_idx`, specials)."""
        return self.tokenizer

    @property
    def embed_dim(self) -> int:
        return self.architecture.embed_dim

    @property
    def max_residues(self) -> int:
        return self.MAX_RESIDUES

    def residue_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """True at amino-acid positions; False at the family's CLS/BOS, EOS/SEP and padding."""
        t = self.tokenizer
        return (tokens != t.padding_idx) & (tokens != t.cls_idx) & (tokens != t.eos_idx)

    def prompt_init(self, residues: torch.Tensor) -> torch.Tensor:
        """Vectors as the first layer sees the given residue tokens: prompt tuning's initialisation."""
        raise NotImplementedError

    def run_layer(self, layer, *inputs, **options):
        """`layer(*inputs)`, checkpointed when `trainer.checkpointing` is on and gradients are recorded:
        only the layer's input is kept, its activations are recomputed in backward."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, *inputs, use_reentrant=False, **options)
        return layer(*inputs, **options)

    def _prompt_vectors(self, like: torch.Tensor) -> torch.Tensor | None:
        return None if self.prompt is None else self.prompt().to(like.dtype)


def insert_prompt(x: torch.Tensor, keep: torch.Tensor, prompt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert `p × E` prompt vectors after position 0 of `x` `[B, T, E]`; `keep` (True = attend) grows too."""
    if prompt is None:
        return x, keep
    batch = x.shape[0]
    x = torch.cat([x[:, :1], prompt.unsqueeze(0).expand(batch, -1, -1), x[:, 1:]], dim=1)
    keep = torch.cat([keep[:, :1], keep.new_ones(batch, prompt.shape[0]), keep[:, 1:]], dim=1)
    return x, keep


def drop_prompt(x: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """The inverse of `insert_prompt` on the output: positions 1 … p removed."""
    return torch.cat([x[:, :1], x[:, 1 + num_prompts:]], dim=1) if num_prompts else x


def store_frozen_weights(backbone: Backbone, dtype: str) -> Backbone:
    """`backbone_dtype`: store the backbone's weights in `dtype`, so a big frozen backbone takes half the memory.

    Linears and embeddings are cast; LayerNorms keep their fp32 weights (2·E numbers each, <0.1 % of
    the bytes; torch's layer_norm normalises a bf16 input in fp32 with them and returns bf16, as
    autocast would), and buffers stay as they are (the rotary frequencies must stay fp32). The
    activations then run in bf16; the output is returned in fp32, so pooling and the fp32 head see
    what they always see. Call it before adapters are applied: they keep fp32 parameters over a bf16
    base weight (`adapters.base.adapter_dtype`).
    """
    target = WEIGHT_DTYPES[dtype]
    if target == torch.float32:
        return backbone
    for module in backbone.modules():
        if isinstance(module, nn.LayerNorm):
            continue
        for parameter in module.parameters(recurse=False):
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(target)
    backbone.register_forward_hook(_fp32_output)
    return backbone


def _fp32_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.float()


# Families by `Architecture.family`: each module registers its Backbone subclass on import.
FAMILIES: dict[str, type[Backbone]] = {}


def register_family(name: str, backbone_class: type[Backbone]) -> None:
    FAMILIES[name] = backbone_class


def family(name: str) -> type[Backbone]:
    if name not in FAMILIES:
        raise BackboneError(f"unknown backbone family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
