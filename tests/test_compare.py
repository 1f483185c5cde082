"""compare: the report's numbers against hand-computed values, the grid's shape, and resuming."""

import json
import math

import numpy as np
import pandas as pd
import pytest

import protadapt.compare as compare
from protadapt.cli import main
from protadapt.compare import Grid, parse_max_train, parse_seeds, run_comparison, subsample
from protadapt.config import load_config
from protadapt.report import comparison_markdown, mean_sd


def small_table() -> pd.DataFrame:
    """Two methods on five seeds; bidora wins every seed, so the exact two-sided p is 2/2^5."""
    accuracy = {"bidora": [0.90, 0.80, 0.85, 0.95, 0.70], "lora": [0.80, 0.75, 0.60, 0.90, 0.65]}
    rows = []
    for method, values in accuracy.items():
        for seed, value in enumerate(values):
            rows.append({"task": "bbb", "method": method, "seed": seed, "fold": None, "n_train": 200, "n_test": 38,
                         "train_split_rows": 200, "max_epochs": 3, "trainable_params": 1000 if method == "lora" else 1100,
                         "wall_time_s": 10.0, "peak_rss_mb": 500.0, "backbone": "tiny", "pretrained": False,
                         "accuracy": value, "f1": value, "mcc": 0.0, "auroc": 0.5})
    return pd.DataFrame(rows)


def test_report_has_hand_computed_mean_sd_p_and_ci():
    text = comparison_markdown(small_table(), reference="bidora", command="protadapt compare ...", machine="test box",
                               wall_time_s=120)
    # lora: mean 0.74, sd = sqrt((.06² + .01² + .14² + .16² + .09²) / 4) = sqrt(0.057 / 4) = 0.1194
    assert "| lora | 1000 | 0.740 ± 0.119 |" in text
    assert "| **bidora** (reference) | 1100 | 0.840 ± 0.096 |" in text  # sd of bidora: sqrt(0.037/4) = 0.0962
    # differences lora − bidora: −0.10, −0.05, −0.25, −0.05, −0.05 → mean −0.100; every pair negative → p = 0.0625
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora | -0.100"))
    assert "| 0.0625 |" in lora_row and lora_row.rstrip().endswith("| 5 |")
    low, high = (float(x) for x in lora_row.split("[")[1].split("]")[0].split(","))
    assert -0.25 <= low < -0.1 < high <= -0.05  # a bootstrap mean of the differences lies within their range
    assert "random-init (NOT pretrained)" in text and "test box" in text and "2.0 min for the command" in text
    assert "seeds 0,1,2,3,4" in text


def test_mean_sd_formats_single_run_without_sd():
    assert mean_sd(pd.Series([0.5])) == "0.500 (n = 1)"
    assert mean_sd(pd.Series([1.0, 2.0, 3.0, 4.0]), 2) == f"2.50 ± {math.sqrt(5 / 3):.2f}"


def test_seed_and_subsample_parsing():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0-1,7") == [0, 1, 7]
    assert parse_max_train("thermostability=400,mic=800") == {"thermostability": 400, "mic": 800}
    with pytest.raises(ValueError, match="TASK=ROWS"):
        parse_max_train("mic")
    frame = pd.DataFrame({"sequence": ["A"] * 100, "label": [0] * 70 + [1] * 30})
    kept = subsample(frame, 20, "classification")
    assert len(kept) == 20 and kept["label"].sum() == 6  # stratified: 14 + 6
    assert kept.equals(subsample(frame, 20, "classification"))  # fixed, whatever the run's seed


@pytest.fixture
def tiny_base():
    return load_config(None, ["backbone=tiny", "quiet=true", "optim.max_epochs=1", "data.batch_size=32"])


def test_compare_writes_both_files_with_one_row_per_run(tmp_path, tiny_base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["compare", "--tasks", "bbb", "--methods", "lora,dora", "--seeds", "0-1", "--backbone", "tiny",
                 "--reference", "dora", "--out", "out", "--quiet", "optim.max_epochs=1", "data.batch_size=32"])
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert len(table) == 2 * 2 + 2 * 2  # 2 methods x 2 seeds + 2 baselines x 2 seeds
    assert sorted(table["method"].unique()) == ["composition", "dora", "lora", "majority"]
    for column in ("accuracy", "f1", "auroc", "trainable_params", "wall_time_s", "peak_rss_mb", "seed", "fold"):
        assert column in table.columns
    assert (table.loc[table["method"] == "majority", "accuracy"] == 0.5).all()  # bbb test set: 19 of each class
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "## bbb" in text and "majority (baseline)" in text and "**dora** (reference)" in text
    assert "| lora |" in text and "seeds 0,1" in text and "Paired against **dora**" in text


def fake_fit(calls: list):
    """A stand-in for `fit` that records its call and writes what a finished cell holds."""

    def fit(config, run_dir, train, test, **_):
        calls.append((run_dir, len(train), len(test), set(train["id"]) & set(test["id"])))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "f1": 0.5}}))
        (run_dir / "run.json").write_text(json.dumps({"trainable_params": 1, "backbone": "tiny", "pretrained": False}))

    return fit


def test_killed_compare_resumes_only_unfinished_cells(tmp_path, tiny_base, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "fit", fake_fit(calls))
    grid = Grid(["bbb"], ["lora", "dora"], [0, 1])
    run_comparison(tiny_base, grid, tmp_path)
    assert len(calls) == 4
    cells = tmp_path / "cells" / "bbb"
    (cells / "dora" / "seed1" / "metrics.json").unlink()  # as if killed while training this cell
    (cells / "dora" / "seed1" / "stale.ckpt").write_text("half-written")
    before = {p: p.stat().st_mtime_ns for p in cells.glob("*/*/metrics.json")}
    calls.clear()
    table = run_comparison(tiny_base, grid, tmp_path)
    assert [call[0] for call in calls] == [cells / "dora" / "seed1"]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())
    assert not (cells / "dora" / "seed1" / "stale.ckpt").exists()  # a half-written cell starts afresh
    assert len(table) == 8 and (cells / "dora" / "seed1" / "metrics.json").exists()


def test_cv_cells_use_folds_of_the_training_split(tmp_path, tiny_base, monkeypatch):
    seen = []
    monkeypatch.setattr(compare, "fit", fake_fit(seen))
    table = run_comparison(tiny_base, Grid(["bbb"], ["lora"], [0], cv=3, baselines=("majority",)), tmp_path)
    assert [p.name for p, *_ in seen] == ["fold0", "fold1", "fold2"]
    assert all(not overlap for *_, overlap in seen)
    assert sum(n_test for _, _, n_test, _ in seen) == table["n_train"].iloc[0] + table["n_test"].iloc[0]
    assert list(table["fold"]) == [0, 0, 1, 1, 2, 2] and np.all(table["n_test"] < 100)
