"""The interface every backbone family implements, and the record that describes one.

A backbone turns a token batch `[B, T]` into per-residue hidden states `[B, T, E]`; it owns its
tokenizer (specials included), says which positions are residues, where prompt vectors go in,
which linears adapters target by default, and how long an input may be. `Architecture` is what a
run saves about it, so a reload can rebuild it (random init) or check that it matches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
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
    """`backbone_dtype`: keep the frozen linear and embedding weights in `dtype`, half the bytes for bf16.

    Each such layer upcasts its weight to the activations' dtype when it is used (one layer's copy at
    a time, `frozen_linear`), so without autocast the step computes in fp32 — on CPUs without bf16
    instructions bf16 GEMMs are 6-40× slower (benchmarks/results/memory.md) — and under
    `trainer.precision=bf16-mixed` autocast makes it bf16 as usual (GPUs). Activations and the output
    stay in fp32. LayerNorms, every other parameter and the buffers (rotary frequencies) keep fp32:
    they are <0.1 % of the bytes. Call it before adapters are applied; they stay fp32 over the bf16
    weight (`adapters.base.adapter_dtype`). Only for frozen weights: the layers give no weight gradient.
    """
    target = WEIGHT_DTYPES[dtype]
    if target == torch.float32:
        return backbone
    for module in backbone.modules():
        stored = {nn.Linear: StoredLinear, nn.Embedding: StoredEmbedding}.get(type(module))
        if stored is not None:
            for parameter in module.parameters(recurse=False):
                parameter.data = parameter.data.to(target)
            module.__class__ = stored  # same parameters and names, an upcasting forward
        if hasattr(module, "enable_torch_version"):  # fair-esm's fused attention (ESM-1b) reads weights directly
            module.enable_torch_version = False
    return backbone


class StoredLinear(nn.Linear):
    """A frozen `nn.Linear` whose weight is stored in bf16 and upcast per use (`store_frozen_weights`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(x, self.weight, self.bias)


class StoredEmbedding(nn.Embedding):
    """A frozen `nn.Embedding` stored in bf16: the looked-up rows are returned in fp32."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).float()


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` with a frozen `weight` stored lower than `x`: upcast per use, and backward
    upcasts again instead of keeping an fp32 copy (which would undo the memory saved). No weight gradient."""
    if weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):  # autocast casts by itself
        return F.linear(x, weight, bias)
    return _FrozenLinear.apply(x, weight, bias)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None


# Families by `Architecture.family`: each module registers its Backbone subclass on import.
FAMILIES: dict[str, type[Backbone]] = {}


def register_family(name: str, backbone_class: type[Backbone]) -> None:
    FAMILIES[name] = backbone_class


def family(name: str) -> type[Backbone]:
    if name not in FAMILIES:
        raise BackboneError(f"unknown backbone family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
