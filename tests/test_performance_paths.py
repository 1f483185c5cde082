"""The fast paths give the same numbers as the plain ones (correctness only, no timings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from protadapt.adapters import AdapterConfig, linear_adapters
from protadapt.backbones import load_backbone
from protadapt.config import BilevelConfig, OptimConfig
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.inference import predict_scores
from protadapt.training.bilevel import BiDoRAModule, darts_hypergradient, new_noise_seed, same_noise

XI = 0.05


def _predictor() -> ProteinPredictor:
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(dropout=0.0), AdapterConfig(method="bidora", rank=4))
    predictor = predictor.to(torch.float64)
    with torch.no_grad():
        for parameter in predictor.direction_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return predictor


def _batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (6, 10), generator=generator)
    tokens[:, 0], tokens[:, -1] = 0, 2
    return {"tokens": tokens, "labels": torch.tensor([0, 1, 0, 1, 1, 0])}


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def test_darts_with_reused_lower_gradient_and_task_only_fd_loss_is_unchanged():
    predictor = _predictor()
    train, val = _batch(1), _batch(2)
    orthogonality = 0.1  # large, so that leaving R out of the V± passes would show if it mattered
    task = lambda: F.cross_entropy(predictor(train["tokens"]), train["labels"])  # noqa: E731
    lower = lambda: task() + orthogonality * predictor.orthogonality_penalty()  # noqa: E731
    upper = lambda: F.cross_entropy(predictor(val["tokens"]), val["labels"])  # noqa: E731
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()

    plain = darts_hypergradient(lower, upper, directions, magnitudes, XI)
    seed = new_noise_seed()
    with same_noise(seed):
        train_grads = torch.autograd.grad(lower(), directions)
    reused = darts_hypergradient(lower, upper, directions, magnitudes, XI, train_grads=train_grads,
                                 noise_seed=seed, magnitude_lower_loss=task)
    torch.testing.assert_close(_flat(reused), _flat(plain), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="noise_seed"):
        darts_hypergradient(lower, upper, directions, magnitudes, XI, train_grads=train_grads)


def test_one_sided_darts_reuses_the_lower_pass_without_changing_the_result():
    predictor = _predictor()
    train, val = _batch(1), _batch(2)
    lower = lambda: F.cross_entropy(predictor(train["tokens"]), train["labels"]) \
        + 0.1 * predictor.orthogonality_penalty()  # noqa: E731
    upper = lambda: F.cross_entropy(predictor(val["tokens"]), val["labels"])  # noqa: E731
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()

    plain = darts_hypergradient(lower, upper, directions, magnitudes, XI, one_sided=True)
    seed = new_noise_seed()
    with same_noise(seed):
        grads = torch.autograd.grad(lower(), directions + magnitudes)  # the lower step's one pass
    reused = darts_hypergradient(lower, upper, directions, magnitudes, XI, one_sided=True,
                                 train_grads=grads[: len(directions)], train_magnitude_grads=grads[len(directions):],
                                 noise_seed=seed)
    torch.testing.assert_close(_flat(reused), _flat(plain), rtol=1e-7, atol=1e-12)
    central = darts_hypergradient(lower, upper, directions, magnitudes, XI)
    assert not torch.allclose(_flat(reused), _flat(central), rtol=1e-9, atol=0)  # a different difference


@pytest.mark.parametrize("hypergradient", ["darts", "darts_one_sided", "first_order"])
def test_bidora_training_step_is_the_spec_update(hypergradient):
    """With SGD and no clipping: V ← V − lr·∇_V L_tr(V); M ← M − arch_lr·hypergradient."""
    predictor = _predictor()
    bilevel = BilevelConfig(hypergradient=hypergradient, arch_lr=0.3, orthogonality=0.1)
    module = BiDoRAModule(predictor, OptimConfig(lr=XI, grad_clip=0.0), bilevel)
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    lower_opt, upper_opt = torch.optim.SGD(directions, lr=XI), torch.optim.SGD(magnitudes, lr=bilevel.arch_lr)
    noop = torch.optim.lr_scheduler.LambdaLR
    module.optimizers = lambda: (lower_opt, upper_opt)
    module.lr_schedulers = lambda: (noop(lower_opt, lambda _: 1.0), noop(upper_opt, lambda _: 1.0))
    module.clip_gradients = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    batch = {"inner_train": _batch(1), "inner_val": _batch(2)}

    lower = lambda: module.lower_objective(batch["inner_train"])  # noqa: E731
    upper = lambda: module.upper_objective(batch["inner_val"])  # noqa: E731
    lower_grads = torch.autograd.grad(lower(), directions)
    if hypergradient != "first_order":  # at V, before the lower step
        hyper = darts_hypergradient(lower, upper, directions, magnitudes, XI,
                                    one_sided=hypergradient == "darts_one_sided")
    expected_directions = [d.detach() - XI * g for d, g in zip(directions, lower_grads)]
    if hypergradient == "first_order":  # at the updated V
        originals = [d.detach().clone() for d in directions]
        with torch.no_grad():
            for d, e in zip(directions, expected_directions):
                d.copy_(e)
        hyper = torch.autograd.grad(upper(), magnitudes)
        with torch.no_grad():
            for d, o in zip(directions, originals):
                d.copy_(o)
    expected_magnitudes = [m.detach() - bilevel.arch_lr * h for m, h in zip(magnitudes, hyper)]

    module.training_step(batch, 0)
    torch.testing.assert_close(_flat(directions), _flat(expected_directions), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_flat(magnitudes), _flat(expected_magnitudes), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("precision, tolerance", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_predict_precision_autocasts_and_returns_float32(precision, tolerance):
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method="dora", rank=4))
    with torch.no_grad():
        for layer in linear_adapters(predictor).values():
            layer.up.normal_(0, 0.1)
    frame = pd.DataFrame({"id": ["a", "b", "c"], "sequence": ["MKV", "ACDEFGHIK", "LLLL"]})
    full = predict_scores(predictor, frame, batch_size=2)
    low = predict_scores(predictor, frame, batch_size=2, precision=precision)
    assert low.dtype == np.float32 and np.allclose(low.sum(1), 1.0, atol=1e-5)
    assert not np.array_equal(low, full)  # autocast really ran (on the CPU here, CUDA on a GPU)
    np.testing.assert_allclose(low, full, atol=tolerance)
    torch.testing.assert_close(predict_scores(predictor, frame, batch_size=2), full)  # weights left exact
    with pytest.raises(ValueError, match="precision"):
        predict_scores(predictor, frame, precision="fp8")


def test_dora_low_rank_norm_equals_the_materialised_norm():
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40).double()
    from protadapt.adapters import DoRALinear

    dora = DoRALinear(layer, AdapterConfig(method="dora", rank=3))
    with torch.no_grad():
        dora.up.normal_(0, 0.3)
    materialised = (layer.weight + dora.delta_weight()).norm(dim=1)
    torch.testing.assert_close(dora.direction_norm(), materialised, rtol=1e-10, atol=1e-12)


def test_peft_comparison_adapts_the_same_layers_with_the_same_function():
    """The benchmark's own check, run as the benchmark runs (a module of the repository, not an import)."""
    pytest.importorskip("peft")
    import json
    import subprocess
    import sys
    from pathlib import Path

    completed = subprocess.run([sys.executable, "-m", "benchmarks.vs_peft", "--check-only", "--archs", "8M",
                                "--device", "cpu"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 0, completed.stderr[-2000:]
    check = json.loads(completed.stdout.strip().splitlines()[-1])
    if not check["hf_config"]:
        pytest.skip("no HF config for esm2_t6_8M_UR50D")
    assert check["max_diff"] < 1e-4
