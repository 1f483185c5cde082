"""The comparison report (issue 14, item 9): every method on equal rows, against DoRA, in ONE command.

    PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison [--out DIR]
    PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison --smoke --out /tmp/smoke

Stages, in order, into OUT (resumable: finished cells are reused): bbb on its whole training split
(198 rows) with 5 seeds, then thermostability and mic on fixed training subsamples (`--max-train`)
with 3 seeds, each with the majority and composition baselines and METHODS (the frozen-embedding
`probe` is skipped, and said so, until it is a registered method). `compare` refits every method on
all of its cell's training rows, so every row of the report trained on the same rows. Full
fine-tuning gets its own lower lr (`full:optim.lr=1e-5`); `bidora_fo` is BiDoRA with the
first-order hypergradient. Paired statistics are BiDoRA − DoRA (`--reference dora`). The report is
rewritten after every stage and copied to `--results` (default benchmarks/results/comparison_esm2_8M.{md,csv};
nothing is copied in `--smoke` unless `--results` is given). `--report-only` collects what finished.

`--smoke`: tiny backbone, seed 0, 1 epoch, bbb, methods dora and bidora — the whole pipeline in
seconds (tests/test_comparison_benchmark.py runs it).

Cost on the 2-core CPU, 1 thread (ESM-2 8M random init), from one measured bbb cell: LoRA, 20-epoch
ceiling (early stopping after 18, refit 13 epochs) 188 s; BiDoRA 18 s per search + retrain epoch
pair, so ~360 s at 20 + 20. All 7 methods ≈ 32 min per bbb seed → bbb ≈ 2.6 h. Epoch cost scales
with residues: mic 800 rows ≈ 4.6× bbb (≈ 7 h for 3 seeds), thermostability 100 rows (370
residues each) ≈ 10× bbb (≈ 15 h for 3 seeds; 400 rows ≈ 60 h). About a day in all: run it on a
GPU (`--threads` more where cores are free), or cut --max-train / --epochs and say so.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import RESULTS_DIR
from protadapt.adapters import method_names
from protadapt.analyze import analyse_runs
from protadapt.compare import Grid, collect, parse_max_train, parse_seeds, plan, run_comparison
from protadapt.config import load_config
from protadapt.method_specs import ALIASES, parse_method
from protadapt.report import comparison_markdown

METHODS = ("probe", "lora", "dora", "bidora", "bidora_fo", "full:optim.lr=1e-5", "wegeft", "prompt")
# optim.lr pinned: this report's every method trains at 1e-3 (full: its entry's 1e-5), not the per-method defaults
BACKBONE = ["backbone=esm2_t6_8M_UR50D", "random_init=true", "quiet=true", "optim.lr=1e-3"]
SMOKE = ["backbone=tiny", "quiet=true", "optim.max_epochs=1", "data.batch_size=32"]
REFERENCE = "dora"
IDENTITY_BELOW = 0.5  # the report's "far from training" test rows: 11 of bbb's 38 test peptides
# the ΔM–ΔD analysis: methods with adapted linears (bidora_fo left out: analyze labels runs by their method)
ANALYSED = ("lora", "dora", "bidora", "full")
RESULTS_NAME = "comparison_esm2_8M"  # benchmarks/results/<name>.{md,csv}
OPTIMISER = ("Optimiser: AdamW, lr 1e-3, weight decay 0.01, cosine schedule with warm-up, for every method "
             "except full fine-tuning (lr 1e-5, `full:optim.lr=1e-5`); `bidora_fo` is BiDoRA with "
             "`bilevel.hypergradient=first_order`.")


@dataclass
class Stage:
    grid: Grid
    overrides: list[str]
    why: str


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    methods, skipped = available(args.methods.split(",") if args.methods else
                                 (["dora", "bidora"] if args.smoke else list(METHODS)))
    stages = smoke_stages(methods) if args.smoke else full_stages(methods, args)
    stages = select(stages[: args.stages], args)
    out, started = Path(args.out), time.perf_counter()
    if not args.report_only:
        for number, stage in enumerate(stages, start=1):
            run_comparison(stage_config(stage, args.smoke), stage.grid, out)
            write_report(out, stages, time.perf_counter() - started, args, skipped)
            logging.info("stage %d of %d done", number, len(stages))
    write_report(out, stages, None if args.report_only else time.perf_counter() - started, args, skipped)
    return 0


def select(stages: list[Stage], args: argparse.Namespace) -> list[Stage]:
    """The stages and seeds `--tasks` and `--seeds` ask for (all when unset): to split a run across processes."""
    if args.tasks:
        stages = [s for s in stages if s.grid.tasks[0] in args.tasks.split(",")]
    if args.seeds:
        keep = set(parse_seeds(args.seeds))
        stages = [replace(s, grid=replace(s.grid, seeds=[x for x in s.grid.seeds if x in keep])) for s in stages]
    return stages


def parse_args(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or build_parser()
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args(argv, argparse.Namespace(argv=list(argv)))


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """The report's options (comparison_real adds its own to them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="/tmp/protadapt-comparison")
    parser.add_argument("--smoke", action="store_true", help="tiny backbone, 1 seed, 1 epoch, dora + bidora on bbb")
    parser.add_argument("--methods", help=f"comma-separated compare entries (default: {','.join(METHODS)})")
    parser.add_argument("--epochs", default="20", help="optim.max_epochs: early stopping's ceiling, BiDoRA's fixed "
                        "search and retrain budget; N for every task, or TASK=N pairs (unnamed tasks: 20)")
    parser.add_argument("--max-train", default="thermostability=100,mic=800",
                        help="fixed training subsample per task (seed 0, stratified for classification)")
    parser.add_argument("--results", help="directory the report is copied to (default: benchmarks/results; "
                        "none with --smoke)")
    parser.add_argument("--tasks", help="run only these tasks' stages (e.g. mic), for splitting across processes")
    parser.add_argument("--seeds", help="run only these of each stage's seeds (e.g. 3-4: split a stage across "
                        "processes with separate --out, then --report-only over the merged cells)")
    parser.add_argument("--report-only", action="store_true", help="collect finished cells; train nothing")
    parser.add_argument("--stages", type=int, default=99, help="run only the first N stages")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    parser.add_argument("--note", action="append", default=[], help="a line added to the report's header")
    return parser


