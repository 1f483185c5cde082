"""The learning-rate sweep behind the per-method defaults (issue 18): real AntiBERTy, bbb's INNER validation split.

    PROTADAPT_DATA_DIR=/work/shared/data nice -n 5 .venv/bin/python -m benchmarks.defaults_sweep [--out DIR]

Each cell is `fit` on bbb's 198-row training split only (the 38-row test split is never loaded into a
cell: `test=None`), so it holds out its seed's stratified 20 % inner validation split (40 rows), trains
on the other 158 with early stopping on inner-validation accuracy (`optim.max_epochs` ceiling,
`optim.patience`), and reports the inner-validation metrics of its best epoch. No refit. Cells run
seed by seed (every lr of every method for seed 0, then seed 1), so a stopped sweep still has a whole
seed; finished cells are reused. The chosen lr per method is the one with the highest mean
inner-validation accuracy over the seeds that finished for every lr of that method, ties broken by
mean AUROC, then the lower lr. The choice goes into `protadapt.config.METHOD_DEFAULTS` by hand.

Then the training schedule (`optim.warmup_fraction`, `optim.patience`, `optim.max_epochs`: one set for
every method, in OptimConfig): SCHEDULE_METHODS at their default lr, each SCHEDULES variant on the
`--schedule-seeds`, next to the default schedule (the lr grid's own cell at that lr). The rule, fixed
before the runs: the default stays unless a variant's mean inner-validation accuracy over the methods
beats it by more than one validation peptide (2.5 points); the choice goes into OptimConfig by hand.

Cost measured on the shared 2-core CPU (1 torch thread, AntiBERTy 26 M, batch 32, load average 5-15):
one bbb epoch of LoRA/DoRA ≈ 4–6 CPU-s, full fine-tuning ≈ 10 CPU-s (one-epoch fits: 11 / 12 / 17 CPU-s
including evaluation); a cell (early-stopped, 7-18 epochs) took LoRA 78-143, DoRA 100-219, full 107-235
CPU-s, so one seed of the default grid (15 lrs) is ≈ 35 CPU-minutes and two ≈ 70. At `nice -n 5` next
to two benchmark processes a cell got 25-50 % of a core: seed 0 took ~80 wall-minutes. The schedule sweep
(3 variants × LoRA, DoRA, full, seed 0) took 106-342 CPU-s a cell (the patience-10 cells the dearest),
≈ 35 CPU-minutes, 50 wall-minutes next to the two report processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import RESULTS_DIR, cpu_model, markdown_table
from protadapt import rundir
from protadapt.config import load_config, method_defaults
from protadapt.data.tasks import resolve_task
from protadapt.training.run import fit

# every chosen lr must be an interior point of its method's grid: one whose best lies on an edge was widened
GRID = {"lora": (1e-4, 3e-4, 1e-3, 3e-3), "dora": (1e-4, 3e-4, 1e-3, 3e-3), "full": (1e-5, 3e-5, 1e-4, 3e-4),
        "prompt": (1e-3, 1e-2, 3e-2, 1e-1), "wegeft": (1e-4, 3e-4, 1e-3, 3e-3)}
SETTINGS = ["backbone=antiberty", "quiet=true", "data.batch_size=32", "optim.refit=false", "trainer.logger=csv"]
# the schedule sweep: variants of OptimConfig's warm-up / patience / ceiling, at each method's default lr
SCHEDULES = {"warm-up 0": ["optim.warmup_fraction=0"], "warm-up 0.3": ["optim.warmup_fraction=0.3"],
             "patience 10, ceiling 40": ["optim.patience=10", "optim.max_epochs=40"]}
SCHEDULE_METHODS = ("lora", "dora", "full")
MARGIN = 0.025  # one of the 40 inner-validation peptides: what a schedule variant must beat the default by


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    grid = parse_grid(args.grid) if args.grid else GRID
    out, results = Path(args.out), Path(args.results) if args.results else RESULTS_DIR
    train = bbb_training_split()
    for seed in [] if args.report_only else args.seeds:
        for method, lrs in grid.items():
            for lr in lrs:
                run_cell(cell_dir(out, method, lr, seed), train, [*args.settings, f"adapter.method={method}",
                                                                  f"optim.lr={lr}", f"seed={seed}",
                                                                  f"optim.max_epochs={args.epochs}"])
                write_report(out, grid, args, results)
    for seed in [] if args.report_only else args.schedule_seeds:
        for variant, overrides in SCHEDULES.items():
            for method in args.schedule_methods:
                run_cell(schedule_dir(out, variant, method, seed), train,
                         [*args.settings, f"adapter.method={method}", f"optim.lr={method_defaults(method).lr}",
                          f"seed={seed}", f"optim.max_epochs={args.epochs}", *overrides])
                write_report(out, grid, args, results)
    write_report(out, grid, args, results)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/protadapt-defaults-sweep", help="cells (resumable)")
    parser.add_argument("--results", help="directory of defaults_sweep.{md,csv} (default: benchmarks/results)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--epochs", type=int, default=20, help="optim.max_epochs: early stopping's ceiling")
    parser.add_argument("--grid", help="METHOD=LR/LR,METHOD=LR (default: the GRID in this file)")
    parser.add_argument("--schedule-seeds", type=lambda s: [int(x) for x in s.split(",") if x], default=[0],
                        help="seeds of the schedule sweep ('' skips it)")
    parser.add_argument("--schedule-methods", type=lambda s: s.split(","), default=list(SCHEDULE_METHODS))
    parser.add_argument("--report-only", action="store_true", help="collect the finished cells; train nothing")
    parser.add_argument("--settings", nargs="*", default=SETTINGS, help="KEY=VALUE for every cell (tests: tiny)")
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args(argv, argparse.Namespace(argv=list(argv)))


def parse_grid(text: str) -> dict[str, tuple[float, ...]]:
    """`lora=1e-4/1e-3,full=1e-5` → {"lora": (1e-4, 1e-3), "full": (1e-5,)}."""
    return {m: tuple(float(v) for v in lrs.split("/")) for m, lrs in (p.split("=") for p in text.split(","))}


def bbb_training_split() -> pd.DataFrame:
    """bbb's training split only: the test split never reaches a sweep cell."""
    frame = resolve_task(load_config().data).load()
    return frame[frame["split"] == "train"].reset_index(drop=True)


