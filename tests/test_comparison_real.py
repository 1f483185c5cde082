"""benchmarks/comparison_real.py --smoke: both weight states, side by side, end to end in seconds (tiny backbone)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from benchmarks import comparison, comparison_real
from protadapt.config import METHOD_DEFAULTS


def test_smoke_mode_reports_both_weight_states_side_by_side(tmp_path):
    results = tmp_path / "results"
    assert comparison_real.main(["--smoke", "--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    for state in ("real", "random"):
        table = pd.read_csv(results / f"comparison_antiberty_{state}_bbb.csv")
        assert sorted(table["method"]) == ["bidora", "composition", "dora", "majority", "probe"]
        assert (table["n_train"] == 198).all() and "Paired against **dora**" in \
            (results / f"comparison_antiberty_{state}_bbb.md").read_text()
    text = (results / "comparison_antiberty.md").read_text()
    assert "| method | real: accuracy | real: AUROC | real: s / cell | real: peak MB | random: accuracy" in text
    assert "| bidora − dora | " in text and "| dora − probe | " in text and "Surviving Holm's correction" in text
    assert "bbb: 0 of 198 training and 0 of 38 test sequences are longer than the backbone's 1022 residues." in text
    assert "one peptide is 2.6 points" in text and "not ESM-2" in text
    assert "- Cells, real weights: 5 of 5 planned finished." in text and "Interim report" not in text

    shutil.rmtree(tmp_path / "out" / "random" / "cells" / "bbb" / "bidora" / "seed0")  # as if it never ran
    args = ["--smoke", "--out", str(tmp_path / "out"), "--results", str(results), "--report-only"]
    assert comparison_real.main(args) == 0
    text = (results / "comparison_antiberty.md").read_text()
    assert text.startswith("# Real AntiBERTy weights vs the same architecture randomly initialised\n\n**Interim report**")
    assert "- Cells, random weights: 4 of 5 planned finished; not run yet: bbb seed 0: bidora." in text


def test_thermostability_stage_truncates_and_methods_use_their_own_defaults():
    args = comparison_real.parse_args([])
    bbb, thermostability = comparison_real.real_stages(list(comparison_real.METHODS), args)
    assert "data.truncate=true" in thermostability.overrides and "data.truncate=true" not in bbb.overrides
    assert bbb.grid.seeds == [0, 1, 2, 3, 4] and thermostability.grid.seeds == [0, 1, 2]
    assert thermostability.grid.max_train == {"thermostability": 24}  # the committed report's budget
    assert "optim.max_epochs=3" in thermostability.overrides and "optim.max_epochs=20" in bbb.overrides
    assert not any(":" in m for m in comparison_real.METHODS)  # no per-entry lr: METHOD_DEFAULTS apply
    assert f"full {METHOD_DEFAULTS['full'].lr:g}" in comparison_real.optimiser_note()


def test_seeds_and_tasks_select_cells_of_the_planned_stages():
    args = comparison_real.parse_args(["--seeds", "3-4", "--tasks", "bbb"])
    planned = comparison_real.real_stages(list(comparison_real.METHODS), args)
    (bbb,) = comparison.select(planned, args)
    assert bbb.grid.tasks == ["bbb"] and bbb.grid.seeds == [3, 4]
    assert [s.grid.seeds for s in planned] == [[0, 1, 2, 3, 4], [0, 1, 2]]  # the plan the report counts is whole


def test_side_by_side_reads_stored_task_tables_after_the_cells_are_gone(tmp_path):
    """A task's per-state table in --results is the record: deleting the cells loses no row, and a stored row
    trained with other settings than the plan's is refused, naming the file."""
    out, results = tmp_path / "out", tmp_path / "results"
    smoke = ["--smoke", "--out", str(out), "--results", str(results)]
    assert comparison_real.main(smoke) == 0
    stored = {p.name: p.read_bytes() for p in results.glob("comparison_antiberty_*_bbb.*")}
    before = (results / "comparison_antiberty.md").read_text()

    shutil.rmtree(out)
    (results / "comparison_antiberty.md").unlink()
    assert comparison_real.main([*smoke, "--report-only"]) == 0
    assert {p.name: p.read_bytes() for p in results.glob("comparison_antiberty_*_bbb.*")} == stored
    after = (results / "comparison_antiberty.md").read_text()
    assert "- Cells, random weights: 5 of 5 planned finished." in after and "Interim report" not in after
    assert after.split("## bbb")[1] == before.split("## bbb")[1]  # the same tables, from the stored rows

    table = pd.read_csv(results / "comparison_antiberty_real_bbb.csv")
    table.loc[table["method"] == "dora", "max_epochs"] = 7
    table.to_csv(results / "comparison_antiberty_real_bbb.csv", index=False)
    with pytest.raises(SystemExit, match=r"comparison_antiberty_real_bbb\.csv: the bbb dora seed 0 row was trained "
                                         r"with other settings: max_epochs 7(\.0)? \(planned 1\)"):
        comparison_real.main([*smoke, "--report-only"])


def test_side_by_side_pairs_each_state_over_task_and_seed(tmp_path):
    """With two tasks' tables, each state gets the paper's (task, seed) Wilcoxon against DoRA."""
    rows = [{"task": task, "method": method, "seed": seed, "accuracy": accuracy + 0.01 * seed, "auroc": 0.5,
             "wall_time_s": 1.0, "peak_rss_mb": 1.0}
            for task in ("bbb", "thermostability") for seed in (0, 1, 2)
            for method, accuracy in (("probe", 0.6), ("dora", 0.7), ("bidora", 0.8))]
    table = pd.DataFrame(rows)
    args = comparison_real.parse_args(["--smoke", "--out", str(tmp_path)])
    text = comparison_real.side_by_side({"real": table, "random": table}, comparison.smoke_stages(["dora"]), args)
    for state in ("real", "random"):
        section = text.split(f"## All tasks, {state} weights: paired over (task, seed)")[1].split("## ")[0]
        assert "| bidora | 2 | 6 | 6 / 0 / 0 | 0.0312 | 0.0625 |" in section  # 2 / 2**6; Holm over two
        assert "| probe | 2 | 6 | 0 / 6 / 0 | 0.0312 | 0.0625 |" in section
    assert "## thermostability" in text and "| bidora − dora | +0.100 [+0.100, +0.100]" in text
