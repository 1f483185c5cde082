"""Training modules under a real Lightning Trainer: who updates what, and when (tiny backbone)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import Strategy
import pandas as pd
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from safetensors.torch import load_file

import protadapt.training.run as run_module
from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.config import BilevelConfig, OptimConfig, load_config
from protadapt.data.datamodule import ProteinDataModule
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.bilevel import BiDoRAModule
from protadapt.training.module import PredictorModule, warmup_schedule



@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)


def bidora_predictor(seed: int = 0) -> ProteinPredictor:
    torch.manual_seed(seed)
    return ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method="bidora", rank=4))


def bbb_datamodule(alphabet, batch_size: int = 16) -> ProteinDataModule:
    frame = get_task("bbb").load()
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    datamodule = ProteinDataModule(alphabet, train=train, problem_type="classification", batch_size=batch_size,
                                   val_fraction=0.2)
    datamodule.setup("fit")
    return datamodule


def snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def changed(before: list[torch.Tensor], parameters) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, parameters)]


@dataclass
class Step:
    batch: int
    level: str  # "lower" | "upper"
    magnitudes_changed: list[bool]
    directions_changed: list[bool]


@dataclass
class LevelRecorder(L.Callback):
    """Wraps both optimisers' `step` to see exactly which parameters each level moves."""

    steps: list[Step] = field(default_factory=list)
    untouched_between_steps: list[bool] = field(default_factory=list)
    batch: int = -1

    def on_train_start(self, trainer, module) -> None:
        magnitudes = module.predictor.magnitude_parameters()
        directions = module.predictor.direction_parameters()
        last: dict = {}

        def wrap(optimizer, level):
            inner = optimizer.step

            def step(*args, **kwargs):
                before_m, before_d = snapshot(magnitudes), snapshot(directions)
                if "m" in last:  # nothing but an optimiser step may move a parameter
                    self.untouched_between_steps.append(
                        not any(changed(last["m"], magnitudes)) and not any(changed(last["d"], directions)))
                result = inner(*args, **kwargs)
                self.steps.append(Step(self.batch, level, changed(before_m, magnitudes), changed(before_d, directions)))
                last["m"], last["d"] = snapshot(magnitudes), snapshot(directions)
                return result

            optimizer.step = step

        lower, upper = trainer.optimizers
        wrap(lower, "lower")
        wrap(upper, "upper")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batch = batch_idx


def run_search(hypergradient: str, unroll_steps: int, batches: int = 6) -> LevelRecorder:
    predictor = bidora_predictor()
    datamodule = bbb_datamodule(predictor.backbone.alphabet)
    module = BiDoRAModule(predictor, OptimConfig(lr=1e-2, warmup_fraction=0.0, max_epochs=1),
                          BilevelConfig(hypergradient=hypergradient, unroll_steps=unroll_steps, magnitude_lr=1e-2))
    loaders = CombinedLoader({"inner_train": datamodule.inner_train_dataloader(),
                              "inner_val": datamodule.inner_val_dataloader()}, mode="max_size_cycle")
    recorder = LevelRecorder()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, callbacks=[recorder], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accelerator="cpu", deterministic=True)
    trainer.fit(module, train_dataloaders=loaders)
    return recorder


@pytest.mark.parametrize("hypergradient", ["darts", "darts_one_sided", "darts_unrolled", "first_order"])
def test_bidora_levels_move_only_their_own_parameters(hypergradient):
    recorder = run_search(hypergradient, unroll_steps=1, batches=4)
    assert [(s.batch, s.level) for s in recorder.steps] == [(b, level) for b in range(4) for level in ("lower", "upper")]
    for step in recorder.steps:
        if step.level == "lower":  # directions V = {A, B} and the head; magnitudes fixed
            assert not any(step.magnitudes_changed)
            assert any(step.directions_changed)
        else:  # magnitudes M only
            assert not any(step.directions_changed)
            assert all(step.magnitudes_changed)
    # the hypergradient evaluates at V′ and V± but leaves V bit-identical; nothing else moves anything
    assert recorder.untouched_between_steps and all(recorder.untouched_between_steps)


def test_bidora_unroll_two_updates_magnitudes_every_second_step():
    recorder = run_search("darts", unroll_steps=2, batches=6)
    lower = [s.batch for s in recorder.steps if s.level == "lower"]
    upper = [s.batch for s in recorder.steps if s.level == "upper"]
    assert lower == [0, 1, 2, 3, 4, 5]
    assert upper == [1, 3, 5]
    assert all(all(s.magnitudes_changed) for s in recorder.steps if s.level == "upper")
    assert not any(any(s.magnitudes_changed) for s in recorder.steps if s.level == "lower")
    assert all(recorder.untouched_between_steps)


