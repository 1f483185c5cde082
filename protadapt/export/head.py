"""protadapt's pooling + head as files any PyTorch user can apply: `head.safetensors`, `head.json`, README.md.

transformers' `EsmForSequenceClassification.classifier` (BOS → dense → tanh → out_proj, on the
hidden states alone) cannot express protadapt's head (mean over residues, which needs the token ids;
no tanh; optional GELU layer), and PEFT's `modules_to_save` only copies modules the base model
already has. So the head travels beside the encoder, with `HEAD_SNIPPET` to apply it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from protadapt.export.hf import write_safetensors
from protadapt.files import write_atomic, write_json_atomic
from protadapt.model import ProteinPredictor

HEAD_FORMAT = 1

# Applied by tests/test_export.py exactly as written here, in README.md and in every export's README.md.
HEAD_SNIPPET = '''\
import json
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

def protadapt_head(hidden, input_ids, export_dir):
    """protadapt's pooling + head on EsmModel's last_hidden_state: class probabilities or values."""
    spec = json.loads(open(f"{export_dir}/head.json").read())
    weights = load_file(f"{export_dir}/head.safetensors")
    if spec["pooling"] == "bos":
        pooled = hidden[:, 0]
    else:  # mean over residues: BOS, EOS and padding excluded
        residues = ~torch.isin(input_ids, torch.tensor(spec["non_residue_token_ids"]))
        pooled = (hidden * residues.unsqueeze(-1)).sum(1) / residues.sum(1, keepdim=True).clamp_min(1)
    if "hidden.weight" in weights:
        pooled = F.gelu(F.linear(pooled, weights["hidden.weight"], weights["hidden.bias"]))
    out = F.linear(pooled, weights["output.weight"], weights["output.bias"])
    if spec["problem_type"] == "classification":
        return out.softmax(-1)
    return out.squeeze(-1) * spec["target_scale"] + spec["target_mean"]  # back to label units
'''

LOADERS = {
    "peft": ('from peft import PeftModel\nfrom transformers import AutoTokenizer, EsmModel\n\n'
             'base = EsmModel.from_pretrained("<BASE>", add_pooling_layer=False)\n'
             'model = PeftModel.from_pretrained(base, "<OUT>").eval()\n'
             'tokenizer = AutoTokenizer.from_pretrained("<BASE>")\n'),
    "merged": ('from transformers import AutoTokenizer, EsmModel\n\n'
               'model = EsmModel.from_pretrained("<OUT>", add_pooling_layer=False).eval()\n'
               'tokenizer = AutoTokenizer.from_pretrained("<OUT>")\n'),
}
USAGE = ('batch = tokenizer(["MKTAYIAKQR", "GLFDIVKKVV"], return_tensors="pt", padding=True)\n'
         'with torch.no_grad():\n'
         '    hidden = model(**batch).last_hidden_state\n'
         'print(protadapt_head(hidden, batch["input_ids"], "<OUT>"))  # columns: head.json "labels"\n')
ONNX_USAGE = ('import onnxruntime\nfrom transformers import AutoTokenizer\n\n'
              'session = onnxruntime.InferenceSession("<OUT>/model.onnx")\n'
              'tokenizer = AutoTokenizer.from_pretrained("<OUT>")\n'
              'batch = tokenizer(["MKTAYIAKQR", "GLFDIVKKVV"], return_tensors="np", padding=True)\n'
              'print(session.run(["scores"], {"tokens": batch["input_ids"]})[0])  # columns: onnx.json "labels"\n')


def write_head(predictor: ProteinPredictor, metadata: dict, directory: Path) -> None:
    """`head.safetensors` (`hidden.*` when there is a hidden layer, `output.*`) and `head.json`."""
    linears = [module for module in predictor.head.layers if isinstance(module, nn.Linear)]
    names = ["hidden", "output"][-len(linears):]
    state = {f"{name}.{key}": tensor.detach().contiguous().clone()
             for name, linear in zip(names, linears) for key, tensor in linear.state_dict().items()}
    write_safetensors(state, directory / "head.safetensors")
    alphabet = predictor.backbone.alphabet
    config = predictor.head_config
    write_json_atomic({
        "format": HEAD_FORMAT, "problem_type": config.problem_type, "pooling": config.pooling,
        "labels": list(predictor.labels), "num_outputs": config.num_outputs,
        "hidden_activation": "gelu (exact erf)" if config.hidden_dim else None,
        "non_residue_token_ids": [alphabet.cls_idx, alphabet.padding_idx, alphabet.eos_idx],
        "output": "softmax probabilities, in labels order" if config.problem_type == "classification" else "value",
        "target_mean": config.target_mean, "target_scale": config.target_scale,  # regression: value = z·scale + mean
        "task": metadata.get("task"), "method": predictor.method.name,
        "backbone": predictor.backbone.architecture.name,
    }, directory / "head.json")


def write_readme(directory: Path, fmt: str, out_dir: Path, base: str | None, summary: str) -> None:
    """README.md of an export: what it is and the code that predicts with it, head included."""
    code = ONNX_USAGE if fmt == "onnx" else f"{HEAD_SNIPPET}\n{LOADERS[fmt]}{USAGE}"
    code = code.replace("<BASE>", base or "BASE_ESM2_MODEL").replace("<OUT>", str(out_dir))
    note = "" if base or fmt != "peft" else (
        "\nThe run used a randomly initialised backbone, so no published base model matches it: "
        "replace BASE_ESM2_MODEL by a directory holding those weights (or export --format merged).\n")
    text = f"# protadapt export ({fmt})\n\n{summary}\n{note}\n## Predicting\n\n```python\n{code}```\n"
    write_atomic(directory / "README.md", "w", lambda handle: handle.write(text))
