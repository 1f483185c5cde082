"""Adapters keep the spec's promises: exact identity at init, the explicit formula after updates,
merge/unmerge round trips, parameter counts by formula, safe target selection, frozen base
weights, and adapter-only save/load that reproduces predictions."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protadapt.adapters import (
    AdapterConfig,
    AdapterError,
    DoRALinear,
    adapter_state_dict,
    apply_method,
    count_trainable,
    expected_trainable,
    linear_adapters,
    merge_adapters,
    target_shapes,
    unmerge_adapters,
)
from protadapt.adapters.base import LinearAdapter
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import ARCHITECTURES, Architecture, Backbone, build_random
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

LINEAR_METHODS = ["lora", "dora", "bidora"]
DORA_METHODS = ("dora", "bidora")
ESM1B_TINY = Architecture("t", "esm1b", 2, 32, 4, False)



@pytest.fixture(scope="module")
def pristine() -> dict[str, Backbone]:
    """One random backbone per size; tests adapt deep copies (building 8M takes ~1 s, copying ~20 ms)."""
    return {"tiny": build_random(ARCHITECTURES["tiny"]),
            "8m": build_random(ARCHITECTURES["esm2_t6_8M_UR50D"])}


def adapted(pristine, size: str, config: AdapterConfig) -> tuple[Backbone, Backbone]:
    bare = copy.deepcopy(pristine[size])
    backbone = copy.deepcopy(pristine[size])
    apply_method(backbone, config)
    return bare, backbone


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def spec_weight(layer: LinearAdapter, base_weight: torch.Tensor, config: AdapterConfig) -> torch.Tensor:
    """The spec's effective weight, in float64, from the layer's parameters and the ORIGINAL W0."""
    w0, a, b = base_weight.double(), layer.down.double(), layer.up.double()
    v = w0 + (config.alpha / config.rank) * b @ a  # LoRA: W0 + α/r·B·A
    if not isinstance(layer, DoRALinear):
        return v
    return layer.magnitude.double()[:, None] * v / v.norm(dim=1, keepdim=True)  # DoRA: m ⊙ V / ‖V‖ (rows)


# ---------------------------------------------------------------- (1) identity at init


@pytest.mark.parametrize("size", ["tiny", "8m"])
@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_output_equals_bare_backbone_at_init(method, size, pristine, tokens):
    bare, backbone = adapted(pristine, size, AdapterConfig(method=method, rank=4, include_ffn=True))
    with torch.no_grad():
        expected, got = bare(tokens), backbone(tokens)
    assert max_diff(got, expected) <= 1e-6
    assert torch.equal(got, expected)  # methods.md: "exactly unchanged"; currently bit-identical


# ---------------------------------------------------------------- (2) the explicit formula


@pytest.mark.parametrize("size", ["tiny", "8m"])
@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_layers_follow_the_spec_formula_and_merge_round_trips(method, size, pristine, tokens):
    config = AdapterConfig(method=method, rank=4, alpha=8.0, include_ffn=True)
    _, backbone = adapted(pristine, size, config)
    perturb_as_if_trained(backbone)
    layers = linear_adapters(backbone)
    assert len(layers) == 6 * backbone.architecture.num_layers
    originals = {path: layer.base_layer.weight.detach().clone() for path, layer in layers.items()}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for path, layer in layers.items():
            x = torch.randn(2, 5, layer.in_features, generator=generator)
            weight = spec_weight(layer, originals[path], config)
            expected = x.double() @ weight.T + layer.base_layer.bias.double()
            assert max_diff(layer(x), expected) <= 1e-5, path
            assert max_diff(layer.effective_weight(), weight) <= 1e-5, path
            if isinstance(layer, DoRALinear):
                materialised = (originals[path] + config.alpha / config.rank * layer.up @ layer.down).norm(dim=1)
                assert max_diff(layer.direction_norm(), materialised) <= 1e-5, path

        unmerged = backbone(tokens)
        merge_adapters(backbone)
        assert all(layer.merged for layer in layers.values())
        for path, layer in layers.items():  # the merged base weight IS the spec weight
            assert max_diff(layer.base_layer.weight, spec_weight(layer, originals[path], config)) <= 1e-5, path
        merged = backbone(tokens)
        assert max_diff(merged, unmerged) <= 1e-5
        unmerge_adapters(backbone)
        for path, layer in layers.items():
            assert not layer.merged and max_diff(layer.base_layer.weight, originals[path]) <= 1e-6, path
        assert max_diff(backbone(tokens), unmerged) <= 1e-5


@pytest.mark.parametrize("method", DORA_METHODS)
def test_detach_norm_keeps_the_forward_and_treats_the_norm_as_constant_in_backward(method):
    assert AdapterConfig().detach_norm is False  # the memory trick is an option, not the default
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    config = AdapterConfig(method=method, rank=4, alpha=8.0)
    exact = DoRALinear(copy.deepcopy(base), config)
    perturb_as_if_trained(exact)
    cheap = DoRALinear(copy.deepcopy(base), AdapterConfig(method=method, rank=4, alpha=8.0, detach_norm=True))
    cheap.load_state_dict(exact.state_dict())
    x = torch.randn(3, 24)
    target = torch.randn(3, 16)
    outputs = {}
    for name, layer in (("exact", exact), ("cheap", cheap)):
        outputs[name] = layer(x)
        F.mse_loss(outputs[name], target).backward()
    assert torch.equal(outputs["exact"], outputs["cheap"])
    for name in ("up", "down"):
        assert not torch.allclose(getattr(exact, name).grad, getattr(cheap, name).grad, atol=1e-6), name
    assert torch.allclose(exact.magnitude.grad, cheap.magnitude.grad, atol=1e-7)

    # Reference gradients: the spec formula with ‖V‖ detached (cheap) or not (exact), by autograd.
    for layer, detach in ((exact, False), (cheap, True)):
        a, b = layer.down.detach().clone().requires_grad_(), layer.up.detach().clone().requires_grad_()
        v = base.weight.detach() + (config.alpha / config.rank) * b @ a
        norm = v.norm(dim=1, keepdim=True)
        weight = layer.magnitude.detach()[:, None] * v / (norm.detach() if detach else norm)
        F.mse_loss(x @ weight.T + base.bias.detach(), target).backward()
        assert torch.allclose(layer.up.grad, b.grad, atol=1e-6)
        assert torch.allclose(layer.down.grad, a.grad, atol=1e-6)


# ---------------------------------------------------------------- (3) trainable-parameter counts


def formula_count(architecture: Architecture, method: str, rank: int, include_ffn: bool) -> int:
    """methods.md: r·(in+out) per wrapped linear, plus `out` (one magnitude per output row) for DoRA."""
    e, layers = architecture.embed_dim, architecture.num_layers
    shapes = [(e, e)] * 4 + ([(e, 4 * e), (4 * e, e)] if include_ffn else [])
    per_layer = sum(rank * (i + o) + (o if method in DORA_METHODS else 0) for i, o in shapes)
    return layers * per_layer


@pytest.mark.parametrize("size", ["tiny", "8m"])
@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_trainable_counts_match_the_formulas(method, size, pristine):
    architecture = pristine[size].architecture
    for rank in (4, 8):
        for include_ffn in (False, True):
            config = AdapterConfig(method=method, rank=rank, include_ffn=include_ffn)
            _, backbone = adapted(pristine, size, config)
            counted = count_trainable(backbone)
            assert counted == formula_count(architecture, method, rank, include_ffn)
            assert counted == expected_trainable(architecture, config)
            assert len(target_shapes(architecture, config)) == len(linear_adapters(backbone))


def test_full_and_head_only_counts(pristine):
    arch = pristine["8m"].architecture
    for method, expected in (("full", 7_512_474), ("head", 0)):
        backbone = copy.deepcopy(pristine["8m"])
        apply_method(backbone, AdapterConfig(method=method))
        assert count_trainable(backbone) == expected_trainable(arch, AdapterConfig(method=method)) == expected


def test_650m_counts_reach_the_papers_ranges():
    """ESM-2 650M, attention targets (q, k, v, out of all 33 layers): rank 5 is the documented rank
    in 4..8 that lands in the paper's ranges — LoRA 1,689,600 (1.5–1.9 M) and DoRA 1,858,560
    (1.6–2.0 M). r=4 gives 1.35 M / 1.52 M, r=8 gives 2.70 M / 2.87 M. Full FT: 651,043,254
    backbone parameters; with an HF-style classification head (dense E×E + E→2) 652,685,496 ≈ the
    paper's 652.7 M. Computed from the architecture alone (run with -s to see the table)."""
    rows = []
    for name in ("esm2_t6_8M_UR50D", "esm2_t33_650M_UR50D"):
        architecture = ARCHITECTURES[name]
        for method in ("lora", "dora"):
            for rank in (4, 8):
                for include_ffn in (False, True):
                    count = expected_trainable(architecture, AdapterConfig(method=method, rank=rank, include_ffn=include_ffn))
                    assert count == formula_count(architecture, method, rank, include_ffn)
                    rows.append((name, method, rank, "attn+FFN" if include_ffn else "attn", count))
        rows.append((name, "full", "-", "all", expected_trainable(architecture, AdapterConfig(method="full"))))
    print("\n| model | method | r | targets | trainable params |\n|---|---|---|---|---|")
    for name, method, rank, targets, count in rows:
        print(f"| {name} | {method} | {rank} | {targets} | {count:,} |")

    arch = ARCHITECTURES["esm2_t33_650M_UR50D"]
    in_range = {
        method: [r for r in range(4, 9) if low <= expected_trainable(arch, AdapterConfig(method=method, rank=r)) <= high]
        for method, low, high in (("lora", 1.5e6, 1.9e6), ("dora", 1.6e6, 2.0e6), ("bidora", 1.6e6, 2.0e6))
    }
    assert in_range == {"lora": [5], "dora": [5], "bidora": [5]}
    assert expected_trainable(arch, AdapterConfig(method="lora", rank=5)) == 1_689_600
    assert expected_trainable(arch, AdapterConfig(method="dora", rank=5)) == 1_858_560
    full = expected_trainable(arch, AdapterConfig(method="full"))
    assert full == 651_043_254
    classification_head = (1280 * 1280 + 1280) + (1280 * 2 + 2)
    assert round((full + classification_head) / 1e6, 1) == 652.7


