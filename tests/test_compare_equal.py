"""compare on equal terms: every method's training rows shown and equal; per-entry settings and aliases."""

from __future__ import annotations

import pandas as pd
import pytest

from protadapt.cli import main
from protadapt.compare import Grid, plan
from protadapt.config import ConfigError, load_config
from protadapt.method_specs import MethodSpec, parse_method, parse_methods


def test_compare_report_shows_the_same_training_rows_for_every_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["compare", "--tasks", "bbb", "--methods", "lora,bidora", "--seeds", "0", "--backbone", "tiny",
                 "--reference", "bidora", "--out", "out", "--quiet", "optim.max_epochs=1", "data.batch_size=32"])
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert sorted(table["method"]) == ["bidora", "composition", "lora", "majority", "probe"]
    assert (table["n_train"] == 198).all()  # bbb's whole training split, not lora's 158 inner-train rows
    assert table.loc[table["method"] == "lora", "refit_epochs"].item() == 1
    text = (tmp_path / "out" / "comparison.md").read_text()
    for label in ("lora", "**bidora** (reference)", "probe", "majority (baseline)", "composition (baseline)"):
        assert f"| {label} | 198 |" in text, label
    assert "the same for every method of a seed/fold" in text


def test_method_entries_take_their_own_settings_and_aliases_expand():
    assert parse_method("full:optim.lr=1e-5") == MethodSpec("full", "full", ("optim.lr=1e-5",))
    assert parse_method("bidora_fo") == MethodSpec("bidora_fo", "bidora", ("bilevel.hypergradient=first_order",))
    with pytest.raises(ValueError, match="METHOD:KEY=VALUE"):
        parse_method("full:optim.lr")
    with pytest.raises(ValueError, match="lora listed twice"):
        parse_methods(["lora", "lora:optim.lr=1e-4"])


def test_plan_applies_an_entry_settings_to_its_own_cells_only(tmp_path):
    base = load_config(None, ["backbone=tiny", "quiet=true", "optim.lr=1e-3"])
    cells = {c.method: c for c in plan(base, Grid(["bbb"], ["full:optim.lr=1e-5", "bidora", "bidora_fo"], [0],
                                                  baselines=()), tmp_path)}
    assert cells["full"].config.optim.lr == 1e-5 and cells["bidora"].config.optim.lr == 1e-3
    assert (cells["bidora_fo"].config.adapter.method, cells["bidora_fo"].config.bilevel.hypergradient) == \
        ("bidora", "first_order")
    assert cells["bidora"].config.bilevel.hypergradient == "darts" and base.optim.lr == 1e-3  # base untouched
    assert cells["bidora_fo"].path == tmp_path / "cells" / "bbb" / "bidora_fo" / "seed0"
    with pytest.raises(ConfigError, match="optim.lrr"):
        list(plan(base, Grid(["bbb"], ["full:optim.lrr=1"], [0], baselines=()), tmp_path))
