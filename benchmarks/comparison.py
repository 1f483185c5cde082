"""The committed comparison report: ESM-2 8M architecture, random init, CPU.

    PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison [--out DIR] [--report-only]

Runs the stages below in order into OUT (resumable: finished cells are reused), rewrites the
report after every stage, and copies it to benchmarks/results/comparison_esm2_8M.{md,csv}. With
--report-only it only collects the cells that finished (e.g. after the run was stopped), so the
committed files always describe exactly what ran. The ΔM–ΔD analysis of the bbb runs is appended.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import RESULTS_DIR as RESULTS
from protadapt.analyze import analyse_runs
from protadapt.compare import Grid, collect, plan, run_comparison
from protadapt.config import load_config
from protadapt.report import comparison_markdown

BACKBONE = ["backbone=esm2_t6_8M_UR50D", "random_init=true", "quiet=true"]
THREADS = 1  # the machine has 2 cores shared with other work


@dataclass
class Stage:
    grid: Grid
    overrides: list[str]
    why: str


STAGES = [  # in the order they run; later stages are what the time budget may cut
    Stage(Grid(["bbb"], ["full", "lora", "dora", "bidora"], [0, 1, 2]),
          ["optim.max_epochs=2", "data.batch_size=32"],
          "bbb: the whole training split (198 rows after 2 conflicting duplicates are dropped), 4 methods x seeds 0-2"),
    Stage(Grid(["mic"], ["full", "lora", "dora", "bidora"], [0], max_train={"mic": 300}),
          ["optim.max_epochs=1", "data.batch_size=32"],
          "mic: a fixed 300-row subsample of the 4050-row training split, seed 0 only, full 509-row test set"),
    Stage(Grid(["bbb"], ["full", "lora", "dora", "bidora"], [3, 4]),
          ["optim.max_epochs=2", "data.batch_size=32"],
          "bbb: seeds 3-4, same settings as stage 1"),
    Stage(Grid(["thermostability"], ["full", "lora", "dora", "bidora"], [0], max_train={"thermostability": 40}),
          ["optim.max_epochs=1", "data.batch_size=8"],
          "thermostability: a fixed 40-row stratified subsample of the 1768-row training split, seed 0 only, "
          "full 197-row test set"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/protadapt-comparison-esm2_8M")
    parser.add_argument("--report-only", action="store_true", help="collect finished cells; train nothing")
    parser.add_argument("--stages", type=int, default=len(STAGES), help="run only the first N stages")
    parser.add_argument("--note", action="append", default=[], help="a line added to the report's header")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(THREADS)
    out = Path(args.out)
    started = time.perf_counter()
    stages = STAGES[: args.stages]
    if args.report_only:
        write_report(out, stages, time.perf_counter() - started, args)
        return 0
    for number, stage in enumerate(stages, start=1):
        run_comparison(load_config(None, BACKBONE + stage.overrides), stage.grid, out)
        write_report(out, stages, time.perf_counter() - started, args)
        logging.info("stage %d done", number)
    return 0


def write_report(out: Path, stages: list[Stage], wall_time_s: float, args: argparse.Namespace) -> None:
    """Collect every finished cell of every stage; write OUT/comparison.{md,csv} and copy them to results/."""
    configs = [load_config(None, BACKBONE + s.overrides) for s in stages]
    tables = [collect(config, s.grid, out) for config, s in zip(configs, stages)]
    planned = [sum(1 for _ in plan(config, s.grid, out)) for config, s in zip(configs, stages)]
    table = pd.concat([t for t in tables if not t.empty], ignore_index=True)
    table.to_csv(out / "comparison.csv", index=False)
    notes = [f"Torch threads: {THREADS}; the 2-core machine was shared with other jobs, so wall times are "
             "upper bounds for this hardware."]
    notes += [f"Stage {i + 1} ({len(t)} of {n} runs finished{'' if len(t) else ': NOT RUN'}): {s.why}; "
              f"overrides `{' '.join(s.overrides)}`." for i, (s, t, n) in enumerate(zip(stages, tables, planned))]
    notes.append("Every method uses the same optimiser settings (AdamW, lr 1e-3, weight decay 0.01, cosine schedule "
                 "with warm-up, early stopping on inner-validation accuracy / MSE); full fine-tuning was not given the "
                 "lower lr it usually needs.")
    notes.append("Every run holds out 20 % of its training rows (stratified) for early stopping / BiDoRA's upper "
                 "level; BiDoRA then retrains on all of them (search epochs = epochs of its best checkpoint + 1).")
    notes.append("Cells listed below are exactly the cells that finished; a method with fewer runs shows it in "
                 "'runs' and in the seeds list.")
    if args.report_only:
        notes.append("This report was collected with --report-only from the cells that had finished.")
    notes += args.note
    command = "PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison " + " ".join(sys.argv[1:])
    report = comparison_markdown(table, reference="bidora", command=command.strip(),
                                 wall_time_s=None if args.report_only else wall_time_s, notes=notes)
    report += analysis_section(out)
    (out / "comparison.md").write_text(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "comparison.md", RESULTS / "comparison_esm2_8M.md")
    shutil.copyfile(out / "comparison.csv", RESULTS / "comparison_esm2_8M.csv")


def analysis_section(out: Path) -> str:
    """ΔM–ΔD slope and r per matrix type of the finished bbb runs (layers × checkpoints), next to the paper's."""
    runs = [p for p in (out / "cells" / "bbb").glob("*/seed*") if (p / "adapter.json").exists()]
    if not runs:
        return ""
    correlations = analyse_runs(runs, out / "analysis")
    paper = {"dora": "−1.784", "bidora": "−8.042"}
    lines = ["", "## Magnitude–direction analysis (bbb runs)", "",
             "`protadapt analyze` on the bbb cells: per matrix type, the least-squares slope of ΔM on ΔD and Pearson "
             "r over layers × checkpoints of all seeds (repeated checkpoints counted once). The paper's slope-like "
             "\"correlation\" is for pretrained ESM-2 650M and its matrix type is not stated; here the backbone is "
             "random, so the pattern is not expected to match.", "",
             "| method | matrix | runs | points | slope | r | mean ΔM | mean ΔD | paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in correlations.itertuples():
        lines.append(f"| {row.method} | {row.matrix_type} | {row.runs} | {row.points} | {row.slope:.3g} | {row.r:.3f} | "
                     f"{row.delta_m_mean:.2e} | {row.delta_d_mean:.2e} | {paper.get(row.method, '–')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
