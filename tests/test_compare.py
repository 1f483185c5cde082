"""compare: the report's numbers against hand-computed values, the grid's shape, and resuming."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from sklearn.metrics import roc_auc_score

import protadapt.compare as compare
from protadapt.cli import main
from protadapt.compare import Grid, parse_max_train, parse_seeds, run_comparison, subsample
from protadapt.config import METHOD_DEFAULTS, MethodDefaults, load_config, with_method_defaults
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
    assert "| lora | 200 | 1000 | 0.740 ± 0.119 |" in text
    assert "| **bidora** (reference) | 200 | 1100 | 0.840 ± 0.096 |" in text  # sd of bidora: sqrt(0.037/4) = 0.0962
    # differences lora − bidora: −0.10, −0.05, −0.25, −0.05, −0.05 → mean −0.100 = −3.8 of 38 test rows;
    # squared deviations sum to 0.03, se = sqrt(0.03 / 4 / 5), half-width 2.776 · se = 0.1075 → [−0.208, +0.008];
    # every pair negative → Wilcoxon p = 2/2^5 = 0.0625; Holm over the 2 comparisons (accuracy, f1) → 0.125
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora | -0.100"))
    assert lora_row == ("| lora | -0.100 (-3.8 of 38) [-0.208, +0.008] | 0.0625 | 0.1250 | "
                        "-0.100 [-0.208, +0.008] | 0.0625 | 0.1250 | 5 |")
    assert "95 % Student t-interval" in text and "adjusted over the table's 2 comparisons" in text
    assert "With 5 nonzero paired differences the smallest two-sided Wilcoxon p is 0.0625 > 0.05" in text
    assert "random-init (NOT pretrained)" in text and "test box" in text and "2.0 min for the command" in text
    assert "seeds 0,1,2,3,4" in text
    assert "McNemar" not in text and "All tasks" not in text  # no predictions files, one task


def write_predictions(path, labels, predicted, prob_1):
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(labels))], "prediction": predicted,
                          "prob_0": 1 - np.asarray(prob_1), "prob_1": prob_1, "label": labels})
    frame.to_csv(path, index=False)
    return str(path)


def test_report_tests_predictions_of_one_seed_on_the_same_rows(tmp_path):
    table = small_table()
    labels = [1] * 5 + [0] * 5
    bidora = write_predictions(tmp_path / "b.csv", labels, [1, 1, 1, 1, 1, 0, 0, 0, 0, 1],
                               [0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2, 0.1, 0.65])
    lora = write_predictions(tmp_path / "l.csv", labels, [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
                             [0.4, 0.3, 0.2, 0.6, 0.55, 0.45, 0.3, 0.2, 0.1, 0.35])
    table["predictions"] = None
    table.loc[(table["method"] == "bidora") & (table["seed"] == 0), "predictions"] = bidora
    table.loc[(table["method"] == "lora") & (table["seed"] == 0), "predictions"] = lora
    text = comparison_markdown(table, reference="bidora", machine="box")
    # rows only lora right: the last negative (bidora said 1); only bidora right: the first three positives
    # → McNemar exact p = 2 · P(X ≤ 1 | 4, 1/2) = 2 · 5/16 = 0.625
    row = next(line for line in text.splitlines() if line.startswith("| lora | 0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["lora", "0", "1 / 3 of 10", "0.6250"]
    lora_auc = roc_auc_score(labels, pd.read_csv(lora)["prob_1"])
    bidora_auc = roc_auc_score(labels, pd.read_csv(bidora)["prob_1"])
    assert cells[4] == f"{lora_auc - bidora_auc:+.3f}" and 0 < float(cells[5]) <= 1
    assert "not independent and are not combined" in text and len([l for l in text.splitlines()
                                                                   if l.startswith("| lora | ")]) == 3


def test_report_across_tasks_and_cv_statistics():
    first = small_table()
    second = small_table().assign(task="bbp")
    text = comparison_markdown(pd.concat([first, second]), reference="bidora", machine="box")
    row = next(line for line in text.splitlines() if line.startswith("| lora | 2 | 10 |"))
    # 10 (task, seed) pairs, lora worse in every one: Wilcoxon p = 2/2^10; Holm over one method = same
    assert row == "| lora | 2 | 10 | 0 / 10 / 0 | 0.0020 | 0.0020 |"
    assert "## All tasks: paired over (task, seed)" in text
    assert text.count("smallest two-sided Wilcoxon p is 0.0625") == 2  # each task's 5 pairs; not the 10 pooled
    cv = small_table().assign(fold=0, n_train=160, n_test=40)
    cv = pd.concat([cv, cv.assign(fold=1)])
    text = comparison_markdown(cv, reference="bidora", machine="box")
    assert "Nadeau–Bengio" in text and "n_test/n_train = 0.250" in text
    # differences twice over (J = 10): mean −0.1, s² = 0.03·2/9, se = sqrt((1/10 + 1/4) s²); t with 9 df
    d = np.tile([-0.10, -0.05, -0.25, -0.05, -0.05], 2)
    se = math.sqrt((1 / 10 + 0.25) * d.var(ddof=1))
    p = 2 * stats.t.sf(0.1 / se, 9)
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora | -0.100"))
    assert f"| {p:.4f} |" in lora_row and "of 38" not in lora_row
    assert "smallest two-sided Wilcoxon" not in text  # under CV the p is Nadeau–Bengio's


def test_mean_sd_formats_single_run_without_sd():
    assert mean_sd(pd.Series([0.5])) == "0.500 (n = 1)"
    assert mean_sd(pd.Series([1.0, 2.0, 3.0, 4.0]), 2) == f"2.50 ± {math.sqrt(5 / 3):.2f}"


def test_seed_and_subsample_parsing():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0-1,7") == [0, 1, 7]
    assert parse_max_train("thermostability=400,mic=800") == {"thermostability": 400, "mic": 800}
    with pytest.raises(ValueError, match="TASK=ROWS"):
        parse_max_train("mic")
    with pytest.raises(ValueError) as caught:
        parse_max_train("bbb=x", "--epochs", "EPOCHS")
    assert str(caught.value) == "--epochs 'bbb=x': use TASK=EPOCHS pairs, e.g. thermostability=400,mic=800"
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
    assert len(table) == 3 * 2 + 2 * 2  # 2 methods + the probe x 2 seeds, 2 baselines x 2 seeds
    assert sorted(table["method"].unique()) == ["composition", "dora", "lora", "majority", "probe"]
    for column in ("accuracy", "f1", "auroc", "trainable_params", "wall_time_s", "peak_rss_mb", "seed", "fold"):
        assert column in table.columns
    assert (table.loc[table["method"] == "majority", "accuracy"] == 0.5).all()  # bbb test set: 19 of each class
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "## bbb" in text and "majority (baseline)" in text and "**dora** (reference)" in text
    assert "| lora |" in text and "seeds 0,1" in text and "Paired against **dora**" in text
    assert "| probe |" in text  # the frozen-embedding baseline is in every comparison
    models = table["method"].isin(["lora", "dora", "probe"])
    assert table.loc[models, "predictions"].map(lambda p: (tmp_path / p).exists()).all()
    assert table.loc[~models, "predictions"].isna().all()  # baselines write no predictions.csv
    assert "McNemar" in text and "| lora | 0 |" in text and "| lora | 1 |" in text  # per seed on the 38 test rows


def fake_fit(calls: list):
    """A stand-in for `fit` that records its call and writes what a finished cell holds."""

    def fit(config, run_dir, train, test, **_):
        calls.append((run_dir, len(train), len(test), set(train["id"]) & set(test["id"])))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "f1": 0.5}}))
        (run_dir / "run.json").write_text(json.dumps({"trainable_params": 1, "backbone": "tiny", "pretrained": False}))
        with_method_defaults(config)[0].save(run_dir / "config.yaml")  # as fit saves it: method defaults resolved

    return fit


def test_killed_compare_resumes_only_unfinished_cells(tmp_path, tiny_base, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "fit", fake_fit(calls))
    grid = Grid(["bbb"], ["lora", "dora"], [0, 1])
    run_comparison(tiny_base, grid, tmp_path)
    assert len(calls) == 6  # lora, dora and the probe, 2 seeds
    cells = tmp_path / "cells" / "bbb"
    (cells / "dora" / "seed1" / "metrics.json").unlink()  # as if killed while training this cell
    (cells / "dora" / "seed1" / "stale.ckpt").write_text("half-written")
    (cells / "lora" / "seed0" / "complete.json").unlink()  # killed after fit's metrics, before the cell was marked
    (cells / "majority" / "seed0" / "metrics.json").unlink()  # a baseline killed before its last file
    left_alone = {cells / "lora" / "seed1", cells / "dora" / "seed0", cells / "probe" / "seed0", cells / "probe" / "seed1"}
    before = {p: p.stat().st_mtime_ns for p in cells.glob("*/*/metrics.json") if p.parent in left_alone}
    assert len(compare.collect(tiny_base, grid, tmp_path)) == 10 - 3  # unfinished cells are not in the table
    calls.clear()
    table = run_comparison(tiny_base, grid, tmp_path)
    assert [call[0] for call in calls] == [cells / "lora" / "seed0", cells / "dora" / "seed1"]
    assert len(before) == 4 and all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())
    assert not (cells / "dora" / "seed1" / "stale.ckpt").exists()  # a half-written cell starts afresh
    assert len(table) == 10 and (cells / "dora" / "seed1" / "metrics.json").exists()
    assert (cells / "majority" / "seed0" / "metrics.json").exists()


def test_a_finished_cell_trained_with_other_settings_is_refused_not_mixed_in(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--tasks", "bbb", "--methods", "lora", "--seeds", "0", "--backbone", "tiny", "--out", "out",
            "--quiet", "optim.max_epochs=1", "data.batch_size=32"]
    assert main(args) == 0
    cell = Path("out") / "cells" / "bbb" / "lora" / "seed0"
    trained = (cell / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0 and (cell / "metrics.json").stat().st_mtime_ns == trained  # same settings: reused
    capsys.readouterr()
    advice = "give a new --out, or --overwrite to retrain every cell"
    assert main([*args, "optim.lr=0.0003"]) == 1
    assert capsys.readouterr().err == (f"protadapt: error: {cell}: this finished cell was trained with optim.lr=0.001, "
                                       f"the comparison asks optim.lr=0.0003; {advice}\n")
    monkeypatch.setitem(METHOD_DEFAULTS, "lora", MethodDefaults(lr=3e-3))  # a release with a new default lr
    assert main(args) == 1
    assert capsys.readouterr().err == (f"protadapt: error: {cell}: this finished cell was trained with optim.lr=0.001, "
                                       f"the comparison asks optim.lr=0.003; {advice}\n")
    assert (cell / "metrics.json").stat().st_mtime_ns == trained  # nothing retrained or removed
    assert main([*args, "--overwrite"]) == 0
    assert yaml.safe_load((cell / "config.yaml").read_text())["optim"]["lr"] == 3e-3


def test_cv_cells_use_folds_of_the_training_split(tmp_path, tiny_base, monkeypatch):
    seen = []
    monkeypatch.setattr(compare, "fit", fake_fit(seen))
    table = run_comparison(tiny_base, Grid(["bbb"], ["lora"], [0], cv=3, baselines=("majority",)), tmp_path)
    assert [(p.parents[1].name, p.name) for p, *_ in seen] == [(m, f"fold{k}") for k in range(3) for m in ("lora", "probe")]
    assert all(not overlap for *_, overlap in seen)
    assert sum(n_test for path, _, n_test, _ in seen if path.parents[1].name == "lora") \
        == table["n_train"].iloc[0] + table["n_test"].iloc[0]
    assert list(table["fold"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and np.all(table["n_test"] < 100)


def test_report_gives_the_metric_on_test_rows_far_from_training(tmp_path):
    """Rows 0-3 are below 0.5 identity (one NaN: below the floor); lora gets 3 of those 4 right, bidora 1."""
    table = small_table()
    table = table[table["seed"] < 2].copy()
    identity = [0.2, 0.45, float("nan"), 0.3, 0.9, 0.8, 0.5, 0.7]
    labels = [1, 1, 0, 0, 1, 0, 1, 0]
    predicted = {"lora": [1, 1, 0, 1, 1, 0, 1, 0], "bidora": [0, 0, 0, 1, 1, 0, 1, 0]}
    paths = []
    for row in table.itertuples():
        path = tmp_path / f"{row.method}{row.seed}.csv"
        pd.DataFrame({"id": range(8), "prediction": predicted[row.method],
                      "prob_0": [1.0 - p for p in predicted[row.method]], "prob_1": predicted[row.method],
                      "label": labels, "nearest_train_identity": identity}).to_csv(path, index=False)
        paths.append(str(path))
    table["predictions"] = paths
    text = comparison_markdown(table, reference="bidora", machine="box", identity_below=0.5)
    assert "below 0.5 identity (4 of 38 rows" in text
    assert "| lora | 0.750 ± 0.000 | 2 |" in text and "| bidora | 0.250 ± 0.000 | 2 |" in text
    assert "below 0.5 identity" not in comparison_markdown(table, reference="bidora", machine="box")