# ---------------------------------------------------------------- (4) target selection


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_patterns_only_ever_match_inside_the_backbone():
    head = HeadConfig(hidden_dim=8)  # the head holds two nn.Linear: head.layers.1 and head.layers.3
    predictor = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), head, AdapterConfig(targets=(r".*dense",)))
    assert predictor.adapted_layers == ["lm_head.dense"]  # fair-esm's LM head inside the backbone model
    predictor = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), head, AdapterConfig(targets=(r"layers\.\d+\.fc1",)))
    assert predictor.adapted_layers == ["layers.0.fc1", "layers.1.fc1"]
    assert [type(m) for m in predictor.head.modules() if isinstance(m, nn.Linear)] == [nn.Linear, nn.Linear]
    assert not any(isinstance(m, LinearAdapter) for m in predictor.head.modules())
    # `.*layers\.\d+` fully matches the head's linears, but nothing inside the backbone: an error.
    with pytest.raises(AdapterError) as error:
        ProteinPredictor(build_random(ARCHITECTURES["tiny"]), head, AdapterConfig(targets=(r".*layers\.\d+",)))
    assert r".*layers\.\d+" in one_line(error)


@pytest.mark.parametrize("pattern", [r"nothing\.here", "q_proj"])  # a bare suffix (PEFT style) never matches
def test_unmatched_pattern_is_an_adapter_error(pattern):
    with pytest.raises(AdapterError) as error:
        apply_method(build_random(ARCHITECTURES["tiny"]), AdapterConfig(targets=(pattern,)))
    assert pattern in one_line(error)


