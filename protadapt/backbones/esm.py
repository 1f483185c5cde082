"""fair-esm ESM-2 and ESM-1b: the architectures, the fast forward (SDPA attention, fused GELU), and
fair-esm `.pt` checkpoints. HF-format ESM-2 directories are read by `esm_hf` into the same model.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import esm
import torch
import torch.nn.functional as F
from torch import nn

from protadapt.backbones.base import Architecture, Backbone, BackboneError, drop_prompt, insert_prompt, register_family
from protadapt.backbones.packing import attention_for, packed_layers
from protadapt.files import one_line

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
MAX_RESIDUES = 1022  # ESM-2 and ESM-1b were trained on 1024 tokens: BOS + 1022 residues + EOS


def _esm2(name: str, layers: int, dim: int, heads: int) -> Architecture:
    return Architecture(name, "esm2", layers, dim, heads)


ARCHITECTURES: dict[str, Architecture] = {
    "tiny": _esm2("tiny", 2, 32, 4),
    "esm2_t6_8M_UR50D": _esm2("esm2_t6_8M_UR50D", 6, 320, 20),
    "esm2_t12_35M_UR50D": _esm2("esm2_t12_35M_UR50D", 12, 480, 20),
    "esm2_t30_150M_UR50D": _esm2("esm2_t30_150M_UR50D", 30, 640, 20),
    "esm2_t33_650M_UR50D": _esm2("esm2_t33_650M_UR50D", 33, 1280, 20),
    "esm2_t36_3B_UR50D": _esm2("esm2_t36_3B_UR50D", 36, 2560, 40),
    "esm2_t48_15B_UR50D": _esm2("esm2_t48_15B_UR50D", 48, 5120, 40),
    "esm1b_t33_650M_UR50S": Architecture("esm1b_t33_650M_UR50S", "esm1b", 33, 1280, 20, True),
}

# sha256 of the fair-esm .pt files a download checks, by model name. None are published beside the
# files (dl.fbaipublicfiles.com), so none is pinned: a download logs "sha256 not verified" and its digest.
KNOWN_SHA256: dict[str, str] = {}


class ESMBackbone(Backbone):
    """fair-esm ESM-2: final-layer representations by the fast forward below; the tokenizer is
    fair-esm's `Alphabet` (BOS=`<cls>`, EOS, padding, `<mask>` for token dropout)."""

    ATTENTION_TARGETS = (r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",)
    FFN_TARGETS = (r"layers\.\d+\.(fc1|fc2)",)
    MAX_RESIDUES = MAX_RESIDUES
    packing = "off"  # `data.packing` (off | on | auto), set by the run; packing.attention_for reads it

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """fair-esm's ESM2.forward up to the final layer norm (or `output_layer`), with an optional prompt."""
        depth = self.architecture.num_layers if self.output_layer is None else self.output_layer
        return self.hidden_states(tokens, [depth])[depth]

    def hidden_states(self, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """States after block i for each requested i, as fair-esm's `repr_layers` gives them: 0 the
        embeddings, the last after the final layer norm, and the blocks in between without it.
        With `packing` the layers run padding-free (packing.py) and padding positions hold zeros."""
        x, keep, num_prompts = self.embed(tokens)
        attention = attention_for(self.packing, tokens.device.type)
        if attention is None:
            states = self.padded_layers(x, keep, layers)
        else:
            states = packed_layers(self, x, keep, layers, attention, transformer_layer)
        return {depth: drop_prompt(state, num_prompts) for depth, state in states.items()}

    def embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """fair-esm's input embeddings `[B, T, E]` (token dropout rescaled per sequence, padding zeroed)
        with the prompt inserted; `keep` is True at positions that attend and are attended to."""
        model = self.model
        padding_mask = tokens.eq(model.padding_idx)
        x = model.embed_scale * model.embed_tokens(tokens)
        if model.token_dropout:
            x = x.masked_fill((tokens == model.mask_idx).unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            src_lengths = (~padding_mask).sum(-1)
            mask_ratio_observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        prompt = self._prompt_vectors(x)
        x, keep = insert_prompt(x, ~padding_mask, prompt)
        return x, keep, 0 if prompt is None else prompt.shape[0]

    def padded_layers(self, x: torch.Tensor, keep: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """The layer loop on the padded batch (T × B × E inside, as fair-esm), states `[B, T, E]`."""
        model, last = self.model, self.architecture.num_layers
        attention_padding = ~keep if (~keep).any() else None
        x = x.transpose(0, 1)
        states = {0: x} if 0 in layers else {}
        for depth, layer in enumerate(model.layers[:max(layers)], start=1):
            x = self.run_layer(transformer_layer, layer, x, attention_padding)
            if depth in layers:
                states[depth] = model.emb_layer_norm_after(x) if depth == last else x
        return {depth: state.transpose(0, 1) for depth, state in states.items()}

    def prompt_init(self, residues: torch.Tensor) -> torch.Tensor:
        """Input embeddings scaled as the first layer sees unmasked tokens (embed_scale, token dropout)."""
        model = self.model
        vectors = model.embed_tokens.weight.detach()[residues.to(model.embed_tokens.weight.device)] * model.embed_scale
        if model.token_dropout:
            vectors = vectors * (1 - 0.15 * 0.8)  # what forward does to unmasked tokens
        return vectors


class ESM1bBackbone(ESMBackbone):
    """fair-esm ESM-1b: learned absolute positions, so fair-esm's own forward and no prompt tuning."""

    PROMPT_REFUSAL = "prompt tuning needs a rotary ESM-2 backbone; ESM-1b has learned positions"

    def hidden_states(self, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        if self.prompt is not None:
            raise BackboneError(self.PROMPT_REFUSAL)
        representations = self.model(tokens, repr_layers=list(layers))["representations"]
        return {layer: representations[layer] for layer in layers}


register_family("esm2", ESMBackbone)
register_family("esm1b", ESM1bBackbone)


def transformer_layer(layer: nn.Module, x: torch.Tensor, padding_mask, attention: Callable | None = None) -> torch.Tensor:
    """fair-esm's pre-norm ESM-2 TransformerLayer, with attention and GELU as fused kernels.

    `F.gelu` is the same exact-erf GELU as fair-esm's `x·½(1 + erf(x/√2))` (within 1.5e-6), but one
    kernel that keeps one tensor for backward instead of three: ~8× faster and the FFN's largest
    activation saving (benchmarks/results/vs_peft.md). `attention`: packing's, with its layout as `padding_mask`.
    """
    residual = x
    x = residual + (attention or self_attention)(layer.self_attn, layer.self_attn_layer_norm(x), padding_mask)
    residual = x
    x = layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
    return residual + x


def self_attention(attn: nn.Module, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """fair-esm's rotary multi-head attention (T × B × E in and out) via scaled_dot_product_attention.

    Same arithmetic as `esm.multihead_attention.MultiheadAttention` (q scaled before the rotary
    embedding, hence `scale=1`), without materialising the T × T weights for backward.
    """
    length, batch, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # (T, B, E) -> (B·H, T, d), fair-esm's layout
        return t.reshape(length, batch * heads, head_dim).transpose(0, 1)

    forget_inference_tables(attn.rot_emb)
    q, k = attn.rot_emb(split(attn.q_proj(x) * attn.scaling), split(attn.k_proj(x)))
    v = split(attn.v_proj(x))
    q, k, v = (t.reshape(batch, heads, length, head_dim) for t in (q, k, v))
    mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, width))


def forget_inference_tables(rotary: nn.Module) -> None:
    """fair-esm caches its rotary cos/sin per length; tables made under `inference_mode` (prediction,
    Lightning's validation) cannot be saved for a later backward at the same length, so drop them."""
    cached = rotary._cos_cached
    if cached is not None and cached.is_inference() and not torch.is_inference_mode_enabled():
        rotary._seq_len_cached = None


def build_esm(architecture: Architecture) -> tuple[nn.Module, esm.data.Alphabet]:
    """fair-esm's module for the architecture, with fair-esm's initialisation."""
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    if architecture.family == "esm2":
        model = esm.model.esm2.ESM2(architecture.num_layers, architecture.embed_dim,
                                    architecture.attention_heads, alphabet, architecture.token_dropout)
    else:
        args = argparse.Namespace(
            arch="roberta_large", layers=architecture.num_layers, embed_dim=architecture.embed_dim,
            ffn_embed_dim=architecture.ffn_dim, attention_heads=architecture.attention_heads,
            max_positions=1024, emb_layer_norm_before=True, token_dropout=architecture.token_dropout,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        )
        model = esm.model.esm1.ProteinBertModel(args, alphabet)
    return model, alphabet


def esm_linear_shapes(architecture: Architecture) -> list[tuple[str, int, int]]:
    """(path, in, out) of every adaptable linear, from the architecture alone."""
    e, f = architecture.embed_dim, architecture.ffn_dim
    linears = []
    for i in range(architecture.num_layers):
        linears += [(f"layers.{i}.self_attn.{p}", e, e) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        linears += [(f"layers.{i}.fc1", e, f), (f"layers.{i}.fc2", f, e)]
    return linears


def wrap_esm(model: nn.Module, alphabet, architecture: Architecture, pretrained: bool, source: str) -> ESMBackbone:
    return (ESMBackbone if architecture.family == "esm2" else ESM1bBackbone)(model, alphabet, architecture, pretrained, source)


# ---------------------------------------------------------------- fair-esm `.pt` checkpoints


def load_fair_esm_checkpoint(path: Path, name: str | None = None) -> Backbone:
    """Read a fair-esm checkpoint safely (weights_only, only argparse.Namespace allowed)."""
    try:
        data = read_checkpoint(path)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise BackboneError(f"{path}: not a readable fair-esm checkpoint ({one_line(error)})") from None
    if not isinstance(data, dict) or "model" not in data or not ({"cfg", "args"} & set(data)):
        raise BackboneError(f"{path}: not a fair-esm checkpoint (expected a dict with 'model' and 'cfg' or 'args')")
    architecture = _architecture_from_fair_esm(data, name or path.stem, path)
    state = {_strip_fairseq_prefix(key): value for key, value in data["model"].items()}
    regression = path.with_name(path.stem + "-contact-regression.pt")
    if regression.exists():
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state.update(torch.load(regression, map_location="cpu", weights_only=True)["model"])
        except Exception as error:
            raise BackboneError(f"{regression}: not a readable contact-regression file ({one_line(error)})") from None
    with torch.device("meta"):  # no random initialisation to overwrite: the checkpoint's tensors are the weights
        model, alphabet = build_esm(architecture)
    if architecture.family == "esm1b" and "embed_tokens.weight" in state:
        state["embed_tokens.weight"][alphabet.mask_idx].zero_()  # as fair-esm does, for token drop
    load_state_strict(model, state, path, assign=True)
    model.lm_head.weight = model.embed_tokens.weight  # assign replaced each tensor: tied again, as fair-esm builds it
    initialise_left_on_meta(model)
    return wrap_esm(model, alphabet, architecture, pretrained=True, source=str(path))


def read_checkpoint(path: Path) -> dict:
    """torch.load, memory-mapped where the file's format allows it (pages are read as they are used, so a
    big checkpoint is never held twice); weights_only, with argparse.Namespace (fair-esm's config) allowed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):  # a file in the legacy (pre-zip) format cannot be mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def rotary_frequencies(head_dim: int) -> torch.Tensor:
    """The inverse frequencies fair-esm's RotaryEmbedding holds for a head of `head_dim`, made by fair-esm itself."""
    from esm.rotary_embedding import RotaryEmbedding

    with torch.device("cpu"):
        return RotaryEmbedding(head_dim).inv_freq


def initialise_left_on_meta(model: nn.Module) -> None:
    """Modules the checkpoint did not fill (the optional contact head without its regression file) get
    storage on the CPU and their own initialisation, as a model built off the meta device would have."""
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(tensor.is_meta for tensor in own):
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()


def _architecture_from_fair_esm(data: dict, name: str, path: Path) -> Architecture:
    if "cfg" in data:
        cfg = data["cfg"]["model"]
        return Architecture(name, "esm2", cfg.encoder_layers, cfg.encoder_embed_dim,
                            cfg.encoder_attention_heads, bool(cfg.token_dropout))
    args = data["args"]
    if getattr(args, "arch", None) != "roberta_large":
        raise BackboneError(f"{path}: architecture '{getattr(args, 'arch', '?')}' is not supported (ESM-2 and ESM-1b are)")

    def arg(key: str):  # fairseq saves `encoder_layers`; fair-esm strips the `encoder_` prefix
        value = getattr(args, f"encoder_{key}", getattr(args, key, None))
        if value is None:
            raise BackboneError(f"{path}: ESM-1b args lack '{key}' (or 'encoder_{key}')")
        return value

    return Architecture(name, "esm1b", arg("layers"), arg("embed_dim"), arg("attention_heads"),
                        bool(getattr(args, "token_dropout", False)))


def _strip_fairseq_prefix(key: str) -> str:
    return re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", key)


def load_state_strict(model: nn.Module, state: dict, source: Path, optional: tuple[str, ...] = ("contact_head.",),
                      assign: bool = False) -> None:
    """`state` into `model`, every non-optional key present and every shape right; `assign`: the tensors become
    the model's own (a model built on the meta device), cast to the dtype the model declares."""
    own = model.state_dict()
    expected = set(own)
    missing = sorted(k for k in expected - set(state) if not k.startswith(optional))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise BackboneError(f"{source}: weights do not fit the architecture: {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise BackboneError(f"{source}: tensor {key} has shape {tuple(value.shape)}, the architecture needs {tuple(own[key].shape)}")
    if assign:
        state = {key: value.to(own[key].dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=False, assign=assign)


