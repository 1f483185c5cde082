"""WeGeFT: identity at init, the explicit formula, merge/unmerge, counts, sharing, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from protadapt.adapters import (
    AdapterConfig,
    adapter_state_dict,
    apply_method,
    count_trainable,
    expected_trainable,
    linear_adapters,
    merge_adapters,
    unmerge_adapters,
)
from protadapt.adapters.wegeft import WeGeFTLinear
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

BACKBONES = ["tiny", "esm2_t6_8M_UR50D"]
MODES = [False, True]  # shared


def backbone_for(name: str):
    return load_backbone(name, random_init=True)


def wegeft(shared: bool, include_ffn: bool = False, rank: int = 4, alpha: float = 12.0) -> AdapterConfig:
    return AdapterConfig(method="wegeft", rank=rank, alpha=alpha, shared=shared, include_ffn=include_ffn)


def randomize(module: torch.nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Give every trainable tensor random values (Φ1 starts at zero, which hides mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def wegeft_layers(backbone) -> dict[str, WeGeFTLinear]:
    layers = linear_adapters(backbone)
    assert layers and all(isinstance(layer, WeGeFTLinear) for layer in layers.values())
    return layers


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("shared", MODES)
def test_identity_at_init(name, shared, tokens):
    backbone = backbone_for(name)
    with torch.no_grad():
        before = backbone(tokens)
        apply_method(backbone, wegeft(shared, include_ffn=True))
        after = backbone(tokens)
    assert (after - before).abs().max().item() <= 1e-6


@pytest.mark.parametrize("shared", MODES)
def test_layer_equals_explicit_formula(shared):
    backbone = backbone_for("tiny")
    apply_method(backbone, wegeft(shared, include_ffn=True))
    randomize(backbone)
    x = torch.randn(3, 5, 32)
    for path, layer in wegeft_layers(backbone).items():
        w0, bias = layer.base_layer.weight, layer.base_layer.bias
        phi1, phi2 = layer.generators()
        assert phi1.shape == (layer.in_features, 4) and phi2.shape == (4, layer.in_features)
        weight = w0 + (12.0 / 4) * (w0 @ phi1 @ phi2)  # W = W0 + (α/r)·W0·Φ1·Φ2, α = 12, r = 4
        inputs = x if layer.in_features == 32 else torch.randn(3, 5, layer.in_features)
        with torch.no_grad():
            assert (layer(inputs) - (inputs @ weight.T + bias)).abs().max().item() <= 1e-5, path
            assert (layer.effective_weight() - weight).abs().max().item() <= 1e-6, path


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("shared", MODES)
def test_merge_and_unmerge(name, shared, tokens):
    backbone = backbone_for(name)
    apply_method(backbone, wegeft(shared, include_ffn=True))
    randomize(backbone)
    layers = wegeft_layers(backbone)
    originals = {path: layer.base_layer.weight.clone() for path, layer in layers.items()}
    effective = {path: layer.effective_weight().detach().clone() for path, layer in layers.items()}
    with torch.no_grad():
        unmerged_out = backbone(tokens)
        merge_adapters(backbone)
        merged_out = backbone(tokens)
    assert (merged_out - unmerged_out).abs().max().item() <= 1e-5
    for path, layer in layers.items():
        assert (layer.base_layer.weight - effective[path]).abs().max().item() <= 1e-5, path
        assert not torch.equal(layer.base_layer.weight, originals[path]), path
    unmerge_adapters(backbone)
    for path, layer in layers.items():
        assert (layer.base_layer.weight - originals[path]).abs().max().item() <= 1e-6, path


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("shared", MODES)
@pytest.mark.parametrize("include_ffn", [False, True])
def test_counts_match_formula(name, shared, include_ffn):
    backbone = backbone_for(name)
    config = wegeft(shared, include_ffn, rank=8)
    apply_method(backbone, config)
    e, r, layers = backbone.embed_dim, 8, backbone.architecture.num_layers
    attention = 4 * 2 * e * r  # q, k, v, out: in = E
    ffn = 2 * e * r + 2 * 4 * e * r  # fc1: in = E; fc2: in = 4E
    per_block = attention + (ffn if include_ffn else 0)
    formula = per_block if shared else layers * per_block
    assert count_trainable(backbone) == formula == expected_trainable(backbone.architecture, config)
    assert sum(t.numel() for t in adapter_state_dict(backbone).values()) == formula


def test_counts_for_esm2_8m_at_default_rank():
    from protadapt.backbones import ARCHITECTURES

    architecture = ARCHITECTURES["esm2_t6_8M_UR50D"]
    counts = {(shared, ffn): expected_trainable(architecture, AdapterConfig(method="wegeft", shared=shared, include_ffn=ffn))
              for shared in MODES for ffn in (False, True)}
    assert counts == {(False, False): 122_880, (False, True): 276_480, (True, False): 20_480, (True, True): 46_080}


def test_shared_generators_are_one_tensor_per_kind(tokens):
    backbone = backbone_for("tiny")
    apply_method(backbone, wegeft(shared=True, include_ffn=True))
    state = adapter_state_dict(backbone)
    kinds = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    assert set(state) == {f"wegeft_generators.{side}.{kind}" for side in ("up", "down") for kind in kinds}
    q_layers = [layer for path, layer in wegeft_layers(backbone).items() if path.endswith("q_proj")]
    assert len(q_layers) == 2 and q_layers[0].generators()[0] is q_layers[1].generators()[0]

    # one optimiser step moves every q_proj by the same generated map: W_i − W0_i = W0_i·G
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone(tokens).pow(2).mean().backward()
    optimizer.step()
    phi1, phi2 = backbone.wegeft_generators.up["q_proj"], backbone.wegeft_generators.down["q_proj"]
    generated = (phi1 @ phi2).detach()
    assert generated.abs().max() > 0
    for layer in q_layers:
        w0 = layer.base_layer.weight
        assert torch.allclose(layer.effective_weight().detach() - w0, w0 @ generated, atol=1e-7)


def test_per_layer_generators_are_independent():
    backbone = backbone_for("tiny")
    apply_method(backbone, wegeft(shared=False))
    state = adapter_state_dict(backbone)
    assert len(state) == 2 * 4 * 2  # up + down for 4 projections in 2 layers
    assert not hasattr(backbone, "wegeft_generators")


@pytest.mark.parametrize("shared", MODES)
def test_save_load_reproduces_predictions(shared, tokens, tmp_path):
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(num_classes=3),
                                 AdapterConfig(method="wegeft", rank=4, shared=shared, include_ffn=True))
    randomize(predictor)
    predictor.eval()
    with torch.no_grad():
        expected = predictor(tokens)
    predictor.save(tmp_path)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert sum(t.numel() for t in saved.values()) == count_trainable(predictor)

    loaded, metadata = ProteinPredictor.load(tmp_path)
    assert metadata["adapter"]["shared"] is shared
    with torch.no_grad():
        assert torch.equal(loaded(tokens), expected)


def test_alpha_scales_the_update_and_a_different_alpha_is_refused_on_load(tmp_path):
    """s = α/r: doubling α doubles ΔW; weights saved at one α never load into a model at another."""
    from protadapt.adapters import AdapterError

    deltas = {}
    for alpha in (4.0, 8.0):
        backbone = backbone_for("tiny")
        apply_method(backbone, wegeft(False, alpha=alpha))
        randomize(backbone)
        deltas[alpha] = next(iter(wegeft_layers(backbone).values())).delta_weight().detach()
    assert torch.allclose(deltas[8.0], 2 * deltas[4.0], atol=1e-7) and deltas[4.0].abs().max() > 1e-4
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), wegeft(False, alpha=4.0))
    predictor.save(tmp_path)
    other = ProteinPredictor(load_backbone("tiny"), HeadConfig(), wegeft(False, alpha=8.0))
    with pytest.raises(AdapterError, match="alpha=4.0, but this model has alpha=8.0"):
        other.load_trained(tmp_path)
