"""`backbone_dtype=bfloat16`: frozen weights in bf16, adapters and head in fp32 (tiny backbone)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import protadapt.training.run as run_module
from protadapt.adapters import AdapterConfig, linear_adapters
from protadapt.backbones import load_backbone, store_frozen_weights
from protadapt.config import ConfigError, load_config
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

LABELS = torch.tensor([0, 1, 1])
METHODS = ["lora", "dora", "bidora"]


def backbone(dtype: str = "bfloat16"):
    torch.manual_seed(0)
    return store_frozen_weights(load_backbone("tiny"), dtype)


def predictor(method: str, dtype: str = "bfloat16") -> ProteinPredictor:
    model = backbone(dtype)
    torch.manual_seed(1)
    return ProteinPredictor(model, HeadConfig(dropout=0.0), AdapterConfig(method=method, rank=4, include_ffn=True))


def batch() -> torch.Tensor:
    """Three lengths, so padding and the attention mask are exercised."""
    converter = load_backbone("tiny").alphabet.get_batch_converter()
    return converter([("a", "MKVLAAGIC"), ("b", "ACDEFGHIKLMNPQRSTVWY"), ("c", "LLK")])[2]


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_bf16_halves_the_frozen_weight_bytes_and_keeps_the_rest_fp32():
    fp32, model = backbone("float32"), backbone()
    assert 0.5 < parameter_bytes(model) / parameter_bytes(fp32) < 0.52
    stored = {id(p) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)) for p in m.parameters()}
    for name, parameter in model.named_parameters():  # linears, embeddings at 2 bytes; LayerNorms, LM head bias at 4
        assert parameter.dtype == (torch.bfloat16 if id(parameter) in stored else torch.float32), name
    assert len(stored) < len(list(model.parameters()))
    assert model.model.layers[0].self_attn.rot_emb.inv_freq.dtype == torch.float32  # positions need fp32
    assert isinstance(model.model.layers[0].fc1, nn.Linear)  # adapters still find their targets


def test_bf16_layers_compute_in_fp32_and_keep_no_fp32_weight_copy_for_backward():
    layer = backbone().model.layers[0].fc1
    x = torch.randn(5, layer.in_features, requires_grad=True)
    out = layer(x)
    expected = F.linear(x.detach(), layer.weight.float(), layer.bias.float())
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    saved = [t for t in (out.grad_fn.saved_tensors if hasattr(out.grad_fn, "saved_tensors") else ())]
    assert all(t.dtype == torch.bfloat16 for t in saved) and saved  # the stored weight itself, no fp32 copy
    out.sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.float().sum(0).expand(5, -1), rtol=1e-6, atol=1e-6)
    assert layer.weight.grad is None


@pytest.mark.parametrize("method", METHODS)
def test_identity_at_init_against_the_bf16_bare_backbone(method):
    tokens = batch()
    adapted = predictor(method)
    with torch.no_grad():
        bare, out = backbone()(tokens), adapted.backbone(tokens)
        full_precision = predictor(method, "float32").backbone(tokens)
    assert out.dtype == torch.float32  # the head sees fp32 states
    torch.testing.assert_close(out, bare, rtol=1e-6, atol=1e-6)  # fp32 compute over the same bf16 weights
    assert 0 < (out - full_precision).abs().max() < 0.05 * full_precision.abs().max()  # weights rounded, close
    assert all(p.dtype == torch.float32 for p in adapted.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_gives_fp32_adapter_gradients_and_leaves_bf16_weights_alone(method):
    tokens, model = batch(), predictor(method)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the second step has non-zero B, so every path carries gradient
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tokens), LABELS) + model.orthogonality_penalty()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.endswith(".down"))  # A learns through B ≠ 0
    if method != "lora":
        assert all(grads[n].abs().sum() > 0 for n in grads if n.endswith(".magnitude"))
    assert all(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if p.requires_grad)
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_step_under_bf16_autocast_computes_in_bf16_and_trains_fp32_adapters(method):
    tokens, model = batch(), predictor(method)
    seen = []
    model.backbone.model.layers[0].fc1.base_layer.register_forward_hook(lambda m, inputs, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trainer.precision=bf16-mixed, as on a GPU
        loss = F.cross_entropy(model(tokens), LABELS)
    loss.backward()
    assert seen == [torch.bfloat16] and torch.isfinite(loss)  # the frozen linears run bf16 GEMMs
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_saved_adapter_is_fp32_and_reloads_into_an_fp32_model(tmp_path, method):
    tokens, model = batch(), predictor(method)
    with torch.no_grad():
        for layer in linear_adapters(model).values():
            layer.up.normal_(0, 0.1)  # a trained-looking adapter, so the reload has something to carry
    model.save(tmp_path)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    reloaded = predictor(method, "float32")
    reloaded.load_trained(tmp_path)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        bf16_out, fp32_out = model(tokens), reloaded(tokens)
    assert fp32_out.dtype == torch.float32
    torch.testing.assert_close(fp32_out, bf16_out, rtol=0.05, atol=0.05)
    assert not torch.equal(fp32_out, predictor(method, "float32").eval()(tokens))  # the adapter did load


def test_merged_bf16_layer_keeps_bf16_storage_and_unmerges_bit_for_bit():
    model = predictor("dora")
    layer = next(iter(linear_adapters(model).values()))
    with torch.no_grad():
        layer.up.normal_(0, 0.1)
    before = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert not torch.equal(layer.base_layer.weight, before)
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, before)


def test_config_accepts_bfloat16_and_refuses_what_it_cannot_do():
    assert load_config(None, ["backbone_dtype=bfloat16"]).backbone_dtype == "bfloat16"
    assert load_config(None, []).backbone_dtype == "float32"
    with pytest.raises(ConfigError, match="unknown backbone_dtype 'float16'"):
        load_config(None, ["backbone_dtype=float16"])
    with pytest.raises(ConfigError, match="backbone_dtype=bfloat16 works with lora"):
        load_config(None, ["backbone_dtype=bfloat16", "adapter.method=full"])


@pytest.mark.slow  # a whole `fit` (~14 s on the shared CPU)
def test_fit_with_a_bf16_backbone_trains_and_saves_fp32(tmp_path):
    config = load_config(None, ["adapter.method=dora", "backbone=tiny", "quiet=true", "data.batch_size=16",
                                "optim.max_epochs=1", "backbone_dtype=bfloat16"])
    result = run_module.fit(config, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "adapter.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert any(k.endswith(".up") and v.abs().sum() > 0 for k, v in saved.items())
    assert all(v == v for v in result.metrics.values() if isinstance(v, float))  # no NaN metric


def test_esmc_backbone_stores_bf16_and_keeps_identity_at_init():
    pytest.importorskip("transformers")
    from protadapt.backbones import build_random, esmc

    tiny = esmc.esmc_architecture("esmc_tiny", esmc.esmc_config_dict(2, 32, 4, 96))
    tokens = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
    bare = store_frozen_weights(build_random(tiny), "bfloat16").eval()
    model = ProteinPredictor(store_frozen_weights(build_random(tiny), "bfloat16"), HeadConfig(dropout=0.0),
                             AdapterConfig(method="dora", rank=4)).eval()
    assert parameter_bytes(bare) < 0.55 * parameter_bytes(build_random(tiny))
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(tokens), bare(tokens), rtol=1e-6, atol=1e-6)
    loss = F.cross_entropy(model.train()(tokens), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
