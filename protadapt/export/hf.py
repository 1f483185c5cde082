"""fair-esm ESM-2 ↔ transformers `EsmModel`: parameter names, `config.json`, tokenizer files.

Names come from inverting `backbones.HF_TO_FAIR_ESM` (the mapping the HF loader uses), so export
and import can never disagree. Keys are `EsmModel`'s own (no `esm.` prefix): `EsmModel` and
`EsmFor*` both load such a directory, and so does protadapt's `--backbone DIR`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from protadapt.backbones import ARCHITECTURES, HF_TO_FAIR_ESM, Architecture, Backbone
from protadapt.files import write_atomic, write_bytes_atomic, write_json_atomic

HF_PREFIX = "esm."  # HF_TO_FAIR_ESM's names are EsmFor*'s; EsmModel's drop this prefix
NOT_EXPORTED = re.compile(r"(rot_emb\.inv_freq|^lm_head\.)")  # derived by transformers / not on the encoder path


def fair_esm_to_hf_key(key: str) -> str:
    """`layers.0.self_attn.q_proj.weight` → `encoder.layer.0.attention.self.query.weight` (EsmModel's name)."""
    for pattern, replacement in HF_TO_FAIR_ESM:
        fair = "^" + re.escape(replacement).replace(r"\\1", r"(\d+)")
        hf = pattern.replace(r"\.", ".").replace(r"(\d+)", r"\1").removesuffix("$")
        new, count = re.subn(fair, hf, key)
        if count:
            return new.removeprefix(HF_PREFIX)
    raise ValueError(f"no transformers name for fair-esm parameter '{key}'")


def hf_module_name(fair_path: str) -> str:
    """A fair-esm linear's module path → the same linear's path inside `EsmModel`."""
    return fair_esm_to_hf_key(fair_path + ".weight").removesuffix(".weight")


def hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain (unwrapped) fair-esm ESM2 state dict under EsmModel's names, as contiguous copies."""
    return {fair_esm_to_hf_key(key): tensor.detach().contiguous().clone()
            for key, tensor in state.items() if not NOT_EXPORTED.search(key)}


def hf_config(architecture: Architecture) -> dict:
    """`config.json` of transformers' ESM-2 of this shape (the fields the hub's ESM-2 configs set)."""
    return {
        "_name_or_path": architecture.name, "architectures": ["EsmModel"], "model_type": "esm",
        "vocab_size": 33, "hidden_size": architecture.embed_dim, "num_hidden_layers": architecture.num_layers,
        "num_attention_heads": architecture.attention_heads, "intermediate_size": architecture.ffn_dim,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026, "position_embedding_type": "rotary", "layer_norm_eps": 1e-5,
        "emb_layer_norm_before": False, "token_dropout": architecture.token_dropout,
        "pad_token_id": 1, "mask_token_id": 32, "initializer_range": 0.02, "classifier_dropout": None,
        "is_folding_model": False, "esmfold_config": None, "vocab_list": None, "torch_dtype": "float32",
    }


def write_tokenizer(backbone: Backbone, directory: Path) -> None:
    """`vocab.txt` + `tokenizer_config.json`, so `AutoTokenizer.from_pretrained(dir)` tokenises as protadapt."""
    vocabulary = "\n".join(backbone.alphabet.all_toks)  # as the hub's ESM-2 vocab.txt
    write_atomic(directory / "vocab.txt", "w", lambda handle: handle.write(vocabulary))
    write_json_atomic({"tokenizer_class": "EsmTokenizer", "cls_token": "<cls>", "eos_token": "<eos>",
                       "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
                       "model_max_length": 1024}, directory / "tokenizer_config.json")


def base_model_name(backbone: Backbone) -> str | None:
    """Where the un-adapted weights live: an HF directory, a hub id for fair-esm names, or None (random)."""
    if not backbone.pretrained:
        return None
    source = Path(backbone.source)
    if source.is_dir():
        return str(source.resolve())
    name = backbone.architecture.name  # a fair-esm checkpoint of a published model: its hub copy
    return f"facebook/{name}" if name in ARCHITECTURES and name.startswith("esm2_") else None


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written all-or-nothing (`metadata`: its string header, e.g. `{"format": "pt"}`)."""
    from safetensors.torch import save

    write_bytes_atomic(save(state, metadata=metadata), path)
