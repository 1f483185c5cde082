"""What each export format can carry exactly; everything else is refused with the reason."""

from __future__ import annotations

from pathlib import Path

from protadapt.adapters import DoRALinear, LoRALinear
from protadapt.model import ProteinPredictor

PEFT_LAYERS = (LoRALinear, DoRALinear)  # PEFT's LoraConfig carries these (DoRA with use_dora=True)


class ExportError(ValueError):
    """A one-line reason why a run cannot be exported as asked."""


def check_exportable(predictor: ProteinPredictor, fmt: str, run_dir: Path) -> None:
    """Raise `ExportError` when `fmt` cannot reproduce `predictor`'s predictions exactly."""
    architecture = predictor.backbone.architecture
    method = predictor.method
    prefix = f"{run_dir}: cannot export as {fmt}:"
    if architecture.family != "esm2":
        raise ExportError(f"{prefix} backbone {architecture.name} is not ESM-2 (learned positions); exports "
                          f"target transformers' rotary ESM-2 EsmModel, and ONNX is verified on ESM-2 only")
    if fmt == "onnx":
        return  # the whole predictor is traced: every method, prompt tuning included
    if predictor.backbone.prompt is not None:
        raise ExportError(f"{prefix} method {method.name} inserts learned vectors after BOS, which no weight "
                          f"absorbs and PEFT's prompt tuning (virtual tokens before BOS) does not reproduce")
    if fmt != "peft":
        return
    if method.trains_backbone or method.layer is None:
        raise ExportError(f"{prefix} method {method.name} has no adapter layers to export; "
                          f"use --format merged (the backbone + head as an HF model)")
    if method.layer not in PEFT_LAYERS:
        raise ExportError(f"{prefix} method {method.name} ({method.layer.__name__}) has no PEFT equivalent "
                          f"(PEFT carries LoRA and DoRA); use --format merged")
