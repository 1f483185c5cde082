"""benchmarks/comparison_real.py --smoke: both weight states, side by side, end to end in seconds (tiny backbone)."""

from __future__ import annotations

import shutil

import pandas as pd

from benchmarks import comparison, comparison_real
from protadapt.config import METHOD_DEFAULTS


def test_smoke_mode_reports_both_weight_states_side_by_side(tmp_path):
    results = tmp_path / "results"
    assert comparison_real.main(["--smoke", "--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    for state in ("real", "random"):
        table = pd.read_csv(results / f"comparison_antiberty_{state}.csv")
        assert sorted(table["method"]) == ["bidora", "composition", "dora", "majority", "probe"]
        assert (table["n_train"] == 198).all() and "Paired against **dora**" in \
            (results / f"comparison_antiberty_{state}.md").read_text()
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
    assert thermostability.grid.max_train == {"thermostability": 100}
    assert not any(":" in m for m in comparison_real.METHODS)  # no per-entry lr: METHOD_DEFAULTS apply
    assert f"full {METHOD_DEFAULTS['full'].lr:g}" in comparison_real.optimiser_note()


def test_seeds_and_tasks_select_cells_of_the_planned_stages():
    args = comparison_real.parse_args(["--seeds", "3-4", "--tasks", "bbb"])
    planned = comparison_real.real_stages(list(comparison_real.METHODS), args)
    (bbb,) = comparison.select(planned, args)
    assert bbb.grid.tasks == ["bbb"] and bbb.grid.seeds == [3, 4]
    assert [s.grid.seeds for s in planned] == [[0, 1, 2, 3, 4], [0, 1, 2]]  # the plan the report counts is whole