def test_esm1b_fused_attention_is_disabled_so_adapters_take_effect(tokens):
    bare = build_random(ESM1B_TINY)
    backbone = build_random(ESM1B_TINY)
    assert all(layer.self_attn.enable_torch_version for layer in bare.model.layers)  # fused path on
    apply_method(backbone, AdapterConfig(method="lora", rank=4))
    assert not any(layer.self_attn.enable_torch_version for layer in backbone.model.layers)
    with torch.no_grad():
        expected = bare(tokens)
        assert max_diff(backbone(tokens), expected) <= 1e-5  # identity, via the unfused attention code
        perturb_as_if_trained(backbone)
        changed = backbone(tokens)
        assert max_diff(changed, expected) > 1e-2
        # The same update written into a bare copy's weights (fused path still on) gives the same output.
        for path, layer in linear_adapters(backbone.model).items():
            bare.model.get_submodule(path).weight.copy_(layer.effective_weight())
        assert max_diff(bare(tokens), changed) <= 1e-5


# ---------------------------------------------------------------- (5) only adapters and head train


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_gradients_reach_only_adapters_and_head_and_base_weights_stay_bit_identical(method, tokens):
    predictor = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), HeadConfig(num_classes=3, hidden_dim=8),
                                 AdapterConfig(method=method, rank=4, include_ffn=True))
    adapter_ids = {id(p) for _, layer in linear_adapters(predictor).items()
                   for name, p in layer.named_parameters() if not name.startswith("base_layer.")}
    head_ids = {id(p) for p in predictor.head.parameters()}
    before = {name: p.detach().clone() for name, p in predictor.named_parameters()}

    optimizer = torch.optim.AdamW(predictor.parameters(), lr=1e-2, weight_decay=0.1)  # ALL params offered
    loss = F.cross_entropy(predictor(tokens), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in predictor.named_parameters():
        trainable = id(p) in adapter_ids or id(p) in head_ids
        assert p.requires_grad == trainable, name
        assert (p.grad is not None) == trainable, name
    assert all(layer.up.grad.abs().sum() > 0 for layer in linear_adapters(predictor).values())
    optimizer.step()

    for name, p in predictor.named_parameters():
        if id(p) in adapter_ids or id(p) in head_ids:
            continue
        assert torch.equal(p, before[name]), name
    ups = [name for name in before if name.endswith(".up")]
    assert ups and all(not torch.equal(predictor.get_parameter(name), before[name]) for name in ups)


# ---------------------------------------------------------------- (6) save / load


def trained_predictor(method: str, rank: int = 8, seed: int = 0, architecture=ARCHITECTURES["tiny"]) -> ProteinPredictor:
    predictor = ProteinPredictor(build_random(architecture, seed=seed), HeadConfig(num_classes=3, hidden_dim=8),
                                 AdapterConfig(method=method, rank=rank, alpha=16.0, include_ffn=True))
    perturb_as_if_trained(predictor, seed=seed + 1)  # adapters and head
    return predictor.eval()


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_save_then_load_into_a_fresh_backbone_reproduces_predictions_exactly(method, tmp_path, tokens):
    from safetensors.torch import load_file

    predictor = trained_predictor(method)
    predictor.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.json", "adapter.safetensors"]
    stored = load_file(str(tmp_path / "adapter.safetensors"))  # safetensors: no pickle
    adapter_keys = {f"backbone.{k}" for k in adapter_state_dict(predictor.backbone)}
    assert set(stored) == adapter_keys | {f"head.{k}" for k in predictor.head.state_dict()}
    assert not any("base_layer" in k for k in stored)
    metadata = json.loads((tmp_path / "adapter.json").read_text())
    assert metadata["adapter"]["method"] == method and metadata["adapter"]["rank"] == 8

    fresh = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), HeadConfig(num_classes=3, hidden_dim=8),
                             AdapterConfig(method=method, rank=8, alpha=16.0, include_ffn=True)).eval()
    with torch.no_grad():
        expected = predictor(tokens)
        assert not torch.equal(fresh(tokens), expected)
        fresh.load_trained(tmp_path)
        assert torch.equal(fresh(tokens), expected)
        rebuilt, saved_metadata = ProteinPredictor.load(tmp_path)  # from the metadata alone
        assert torch.equal(rebuilt(tokens), expected)
    assert saved_metadata["backbone"]["pretrained"] is False


