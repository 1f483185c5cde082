"""`protadapt analyze`: the DoRA paper's magnitude–direction analysis of trained run directories.

For every adapted layer, W0 is the pretrained weight and W the fine-tuned effective weight:
adapter methods keep W0 as `base_layer.weight` and give W by `effective_weight()`; full fine-tuning
saves W itself, and W0 comes from the backbone rebuilt from the run's metadata (a random-init
backbone is seeded, so it is rebuilt bit for bit; a pretrained one is loaded again). The final
weights and every Lightning checkpoint under `checkpoints/<phase>/` are analysed; ΔM, ΔD and the
per-matrix-type slope and r come from `protadapt.evaluation.analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from protadapt.adapters import find_targets, linear_adapters
from protadapt.adapters.registry import METHODS
from protadapt.evaluation.analysis import LayerPairs, analyse_layers, by_matrix_type, matrix_type
from protadapt.evaluation.plots import plot_delta_m_delta_d
from protadapt.files import write_csv_atomic
from protadapt.model import ProteinPredictor, backbone_from_metadata

FINAL = "final"  # checkpoint name of the run's saved adapter.safetensors


def analyse_runs(paths: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Analyse every run under `paths`; write the per-layer CSV, the per-matrix-type slopes and r, and the figure.

    `delta_m_delta_d.csv`: one row per run × checkpoint × layer; `correlations.csv`: per method
    and matrix type over layers × checkpoints × runs, the slope of ΔM on ΔD and Pearson r;
    `delta_m_delta_d.png`: one panel per method and matrix type, points coloured by checkpoint.
    """
    out = Path(out)
    runs = find_runs(paths)
    if not runs:
        raise ValueError(f"no run directory (with adapter.json) under {', '.join(map(str, paths))}")
    layers = pd.concat([analyse_run(run) for run in runs], ignore_index=True)
    layers.insert(layers.columns.get_loc("layer") + 1, "matrix_type", layers["layer"].map(matrix_type))
    correlations = by_matrix_type(layers)
    write_csv_atomic(layers, out / "delta_m_delta_d.csv")
    write_csv_atomic(correlations, out / "correlations.csv")
    plot_delta_m_delta_d(layers, out / "delta_m_delta_d.png")
    return correlations


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories given directly, or found below a folder (such as a compare output)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "adapter.json").exists():
            runs.append(path)
        elif path.is_dir():
            runs += sorted(p.parent for p in path.rglob("adapter.json"))
        else:
            raise ValueError(f"{path}: not a directory; give a run directory (with adapter.json) or a folder of them")
    return runs


def analyse_run(run_dir: str | Path) -> pd.DataFrame:
    """ΔM and ΔD per adapted layer for each saved checkpoint (in the order written), then the final weights."""
    run_dir = Path(run_dir)
    predictor, metadata = ProteinPredictor.load(run_dir)
    method = predictor.adapter_config.method
    pretrained = pretrained_weights(predictor, metadata) if predictor.method.trains_backbone else None
    final = analyse_layers(layer_pairs(predictor, pretrained)).assign(checkpoint=FINAL)
    frames = []
    for checkpoint in sorted(run_dir.glob("checkpoints/*/*.ckpt"), key=lambda path: path.stat().st_mtime_ns):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        predictor.load_state_dict({k.removeprefix("predictor."): v for k, v in state.items()}, strict=False)
        name = f"{checkpoint.parent.name}/{checkpoint.stem}"
        frames.append(analyse_layers(layer_pairs(predictor, pretrained)).assign(checkpoint=name))
    layers = pd.concat([*frames, final], ignore_index=True)
    if layers.empty:
        usable = [m.name for m in METHODS.values() if m.layer is not None or m.trains_backbone]
        raise ValueError(f"{run_dir}: method '{method}' adapts no linear layer; ΔM/ΔD needs {', '.join(usable)}")
    return layers.assign(run=str(run_dir), method=method, task=metadata.get("task"), seed=metadata.get("seed"))[
        ["run", "task", "method", "seed", "checkpoint", "layer", "delta_m", "delta_d"]]


def layer_pairs(predictor: ProteinPredictor, pretrained: dict[str, torch.Tensor] | None = None) -> LayerPairs:
    """(W0, W) per adapted layer; `pretrained` holds W0 by name for full fine-tuning."""
    with torch.no_grad():
        if pretrained is None:
            return {name: (layer.base_layer.weight, layer.effective_weight())
                    for name, layer in linear_adapters(predictor.backbone.model).items()}
        model = predictor.backbone.model
        return {name: (w0, model.get_submodule(name).weight) for name, w0 in pretrained.items()}


def pretrained_weights(predictor: ProteinPredictor, metadata: dict) -> dict[str, torch.Tensor]:
    """W0 of the layers adapters would target, from a freshly loaded copy of the run's backbone."""
    fresh = backbone_from_metadata(metadata["backbone"]).model
    names = find_targets(fresh, predictor.adapter_config.target_patterns(predictor.backbone.architecture))
    return {name: fresh.get_submodule(name).weight.detach().clone() for name in names}