def available(entries: list[str]) -> tuple[list[str], list[str]]:
    """The entries whose method is registered (or an alias), and those skipped (e.g. `probe` before it lands)."""
    known = [e for e in entries if parse_method(e).method in method_names() or parse_method(e).label in ALIASES]
    return known, [e for e in entries if e not in known]


def full_stages(methods: list[str], args: argparse.Namespace) -> list[Stage]:
    """bbb × 5 seeds on its whole training split, then thermostability and mic × 3 seeds on fixed subsamples."""
    limits = parse_max_train(args.max_train)
    ceilings = {"bbb": 20, "thermostability": 20, "mic": 20}
    ceilings.update({t: int(args.epochs) for t in ceilings} if args.epochs.isdigit() else parse_max_train(args.epochs, "--epochs", "EPOCHS"))
    bbb, thermostability, mic = ([f"optim.max_epochs={ceilings[t]}"] for t in ("bbb", "thermostability", "mic"))
    return [
        Stage(Grid(["bbb"], methods, [0, 1, 2, 3, 4]), [*bbb, "data.batch_size=32"],
              "bbb: the whole training split (198 rows after 2 conflicting duplicates are dropped), seeds 0-4"),
        Stage(Grid(["thermostability"], methods, [0, 1, 2], max_train={"thermostability": limits["thermostability"]}),
              [*thermostability, "data.batch_size=8"],
              f"thermostability: a fixed {limits['thermostability']}-row stratified subsample of the 1768-row "
              "training split, seeds 0-2, full 197-row test set"),
        Stage(Grid(["mic"], methods, [0, 1, 2], max_train={"mic": limits["mic"]}), [*mic, "data.batch_size=32"],
              f"mic: a fixed {limits['mic']}-row subsample of the 4050-row training split, seeds 0-2, full 509-row "
              "test set"),
    ]


def smoke_stages(methods: list[str]) -> list[Stage]:
    return [Stage(Grid(["bbb"], methods[:2], [0]), [], "smoke: bbb, tiny backbone, seed 0, 1 epoch")]


