"""The method registry: a method registered in this file alone trains, saves, loads and predicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import protadapt.adapters.registry as registry
import protadapt.training.run as run_module
from protadapt.adapters import AdapterConfig, AdapterError, LinearAdapter, expected_trainable, get_method
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.adapters.registry import linear_method, register_method
from protadapt.backbones import ARCHITECTURES, load_backbone
from protadapt.config import load_config
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.inference import predict_scores
from protadapt.model import ProteinPredictor


class ScaledLinear(LinearAdapter):
    """A throw-away method: W = (1 + γ) ⊙ W0, one learnable γ per output feature (zero at init)."""

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.gamma = nn.Parameter(torch.empty(self.out_features, dtype=weight.dtype, device=weight.device))
        self.reset_parameters()

    @staticmethod
    def num_params(in_features: int, out_features: int, config: AdapterConfig) -> int:
        return out_features

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gamma)

    def delta_weight(self) -> torch.Tensor:
        return self.gamma[:, None] * self.base_layer.weight

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.gamma * F.linear(x, self.base_layer.weight)


@pytest.fixture
def scaled(monkeypatch):
    """Registered for this test only: the registry is restored afterwards."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    return register_method(linear_method("scaled", ScaledLinear, settings=("include_ffn", "targets")))


def test_a_method_registered_in_one_file_runs_fit_then_predict(scaled, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
    config = load_config(None, ["adapter.method=scaled", "backbone=tiny", "quiet=true", "optim.max_epochs=1",
                                "optim.lr=1e-2"])
    run_dir = tmp_path / "run"
    result = run_module.fit(config, run_dir)

    saved = load_file(str(run_dir / "adapter.safetensors"))
    gammas = {k: v for k, v in saved.items() if k.endswith(".gamma")}
    architecture = ARCHITECTURES["tiny"]
    assert sum(v.numel() for v in gammas.values()) == expected_trainable(architecture, config.adapter) \
        == 4 * architecture.num_layers * architecture.embed_dim  # q, k, v, out per layer
    assert all(k.startswith("head.") or k in gammas for k in saved)
    assert any(v.abs().sum() > 0 for v in gammas.values())  # trained away from γ = 0

    predictor, metadata = ProteinPredictor.load(run_dir)
    assert metadata["adapter"]["method"] == "scaled" and predictor.method is scaled
    test = get_task("bbb").load().query("split == 'test'").reset_index(drop=True)
    scores = predict_scores(predictor, test)
    written = pd.read_csv(run_dir / "predictions.csv")
    np.testing.assert_allclose(scores[:, 1], written["prob_1"], atol=1e-6)
    assert result.metrics["test"]["n"] == len(test)


def test_a_name_is_registered_once_and_unknown_names_list_the_known_ones(scaled):
    with pytest.raises(AdapterError, match="already registered"):
        register_method(linear_method("scaled", ScaledLinear))
    with pytest.raises(AdapterError, match="unknown method 'nope'.*lora.*scaled"):
        get_method("nope")


@pytest.mark.parametrize("method", ["lora", "dora", "wegeft", "scaled"])
def test_merge_is_exact_and_predict_leaves_base_weights_bit_identical(method, scaled):
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(dropout=0.0), AdapterConfig(method=method))
    perturb_as_if_trained(predictor.backbone)  # every adapter tensor off its init point
    frozen = {n: b.detach().clone() for n, b in predictor.named_parameters() if not b.requires_grad}
    frame = get_task("bbb").load().query("split == 'test'").reset_index(drop=True)
    tokens = torch.randint(4, 24, (3, 12))
    unmerged = predictor.eval()(tokens)

    first, second = predict_scores(predictor, frame), predict_scores(predictor, frame)
    np.testing.assert_array_equal(first, second)
    for name, parameter in predictor.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert torch.equal(predictor(tokens), unmerged)

    layers = [m for m in predictor.modules() if isinstance(m, LinearAdapter)]
    for layer in layers:
        layer.merge()
    assert all(layer.merged for layer in layers)
    torch.testing.assert_close(predictor(tokens), unmerged, atol=1e-5, rtol=1e-5)  # merged W ≈ W0 + ΔW
    for layer in layers:
        layer.unmerge()
    assert torch.equal(predictor(tokens), unmerged)
