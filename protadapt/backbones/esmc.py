"""ESM C (EvolutionaryScale/Biohub, MIT licence) through transformers' `EsmcModel`.

Separate `q_proj/k_proj/v_proj/o_proj` linears (with QK LayerNorm), a SwiGLU feed-forward
(`gate_proj/up_proj/down_proj`), rotary positions, and the ESM C vocabulary (`<cls>`=0, `<pad>`=1,
`<eos>`=2, `<mask>`=32). Weights: the hub's HF directories (`biohub/ESMC-300M` …), found in
`$PROTADAPT_MODEL_DIR/<name>/`, the Hugging Face cache, or downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protadapt.backbones.base import Architecture, BackboneError, register_family
from protadapt.backbones.hf import (
    HFBackbone,
    Vocabulary,
    architecture_of,
    load_strict,
    read_config,
    read_weights,
    require_transformers,
    strip_prefix,
)
from protadapt.files import one_line

HUB_IDS = {"esmc_300m": "biohub/ESMC-300M", "esmc_600m": "biohub/ESMC-600M", "esmc_6b": "biohub/ESMC-6B"}
# The released shapes (EvolutionaryScale's esm/pretrained.py; the 6B one is EsmcConfig's default).
# The SwiGLU width is 8/3·E rounded up to a multiple of 256, as the reference computes it.
SHAPES = {"esmc_300m": (30, 960, 15, 2560), "esmc_600m": (36, 1152, 18, 3072), "esmc_6b": (80, 2560, 40, 6912)}
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def esmc_config_dict(layers: int, width: int, heads: int, ffn: int) -> dict:
    """An `EsmcConfig` as a plain dict (what the run records and a reload rebuilds from)."""
    return {"model_type": "esmc", "num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": heads,
            "intermediate_size": ffn, "vocab_size": 64, "rope_parameters": dict(ROPE)}


def esmc_architecture(name: str, config: dict) -> Architecture:
    return Architecture(name, "esmc", config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
                        False, config["intermediate_size"], config)


ARCHITECTURES = {name: esmc_architecture(name, esmc_config_dict(*shape)) for name, shape in SHAPES.items()}


class ESMCBackbone(HFBackbone):
    """`EsmcModel`'s forward, with prompt vectors inserted after `<cls>` (rotary: relative positions)."""

    ATTENTION_TARGETS = (r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",)
    FFN_TARGETS = (r"layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(tokens)

    def encode_layers(self, x: torch.Tensor, mask) -> torch.Tensor:
        model = self.model
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        rotary = model.rotary_emb(x, positions)
        for layer in model.layers:
            x = self.run_layer(layer, x, mask, position_embeddings=rotary)
        return model.norm(x)

    def prompt_init(self, residues: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight.detach()
        return weight[residues.to(weight.device)]


register_family("esmc", ESMCBackbone)


def esmc_tokenizer() -> Vocabulary:
    from transformers.models.esmc.tokenization_esmc import SEQUENCE_VOCAB

    tokens = list(SEQUENCE_VOCAB) + [f"<unused{i}>" for i in range(64 - len(SEQUENCE_VOCAB))]
    return Vocabulary(tokens, pad="<pad>", cls="<cls>", eos="<eos>", mask="<mask>", unk="<unk>")


def build_esmc(architecture: Architecture) -> tuple[nn.Module, Vocabulary]:
    """`EsmcModel` of the recorded config with transformers' initialisation, SDPA attention."""
    transformers = require_transformers("ESM C")
    config = transformers.EsmcConfig.from_dict(architecture.hf_config, attn_implementation="sdpa")
    return transformers.EsmcModel(config), esmc_tokenizer()


def esmc_directory_architecture(directory: Path, name: str | None = None) -> Architecture:
    """The architecture of an HF ESM C directory's `config.json` (checked by `EsmcConfig`)."""
    transformers = require_transformers("ESM C")
    config = read_config(directory)
    try:
        parsed = transformers.EsmcConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise BackboneError(f"{directory / 'config.json'}: not a valid ESM C config ({one_line(error)})") from None
    return architecture_of(name or directory.name, "esmc", parsed)


def load_esmc_directory(directory: Path, name: str | None = None) -> ESMCBackbone:
    """An HF ESM C directory (EsmcModel or EsmcForMaskedLM weights; the LM head is not kept)."""
    architecture = esmc_directory_architecture(directory, name)
    model, tokenizer = build_esmc(architecture)
    state, source = read_weights(directory)
    load_strict(model, strip_prefix(state, ("esmc.", "model.")), source, ignore=("lm_head.", "inv_freq"))
    return ESMCBackbone(model, tokenizer, architecture, pretrained=True, source=str(directory))
