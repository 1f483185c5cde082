"""Pooling ignores BOS, EOS and padding; heads give `[B]` for regression and `[B, C]` for classes."""

from __future__ import annotations

import pytest
import torch

from protadapt.adapters import AdapterConfig, AdapterError
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig, mean_pool, residue_mask
from protadapt.model import ProteinPredictor

BOS, PAD, EOS = 0, 1, 2



def predictor_for(head: HeadConfig) -> ProteinPredictor:
    return ProteinPredictor(load_backbone("tiny"), head, AdapterConfig(method="head")).eval()


def test_residue_mask_marks_only_amino_acids(tokens):
    backbone = load_backbone("tiny")
    mask = residue_mask(tokens, backbone)
    assert torch.equal(mask, (tokens >= 4))  # the fixture's residues are tokens 4..23
    assert mask.sum(1).tolist() == [10, 8, 5]


def test_mean_pool_averages_exactly_the_residue_positions(tokens):
    hidden = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(0))
    hidden[tokens < 4] = 1e6  # BOS / EOS / padding must not leak in
    pooled = mean_pool(hidden, residue_mask(tokens, load_backbone("tiny")))
    for i in range(3):
        expected = hidden[i][tokens[i] >= 4].mean(0)
        assert torch.allclose(pooled[i], expected, atol=1e-6)


def test_padded_sequence_pools_like_the_same_sequence_alone():
    predictor = predictor_for(HeadConfig(pooling="mean"))
    residues = torch.tensor([5, 9, 14, 6, 20, 11, 8, 4])
    alone = torch.cat([torch.tensor([BOS]), residues, torch.tensor([EOS])]).unsqueeze(0)
    longer = torch.cat([torch.tensor([BOS]), torch.arange(4, 18), torch.tensor([EOS])])
    batch = torch.full((2, longer.numel()), PAD)
    batch[0, : alone.shape[1]] = alone[0]
    batch[1] = longer
    with torch.no_grad():
        pooled_alone = predictor.pool(predictor.backbone(alone), alone)
        pooled_batch = predictor.pool(predictor.backbone(batch), batch)
        # with padding mis-handled (pad rows averaged in) the vectors would differ by far more
        naive = predictor.backbone(batch)[0, 1:-1].mean(0)
    assert pooled_batch.shape == (2, 32)
    assert (pooled_batch[0] - pooled_alone[0]).abs().max() <= 1e-5
    assert (naive - pooled_alone[0]).abs().max() > 1e-2


def test_bos_pooling_takes_the_first_position(tokens):
    predictor = predictor_for(HeadConfig(pooling="bos"))
    with torch.no_grad():
        hidden = predictor.backbone(tokens)
        assert torch.equal(predictor.pool(hidden, tokens), hidden[:, 0])


@pytest.mark.parametrize("hidden_dim", [None, 16])
@pytest.mark.parametrize("pooling", ["mean", "bos"])
def test_head_output_shapes(pooling, hidden_dim, tokens):
    regression = predictor_for(HeadConfig(problem_type="regression", pooling=pooling, hidden_dim=hidden_dim))
    classification = predictor_for(HeadConfig(problem_type="classification", num_classes=4, pooling=pooling,
                                              hidden_dim=hidden_dim))
    with torch.no_grad():
        assert regression(tokens).shape == (3,)
        assert classification(tokens).shape == (3, 4)


def test_unknown_pooling_is_an_adapter_error(tokens):
    predictor = predictor_for(HeadConfig(pooling="max"))
    with pytest.raises(AdapterError, match="unknown pooling 'max'"):
        predictor(tokens)


def test_unknown_head_setting_is_an_error():
    with pytest.raises(AdapterError, match="unknown head setting"):
        HeadConfig.from_dict({"pooling": "mean", "polling": "bos"})
