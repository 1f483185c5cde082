"""Every method on every transformers family (ESM C, BERT) at tiny random shapes: the default targets,
identity at init, merge/unmerge, one training step, prompt alignment, save → load with the head."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from protadapt.adapters import (
    AdapterConfig,
    apply_method,
    count_trainable,
    expected_trainable,
    linear_adapters,
    merge_adapters,
    method_names,
    unmerge_adapters,
)
from protadapt.backbones import Backbone, BackboneError, bert, build_random, esmc, load_backbone
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

TINY = {
    "esmc": esmc.esmc_architecture("esmc_tiny", esmc.esmc_config_dict(2, 64, 4, 128)),
    "bert": bert.bert_architecture("antiberty", bert.bert_config_dict(2, 64, 4, 128, 25, 64)),  # AntiBERTy's vocabulary
}
LINEAR = ("lora", "dora", "bidora", "wegeft")
FROZEN = ("head", "probe")  # methods that train nothing inside the backbone
TARGETS = {  # what the default patterns must select in layer 0, attention then FFN
    "esmc": ({"layers.0.self_attn." + p for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
             {"layers.0.mlp." + p for p in ("gate_proj", "up_proj", "down_proj")}),
    "bert": ({"encoder.layer.0.attention.self." + p for p in ("query", "key", "value")} | {"encoder.layer.0.attention.output.dense"},
             {"encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"}),
}


@pytest.fixture(scope="module")
def pristine() -> dict[str, Backbone]:
    return {name: build_random(arch) for name, arch in TINY.items()}


def batch(backbone: Backbone) -> torch.Tensor:
    """Three sequences of 9, 6 and 3 residues with the family's specials, right-padded."""
    t = backbone.tokenizer
    residues = [t.encode(s) for s in ("ACDEFGHIK", "LMNPQR", "STV")]
    tokens = torch.full((3, 11), t.padding_idx)
    for row, ids in enumerate(residues):
        tokens[row, : len(ids) + 2] = torch.tensor([t.cls_idx, *ids, t.eos_idx])
    return tokens


