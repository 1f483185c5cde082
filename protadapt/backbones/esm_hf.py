"""HF-format ESM-2 directories (`config.json` + `model.safetensors`, as the hub ships them) read into
fair-esm's ESM2, so they run the same fast forward and give the same numbers as `.pt` files."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from protadapt.backbones.base import Architecture, BackboneError
from protadapt.backbones.esm import (ESMBackbone, build_esm, initialise_left_on_meta, load_state_strict,
                                    rotary_frequencies)
from protadapt.backbones.hf import read_config
from protadapt.files import read_safetensors


HF_TO_FAIR_ESM: list[tuple[str, str]] = [
    (r"esm\.embeddings\.word_embeddings\.", "embed_tokens."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"esm\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"esm\.encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"esm\.encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"esm\.encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
    (r"esm\.contact_head\.regression\.", "contact_head.regression."),
    (r"lm_head\.dense\.", "lm_head.dense."),
    (r"lm_head\.layer_norm\.", "lm_head.layer_norm."),
    (r"lm_head\.bias$", "lm_head.bias"),
]
# Tensors HF stores that fair-esm derives: rotary frequencies, position ids, the tied LM decoder.
HF_DERIVED = re.compile(r"(rotary_embeddings\.inv_freq|position_ids|lm_head\.decoder\.weight|position_embeddings)")


def load_hf_directory(directory: Path) -> ESMBackbone:
    """Read an HF-hub ESM-2 directory (`config.json` + `model.safetensors`) into fair-esm's ESM2."""
    architecture = hf_architecture(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise BackboneError(f"{weights}: missing; an HF-format ESM directory needs config.json and model.safetensors")
    state = fair_esm_state(read_safetensors(weights, BackboneError))
    with torch.device("meta"):  # no random initialisation to overwrite: the file's tensors are the weights
        model, alphabet = build_esm(architecture)
    state.update(derived_tensors(model, state))
    load_state_strict(model, state, weights, optional=("lm_head.", "contact_head."), assign=True)
    model.lm_head.weight = model.embed_tokens.weight  # tied, as fair-esm builds it (assign replaced the tensor)
    initialise_left_on_meta(model)  # an EsmModel file has no LM head: its dense and norm get fair-esm's init
    return ESMBackbone(model, alphabet, architecture, pretrained=True, source=str(directory))


def fair_esm_state(hf_state: dict) -> dict:
    """An HF ESM-2 state dict under fair-esm's names, without the tensors fair-esm derives itself."""
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix("model.") if key.startswith("model.esm.") else key
        if not key.startswith(("esm.", "lm_head.")):
            key = "esm." + key  # EsmModel (no LM head) saves without the `esm.` prefix
        if HF_DERIVED.search(key):
            continue
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # legacy names (transformers 5 writes them)
        state[hf_to_fair_esm_key(key)] = value
    return state


def derived_tensors(model: nn.Module, state: dict) -> dict:
    """What fair-esm stores and HF does not: each layer's rotary inverse frequencies and,
    for a file without an LM head, the head's bias at fair-esm's initial zeros."""
    derived = {}
    for key, buffer in model.state_dict().items():
        if key.endswith("rot_emb.inv_freq"):
            derived[key] = rotary_frequencies(2 * buffer.shape[0])
    if "lm_head.bias" not in state:
        derived["lm_head.bias"] = torch.zeros(model.lm_head.bias.shape)
    return derived


def hf_architecture(directory: Path) -> Architecture:
    config_path, config = directory / "config.json", read_config(directory)
    if config.get("model_type") != "esm" or config.get("position_embedding_type") != "rotary":
        raise BackboneError(f"{config_path}: not an ESM-2 config (model_type 'esm' with rotary positions expected)")
    if config.get("intermediate_size") != 4 * config["hidden_size"] or config.get("vocab_size") != 33:
        raise BackboneError(f"{config_path}: unsupported shape (ESM-2 has intermediate_size = 4 × hidden_size and 33 tokens)")
    name = config.get("_name_or_path", directory.name).split("/")[-1] or directory.name
    return Architecture(name, "esm2", config["num_hidden_layers"], config["hidden_size"],
                        config["num_attention_heads"], bool(config.get("token_dropout", True)))


def hf_to_fair_esm_key(key: str) -> str:
    for pattern, replacement in HF_TO_FAIR_ESM:
        new, count = re.subn("^" + pattern, replacement, key)
        if count:
            return new
    return key  # left as is: the strict load names it as unexpected


