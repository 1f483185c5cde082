"""`--format peft`: LoRA / DoRA / BiDoRA runs as a Hugging Face PEFT adapter for transformers' `EsmModel`.

The arithmetic is the same on both sides, so the tensors copy across unchanged: PEFT's scaling is
`lora_alpha / r` (protadapt's α/r), `lora_A` is protadapt's A (`down`, r × in), `lora_B` its B
(`up`, out × r), and PEFT's DoRA normalises each output feature's row of `W0 + s·B·A` as protadapt
does, so `lora_magnitude_vector` is protadapt's `m`. `target_modules` is one regular expression
matching exactly the adapted linears by their `EsmModel` paths: on `EsmForSequenceClassification`
(paths start with `esm.`) PEFT finds no target and raises, instead of loading an unadapted model.
"""

from __future__ import annotations

import re
from pathlib import Path

from protadapt.adapters import DoRALinear, linear_adapters
from protadapt.export.head import write_head
from protadapt.export.hf import base_model_name, hf_module_name, write_safetensors
from protadapt.files import write_json_atomic
from protadapt.model import ProteinPredictor

PEFT_PREFIX = "base_model.model."  # how PEFT serialises the keys of a PeftModel's adapter


def write_peft(predictor: ProteinPredictor, metadata: dict, directory: Path) -> str:
    """`adapter_config.json` + `adapter_model.safetensors` and the head files; returns the README summary."""
    layers = {hf_module_name(path): layer for path, layer in linear_adapters(predictor.backbone.model).items()}
    state = {}
    for name, layer in layers.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.down.detach().contiguous().clone()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.up.detach().contiguous().clone()
        if isinstance(layer, DoRALinear):
            state[f"{PEFT_PREFIX}{name}.lora_magnitude_vector"] = layer.magnitude.detach().contiguous().clone()
    write_safetensors(state, directory / "adapter_model.safetensors", {"format": "pt"})
    base = base_model_name(predictor.backbone)
    write_json_atomic(adapter_config(predictor, sorted(layers), base), directory / "adapter_config.json")
    write_head(predictor, metadata, directory)
    config = predictor.adapter_config
    kind = "DoRA" if uses_dora(predictor) else "LoRA"
    return (f"A PEFT {kind} adapter (r={config.rank}, lora_alpha={config.alpha:g}) on {len(layers)} linears of "
            f"transformers' EsmModel ({predictor.backbone.architecture.name}), trained by protadapt method "
            f"{config.method}; protadapt's pooling + head are head.safetensors + head.json, applied as below.")


def uses_dora(predictor: ProteinPredictor) -> bool:
    return any(isinstance(layer, DoRALinear) for layer in linear_adapters(predictor).values())


def adapter_config(predictor: ProteinPredictor, modules: list[str], base: str | None) -> dict:
    """PEFT's LoraConfig for these exact modules (what `PeftModel.from_pretrained` reads)."""
    config = predictor.adapter_config
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base, "inference_mode": True,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "use_dora": uses_dora(predictor),
        "target_modules": "|".join(re.escape(name) for name in modules),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }
