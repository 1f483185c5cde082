"""Padding-free (packed) ESM-2 layers give the padded path's numbers: hidden states at every real
token, pooled outputs, and a LoRA/DoRA step's gradients, within 1e-5 (float32)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from protadapt.adapters import AdapterConfig, linear_adapters
from protadapt.backbones import load_backbone
from protadapt.backbones.packing import PACKINGS, attention_for
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

TOL = 1e-5
MASK = 32  # <mask>: token dropout's per-sequence rescale is exercised
FAST = ("loop", "mask", "nested")  # flex compiles (~40 s on a CPU): its test is marked slow
SEQUENCES = [("a", "MKVLAAGIC"), ("b", "ACDEFGHIKLMNPQRSTVWY" * 4), ("c", "LLK"), ("d", "W"), ("e", "GAVLIPFMW" * 3)]


def tokens_for(backbone) -> torch.Tensor:
    """Five rows of very different lengths (1-80 residues), two with a <mask>."""
    tokens = backbone.alphabet.get_batch_converter()(SEQUENCES)[2]
    tokens[0, 3] = tokens[1, 40] = MASK
    return tokens


def predictor(method: str, backbone: str = "tiny", **adapter) -> ProteinPredictor:
    torch.manual_seed(0)
    model = ProteinPredictor(load_backbone(backbone, random_init=True), HeadConfig(dropout=0.0),
                             AdapterConfig(method=method, rank=4, **adapter))
    with torch.no_grad():
        for layer in linear_adapters(model).values():
            layer.up.normal_(0, 0.1)  # adapters that change the output, so their gradients are not trivial
    return model


def packed(model: ProteinPredictor, attention: str) -> ProteinPredictor:
    twin = copy.deepcopy(model)
    twin.backbone.packing = attention
    return twin


def step(model: ProteinPredictor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's loss and the gradient of every trainable parameter."""
    model.zero_grad()
    loss = F.cross_entropy(model(tokens), torch.tensor([0, 1, 1, 0, 1]))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("attention", FAST)
def test_packed_hidden_states_equal_the_padded_ones_at_every_layer(attention):
    backbone = load_backbone("tiny").eval()
    tokens = tokens_for(backbone)
    real = tokens != backbone.alphabet.padding_idx
    layers = [0, 1, 2]
    with torch.no_grad():
        padded = backbone.hidden_states(tokens, layers)
        backbone.packing = attention
        states = backbone.hidden_states(tokens, layers)
    for depth in layers:
        assert states[depth].shape == padded[depth].shape
        assert max_diff(states[depth][real], padded[depth][real]) <= TOL, (attention, depth)
        assert not states[depth][~real].any()  # padding positions: zeros, not attention leftovers
    assert max_diff(padded[2][real], backbone.model(tokens, repr_layers=[2])["representations"][2][real]) <= TOL


@pytest.mark.parametrize("pooling", ["mean", "bos"])
def test_packed_pooled_outputs_equal_per_sequence(pooling):
    model = predictor("lora").eval()
    model.head_config.pooling = pooling
    tokens = tokens_for(model.backbone)
    with torch.no_grad():
        padded = model.pool(model.backbone(tokens), tokens)
        twin = packed(model, "loop")
        pooled = twin.pool(twin.backbone(tokens), tokens)
        alone = [model.pool(model.backbone(tokens[i:i + 1, :int((tokens[i] != 1).sum())]), tokens[i:i + 1]
                            [:, :int((tokens[i] != 1).sum())]) for i in range(len(tokens))]
    assert max_diff(pooled, padded) <= TOL
    assert max_diff(pooled, torch.cat(alone)) <= TOL  # each sequence as if it were alone in its batch


@pytest.mark.parametrize("method,attention", [("lora", "loop"), ("dora", "loop"), ("dora", "nested"), ("lora", "mask")])
def test_a_training_step_gives_the_padded_loss_and_gradients(method, attention):
    model = predictor(method, include_ffn=True)
    tokens = tokens_for(model.backbone)
    loss, grads = step(model, tokens)
    packed_loss, packed_grads = step(packed(model, attention), tokens)
    assert abs(loss - packed_loss) <= TOL
    assert grads.keys() == packed_grads.keys() and len(grads) > 4
    for name in grads:
        assert max_diff(grads[name], packed_grads[name]) <= TOL, name
        assert grads[name].abs().max() > 0, name  # a gradient that could differ


def test_prompt_tuning_and_checkpointing_pack_too():
    """Prompt vectors sit inside each sequence; checkpointed layers recompute the packed attention."""
    model = predictor("prompt", num_prompts=3)
    tokens = tokens_for(model.backbone)
    loss, grads = step(model, tokens)
    twin = packed(model, "loop")
    twin.backbone.checkpointing = True
    packed_loss, packed_grads = step(twin, tokens)
    assert abs(loss - packed_loss) <= TOL
    assert max_diff(grads["backbone.prompt.vectors"], packed_grads["backbone.prompt.vectors"]) <= TOL


def test_the_exact_8m_architecture_packs_equally():
    """ESM-2 8M (6 layers, width 320, 20 heads), random init: states and a DoRA step's gradients."""
    model = predictor("dora", "esm2_t6_8M_UR50D")
    tokens = tokens_for(model.backbone)
    real = tokens != model.backbone.alphabet.padding_idx
    twin = packed(model, "loop")
    with torch.no_grad():
        assert max_diff(twin.backbone(tokens)[real], model.backbone(tokens)[real]) <= TOL
    loss, grads = step(model, tokens)
    packed_loss, packed_grads = step(twin, tokens)
    assert abs(loss - packed_loss) <= TOL
    assert max(max_diff(grads[name], packed_grads[name]) for name in grads) <= TOL


@pytest.mark.slow
def test_flex_attention_packs_equally():
    """FlexAttention compiled by inductor (a C++ compiler; ~40 s on a CPU)."""
    test_packed_hidden_states_equal_the_padded_ones_at_every_layer("flex")


def test_packing_setting_resolves_per_device_and_refuses_unknown_values():
    assert attention_for("off", "cuda") is None and attention_for("on", "cpu") == "loop"
    assert attention_for("on", "cuda") == "nested" and attention_for("mask", "cpu") == "mask"
    assert attention_for("auto", "cpu") == "loop" and attention_for("auto", "mps") is None
    assert set(PACKINGS) >= {"off", "on", "auto"}
    with pytest.raises(ValueError, match="data.packing must be one of"):
        attention_for("yes", "cpu")


@pytest.mark.parametrize("packing", ["off", "loop"])
def test_training_after_an_inference_mode_forward_of_the_same_length(packing):
    """fair-esm's rotary tables cached under inference_mode (prediction, validation) must not reach backward."""
    model = predictor("lora")
    model.backbone.packing = packing
    tokens = tokens_for(model.backbone)
    with torch.inference_mode():
        model(tokens)
    loss, grads = step(model, tokens)
    assert torch.isfinite(loss) and grads["head.layers.1.weight"].abs().max() > 0


def test_packing_belongs_to_the_training_loop_and_scoring_after_it_pads(tmp_path, monkeypatch):
    """Steps and validation run packed; calibration, evaluation and predictions.csv after the fit run padded."""
    from protadapt.backbones import esm
    from protadapt.config import load_config
    from protadapt.training import calibrate, run

    forwards: list[str] = []
    real_attention = esm.attention_for
    monkeypatch.setattr(esm, "attention_for", lambda packing, device: forwards.append(packing)
                        or real_attention(packing, device))
    scorings: list[str] = []
    for module in (calibrate, run):
        real_scores = module.predict_scores
        monkeypatch.setattr(module, "predict_scores", lambda predictor, *a, real=real_scores, **k:
                            scorings.append(predictor.backbone.packing) or real(predictor, *a, **k))
    run.fit(load_config(None, ["backbone=tiny", "quiet=true", "data.batch_size=64", "optim.max_epochs=1",
                               "optim.refit=false", "data.packing=loop", "uncertainty.temperature=true",
                               "data.calibration_fraction=0.2"]), tmp_path / "run")
    assert scorings == ["off"] * 4  # temperature, conformal, inner-val and test scoring: padded
    first_padded = forwards.index("off")
    assert first_padded > 0 and set(forwards[:first_padded]) == {"loop"}  # the training loop's own passes
