"""Real pretrained weights (issue 18): every method on the real AntiBERTy checkpoint and on the same architecture
randomly initialised, same seeds and splits, in ONE command.

    PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison_real [--out DIR]
    PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison_real --smoke --out /tmp/smoke

For each weight state (`real`, then `random`) it runs benchmarks/comparison.py's first two stages into
OUT/<state>/ (resumable: finished cells are reused): bbb on its whole 198-row training split with seeds
0-4 (20-epoch ceiling), then thermostability on a fixed `--max-train` subsample (default 24 rows, 3 epochs:
the committed report's stated budget) with seeds 0-2 and
`data.truncate=true` (AntiBERTy takes 510 residues; the report counts the truncated sequences). The
methods are METHODS with NO per-method overrides: every one trains at its own default lr
(protadapt.config.METHOD_DEFAULTS). Each state gets comparison.py's full report (BiDoRA − DoRA and every
method − DoRA with t-intervals, Wilcoxon, Holm, McNemar / DeLong, the ΔM–ΔD analysis of bbb) per task;
`comparison_antiberty.md` puts the states side by side:
accuracy per method, real − random, BiDoRA − DoRA and method − probe per state, wall time and peak
memory per cell, and which differences survive Holm's correction.

Each state's report is written per task, results/comparison_antiberty_<state>_<task>.{md,csv}, and the
side-by-side report is built from those tables, not from the cells: a task's table stays valid after its
cells are deleted (full fine-tuning keeps ~100 MB per cell), so `--tasks thermostability` reports that task
afresh next to bbb's stored table. A stored row trained on other rows or epochs than the plan's is refused,
naming the file.

`--seeds` and `--tasks` (comparison.py's) select which cells a process trains or a `--report-only` report holds,
to split the run across processes or report a subset; the side-by-side report still counts, and names, every
planned cell that has not finished.

`--smoke`: tiny backbone for both states, seed 0, 1 epoch, bbb, dora + bidora (+ probe and baselines):
the whole pipeline in seconds (tests/test_comparison_real.py runs it).

Cost on the shared 2-core CPU, 1 torch thread, measured (s / cell in the committed report): a bbb compare
cell (fit + refit on 198 rows, 20-epoch ceiling) ≈ 5-10 CPU-min for LoRA / DoRA / WeGeFT / prompt / full
fine-tuning, ≈ 31 for BiDoRA (20 search + 20 retrain epochs) and ≈ 21 for its first-order variant: ≈ 90 min
per bbb seed of the 8 methods, ≈ 7.5 h per state for 5 seeds. Thermostability at the default 24 rows and 3
epochs: 2.5-5 min a cell (7 for BiDoRA), ≈ 30 min per seed, ≈ 1.5 h per state for 3 seeds. In all ≈ 18
CPU-hours for both states (one state per core: about 9 h): run it on a GPU or with `--threads` where
cores are free. A larger thermostability budget (`--max-train`, `--epochs`) costs in proportion to its
optimiser steps; say so with `--note`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks import comparison
from benchmarks.common import RESULTS_DIR
from protadapt.backbones import load_backbone
from protadapt.compare import parse_max_train, plan, subsample
from protadapt.config import METHOD_DEFAULTS, load_config
from protadapt.data.tasks import resolve_task
from protadapt.evaluation.statistics import compare_to_reference, holm, wilcoxon_min_p
from protadapt.method_specs import ALIASES
from protadapt.report import _mean, across_tasks_section, format_p, mean_sd

METHODS = ("probe", "lora", "dora", "bidora", "bidora_fo", "full", "wegeft", "prompt")
STATES = {"real": ["backbone=antiberty", "quiet=true"],
          "random": ["backbone=antiberty", "random_init=true", "quiet=true"]}
SMOKE_STATES = {state: ["backbone=tiny", *settings[1:], "optim.max_epochs=1", "data.batch_size=32"]
                for state, settings in STATES.items()}
NAME = "comparison_antiberty"
PAIRS = (("bidora", "dora"), ("bidora_fo", "dora"))  # besides every method − probe


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    methods, skipped = comparison.available(args.methods.split(",") if args.methods else
                                            (["dora", "bidora"] if args.smoke else list(METHODS)))
    planned = comparison.smoke_stages(methods) if args.smoke else real_stages(methods, args)
    stages = comparison.select(planned, args)
    out, started = Path(args.out), time.perf_counter()
    for state in args.states.split(","):
        settings = (SMOKE_STATES if args.smoke else STATES)[state]
        for number, stage in enumerate(stages, start=1):
            if not args.report_only:
                comparison.run_comparison(comparison.stage_config(stage, args.smoke, settings), stage.grid, out / state)
                logging.info("%s: stage %d of %d done", state, number, len(stages))
            write_reports(out, stages, planned, args, skipped, time.perf_counter() - started)
    write_reports(out, stages, planned, args, skipped, None if args.report_only else time.perf_counter() - started)
    return 0


def parse_args(argv: list[str] | None):
    parser = comparison.build_parser(__doc__.splitlines()[0])
    # the committed report's budget: the command with no option reproduces it
    parser.set_defaults(out="/tmp/protadapt-comparison-real", max_train="thermostability=24",
                        epochs="bbb=20,thermostability=3", stages=2)
    parser.add_argument("--states", default="real,random", help="weight states to run, in order")
    args = comparison.parse_args(argv, parser)
    args.results = args.results or (args.out if args.smoke else str(RESULTS_DIR))  # the tables the report reads
    return args


def real_stages(methods: list[str], args) -> list[comparison.Stage]:
    """comparison.py's bbb and thermostability stages, thermostability's proteins truncated to the backbone."""
    limits = argparse.Namespace(**{**vars(args), "max_train": f"mic=0,{args.max_train}"})  # mic's stage is unused
    bbb, thermostability = comparison.full_stages(methods, limits)[:2]
    thermostability.overrides.append("data.truncate=true")
    thermostability.why += "; sequences longer than the backbone's positions truncated (counted below)"
    return [bbb, thermostability][: args.stages]


def optimiser_note() -> str:
    lrs = ", ".join(f"{m} {d.lr:g}" for m, d in METHOD_DEFAULTS.items())
    aliases = ", ".join(f"`{alias}` is {method} with `{' '.join(settings)}`" for alias, (method, settings) in ALIASES.items())
    return (f"Optimiser: AdamW, weight decay 0.01, cosine schedule with warm-up; each method at its own default lr "
            f"(protadapt.config.METHOD_DEFAULTS: {lrs}; chosen by benchmarks/defaults_sweep.py on bbb's inner "
            f"validation split); {aliases}.")


def write_reports(out: Path, stages: list, planned: list, args, skipped: list[str], wall_time_s: float | None) -> None:
    """Each state's comparison.py report of each task in `stages` (those `--tasks` / `--seeds` select), then the
    side-by-side report of every `planned` task's stored table."""
    results = Path(args.results)
    for state in args.states.split(","):
        settings = (SMOKE_STATES if args.smoke else STATES)[state]
        for stage in stages:
            comparison.write_report(out / state, [stage], wall_time_s, args, skipped,
                                    name=report_name(state, stage.grid.tasks[0]), backbone=settings,
                                    optimiser=optimiser_note(), script="benchmarks.comparison_real")
    cells = {state: planned_cells(planned, args, state) for state in args.states.split(",")}
    tables = {state: stored_table(results, state, cells[state]) for state in cells}
    tables = {state: table for state, table in tables.items() if not table.empty}
    if not tables:
        return
    text = side_by_side(tables, planned, args, progress_lines(tables, cells))
    (results / f"{NAME}.md").write_text(text)


