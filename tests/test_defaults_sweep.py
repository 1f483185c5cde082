"""benchmarks/defaults_sweep.py on the tiny backbone: the lr grid, the schedule variants and the fixed rule."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from benchmarks import defaults_sweep

TINY = ["backbone=tiny", "quiet=true", "data.batch_size=64", "optim.refit=false", "trainer.logger=csv"]


def test_sweep_runs_the_grid_then_the_schedule_variants_on_the_inner_split_only(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults_sweep, "SCHEDULES", {"warm-up 0": ["optim.warmup_fraction=0"]})
    results = tmp_path / "results"
    argv = ["--out", str(tmp_path / "out"), "--results", str(results), "--grid", "lora=1e-3/1e-2", "--seeds", "0",
            "--epochs", "1", "--schedule-methods", "lora", "--settings", *TINY]
    assert defaults_sweep.main(argv) == 0
    table = pd.read_csv(results / "defaults_sweep.csv")
    assert sorted(table["lr"]) == [1e-3, 1e-2] and (table["epochs_run"] == 1).all()
    variant = tmp_path / "out" / "schedule" / "warm-up0" / "lora" / "seed0"
    config = yaml.safe_load((variant / "config.yaml").read_text())
    assert config["optim"]["warmup_fraction"] == 0 and config["optim"]["lr"] == 1e-3  # lora's default lr
    assert "test" not in json.loads((variant / "metrics.json").read_text())
    text = (results / "defaults_sweep.md").read_text()
    assert "| default: warm-up 0.1, patience 5, ceiling 1 | " in text and "\n| warm-up 0 | " in text
    assert "Verdict: the best variant, warm-up 0, is " in text


def test_a_variant_replaces_the_default_only_beyond_one_validation_peptide():
    means = pd.Series({"default": 0.80, "warm-up 0": 0.82, "patience 10": 0.79})
    assert defaults_sweep.verdict(means, "default").endswith("(not more than the +2.5 required), so the default schedule stays.")
    assert "+2.0 points" in defaults_sweep.verdict(means, "default")
    means["patience 10"] = 0.83
    assert defaults_sweep.verdict(means, "default").startswith("Verdict: the best variant, patience 10, is +3.0")
    assert defaults_sweep.verdict(means, "default").endswith("(more than the margin), so it becomes the default.")
