"""`trainer.compile` and `trainer.checkpointing` give the eager, uncheckpointed numbers (tiny backbone)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from protadapt.adapters import AdapterConfig
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import load_backbone
from protadapt.config import OptimConfig, RunConfig
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.module import PredictorModule
from protadapt.training.trainer import prepare_backbone

LABELS = torch.tensor([0, 1, 1])


def predictor(method: str = "dora") -> ProteinPredictor:
    torch.manual_seed(0)
    model = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method=method, rank=4))
    perturb_as_if_trained(model, std=0.1)  # adapters that change the output, so their gradients are not trivial
    return model


def batch() -> torch.Tensor:
    """Three sequences of different lengths: padding and the attention mask are exercised."""
    alphabet = load_backbone("tiny").alphabet
    converter = alphabet.get_batch_converter()
    return converter([("a", "MKVLAAGIC"), ("b", "ACDEFGHIKLMNPQRSTVWY"), ("c", "LLK")])[2]


def configured(model: ProteinPredictor, **trainer) -> ProteinPredictor:
    config = RunConfig()
    for key, value in trainer.items():
        setattr(config.trainer, key, value)
    prepare_backbone(PredictorModule(model, OptimConfig()), config)
    return model


def loss_and_grads(model: ProteinPredictor, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(1)  # the same head-dropout masks in both runs
    loss = F.cross_entropy(model(tokens), LABELS)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_checkpointing_gives_the_same_loss_and_gradients_and_recomputes_each_layer():
    tokens = batch()
    plain = predictor()
    checkpointed = configured(copy.deepcopy(plain), checkpointing=True)
    calls = []
    checkpointed.backbone.model.layers[0].fc1.register_forward_hook(lambda *args: calls.append(1))
    loss, grads = loss_and_grads(plain, tokens)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, tokens)
    assert len(calls) == 2  # the forward and its recomputation in backward
    assert abs(loss - loss_ckpt) <= 1e-6
    assert len(grads) == len(grads_ckpt) > 0
    for g, g_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g, atol=1e-6, rtol=0)
    with torch.no_grad():  # no recomputation without gradients (evaluation and prediction)
        checkpointed(tokens)
    assert len(calls) == 3


@pytest.mark.slow  # inductor compiles the tiny forward and backward in ~50 s CPU (~100 s wall on the shared 2 cores)
def test_compiled_backbone_matches_eager_forward_and_one_training_step():
    tokens = batch()
    eager = predictor("lora").eval()  # head dropout off: inductor draws its own random masks
    compiled = configured(copy.deepcopy(eager), compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names kept: checkpoints, saved adapters
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens), eager(tokens), atol=1e-5, rtol=0)
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        first, _ = loss_and_grads(model, tokens)
        optimizer.step()
        with torch.no_grad():
            losses[name] = (first, F.cross_entropy(model(tokens), LABELS))
    assert abs(losses["eager"][0] - losses["compiled"][0]) <= 1e-5
    assert abs(losses["eager"][1] - losses["compiled"][1]) <= 1e-5
    assert abs(losses["eager"][1] - losses["eager"][0]) > 1e-4  # the step really moved the adapters


def test_checkpointing_esmc_gives_the_same_loss_and_gradients():
    pytest.importorskip("transformers")
    from protadapt.backbones import build_random, esmc

    torch.manual_seed(0)
    architecture = esmc.esmc_architecture("esmc_tiny", esmc.esmc_config_dict(2, 32, 4, 96))
    plain = ProteinPredictor(build_random(architecture).eval(), HeadConfig(), AdapterConfig(method="lora", rank=2))
    perturb_as_if_trained(plain, std=0.1)
    checkpointed = configured(copy.deepcopy(plain), checkpointing=True)
    calls = []
    checkpointed.backbone.model.layers[0].register_forward_pre_hook(lambda *args: calls.append(1))
    tokenizer = plain.backbone.tokenizer
    tokens = torch.full((3, 12), tokenizer.padding_idx)
    for row, length in enumerate((10, 6, 3)):
        tokens[row, :length] = torch.tensor([tokenizer.cls_idx, *tokenizer.encode("MKVLAAGIC"[:length - 2]),
                                             tokenizer.eos_idx])
    (loss, grads), (loss_ckpt, grads_ckpt) = loss_and_grads(plain, tokens), loss_and_grads(checkpointed, tokens)
    assert len(calls) == 2 and abs(loss - loss_ckpt) <= 1e-6
    for g, g_ckpt in zip(grads, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g, atol=1e-6, rtol=0)