def report_name(state: str, task: str) -> str:
    return f"{NAME}_{state}_{task}"


def stored_table(results: Path, state: str, planned: list) -> pd.DataFrame:
    """The state's rows of every `planned` cell's task, read from the per-task tables in `results`; a row whose
    training rows or epochs differ from its planned cell's is refused (a table left by another budget)."""
    cells = {cell_key(cell): cell for cell in planned}
    frames = []
    for task in dict.fromkeys(cell.config.data.task for cell in planned):
        path = results / f"{report_name(state, task)}.csv"
        try:
            frame = pd.read_csv(path)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            continue
        frame = frame[[(task, m, s) in cells for m, s in zip(frame["method"], frame["seed"])]]
        for row in frame.itertuples():
            cell = cells[(task, row.method, row.seed)]
            expected = {"n_train": len(cell.train), "max_epochs": cell.config.optim.max_epochs}
            wrong = [f"{key} {getattr(row, key)} (planned {value})" for key, value in expected.items()
                     if not pd.isna(getattr(row, key)) and getattr(row, key) != value]
            if wrong:
                raise SystemExit(f"{path}: the {task} {row.method} seed {row.seed} row was trained with other "
                                 f"settings: {', '.join(wrong)}; rerun the task with these settings or pass the ones "
                                 "it used")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def planned_cells(planned: list, args, state: str) -> list:
    settings = (SMOKE_STATES if args.smoke else STATES)[state]
    return [cell for stage in planned
            for cell in plan(comparison.stage_config(stage, args.smoke, settings), stage.grid, Path(args.out) / state)]


