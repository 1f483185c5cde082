"""Prompt tuning: frozen backbone untouched, only prompts + head learn, alignment, padding, save/load.

At init prompt tuning changes the output (residues attend to the new tokens), so the identity
test of the other methods does not apply; these tests check what the method does promise.
"""

from __future__ import annotations

import pytest
import torch

from protadapt.adapters import AdapterConfig, AdapterError, apply_method, count_trainable, expected_trainable
from protadapt.adapters.prompt import AMINO_ACIDS, PromptEmbedding
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import Architecture, build_random, load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor


def prompted(num_prompts: int = 5, backbone: str = "tiny") -> ProteinPredictor:
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(backbone, random_init=True), HeadConfig(num_classes=3, dropout=0.0),
                                 AdapterConfig(method="prompt", num_prompts=num_prompts))
    return predictor.eval()


def test_prompt_is_set_and_counted():
    predictor = prompted(num_prompts=16, backbone="esm2_t6_8M_UR50D")
    backbone = predictor.backbone
    assert isinstance(backbone.prompt, PromptEmbedding)
    assert backbone.prompt().shape == (16, 320)
    assert count_trainable(backbone) == 16 * 320 == 5_120 == expected_trainable(backbone.architecture, predictor.adapter_config)
    assert predictor.adapted_layers == []


def test_init_uses_amino_acid_embeddings():
    backbone = prompted().backbone
    model = backbone.model
    rows = model.embed_tokens.weight[[backbone.alphabet.get_idx(aa) for aa in AMINO_ACIDS]]
    rows = rows * model.embed_scale * (1 - 0.15 * 0.8)  # the tiny ESM-2 uses token dropout
    for vector in backbone.prompt():
        assert (rows - vector).abs().amax(dim=1).min().item() <= 1e-7


def test_step_trains_only_prompt_and_head(tokens):
    predictor = prompted()
    frozen = {key: value.clone() for key, value in predictor.backbone.model.state_dict().items()}
    prompt_before = predictor.backbone.prompt.vectors.detach().clone()
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(predictor(tokens), torch.tensor([0, 1, 2]))
    loss.backward()
    with_grad = {name for name, p in predictor.named_parameters() if p.grad is not None}
    assert with_grad == {"backbone.prompt.vectors", "head.layers.1.weight", "head.layers.1.bias"}
    optimizer.step()
    assert all(torch.equal(value, frozen[key]) for key, value in predictor.backbone.model.state_dict().items())
    assert not torch.equal(predictor.backbone.prompt.vectors, prompt_before)


def test_predictions_depend_on_prompt(tokens):
    predictor = prompted()
    with torch.no_grad():
        before = predictor(tokens)
        perturb_as_if_trained(predictor.backbone, std=1.0)  # the prompt vectors (the only trainable backbone part)
        after = predictor(tokens)
    assert (after - before).abs().max().item() > 1e-4


def test_output_stays_aligned_with_tokens(tokens):
    backbone = prompted(num_prompts=7).backbone
    with torch.no_grad():
        assert backbone(tokens).shape == (*tokens.shape, backbone.embed_dim)


def test_padding_does_not_change_a_prediction(tokens):
    predictor = prompted()
    with torch.no_grad():
        batch = predictor(tokens)
        for row, length in ((1, 10), (2, 7)):  # EOS at 9 and 6, padding after
            alone = predictor(tokens[row:row + 1, :length])
            assert (batch[row] - alone[0]).abs().max().item() <= 1e-5


def test_save_load_round_trip(tokens, tmp_path):
    predictor = prompted()
    with torch.no_grad():
        perturb_as_if_trained(predictor.backbone, std=1.0)  # the prompt vectors (the only trainable backbone part)
        expected = predictor(tokens)
    predictor.save(tmp_path)
    loaded, metadata = ProteinPredictor.load(tmp_path)
    assert metadata["adapter"]["num_prompts"] == 5
    with torch.no_grad():
        assert torch.equal(loaded(tokens), expected)


def test_esm1b_is_refused_at_apply():
    backbone = build_random(Architecture("esm1b_small", "esm1b", 1, 32, 4, False))
    with pytest.raises(AdapterError, match="ESM-2"):
        apply_method(backbone, AdapterConfig(method="prompt"))