@pytest.mark.parametrize("text, reason", [("{oops", "not valid JSON: Expecting property name enclosed in double "
                                                      "quotes at line 1 column 2"),
                                           ("[1, 2]", "a JSON list, not an object")])
def test_a_damaged_adapter_json_is_one_line_naming_the_file(text, reason, tmp_path):
    from protadapt.adapters import AdapterError
    from protadapt.adapters.base import load_tensors

    trained_predictor("lora").save(tmp_path)
    (tmp_path / "adapter.json").write_text(text)
    with pytest.raises(AdapterError) as caught:
        load_tensors(tmp_path)
    assert str(caught.value) == (f"{tmp_path / 'adapter.json'}: unreadable ({reason}); "
                                 "save the run again with `protadapt fit`")


def test_load_from_metadata_rebuilds_a_random_backbone_with_its_seed(tmp_path, tokens):
    predictor = trained_predictor("dora", seed=4)
    predictor.save(tmp_path)
    rebuilt, _ = ProteinPredictor.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), predictor(tokens))


def test_load_from_metadata_works_for_the_8m_architecture(tmp_path, tokens):
    predictor = trained_predictor("lora", rank=4, architecture=ARCHITECTURES["esm2_t6_8M_UR50D"])
    predictor.save(tmp_path)
    rebuilt, _ = ProteinPredictor.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), predictor(tokens))