def cell_key(cell) -> tuple[str, str, int]:
    """(task, method, seed): how a cell is found among a table's rows."""
    return cell.config.data.task, cell.method, cell.config.seed


def side_by_side(tables: dict[str, pd.DataFrame], stages: list, args, progress: list[str] = ()) -> str:
    """The report's own page: what it shows, which cells are missing, truncation counts, per task both
    states' columns, and per state the paired test over (task, seed)."""
    states = list(tables)
    lines = ["# Real AntiBERTy weights vs the same architecture randomly initialised", "", *progress,
             f"- Command: `PROTADAPT_DATA_DIR=/work/shared/data .venv/bin/python -m benchmarks.comparison_real "
             f"{' '.join(args.argv)}`".rstrip(),
             f"- Per state and task, the full report: "
             f"{', '.join(f'`{report_name(s, t)}.md`' for s in states for t in tables[s]['task'].unique())} "
             "(every metric, McNemar / DeLong per seed; bbb's adds the ΔM–ΔD analysis).",
             f"- {optimiser_note()}", *caveats(), *truncation_lines(stages, args), *[f"- {n}" for n in args.note]]
    everything = pd.concat([t.assign(state=s) for s, t in tables.items()], ignore_index=True)
    for task, runs in everything.groupby("task", sort=False):
        lines += ["", f"## {task}", "", *accuracy_table(runs, states), "", *differences_table(runs, states)]
    for state, table in tables.items():
        title = f"All tasks, {state} weights: paired over (task, seed)"
        lines += across_tasks_section(table, comparison.REFERENCE, title)
    return "\n".join(lines) + "\n"


def progress_lines(tables: dict[str, pd.DataFrame], planned: dict[str, list]) -> list[str]:
    """Per state, how many of its `planned` cells the tables hold and, when not all, which (task, seed, method)
    are missing."""
    lines, incomplete = [], False
    for state, cells in planned.items():
        table = tables.get(state, pd.DataFrame(columns=["task", "method", "seed"]))
        done = set(zip(table["task"], table["method"], table["seed"]))
        missing = [cell for cell in cells if cell_key(cell) not in done]
        incomplete |= bool(missing)
        lines.append(f"- Cells, {state} weights: {len(cells) - len(missing)} of {len(cells)} planned finished"
                     + (f"; not run yet: {missing_text(cells, missing)}." if missing else "."))
    if incomplete:
        lines.insert(0, "**Interim report**: not every planned cell has finished; the tables below hold the finished "
                        "ones, and the paired statistics use the seeds both sides of a comparison have.")
        lines.insert(1, "")
    return lines


def missing_text(cells: list, missing: list) -> str:
    """`bbb seed 2: bidora, full; bbb seeds 3, 4: every method` — missing cells grouped by task and seed."""
    def by_split(collection: list) -> dict[tuple[str, int], list[str]]:
        groups: dict[tuple[str, int], list[str]] = {}
        for cell in collection:
            groups.setdefault((cell.config.data.task, cell.config.seed), []).append(cell.method)
        return groups

    planned, whole, parts = by_split(cells), {}, []
    for (task, seed), names in by_split(missing).items():
        if len(names) == len(planned[(task, seed)]):
            whole.setdefault(task, []).append(seed)
        else:
            parts.append(f"{task} seed {seed}: {', '.join(names)}")
    parts += [f"{task} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: every method"
              for task, seeds in whole.items()]
    return "; ".join(parts)


def caveats() -> list[str]:
    return ["- What this shows: whether AntiBERTy's pretrained weights help each method over the same architecture "
            "with random weights, and how the methods rank on one real checkpoint, on equal training rows.",
            "- What it does not: AntiBERTy is a BERT pretrained on antibody sequences (OAS), not ESM-2 and not a "
            "general protein model; peptides and thermostable proteins are outside its training distribution, so "
            "nothing here is the paper's ESM-2 650M result.",
            "- bbb's test set has 38 peptides: one peptide is 2.6 points of accuracy, and every seed is scored on the "
            "same 38 rows (the seeds vary training only).",
            f"- Significance: Holm over each table's comparisons. With 5 seeds the smallest two-sided Wilcoxon p is "
            f"{format_p(wilcoxon_min_p(5))}, with 3 it is {format_p(wilcoxon_min_p(3))}: no difference can reach "
            "p < 0.05 with these pairs, however large; the t-intervals say how large the differences are."]