def test_bidora_needs_magnitudes():
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method="lora", rank=4))
    with pytest.raises(ValueError, match="magnitudes"):
        BiDoRAModule(predictor, OptimConfig(), BilevelConfig())
    with pytest.raises(ValueError, match="hypergradient"):
        BiDoRAModule(bidora_predictor(), OptimConfig(), BilevelConfig(hypergradient="second_order"))


# ---------------------------------------------------------------- the retrain phase, via fit()


def quick_config(method: str, *overrides: str):
    return load_config(None, [f"adapter.method={method}", "backbone=tiny", "quiet=true", "data.batch_size=16",
                              "optim.max_epochs=2", *overrides])


def test_bidora_retrain_keeps_searched_magnitudes_bit_identical(tmp_path, monkeypatch):
    at_retrain: dict[str, torch.Tensor] = {}
    original_reset = run_module.reset_for_retraining

    def record_then_reset(predictor, seed):
        at_retrain.update({n: p.detach().clone() for n, p in predictor.named_parameters() if n.endswith("magnitude")})
        original_reset(predictor, seed)

    monkeypatch.setattr(run_module, "reset_for_retraining", record_then_reset)
    run_dir = tmp_path / "run"
    run_module.fit(quick_config("bidora", "bilevel.magnitude_lr=1e-2"), run_dir)

    saved = load_file(str(run_dir / "adapter.safetensors"))
    magnitudes = {k: v for k, v in saved.items() if k.endswith("magnitude")}
    assert magnitudes and set(magnitudes) == set(at_retrain)
    for name, value in magnitudes.items():
        assert torch.equal(value, at_retrain[name]), name  # retraining never touched them

    last = torch.load(run_dir / "checkpoints" / "search" / "last.ckpt", weights_only=False)["state_dict"]
    initial = dict(bidora_predictor().named_parameters())
    for name, value in magnitudes.items():
        assert torch.equal(last[f"predictor.{name}"], value)  # = the final search epoch's
        assert not torch.equal(initial[name].detach(), value)  # and the search did move them
    directions = [k for k in saved if k.endswith(".up")]
    assert any(not torch.equal(last[f"predictor.{k}"], saved[k]) for k in directions)  # retraining moved these

    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert logs == {"search", "retrain"}