def test_mismatched_adapter_files_are_one_line_errors(tmp_path):
    trained_predictor("lora", rank=8).save(tmp_path / "rank8")
    rank4 = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), HeadConfig(num_classes=3, hidden_dim=8),
                             AdapterConfig(method="lora", rank=4, alpha=16.0, include_ffn=True))
    with pytest.raises(AdapterError) as error:
        rank4.load_trained(tmp_path / "rank8")
    assert "rank=8" in one_line(error) and "rank=4" in str(error.value)

    other_alpha = ProteinPredictor(build_random(ARCHITECTURES["tiny"]), HeadConfig(num_classes=3, hidden_dim=8),
                                   AdapterConfig(method="lora", rank=8, alpha=8.0, include_ffn=True))
    with pytest.raises(AdapterError) as error:
        other_alpha.load_trained(tmp_path / "rank8")
    assert "alpha" in one_line(error)


def test_tiny_adapter_into_an_8m_backbone_is_a_one_line_error(tmp_path, pristine):
    trained_predictor("dora").save(tmp_path)
    with pytest.raises(AdapterError) as error:
        ProteinPredictor.load(tmp_path, backbone=copy.deepcopy(pristine["8m"]))
    message = one_line(error)
    assert str(tmp_path) in message and "esm2_t6_8M_UR50D" in message


def test_missing_adapter_file_is_a_one_line_error(tmp_path):
    trained_predictor("lora").save(tmp_path)
    (tmp_path / "adapter.safetensors").unlink()
    with pytest.raises(AdapterError) as error:
        ProteinPredictor.load(tmp_path)
    assert str(tmp_path / "adapter.safetensors") in one_line(error)