def truncation_lines(stages: list, args) -> list[str]:
    """Per task: training (the rows a cell draws from) and test sequences longer than the backbone takes."""
    limits = parse_max_train(args.max_train)
    settings = (SMOKE_STATES if args.smoke else STATES)["real"]
    limit = load_backbone(load_config(None, settings).backbone, random_init=True).max_residues
    lines = []
    for task in dict.fromkeys(t for stage in stages for t in stage.grid.tasks):
        frame = resolve_task(load_config(None, [f"data.task={task}"]).data).load()
        train = subsample(frame[frame["split"] == "train"].reset_index(drop=True), limits.get(task), "classification")
        test = frame[frame["split"] == "test"]
        counts = [int((part["sequence"].str.len() > limit).sum()) for part in (train, test)]
        lines.append(f"- {task}: {counts[0]} of {len(train)} training and {counts[1]} of {len(test)} test sequences "
                     f"are longer than the backbone's {limit} residues"
                     + ("; truncated to their first residues (`data.truncate=true`)." if any(counts) else "."))
    return lines


def accuracy_table(runs: pd.DataFrame, states: list[str]) -> list[str]:
    """Accuracy (mean ± sd over seeds), AUROC, wall time and peak RSS per method, one column group per state."""
    header = "| method | " + " | ".join(f"{s}: accuracy | {s}: AUROC | {s}: s / cell | {s}: peak MB" for s in states)
    lines = [header + " | real − random accuracy [95 % CI] | p | seeds |", "|---" * (4 * len(states) + 4) + "|"]
    diffs = state_differences(runs) if {"real", "random"} <= set(states) else pd.DataFrame()
    for method, method_runs in runs.groupby("method", sort=False):
        cells = []
        for state in states:
            part = method_runs[method_runs["state"] == state]
            cells += [mean_sd(part["accuracy"]), mean_sd(part["auroc"]), _mean(part["wall_time_s"], 0),
                      _mean(part["peak_rss_mb"], 0)]
        row = diffs.loc[method] if method in diffs.index else None
        delta = "–" if row is None or pd.isna(row.diff_mean) else \
            f"{row.diff_mean:+.3f} [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}]"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {delta} | "
                     f"{'–' if row is None else format_p(row.p_value)} | {len(method_runs['seed'].unique())} |")
    return lines


def state_differences(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, real − random accuracy paired over seeds (t-interval, Wilcoxon p), indexed by method."""
    long = runs.assign(task=runs["method"], method=runs["state"])
    result = compare_to_reference(long, "accuracy", "random", ["seed"])
    return result[result["method"] == "real"].set_index("task")


def differences_table(runs: pd.DataFrame, states: list[str]) -> list[str]:
    """BiDoRA − DoRA and every method − probe, per state: Δ accuracy [CI], Wilcoxon p, Holm p over the column."""
    rows = [(a, b) for a, b in PAIRS] + [(m, "probe") for m in runs["method"].unique()
                                         if m not in ("probe", "majority", "composition")]
    columns = {state: paired(runs[runs["state"] == state], rows) for state in states}
    lines = ["Paired over seeds (same seed, same split, same test rows): Δ accuracy = first − second, mean and 95 % "
             "t-interval; p: two-sided Wilcoxon signed-rank; Holm: adjusted over this column's comparisons.", "",
             "| comparison | " + " | ".join(f"{s}: Δ accuracy [95 % CI] | {s}: p | {s}: Holm p" for s in states) + " |",
             "|---" * (3 * len(states) + 1) + "|"]
    for pair in rows:
        cells = []
        for state in states:
            result = columns[state].get(pair)
            cells += ["–", "–", "–"] if result is None else result[:3]
        lines.append(f"| {pair[0]} − {pair[1]} | " + " | ".join(cells) + " |")
    significant = [f"{a} − {b} ({s})" for s, column in columns.items() for (a, b), r in column.items() if r[3] < 0.05]
    return lines + ["", "Surviving Holm's correction at 0.05: " + (", ".join(significant) or "none") + "."]


def paired(runs: pd.DataFrame, pairs: list[tuple[str, str]]) -> dict:
    """(method, reference) -> [Δ text, p text, Holm p text, Holm p] for the pairs both of whose methods ran."""
    found = {}
    for method, reference in pairs:
        both = runs[runs["method"].isin([method, reference])]
        if {method, reference} <= set(both["method"]):
            found[(method, reference)] = compare_to_reference(both, "accuracy", reference, ["seed"]).set_index(
                "method").loc[method]
    adjusted = holm([r.p_value for r in found.values()]) if found else []
    return {pair: [f"{r.diff_mean:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]", format_p(r.p_value),
                   format_p(h), h if h == h else 1.0] for (pair, r), h in zip(found.items(), adjusted)}



if __name__ == "__main__":
    sys.exit(main())