def test_bidora_without_retrain_saves_the_search_result(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module.fit(quick_config("bidora", "bilevel.retrain=false", "bilevel.hypergradient=first_order"),
                            run_dir)
    assert "val_note" not in result.metrics
    assert {p.name for p in (run_dir / "logs").iterdir()} == {"search"}
    assert not (run_dir / "checkpoints" / "search" / "best.ckpt").exists()  # no epoch is picked on inner_val
    last = torch.load(run_dir / "checkpoints" / "search" / "last.ckpt", weights_only=False)["state_dict"]
    saved = load_file(str(run_dir / "adapter.safetensors"))
    for name, value in saved.items():
        assert torch.equal(last[f"predictor.{name}"], value), name


@pytest.mark.parametrize("overrides, retrain_epochs", [((), 3), (("bilevel.retrain_epochs=2",), 2)])
def test_bidora_search_and_retrain_run_fixed_budgets(tmp_path, overrides, retrain_epochs):
    """No early stopping in the search even when inner_val never improves; retrain = the search budget by default."""
    run_dir = tmp_path / "run"
    run_module.fit(quick_config("bidora", "optim.max_epochs=3", "optim.patience=0", "optim.lr=0",
                                "bilevel.magnitude_lr=0", "bilevel.hypergradient=first_order", *overrides), run_dir)
    epochs = {phase: sorted(pd.read_csv(run_dir / "logs" / phase / "metrics.csv")["epoch"].dropna().unique())
              for phase in ("search", "retrain")}
    assert epochs == {"search": [0, 1, 2], "retrain": list(range(retrain_epochs))}


# ---------------------------------------------------------------- single-level training


def test_lora_fit_moves_only_adapter_and_head(tmp_path):
    torch.manual_seed(0)
    frozen_before = {n: p.detach().clone() for n, p in load_backbone("tiny").named_parameters()}
    run_dir = tmp_path / "run"
    run_module.fit(quick_config("lora", "optim.max_epochs=1"), run_dir)
    predictor, _ = ProteinPredictor.load(run_dir)
    saved = load_file(str(run_dir / "adapter.safetensors"))
    assert all(k.startswith("head.") or k.endswith((".down", ".up")) for k in saved)
    assert any(k.endswith(".up") and v.abs().sum() > 0 for k, v in saved.items())  # B left zero init
    for name, parameter in predictor.backbone.named_parameters():
        plain = name.replace(".base_layer.", ".")  # an adapted linear keeps its frozen weight under .base_layer
        if plain in frozen_before and not name.endswith((".down", ".up")):
            assert torch.equal(parameter, frozen_before[plain]), name


def test_checkpoints_hold_trainable_tensors_only(tmp_path):
    run_dir = tmp_path / "run"
    run_module.fit(quick_config("lora", "optim.max_epochs=1"), run_dir)
    state = torch.load(run_dir / "checkpoints" / "fit" / "last.ckpt", weights_only=False)["state_dict"]
    saved = load_file(str(run_dir / "adapter.safetensors"))
    assert set(state) == {f"predictor.{k}" for k in saved}


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_schedule_shape(schedule):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    factors = []
    scheduler = warmup_schedule(optimizer, OptimConfig(schedule=schedule, warmup_fraction=0.2), total_steps=10)
    for _ in range(10):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert factors[0] == pytest.approx(1 / 3) and factors[1] == pytest.approx(2 / 3)  # warm-up: 2 steps
    assert factors[2] == pytest.approx(1.0)
    if schedule == "constant":
        assert factors[2:] == [1.0] * 8
    else:
        assert all(a >= b for a, b in zip(factors[2:], factors[3:]))  # decays after warm-up
        assert factors[-1] < 0.2


def test_unknown_schedule_is_rejected():
    """Checked once, when the config is loaded (check_choices), before anything is built."""
    with pytest.raises(ValueError, match="schedule"):
        load_config(None, ["optim.schedule=step"])


def test_regression_loss_is_mse_and_classification_is_cross_entropy():
    torch.manual_seed(0)
    regression = PredictorModule(ProteinPredictor(load_backbone("tiny"), HeadConfig(problem_type="regression"),
                                                AdapterConfig(method="head")), OptimConfig())
    output, labels = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert regression.loss(output, labels).item() == pytest.approx((1 + 4) / 2)
    classification = PredictorModule(bidora_predictor(), OptimConfig())
    logits = torch.tensor([[0.0, 0.0]])
    assert classification.loss(logits, torch.tensor([1])).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_run_paths(tmp_path):
    config = quick_config("dora", f"out={tmp_path}", "seed=4")
    assert run_module.default_run_dir(config) == Path(tmp_path) / "bbb-dora-seed4"


def test_fit_evaluates_where_it_trained_and_at_the_training_precision(tmp_path, monkeypatch):
    """Lightning's teardown moves the model to the CPU; fit moves it back before its own evaluation."""
    seen = []
    original_to, original_predict = run_module.PredictorModule.to, run_module.predict_scores

    def record_to(module, *args, **kwargs):
        seen.append(("to", str(args[0]) if args else str(kwargs)))
        return original_to(module, *args, **kwargs)

    def record_predict(predictor, frame, batch_size=32, progress=False, precision="32", cache=None):
        seen.append(("predict", precision))
        return original_predict(predictor, frame, batch_size, progress, precision, cache)

    def record_teardown(strategy):
        seen.append(("teardown", ""))
        original_teardown(strategy)

    original_teardown = Strategy.teardown
    monkeypatch.setattr(run_module.PredictorModule, "to", record_to)
    monkeypatch.setattr(run_module, "predict_scores", record_predict)
    monkeypatch.setattr(Strategy, "teardown", record_teardown)
    result = run_module.fit(quick_config("lora", "optim.max_epochs=1", "trainer.precision=bf16-mixed"), tmp_path / "run")
    teardown = max(i for i, event in enumerate(seen) if event[0] == "teardown")
    assert ("to", "cpu") in seen[teardown:]  # back onto the trainer's root device (here the CPU) after teardown
    assert ("predict", "bf16") in seen[teardown:]
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert result.metrics["test"]["accuracy"] == pytest.approx((saved["prediction"] == saved["label"]).mean())
    assert [run_module.inference_precision(p) for p in ("32-true", "bf16-mixed", "16-mixed", 16, "bf16-true")] == \
        ["32", "bf16", "fp16", "fp16", "bf16"]
