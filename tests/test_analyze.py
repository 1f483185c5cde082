"""analyze: known ΔM/ΔD from constructed updates, and the files it writes for real tiny runs."""

import pandas as pd
import pytest
import torch

from protadapt.adapters import AdapterConfig, linear_adapters
from protadapt.analyze import FINAL, analyse_run, analyse_runs
from protadapt.backbones import load_backbone
from protadapt.cli import main
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor


def saved_predictor(method: str, directory, update) -> ProteinPredictor:
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method=method))
    with torch.no_grad():
        update(predictor)
    predictor.save(directory, {"task": "bbb", "problem_type": "classification", "labels": [0, 1], "seed": 0})
    return predictor


def test_dora_magnitudes_scaled_by_known_factor(tmp_path):
    def scale_magnitudes(predictor):
        for layer in linear_adapters(predictor).values():
            layer.magnitude.mul_(1.5)  # up (B) stays zero: directions are W0's rows exactly

    predictor = saved_predictor("dora", tmp_path, scale_magnitudes)
    layers = analyse_run(tmp_path)
    assert len(layers) == len(linear_adapters(predictor)) == 8  # 2 layers x q, k, v, out
    for row in layers.itertuples():
        w0 = predictor.backbone.model.get_submodule(row.layer).base_layer.weight
        assert row.delta_m == pytest.approx(0.5 * w0.norm(dim=1).mean().item(), rel=1e-5)
        assert row.delta_d == pytest.approx(0.0, abs=1e-6)
    assert set(layers["checkpoint"]) == {FINAL} and set(layers["method"]) == {"dora"}


def test_full_finetuning_compares_against_the_rebuilt_pretrained_backbone(tmp_path):
    target = "layers.1.self_attn.v_proj"

    def double_one_layer_and_rotate_another(predictor):
        predictor.backbone.model.get_submodule(target).weight.mul_(2.0)
        k_proj = predictor.backbone.model.get_submodule("layers.0.self_attn.k_proj").weight
        k_proj.copy_(-k_proj)  # every row reversed: same magnitudes, cos = −1, so ΔD = 2

    predictor = saved_predictor("full", tmp_path, double_one_layer_and_rotate_another)
    layers = analyse_run(tmp_path).set_index("layer")
    assert len(layers) == 8
    doubled = predictor.backbone.model.get_submodule(target).weight / 2
    assert layers.loc[target, "delta_m"] == pytest.approx(doubled.norm(dim=1).mean().item(), rel=1e-5)
    assert layers.loc[target, "delta_d"] == pytest.approx(0.0, abs=1e-6)
    assert layers.loc["layers.0.self_attn.k_proj", "delta_m"] == pytest.approx(0.0, abs=1e-6)
    assert layers.loc["layers.0.self_attn.k_proj", "delta_d"] == pytest.approx(2.0, abs=1e-6)
    untouched = layers.drop(index=[target, "layers.0.self_attn.k_proj"])
    assert (untouched["delta_m"].abs() < 1e-6).all() and (untouched["delta_d"].abs() < 1e-6).all()


def test_analyze_real_tiny_runs_for_dora_and_full(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for method in ("dora", "full"):
        assert main(["fit", "--task", "bbb", "--method", method, "--backbone", "tiny", "--quiet", "--out",
                     f"runs/{method}", "optim.max_epochs=1", "data.batch_size=32"]) == 0
    assert main(["analyze", "runs", "--out", "analysis"]) == 0
    layers = pd.read_csv(tmp_path / "analysis" / "delta_m_delta_d.csv")
    correlations = pd.read_csv(tmp_path / "analysis" / "correlations.csv")
    assert (tmp_path / "analysis" / "delta_m_delta_d.png").stat().st_size > 0
    assert set(layers["method"]) == {"dora", "full"}
    assert {FINAL, "fit/last"} <= set(layers["checkpoint"])  # Lightning checkpoints are analysed too
    final = layers[layers["checkpoint"] == FINAL]
    assert len(final) == 16 and (final["delta_m"] >= 0).all() and (final["delta_d"] > 0).all()
    assert set(final["matrix_type"]) == {"q", "k", "v", "out"}
    assert list(correlations.columns[:5]) == ["method", "matrix_type", "runs", "checkpoints", "points"]
    assert len(correlations) == 8 and set(correlations["matrix_type"]) == {"q", "k", "v", "out"}
    # one epoch: best.ckpt, last.ckpt and the final weights are equal, so each type keeps its 2 layers' points
    # once, and a line through 2 points is no evidence: slope and r are NaN
    assert (correlations["points"] == 2).all() and correlations["r"].isna().all()


def test_analyze_explains_an_empty_path(tmp_path):
    with pytest.raises(ValueError, match="no run directory"):
        analyse_runs([tmp_path], tmp_path / "out")