def stage_config(stage: Stage, smoke: bool, backbone: list[str] | None = None):
    """The stage's base config: `backbone` (settings shared by every cell) if given, else SMOKE or BACKBONE."""
    return load_config(None, (backbone or (SMOKE if smoke else BACKBONE)) + stage.overrides)


def write_report(out: Path, stages: list[Stage], wall_time_s: float | None, args: argparse.Namespace,
                 skipped: list[str], *, name: str = RESULTS_NAME, backbone: list[str] | None = None,
                 optimiser: str = OPTIMISER, script: str = "benchmarks.comparison") -> None:
    """Collect every finished cell of every stage; write OUT/comparison.{md,csv} and copy them to --results
    as NAME.{md,csv}; `backbone`, `optimiser` and `script` let another report (comparison_real) reuse it."""
    tables = [collect(stage_config(s, args.smoke, backbone), s.grid, out) for s in stages]
    planned = [sum(1 for _ in plan(stage_config(s, args.smoke, backbone), s.grid, out)) for s in stages]
    finished = [t for t in tables if not t.empty]
    if not finished:
        return
    table = pd.concat(finished, ignore_index=True)
    table.to_csv(out / "comparison.csv", index=False)
    notes = [f"Torch threads: {args.threads}; on a shared machine wall times are upper bounds for this hardware."]
    notes += [f"Stage {i + 1} ({len(t)} of {n} runs finished{'' if len(t) else ': NOT RUN'}): {s.why}; "
              f"overrides `{' '.join(s.overrides) or '–'}`." for i, (s, t, n) in enumerate(zip(stages, tables, planned))]
    notes.append("Equal rows: every model first trains on 80 % of its training rows with early stopping on the other "
                 "20 % (patience 5), then is refit from its initial weights on all of them for the chosen epoch count; "
                 "BiDoRA searches for a fixed budget and retrains on all of them. The 'training rows' column shows it.")
    notes.append(optimiser)
    if skipped:
        notes.append(f"Not run (not a registered method yet): {', '.join(skipped)}.")
    if args.report_only:
        notes.append("This report was collected with --report-only from the cells that had finished.")
    notes += args.note
    command = f"PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m {script} " + " ".join(args.argv)
    report = comparison_markdown(table, reference=REFERENCE, command=command.strip(), wall_time_s=wall_time_s,
                                 notes=notes, identity_below=IDENTITY_BELOW)
    report += analysis_section(out) if any("bbb" in stage.grid.tasks for stage in stages) else ""
    (out / "comparison.md").write_text(report)
    results = Path(args.results) if args.results else (None if args.smoke else RESULTS_DIR)
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "comparison.md", results / f"{name}.md")
        shutil.copyfile(out / "comparison.csv", results / f"{name}.csv")


def analysis_section(out: Path) -> str:
    """ΔM–ΔD slope and r per matrix type of the finished bbb runs (layers × checkpoints), next to the paper's."""
    runs = [p for m in ANALYSED for p in (out / "cells" / "bbb" / m).glob("seed*") if (p / "adapter.json").exists()]
    if not runs:
        return ""
    correlations = analyse_runs(runs, out / "analysis")
    paper = {"dora": "−1.784", "bidora": "−8.042"}
    lines = ["", "## Magnitude–direction analysis (bbb runs)", "",
             "`protadapt analyze` on the bbb cells: per matrix type, the least-squares slope of ΔM on ΔD and Pearson "
             "r over layers × checkpoints of all seeds (repeated checkpoints counted once). The paper's slope-like "
             "\"correlation\" is for pretrained ESM-2 650M and its matrix type is not stated; on a random backbone "
             "the pattern is not expected to match.", "",
             "| method | matrix | runs | points | slope | r | mean ΔM | mean ΔD | paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in correlations.itertuples():
        lines.append(f"| {row.method} | {row.matrix_type} | {row.runs} | {row.points} | {row.slope:.3g} | {row.r:.3f} | "
                     f"{row.delta_m_mean:.2e} | {row.delta_d_mean:.2e} | {paper.get(row.method, '–')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
