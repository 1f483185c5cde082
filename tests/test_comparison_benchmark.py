"""benchmarks/comparison.py --smoke: the report's whole pipeline, end to end, in seconds (tiny backbone)."""

from __future__ import annotations

import pandas as pd

from benchmarks import comparison


def test_smoke_mode_runs_end_to_end_and_reports_bidora_against_dora(tmp_path):
    assert comparison.main(["--smoke", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results")]) == 0
    table = pd.read_csv(tmp_path / "results" / "comparison_esm2_8M.csv")
    assert sorted(table["method"]) == ["bidora", "composition", "dora", "majority", "probe"]
    assert (table["n_train"] == 198).all() and (table["seed"] == 0).all()
    text = (tmp_path / "results" / "comparison_esm2_8M.md").read_text()
    assert "Paired against **dora**" in text and "| bidora | 198 |" in text and "| **dora** (reference) | 198 |" in text
    assert "Stage 1 (5 of 5 runs finished)" in text and "--smoke" in text  # dora, bidora, probe, 2 baselines
    assert "## Magnitude–direction analysis (bbb runs)" in text


def test_method_list_is_a_parameter_and_unregistered_methods_are_skipped_and_said():
    known, skipped = comparison.available(["not_landed_yet", "lora", "bidora_fo", "full:optim.lr=1e-5"])
    assert known == ["lora", "bidora_fo", "full:optim.lr=1e-5"] and skipped == ["not_landed_yet"]
    assert comparison.METHODS[0] == "probe"  # in the default list, run once it is a registered method