def cell_dir(out: Path, method: str, lr: float, seed: int) -> Path:
    return out / method / f"lr{lr:g}" / f"seed{seed}"


def schedule_dir(out: Path, variant: str, method: str, seed: int) -> Path:
    return out / "schedule" / variant.replace(", ", "-").replace(" ", "") / method / f"seed{seed}"


def run_cell(path: Path, train: pd.DataFrame, settings: list[str]) -> None:
    """One early-stopped fit on the seed's inner split; its CPU seconds go into PATH/cost.json."""
    if rundir.is_complete(path) and (path / "cost.json").exists():
        return
    cpu, wall = time.process_time(), time.perf_counter()
    fit(load_config(None, settings), path, train=train, test=None, overwrite=True)
    cost = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1)}
    (path / "cost.json").write_text(json.dumps(cost))
    logging.info("sweep: %s done (%s)", path, cost)


def cell_row(out: Path, method: str, lr: float, seed: int, path: Path | None = None) -> dict | None:
    """Inner-validation metrics of the best epoch, epochs run, best epoch and cost of one finished cell."""
    path = path or cell_dir(out, method, lr, seed)
    if not (path / "cost.json").exists():
        return None
    val = json.loads((path / "metrics.json").read_text())["val"]
    curve = pd.read_csv(path / "logs" / "fit" / "metrics.csv")
    curve = curve[curve["val_accuracy"].notna()].reset_index(drop=True)
    return {"method": method, "lr": lr, "seed": seed, "val_accuracy": val["accuracy"], "val_auroc": val["auroc"],
            "epochs_run": len(curve), "best_epoch": int(curve["val_accuracy"].idxmax()) + 1,
            **json.loads((path / "cost.json").read_text())}


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean over the seeds every lr finished; best accuracy, then AUROC, then the lower lr."""
    rows = []
    for method, runs in table.groupby("method", sort=False):
        complete = set.intersection(*(set(r["seed"]) for _, r in runs.groupby("lr")))
        runs = runs[runs["seed"].isin(complete)]
        if runs.empty:
            continue
        means = runs.groupby("lr", as_index=False)[["val_accuracy", "val_auroc", "best_epoch"]].mean()
        best = means.sort_values(["val_accuracy", "val_auroc", "lr"], ascending=[False, False, True]).iloc[0]
        rows.append({"method": method, "chosen_lr": best["lr"], "val_accuracy": best["val_accuracy"],
                     "val_auroc": best["val_auroc"], "mean_best_epoch": best["best_epoch"],
                     "seeds": ",".join(map(str, sorted(complete)))})
    return pd.DataFrame(rows)


def write_report(out: Path, grid: dict, args: argparse.Namespace, results: Path) -> None:
    rows = [r for s in args.seeds for m, lrs in grid.items() for lr in lrs if (r := cell_row(out, m, lr, s))]
    if not rows:
        return
    table = pd.DataFrame(rows)
    planned = len(args.seeds) * sum(len(lrs) for lrs in grid.values())
    results.mkdir(parents=True, exist_ok=True)
    table.to_csv(results / "defaults_sweep.csv", index=False)
    summary = table.groupby(["method", "lr"], sort=False).agg(
        seeds=("seed", lambda s: ",".join(map(str, s))), val_accuracy=("val_accuracy", "mean"),
        val_auroc=("val_auroc", "mean"), epochs_run=("epochs_run", "mean"), best_epoch=("best_epoch", "mean"),
        cpu_s=("cpu_s", "mean")).reset_index()
    lines = ["# Per-method learning rates: the sweep on bbb's inner validation split", "",
             f"- Command: `PROTADAPT_DATA_DIR=/work/shared/data nice -n 5 python -m benchmarks.defaults_sweep "
             f"{' '.join(args.argv)}`".rstrip() + "",
             f"- {len(table)} of {planned} cells finished. Every cell: `{' '.join(args.settings)}` (default: the real AntiBERTy weights), "
             f"early stopping on inner-validation accuracy (patience {load_config().optim.patience}, ceiling "
             f"{args.epochs} epochs), 158 training / 40 inner-validation rows per seed; the bbb test split is never "
             "used. AdamW, weight decay 0.01, cosine schedule with 10 % warm-up.",
             f"- Machine: {cpu_model()}, 1 torch thread, shared with two benchmark processes (wall times are upper bounds).",
             "- Caveat: 40 validation rows, so one peptide is 2.5 points of accuracy; the best epoch's own accuracy is "
             "the selection criterion, so these figures are optimistic and serve only to rank learning rates.",
             "- Early stopping (patience 5) can end a low learning rate's run in its initial plateau (best epoch 2-3, "
             "7-8 epochs run): that favours the larger rates; a longer patience could change the low end.",
             "", "## Chosen learning rate per method", "",
             markdown_table(["method", "chosen lr", "mean val accuracy", "mean val AUROC", "mean best epoch", "seeds"],
                            [[r.method, f"{r.chosen_lr:g}", f"{r.val_accuracy:.3f}", f"{r.val_auroc:.3f}",
                              f"{r.mean_best_epoch:.1f}", r.seeds] for r in choose(table).itertuples()]),
             "", "## Every learning rate (means over the seeds listed)", "",
             markdown_table(["method", "lr", "seeds", "val accuracy", "val AUROC", "epochs run", "best epoch", "CPU s / run"],
                            [[r.method, f"{r.lr:g}", r.seeds, f"{r.val_accuracy:.3f}", f"{r.val_auroc:.3f}",
                              f"{r.epochs_run:.1f}", f"{r.best_epoch:.1f}", f"{r.cpu_s:.0f}"]
                             for r in summary.itertuples()])]
    lines += schedule_section(out, args)
    (results / "defaults_sweep.md").write_text("\n".join(lines) + "\n")


def schedule_section(out: Path, args: argparse.Namespace) -> list[str]:
    """The schedule variants next to the default one, per method and averaged, and the rule's verdict."""
    default = load_config().optim
    name = f"default: warm-up {default.warmup_fraction:g}, patience {default.patience}, ceiling {args.epochs}"
    rows = []
    for seed in args.schedule_seeds:
        for method in args.schedule_methods:
            lr = method_defaults(method).lr
            for variant, path in [(name, cell_dir(out, method, lr, seed)),
                                  *((v, schedule_dir(out, v, method, seed)) for v in SCHEDULES)]:
                if row := cell_row(out, method, lr, seed, path):
                    rows.append({**row, "variant": variant})
    if not rows:
        return []
    table = pd.DataFrame(rows)
    complete = table.groupby("variant").filter(
        lambda r: len(r) == len(args.schedule_seeds) * len(args.schedule_methods))
    means = complete.groupby("variant", sort=False)["val_accuracy"].mean()
    lines = ["", "## Training schedule (one for every method)", "",
             f"Each method at its default lr, seed{'s' if len(args.schedule_seeds) > 1 else ''} "
             f"{','.join(map(str, args.schedule_seeds))}; the default row is the lr grid's own cell. Rule, fixed before "
             f"the runs: the default stays unless a variant's mean over the methods beats it by more than "
             f"{MARGIN * 100:g} points (one of the 40 validation peptides).", "",
             markdown_table(["schedule", *args.schedule_methods, "mean val accuracy", "mean epochs run",
                             "mean best epoch", "mean CPU s / run"],
                            [[variant, *[cell(runs, m) for m in args.schedule_methods],
                              f"{runs['val_accuracy'].mean():.3f}" if variant in means else "– (unfinished)",
                              f"{runs['epochs_run'].mean():.1f}", f"{runs['best_epoch'].mean():.1f}",
                              f"{runs['cpu_s'].mean():.0f}"] for variant, runs in table.groupby("variant", sort=False)])]
    return lines + (["", verdict(means, name)] if name in means and len(means) > 1 else [])


def verdict(means: pd.Series, default: str) -> str:
    """The fixed rule applied to mean val accuracy per schedule: a variant must beat the default by > MARGIN."""
    best = means.drop(default).idxmax()
    gain = means[best] - means[default]
    return (f"Verdict: the best variant, {best}, is {gain * 100:+.1f} points against the default "
            + ("(more than the margin), so it becomes the default." if gain > MARGIN else
               f"(not more than the +{MARGIN * 100:g} required), so the default schedule stays."))


def cell(runs: pd.DataFrame, method: str) -> str:
    """A method's mean val accuracy (and best epoch / epochs run) in one schedule row."""
    mine = runs[runs["method"] == method]
    if mine.empty:
        return "–"
    return (f"{mine['val_accuracy'].mean():.3f} (best {mine['best_epoch'].mean():.0f} of "
            f"{mine['epochs_run'].mean():.0f})")


if __name__ == "__main__":
    sys.exit(main())
