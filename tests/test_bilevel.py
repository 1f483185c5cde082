"""BiDoRA's hypergradient and its level separation, on the tiny backbone."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from protadapt.adapters import AdapterConfig, DoRALinear
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import load_backbone
from protadapt.config import HYPERGRADIENTS, BilevelConfig, DataConfig, OptimConfig
from protadapt.data.datamodule import ProteinDataModule
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.bilevel import (BiDoRAModule, RetrainModule, darts_hypergradient, darts_one_sided_hypergradient,
                                       darts_unrolled_hypergradient, first_order_hypergradient, new_noise_seed,
                                       reset_for_retraining, same_noise)

XI = 0.05


def _predictor(dtype=torch.float64) -> ProteinPredictor:
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(dropout=0.0), AdapterConfig(method="bidora", rank=4))
    predictor = predictor.to(dtype).eval()
    perturb_as_if_trained(predictor)  # off the init point, so every term of the hypergradient is non-zero
    return predictor


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (6, 10), generator=generator)
    tokens[:, 0], tokens[:, -1] = 0, 2
    return tokens, torch.tensor([0, 1, 0, 1, 1, 0])


def _losses(predictor, orthogonality: float = 0.0):
    train_tokens, train_labels = _batch(1)
    val_tokens, val_labels = _batch(2)
    lower = lambda: F.cross_entropy(predictor(train_tokens), train_labels) \
        + orthogonality * predictor.orthogonality_penalty()  # noqa: E731
    upper = lambda: F.cross_entropy(predictor(val_tokens), val_labels)  # noqa: E731
    return lower, upper


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def _relative(got, want) -> float:
    return float((_flat(got) - _flat(want)).norm() / _flat(want).norm())


class Functional:
    """The tiny predictor as a pure function of (directions, magnitudes): an independent route to each formula."""

    def __init__(self, predictor):
        self.predictor = predictor
        names = {id(p): n for n, p in predictor.named_parameters()}
        self.direction_names = [names[id(p)] for p in predictor.direction_parameters()]
        self.magnitude_names = [names[id(p)] for p in predictor.magnitude_parameters()]
        self.directions = [p.detach().clone() for p in predictor.direction_parameters()]
        self.magnitudes = [p.detach().clone().requires_grad_() for p in predictor.magnitude_parameters()]

    def loss(self, batch_seed: int, directions, magnitudes) -> torch.Tensor:
        tokens, labels = _batch(batch_seed)
        params = dict(zip(self.direction_names, directions)) | dict(zip(self.magnitude_names, magnitudes))
        return F.cross_entropy(torch.func.functional_call(self.predictor, params, (tokens,)), labels)

    def grad_m(self, batch_seed: int, directions) -> list[torch.Tensor]:
        return list(torch.autograd.grad(self.loss(batch_seed, directions, self.magnitudes), self.magnitudes))

    def validation(self, directions):
        """(∇_M L_val, v = ∇_V L_val) at `directions`."""
        leaves = [d.detach().clone().requires_grad_() for d in directions]
        grads = torch.autograd.grad(self.loss(2, leaves, self.magnitudes), self.magnitudes + leaves)
        return list(grads[: len(self.magnitudes)]), [g.detach() for g in grads[len(self.magnitudes):]]

    def mixed(self, directions, vector) -> list[torch.Tensor]:
        """∇²_{M,V} L_tr · vector = ∇_M (∇_V L_tr · vector), exactly, by double back-propagation."""
        leaves = [d.detach().clone().requires_grad_() for d in directions]
        grads = torch.autograd.grad(self.loss(1, leaves, self.magnitudes), leaves, create_graph=True)
        return list(torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, vector)), self.magnitudes))


def _shift(directions, scale, vector):
    return [d + scale * u for d, u in zip(directions, vector)]


def _darts_references(predictor, alpha: float = 0.01):
    """Betty's finite difference (ε = alpha/‖v‖) recomputed without the module's code, and its ε → 0 limit."""
    f = Functional(predictor)
    with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no second derivative
        gm, v = f.validation(f.directions)
        eps = alpha / torch.sqrt(sum(u.pow(2).sum() for u in v))
        minus, plus = f.grad_m(1, _shift(f.directions, -eps, v)), f.grad_m(1, _shift(f.directions, eps, v))
        formula = [g + (n - p) / (2 * eps) for g, n, p in zip(gm, minus, plus)]
        exact = [g - h for g, h in zip(gm, f.mixed(f.directions, v))]
    return formula, exact, gm


def test_darts_is_bettys_formula_and_close_to_the_exact_mixed_derivative():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    formula, exact, first_order = _darts_references(predictor)
    darts = darts_hypergradient(lower, upper, predictor.direction_parameters(), predictor.magnitude_parameters())
    own, limit = _relative(darts, formula), _relative(darts, exact)
    halved = _relative(_darts_references(predictor, alpha=0.005)[0], exact)
    print(f"darts vs its formula {own:.1e}; vs exact ∇_M L_val − ∇²_(M,V) L_tr·v {limit:.1e} "
          f"(ε halved: {halved:.1e}); first_order vs exact {_relative(first_order, exact):.2f} (float64)")
    assert own < 1e-6
    # the rest is the central difference's truncation error: O(ε²), a quarter when ε is halved
    assert limit < 1e-4 and 3.5 < limit / halved < 4.5
    assert _relative(first_order, exact) > 0.1  # with no learning-rate factor the second-order term is large


def test_darts_lower_loss_may_leave_out_the_orthogonality_term():
    """∇_M R = 0 (R depends on the directions only), so the ±εv passes need the task loss alone."""
    predictor = _predictor()
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    assert predictor.orthogonality_penalty().item() > 0.1
    assert all(g is None for g in torch.autograd.grad(predictor.orthogonality_penalty(), magnitudes,
                                                      allow_unused=True))
    with_r, upper = _losses(predictor, orthogonality=0.1)
    task, _ = _losses(predictor)
    seed = new_noise_seed()
    full = darts_hypergradient(with_r, upper, directions, magnitudes, noise_seed=seed)
    lean = darts_hypergradient(task, upper, directions, magnitudes, noise_seed=seed)
    torch.testing.assert_close(_flat(lean), _flat(full), rtol=1e-12, atol=1e-15)


def test_one_sided_darts_is_its_formula_and_keeps_its_accuracy():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    f = Functional(predictor)
    gm, v = f.validation(f.directions)
    eps = 0.01 / torch.sqrt(sum(u.pow(2).sum() for u in v))
    formula = [g + (c - p) / eps for g, c, p in zip(gm, f.grad_m(1, f.directions), f.grad_m(1, _shift(f.directions, eps, v)))]
    _, exact, first_order = _darts_references(predictor)
    seed = new_noise_seed()
    with same_noise(seed):
        centre = torch.autograd.grad(lower(), magnitudes)  # as the lower step's own pass delivers it
    one_sided = darts_one_sided_hypergradient(lower, upper, directions, magnitudes, centre=centre, noise_seed=seed)
    error, first_order_error = _relative(one_sided, exact), _relative(first_order, exact)
    print(f"darts_one_sided vs its formula {_relative(one_sided, formula):.1e}; vs the exact mixed derivative "
          f"{error:.1e} (central darts: 5.5e-5); first_order {first_order_error:.2f} (float64)")
    assert _relative(one_sided, formula) < 1e-10
    assert error < 2e-2  # first-order in ε: 1.0e-2 here, against minibatch noise far larger
    assert first_order_error > 50 * error
    with pytest.raises(ValueError, match="noise_seed"):
        darts_one_sided_hypergradient(lower, upper, directions, magnitudes, centre=centre)


def exact_unrolled_gradient(predictor) -> list[torch.Tensor]:
    """d/dM of L_val(V − ξ∇_V L_tr(V, M), M), by double back-propagation (no approximation)."""
    f = Functional(predictor)
    leaves = [d.detach().clone().requires_grad_() for d in f.directions]
    grads = torch.autograd.grad(f.loss(1, leaves, f.magnitudes), leaves, create_graph=True)
    return list(torch.autograd.grad(f.loss(2, _shift(leaves, -XI, grads), f.magnitudes), f.magnitudes))


def test_darts_unrolled_matches_the_exact_unrolled_gradient():
    predictor = _predictor()
    lower, upper = _losses(predictor)
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    with sdpa_kernel(SDPBackend.MATH):
        exact = exact_unrolled_gradient(predictor)
    unrolled = darts_unrolled_hypergradient(lower, upper, directions, magnitudes, XI)
    first_order = first_order_hypergradient(upper, magnitudes)
    relative = _relative(unrolled, exact)
    print(f"darts_unrolled vs exact unrolled hypergradient: relative error {relative:.2e} (float64)")
    assert relative < 1e-4
    assert _relative(first_order, exact) > 10 * relative  # the ξ-scaled second-order term matters here

    seed = new_noise_seed()  # the lower step's ∇_V L_tr, reused: the same numbers
    with same_noise(seed):
        train_grads = torch.autograd.grad(lower(), directions)
    reused = darts_unrolled_hypergradient(lower, upper, directions, magnitudes, XI, train_grads=train_grads,
                                          noise_seed=seed)
    torch.testing.assert_close(_flat(reused), _flat(unrolled), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="noise_seed"):
        darts_unrolled_hypergradient(lower, upper, directions, magnitudes, XI, train_grads=train_grads)


def test_first_order_is_the_plain_validation_gradient():
    predictor = _predictor()
    _, upper = _losses(predictor)
    magnitudes = predictor.magnitude_parameters()
    plain = torch.autograd.grad(upper(), magnitudes)
    for a, b in zip(first_order_hypergradient(upper, magnitudes), plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("estimator", [
    lambda lower, upper, d, m: darts_hypergradient(lower, upper, d, m),
    lambda lower, upper, d, m: darts_one_sided_hypergradient(lower, upper, d, m),
    lambda lower, upper, d, m: darts_unrolled_hypergradient(lower, upper, d, m, XI)], ids=["darts", "one_sided", "unrolled"])
def test_estimators_restore_directions_bit_for_bit_and_leave_magnitudes(estimator):
    predictor = _predictor(torch.float32)  # float32: a non-restoring V + εv − εv would show here
    lower, upper = _losses(predictor, orthogonality=0.1)
    before = {n: p.detach().clone() for n, p in predictor.named_parameters()}
    estimator(lower, upper, predictor.direction_parameters(), predictor.magnitude_parameters())
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
    perturb_as_if_trained(layer, std=0.3)

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


# ---------------------------------------------------------------- the module's step, end to end


def _dict_batch(seed: int) -> dict:
    tokens, labels = _batch(seed)
    return {"tokens": tokens, "labels": labels}


def _at(directions, values, compute):
    """compute() with the directions set to `values`, then put back."""
    originals = [d.detach().clone() for d in directions]
    with torch.no_grad():
        for d, v in zip(directions, values):
            d.copy_(v)
    try:
        return compute()
    finally:
        with torch.no_grad():
            for d, o in zip(directions, originals):
                d.copy_(o)


@pytest.mark.parametrize("hypergradient", HYPERGRADIENTS)
def test_bidora_training_step_is_the_spec_update(hypergradient):
    """With SGD and no clipping: V ← V − lr·∇_V(L_tr + λR); M ← M − magnitude_lr·hypergradient, taken
    at the updated V for darts and first_order (as Betty), at V before the step for the reusing two."""
    predictor = _predictor()
    bilevel = BilevelConfig(hypergradient=hypergradient, magnitude_lr=0.3, orthogonality=0.1, unrolled_xi=0.02)
    module = BiDoRAModule(predictor, OptimConfig(lr=XI, grad_clip=0.0), bilevel)
    directions, magnitudes = predictor.direction_parameters(), predictor.magnitude_parameters()
    lower_opt, upper_opt = torch.optim.SGD(directions, lr=XI), torch.optim.SGD(magnitudes, lr=bilevel.magnitude_lr)
    noop = torch.optim.lr_scheduler.LambdaLR
    module.optimizers = lambda: (lower_opt, upper_opt)
    module.lr_schedulers = lambda: (noop(lower_opt, lambda _: 1.0), noop(upper_opt, lambda _: 1.0))
    module.clip_gradients = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    batch = {"inner_train": _dict_batch(1), "inner_val": _dict_batch(2)}

    lower = lambda: module.lower_objective(batch["inner_train"])  # noqa: E731
    upper = lambda: module.upper_objective(batch["inner_val"])  # noqa: E731
    lower_grads = torch.autograd.grad(lower(), directions)
    expected_directions = [d.detach() - XI * g for d, g in zip(directions, lower_grads)]
    estimators = {
        "darts": lambda: darts_hypergradient(lower, upper, directions, magnitudes),
        "darts_one_sided": lambda: darts_one_sided_hypergradient(lower, upper, directions, magnitudes),
        "darts_unrolled": lambda: darts_unrolled_hypergradient(lower, upper, directions, magnitudes, 0.02),
        "first_order": lambda: first_order_hypergradient(upper, magnitudes)}
    after_step = hypergradient in ("darts", "first_order")
    hyper = _at(directions, expected_directions, estimators[hypergradient]) if after_step \
        else estimators[hypergradient]()
    expected_magnitudes = [m.detach() - bilevel.magnitude_lr * h for m, h in zip(magnitudes, hyper)]

    module.training_step(batch, 0)
    torch.testing.assert_close(_flat(directions), _flat(expected_directions), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_flat(magnitudes), _flat(expected_magnitudes), rtol=1e-9, atol=1e-12)


def test_retrain_loss_keeps_the_orthogonality_term():
    predictor = _predictor()
    batch = _dict_batch(1)
    task = F.cross_entropy(predictor(batch["tokens"]).float(), batch["labels"])  # PredictorModule.loss
    penalty = predictor.orthogonality_penalty()
    for weight in (0.0, 0.1):
        module = RetrainModule(predictor, OptimConfig(), weight)
        module.log = lambda *args, **kwargs: None
        torch.testing.assert_close(module.training_step(batch, 0), task + weight * penalty, rtol=1e-6, atol=0,
                                   check_dtype=False)
    assert penalty.item() > 0.1


def _search_magnitudes(hypergradient: str, epochs: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(m0, m) of a default BiDoRA search on bbb with the tiny backbone."""
    L.seed_everything(0, verbose=False)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method="bidora"))
    initial = _flat(predictor.magnitude_parameters()).detach().clone()
    frame = get_task("bbb").load()
    datamodule = ProteinDataModule(predictor.backbone.alphabet, train=frame[frame["split"] == "train"].reset_index(drop=True),
                                   problem_type="classification", batch_size=DataConfig().batch_size,
                                   val_fraction=DataConfig().val_fraction)
    datamodule.setup("fit")
    module = BiDoRAModule(predictor, OptimConfig(lr=1e-3, max_epochs=epochs), BilevelConfig(hypergradient=hypergradient))
    loaders = datamodule.bilevel_dataloader()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", deterministic=True)
    trainer.fit(module, train_dataloaders=loaders)
    return initial, _flat(predictor.magnitude_parameters()).detach()


@pytest.mark.slow
def test_darts_search_moves_magnitudes_differently_from_first_order():
    m0, first_order = _search_magnitudes("first_order")
    m0_again, darts = _search_magnitudes("darts")
    assert torch.equal(m0, m0_again)
    difference = float((darts - first_order).norm() / (first_order - m0).norm())
    print(f"3-epoch tiny BiDoRA search (defaults): ‖m_darts − m_first_order‖ / ‖m_first_order − m0‖ = {difference:.1%}")
    assert difference > 0.2
