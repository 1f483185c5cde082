"""`--format onnx`: the whole predictor (adapters merged, head and softmax included) as one ONNX graph.

Exported with torch's TorchScript-based exporter (`dynamo=False`; the dynamo exporter needs
`onnxscript` and cannot trace `Backbone`'s data-dependent "any padding?" branch). Tracing records the
path its example takes, so the example has a padded row: the masked attention path, which is exact
for unpadded batches too (an all-keep mask). fair-esm caches rotary tables per length; the cache is
cleared first so the tables are traced as functions of the input length, not baked in as constants.
The graph is then run by onnxruntime on two other batch sizes and lengths and refused unless it
matches PyTorch within `TOLERANCE`; `onnx` and `onnxruntime` are the `[export]` extra.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from protadapt.adapters import merge_adapters, unmerge_adapters
from protadapt.backbones import Backbone
from protadapt.export.checks import ExportError
from protadapt.export.hf import write_tokenizer
from protadapt.files import write_json_atomic
from protadapt.model import ProteinPredictor

TOLERANCE = 1e-5
OPSET = 17
CHECK_SHAPES = ((3, 9), (1, 30))  # (batch, length) other than the traced example's (2, 12)


class ScoresGraph(nn.Module):
    """Token ids `[batch, length]` → what `protadapt predict` reports: probabilities or values."""

    def __init__(self, predictor: ProteinPredictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.predictor.scores(self.predictor(tokens))


def write_onnx(predictor: ProteinPredictor, metadata: dict, directory: Path) -> str:
    """`model.onnx`, `onnx.json` (labels, inputs, the onnxruntime check) and tokenizer files."""
    require_onnx()
    graph = ScoresGraph(predictor).eval()
    merge_adapters(predictor)
    try:
        for module in predictor.modules():
            if hasattr(module, "_seq_len_cached"):
                module._seq_len_cached = None  # fair-esm's rotary cache: trace the tables, don't bake them
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the traced branch, explained above
            torch.onnx.export(graph, (example_tokens(predictor.backbone, 2, 12),), str(directory / "model.onnx"),
                              dynamo=False, opset_version=OPSET, input_names=["tokens"], output_names=["scores"],
                              dynamic_axes={"tokens": {0: "batch", 1: "length"}, "scores": {0: "batch"}})
        difference = check_with_onnxruntime(graph, directory / "model.onnx")
    finally:
        unmerge_adapters(predictor)
    write_tokenizer(predictor.backbone, directory)
    alphabet = predictor.backbone.alphabet
    write_json_atomic({
        "input": "tokens: int64 [batch, length], ESM-2 ids: <cls> residues <eos>, then <pad>",
        "output": "scores: softmax probabilities in labels order [batch, classes]" if predictor.problem_type
                  == "classification" else "scores: regression values [batch]",
        "problem_type": predictor.problem_type, "labels": list(predictor.labels), "opset": OPSET,
        "special_token_ids": {"cls": alphabet.cls_idx, "pad": alphabet.padding_idx, "eos": alphabet.eos_idx},
        "task": metadata.get("task"), "method": predictor.method.name,
        "backbone": predictor.backbone.architecture.name,
        "onnxruntime_check": {"max_abs_difference": difference, "tolerance": TOLERANCE,
                              "batch_length": [list(shape) for shape in CHECK_SHAPES]},
    }, directory / "onnx.json")
    return (f"protadapt's whole predictor ({predictor.backbone.architecture.name}, method {predictor.method.name}, "
            f"adapters merged, pooling + head + softmax included) as one ONNX graph with dynamic batch and "
            f"length; onnxruntime matched PyTorch within {difference:.1e} at two other batch sizes and lengths.")


def require_onnx() -> None:
    """The exporter needs `onnx`, the exactness check `onnxruntime`: both, or a one-line error."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs {' and '.join(missing)}: pip install 'protadapt[export]'")


def example_tokens(backbone: Backbone, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random residues between BOS and EOS; row 0 is padded (see the module docstring)."""
    alphabet = backbone.alphabet
    residues = [alphabet.get_idx(aa) for aa in "ACDEFGHIKLMNPQRSTVWY"]
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor(residues)[torch.randint(len(residues), (batch, length), generator=generator)]
    tokens[:, 0], tokens[:, -1] = alphabet.cls_idx, alphabet.eos_idx
    if length > 5:
        tokens[0, length - 4], tokens[0, length - 3:] = alphabet.eos_idx, alphabet.padding_idx
    return tokens


def check_with_onnxruntime(graph: ScoresGraph, path: Path) -> float:
    """Largest |ONNX − PyTorch| over `CHECK_SHAPES`; ExportError above `TOLERANCE`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    difference = 0.0
    for seed, (batch, length) in enumerate(CHECK_SHAPES, start=1):
        tokens = example_tokens(graph.predictor.backbone, batch, length, seed)
        with torch.no_grad():
            expected = graph(tokens).numpy()
        (actual,) = session.run(["scores"], {"tokens": tokens.numpy()})
        difference = max(difference, float(abs(actual - expected).max()))
    if difference > TOLERANCE:
        raise ExportError(f"{path.name}: onnxruntime differs from protadapt by {difference:.2e} (> {TOLERANCE:g}); "
                          f"not written — use --format merged")
    return difference
