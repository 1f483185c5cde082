"""BiDoRA's hypergradient and its level separation, on the tiny backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from protadapt.adapters import AdapterConfig, DoRALinear
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.bilevel import darts_hypergradient, first_order_hypergradient, reset_for_retraining

XI = 0.05


def _predictor(dtype=torch.float64) -> ProteinPredictor:
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(dropout=0.0), AdapterConfig(method="bidora", rank=4))
    predictor = predictor.to(dtype).eval()
    with torch.no_grad():  # move off the init point so every term of the hypergradient is non-zero
        for parameter in predictor.direction_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return predictor


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (6, 10), generator=generator)
    tokens[:, 0], tokens[:, -1] = 0, 2
    return tokens, torch.tensor([0, 1, 0, 1, 1, 0])


def _losses(predictor):
    train_tokens, train_labels = _batch(1)
    val_tokens, val_labels = _batch(2)
    lower = lambda: F.cross_entropy(predictor(train_tokens), train_labels)  # noqa: E731
    upper = lambda: F.cross_entropy(predictor(val_tokens), val_labels)  # noqa: E731
    return lower, upper


def exact_unrolled_gradient(predictor, lower, upper) -> list[torch.Tensor]:
    """d/dM of L_val(V − ξ∇_V L_tr(V, M), M), by double back-propagation (no approximation)."""
    directions = predictor.direction_parameters()
    magnitudes = predictor.magnitude_parameters()
    originals = [d.detach().clone() for d in directions]
    grads = torch.autograd.grad(lower(), directions, create_graph=True)
    unrolled = [d - XI * g for d, g in zip(directions, grads)]
    # evaluate L_val at V′ by temporarily routing the parameters through torch.func
    names = dict(predictor.named_parameters())
    lookup = {id(p): n for n, p in names.items()}
    params = {lookup[id(d)]: u for d, u in zip(directions, unrolled)}
    params.update({lookup[id(m)]: m for m in magnitudes})
    val_tokens, val_labels = _batch(2)
    loss = F.cross_entropy(torch.func.functional_call(predictor, params, (val_tokens,)), val_labels)
    result = torch.autograd.grad(loss, magnitudes)
    for d, o in zip(directions, originals):
        assert torch.equal(d, o)
    return list(result)


def test_darts_matches_the_exact_unrolled_gradient():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    # double back-propagation needs the math attention kernel (fused SDPA has no second derivative)
    with sdpa_kernel(SDPBackend.MATH):
        exact = torch.cat([g.flatten() for g in exact_unrolled_gradient(predictor, lower, upper)])
    darts = torch.cat([g.flatten() for g in darts_hypergradient(
        lower, upper, predictor.direction_parameters(), predictor.magnitude_parameters(), XI)])
    first_order = torch.cat([g.flatten() for g in first_order_hypergradient(upper, predictor.magnitude_parameters())])
    relative = (darts - exact).norm() / exact.norm()
    print(f"DARTS vs exact unrolled hypergradient: relative error {relative:.2e} (float64)")
    assert relative < 1e-4  # finite differences with ε = 0.01/‖g‖ are second-order accurate
    assert (first_order - exact).norm() / exact.norm() > 10 * relative  # the second-order term matters here


def test_one_sided_darts_is_close_to_the_exact_gradient_and_far_better_than_first_order():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    with sdpa_kernel(SDPBackend.MATH):
        exact = torch.cat([g.flatten() for g in exact_unrolled_gradient(predictor, lower, upper)])
    one_sided = torch.cat([g.flatten() for g in darts_hypergradient(lower, upper, directions, magnitudes, XI,
                                                                     one_sided=True)])
    first_order = torch.cat([g.flatten() for g in first_order_hypergradient(upper, magnitudes)])
    relative = (one_sided - exact).norm() / exact.norm()
    first_order_relative = (first_order - exact).norm() / exact.norm()
    print(f"one-sided DARTS vs exact: relative error {relative:.2e}; first-order {first_order_relative:.2e} (float64)")
    assert relative < 5e-3  # first-order in ε (central: 6e-6 above)
    assert first_order_relative > 30 * relative


def test_first_order_is_the_plain_validation_gradient():
    predictor = _predictor()
    _, upper = _losses(predictor)
    magnitudes = predictor.magnitude_parameters()
    plain = torch.autograd.grad(upper(), magnitudes)
    for a, b in zip(first_order_hypergradient(upper, magnitudes), plain):
        assert torch.equal(a, b)


def test_darts_restores_directions_and_leaves_magnitudes():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    before = {n: p.detach().clone() for n, p in predictor.named_parameters()}
    darts_hypergradient(lower, upper, predictor.direction_parameters(), predictor.magnitude_parameters(), XI)
    for name, parameter in predictor.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_groups_partition_the_trainable_parameters():
    predictor = _predictor(torch.float32)
    magnitudes = {id(p) for p in predictor.magnitude_parameters()}
    directions = {id(p) for p in predictor.direction_parameters()}
    trainable = {id(p) for p in predictor.parameters() if p.requires_grad}
    assert magnitudes and directions and not magnitudes & directions
    assert magnitudes | directions == trainable
    assert len(magnitudes) == 2 * 4  # tiny: 2 layers × q/k/v/out


def test_retraining_reset_freezes_magnitudes_and_restarts_directions():
    predictor = _predictor(torch.float32)
    with torch.no_grad():
        for magnitude in predictor.magnitude_parameters():
            magnitude.mul_(1.1)
    learned = [m.detach().clone() for m in predictor.magnitude_parameters()]
    reset_for_retraining(predictor, seed=0)
    for magnitude, value in zip(predictor.magnitude_parameters(), learned):
        assert torch.equal(magnitude, value) and not magnitude.requires_grad
    ups = [p for n, p in predictor.named_parameters() if n.endswith(".up")]
    assert ups and all(torch.count_nonzero(u) == 0 for u in ups)


@pytest.mark.parametrize("in_features, out_features", [(40, 40), (48, 32), (32, 48)])
def test_orthogonality_penalty_is_the_unit_row_gram_distance_from_identity(in_features, out_features):
    """R = ‖D̂D̂ᵀ − I‖_F over unit rows of V = W0 + sBA, value and gradient, for square, wide and tall layers."""
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(in_features, out_features), AdapterConfig(method="dora", rank=4)).double()
    with torch.no_grad():
        layer.up.normal_(0, 0.3)

    def explicit() -> torch.Tensor:
        direction = layer.base_layer.weight + layer.scaling * layer.up @ layer.down
        unit = direction / direction.norm(dim=1, keepdim=True)
        return (unit @ unit.T - torch.eye(out_features, dtype=unit.dtype)).norm()

    penalty, reference = layer.orthogonality_penalty(), explicit()
    assert penalty.item() > 1.0
    torch.testing.assert_close(penalty, reference, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(penalty, [layer.down, layer.up]),
                         torch.autograd.grad(reference, [layer.down, layer.up])):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
