"""`--format merged`: adapters folded into the weights, as an HF-format ESM-2 directory + the head files.

Merging is protadapt's own (`merge_adapters`, what `predict` runs), so the exported weights are the
ones protadapt predicts with. Full fine-tuning and head-only runs export the same way (nothing to fold).
"""

from __future__ import annotations

from pathlib import Path

from protadapt.adapters import adapter_state_dict, merge_adapters, unmerge_adapters
from protadapt.export.head import write_head
from protadapt.export.hf import hf_config, hf_state_dict, write_safetensors, write_tokenizer
from protadapt.files import write_json_atomic
from protadapt.model import ProteinPredictor

ROTARY_KEY = "rotary_embeddings.inv_freq"


def write_merged(predictor: ProteinPredictor, metadata: dict, directory: Path) -> str:
    """`config.json`, `model.safetensors` (EsmModel's names), tokenizer files and the head files."""
    write_safetensors(merged_hf_state(predictor), directory / "model.safetensors", {"format": "pt"})
    write_json_atomic(hf_config(predictor.backbone.architecture), directory / "config.json")
    write_tokenizer(predictor.backbone, directory)
    write_head(predictor, metadata, directory)
    return (f"{predictor.backbone.architecture.name} with protadapt method {predictor.method.name} merged into "
            f"its weights, as transformers' EsmModel (config.json + model.safetensors; protadapt loads it "
            f"with --backbone DIR); protadapt's pooling + head are head.safetensors + head.json, applied as below.")


def merged_hf_state(predictor: ProteinPredictor) -> dict:
    """The backbone's weights with every adapter merged, under EsmModel's parameter names."""
    model = predictor.backbone.model
    merge_adapters(predictor)
    try:
        adapter_keys = set(adapter_state_dict(model))
        state = hf_state_dict({key.replace(".base_layer.", "."): tensor for key, tensor in model.state_dict().items()
                               if key not in adapter_keys})
    finally:
        unmerge_adapters(predictor)
    # transformers 5 keeps one rotary-frequency buffer per model and reports it missing when absent
    # (fair-esm's per-layer copies are the same 1/10000^(2i/d)); protadapt's loader ignores it.
    state[ROTARY_KEY] = model.layers[0].self_attn.rot_emb.inv_freq.detach().clone()
    return state