def perturbed(backbone: Backbone, method: str, include_ffn: bool = True) -> Backbone:
    backbone = copy.deepcopy(backbone)
    apply_method(backbone, AdapterConfig(method=method, rank=4, include_ffn=include_ffn))
    return perturb_as_if_trained(backbone).eval()


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("include_ffn", [False, True])
def test_default_targets_are_the_family_linears(family, include_ffn, pristine):
    backbone = copy.deepcopy(pristine[family])
    paths = apply_method(backbone, AdapterConfig(method="lora", rank=4, include_ffn=include_ffn))
    attention, ffn = TARGETS[family]
    assert {p for p in paths if ".0." in p} == (attention | ffn if include_ffn else attention)
    assert len(paths) == 2 * len(attention | (ffn if include_ffn else set()))


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("method", method_names())
def test_every_method_counts_what_it_trains(family, method, pristine):
    backbone = copy.deepcopy(pristine[family])
    config = AdapterConfig(method=method, rank=4, include_ffn=True, num_prompts=3)
    apply_method(backbone, config)
    assert count_trainable(backbone) == expected_trainable(backbone.architecture, config)
    assert (count_trainable(backbone) > 0) == (method not in FROZEN)


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("method", LINEAR)
def test_identity_at_init_and_merge_round_trip(family, method, pristine):
    bare = pristine[family].eval()
    tokens = batch(bare)
    backbone = copy.deepcopy(bare)
    apply_method(backbone, AdapterConfig(method=method, rank=4, include_ffn=True))
    with torch.no_grad():
        assert torch.equal(backbone.eval()(tokens), bare(tokens))
        backbone = perturbed(bare, method)
        originals = {p: layer.base_layer.weight.clone() for p, layer in linear_adapters(backbone).items()}
        unmerged = backbone(tokens)
        assert (unmerged - bare(tokens)).abs().max() > 1e-3  # the perturbation shows
        merge_adapters(backbone)
        assert (backbone(tokens) - unmerged).abs().max() <= 1e-5
        unmerge_adapters(backbone)
        for path, layer in linear_adapters(backbone).items():
            assert (layer.base_layer.weight - originals[path]).abs().max() <= 1e-5, path
        assert (backbone(tokens) - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("method", method_names())
def test_one_step_moves_only_trainable_tensors(family, method, pristine):
    torch.manual_seed(0)
    predictor = ProteinPredictor(copy.deepcopy(pristine[family]), HeadConfig(dropout=0.0),
                                 AdapterConfig(method=method, rank=4, num_prompts=3))
    frozen = {k: v.clone() for k, v in predictor.named_parameters() if not v.requires_grad}
    trainable = {k: v.clone() for k, v in predictor.named_parameters() if v.requires_grad}
    optimizer = torch.optim.SGD([p for p in predictor.parameters() if p.requires_grad], lr=0.5)
    loss = torch.nn.functional.cross_entropy(predictor(batch(predictor.backbone)), torch.tensor([0, 1, 1]))
    loss.backward()
    optimizer.step()
    params = dict(predictor.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in frozen.items())
    moved = [k for k, v in trainable.items() if not torch.equal(params[k], v)]
    assert moved and any(k.startswith("backbone.") for k in moved) == (method not in FROZEN)


@pytest.mark.parametrize("family", TINY)
def test_prompt_output_is_aligned_and_padding_free(family, pristine):
    torch.manual_seed(0)
    backbone = copy.deepcopy(pristine[family]).eval()
    apply_method(backbone, AdapterConfig(method="prompt", num_prompts=4))
    tokens = batch(backbone)
    with torch.no_grad():
        hidden = backbone(tokens)
        alone = backbone(tokens[2:, :5])  # the 3-residue sequence without padding
    assert hidden.shape == (3, 11, 64)
    assert (hidden[2, :5] - alone[0]).abs().max() <= 1e-5
    with torch.no_grad():
        perturb_as_if_trained(backbone, std=1.0)  # the prompt vectors, at random: a constant shift LayerNorm would remove
        assert (backbone(tokens) - hidden).abs().max() > 1e-3


def test_bert_prompt_init_is_the_embedding_output_without_dropout(pristine):
    backbone = copy.deepcopy(pristine["bert"]).train()
    residues = torch.tensor([backbone.tokenizer.get_idx(aa) for aa in "ACDE"])
    first, second = backbone.prompt_init(residues), backbone.prompt_init(residues)
    assert torch.equal(first, second) and backbone.training and backbone.model.embeddings.training
    with torch.no_grad():
        expected = backbone.model.embeddings.eval()(input_ids=residues.unsqueeze(0))[0]
    assert torch.equal(first, expected)


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("method", ["dora", "prompt", "full"])
def test_save_and_load_with_the_head(family, method, pristine, tmp_path):
    torch.manual_seed(0)
    predictor = ProteinPredictor(build_random(TINY[family]), HeadConfig(num_classes=3, dropout=0.0),
                                 AdapterConfig(method=method, rank=4, num_prompts=3)).eval()
    perturb_as_if_trained(predictor)
    tokens = batch(predictor.backbone)
    predictor.save(tmp_path)
    loaded, metadata = ProteinPredictor.load(tmp_path)  # rebuilt from the saved architecture record
    assert metadata["backbone"]["family"] == family
    with torch.no_grad():
        assert torch.equal(loaded(tokens), predictor(tokens))


def test_residue_mask_uses_the_family_specials(pristine):
    backbone = pristine["bert"]
    tokens = batch(backbone)
    assert backbone.tokenizer.cls_idx == 2 and backbone.tokenizer.eos_idx == 3 and backbone.tokenizer.padding_idx == 0
    assert backbone.residue_mask(tokens).sum(1).tolist() == [9, 6, 3]
    assert backbone.max_residues == 62 and pristine["esmc"].max_residues == 2046


def test_missing_transformers_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    for architecture in TINY.values():
        with pytest.raises(BackboneError) as error:
            build_random(architecture)
        assert 'pip install "protadapt[hf]"' in str(error.value) and "\n" not in str(error.value)
    assert load_backbone("tiny").embed_dim == 32  # fair-esm ESM-2 never needs it
