"""`protadapt compare`: every (task, method, seed[, fold]) cell trained with `fit`, plus the baselines.

Cells live in `OUT/cells/<task>/<method>/seed<N>[/fold<k>]`; a finished cell (`Cell.finished`) is
never rerun, so a killed comparison resumes where it stopped. The table of all cells is
`OUT/comparison.csv` (one row per run) and the Table-4-shaped summary is `OUT/comparison.md`
(written by `protadapt.report`).
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from protadapt import rundir
from protadapt.adapters import method_names
from protadapt.config import RunConfig, load_config, with_method_defaults
from protadapt.data.splits import kfold_splits, split_groups
from protadapt.data.tasks import resolve_task
from protadapt.evaluation.baselines import BASELINES, run_baseline
from protadapt.evaluation.metrics import compute_metrics
from protadapt.files import write_csv_atomic, write_json_atomic
from protadapt.method_specs import ALIASES, parse_methods
from protadapt.training.resume import flatten
from protadapt.training.run import fit

log = logging.getLogger(__name__)

PROBE = "probe"  # the frozen-embedding baseline: a row of every comparison, beside majority and composition


@dataclass
class Grid:
    """What to run: tasks × methods × seeds (× folds), with an optional fixed training subsample per task."""

    tasks: list[str]
    methods: list[str]  # entries `LABEL[:KEY=VALUE...]` (protadapt.method_specs): methods, aliases, own settings
    seeds: list[int]
    cv: int | None = None  # K folds on the training split per seed; None: the task's train/test split
    max_train: dict[str, int] | None = None  # task -> rows kept of its training split (stratified, seed 0)
    baselines: tuple[str, ...] = BASELINES


def run_comparison(base: RunConfig, grid: Grid, out: str | Path, *, overwrite: bool = False) -> pd.DataFrame:
    """Run (or reuse) every cell of `grid`, then write `OUT/comparison.csv`; returns that table."""
    with rundir.claim(Path(out), overwrite=overwrite, reuse=True):  # one comparison per OUT at a time
        return run_claimed(base, grid, Path(out))


def run_claimed(base: RunConfig, grid: Grid, out: Path) -> pd.DataFrame:
    from tqdm.auto import tqdm

    out = Path(out)
    unknown = [s.label for s in parse_methods(grid.methods) if s.method not in method_names()
               and s.method not in grid.baselines]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(method_names())}, "
                         f"aliases {', '.join(ALIASES)} (baselines {', '.join(grid.baselines)} are added to every "
                         "comparison)")
    cells = list(plan(base, grid, out))
    for cell in tqdm(cells, desc="compare cells", unit="cell", disable=base.quiet):
        if cell.trains_a_model:
            run_cell(cell)
        else:
            run_baseline_cell(cell)
    return collect(base, grid, out)


def collect(base: RunConfig, grid: Grid, out: str | Path) -> pd.DataFrame:
    """The table of every finished cell of `grid` (unfinished ones are left out), written to comparison.csv."""
    out = Path(out)
    table = pd.DataFrame([cell_row(cell) for cell in plan(base, grid, out) if cell.finished])
    write_csv_atomic(table, out / "comparison.csv")
    return table


@dataclass
class Cell:
    """One run of the grid: where it lives, what it trains on and what it is tested on."""

    path: Path
    config: RunConfig  # task, method and seed already set
    problem_type: str
    fold: int | None
    train: pd.DataFrame
    test: pd.DataFrame
    train_split_rows: int  # the task's whole training split, before any subsample
    label: str = ""  # the row's name: the method, or an alias / entry label (bidora_fo)
    overrides: tuple[str, ...] = ()  # the entry's own settings, already applied to `config`

    @property
    def method(self) -> str:
        return self.label or self.config.adapter.method

    @property
    def trains_a_model(self) -> bool:
        """A registered method (trained with `fit`), not one of the baselines."""
        return self.config.adapter.method in method_names()

    @property
    def finished(self) -> bool:
        """A model cell marked complete (after its last file); a baseline's metrics.json, which it writes last."""
        return rundir.is_complete(self.path) if self.trains_a_model else (self.path / "metrics.json").exists()


def plan(base: RunConfig, grid: Grid, out: Path):
    """Every cell in a fixed order: task, seed, fold, then the methods and baselines on that split."""
    for task_name in grid.tasks:
        task_config = replace(base, data=replace(base.data, task=task_name))
        task = resolve_task(task_config.data)
        frame = task.load()
        train_split = frame[frame["split"] == "train"].reset_index(drop=True)
        train_pool = subsample(train_split, (grid.max_train or {}).get(task_name), task.problem_type)
        test_split = frame[frame["split"] == "test"].reset_index(drop=True)
        groups = split_groups(train_pool, task_config.data) if grid.cv else None
        for seed in grid.seeds:
            for fold, train, test in cell_splits(train_pool, test_split, grid.cv, seed, task.problem_type, groups):
                for spec in parse_methods([*dict.fromkeys([*grid.methods, PROBE]), *grid.baselines]):
                    config = replace(task_config, seed=seed, adapter=replace(task_config.adapter, method=spec.method))
                    if spec.overrides:
                        config = load_config(None, list(spec.overrides), base=copy.deepcopy(config))
                    yield Cell(cell_dir(out, task_name, spec.label, seed, fold), config, task.problem_type, fold,
                               train, test, len(train_split), spec.label, spec.overrides)


def cell_splits(train: pd.DataFrame, test: pd.DataFrame, cv: int | None, seed: int, problem_type: str,
                groups: np.ndarray | None = None):
    """(fold, train, test) per cell: the task's own split, or K folds (groups kept whole) of the training split."""
    if not cv:
        yield None, train, test
        return
    folds = kfold_splits(train["label"].to_numpy(), cv, seed=seed, problem_type=problem_type, groups=groups)
    for fold, (train_idx, test_idx) in enumerate(folds):
        yield fold, train.iloc[train_idx].reset_index(drop=True), train.iloc[test_idx].reset_index(drop=True)


def subsample(train: pd.DataFrame, rows: int | None, problem_type: str) -> pd.DataFrame:
    """A fixed subsample of `rows` training rows (seed 0; stratified by class for classification)."""
    if not rows or rows >= len(train):
        return train
    rng = np.random.default_rng(0)
    if problem_type != "classification":
        keep = rng.choice(len(train), size=rows, replace=False)
    else:
        keep = []
        for _, index in train.groupby("label").indices.items():
            share = max(1, round(rows * len(index) / len(train)))
            keep.extend(rng.choice(index, size=min(share, len(index)), replace=False))
    return train.iloc[np.sort(np.asarray(keep))].reset_index(drop=True)


def cell_dir(out: Path, task: str, method: str, seed: int, fold: int | None) -> Path:
    cell = out / "cells" / task / method / f"seed{seed}"
    return cell if fold is None else cell / f"fold{fold}"


def run_cell(cell: Cell) -> None:
    """Train one cell unless it is complete; a half-written cell is removed and trained afresh."""
    if cell.finished:
        check_reusable(cell)
        return
    if cell.path.exists():
        shutil.rmtree(cell.path)
    log.info("compare: training %s", cell.path)
    reset_peak_rss()
    fit(cell.config, cell.path, train=cell.train, test=cell.test, refit_default=True)  # equal rows for every method
    _add_to_json(cell.path / "run.json", {"cell_peak_rss_mb": peak_rss_mb()})
    rundir.mark_complete(cell.path)  # run.json changed: the manifest follows


# what a finished cell must share with the comparison that reuses it (data and task are the cell's path and split)
REUSED_SETTINGS = ("backbone", "random_init", "backbone_dtype", "seed", "adapter", "optim", "bilevel")


def check_reusable(cell: Cell) -> None:
    """A finished cell trained with other settings (an edited config, new method defaults) is refused, not
    mixed into the table: the first setting that differs, and what to do."""
    saved = flatten(yaml.safe_load((cell.path / "config.yaml").read_text()) or {})
    wanted = flatten(with_method_defaults(cell.config)[0].to_dict())
    for key, value in wanted.items():
        if key.split(".")[0] in REUSED_SETTINGS and saved.get(key, value) != value:
            raise rundir.RunDirError(
                f"{cell.path}: this finished cell was trained with {key}={saved[key]}, the comparison asks "
                f"{key}={value}; give a new --out, or --overwrite to retrain every cell")


def run_baseline_cell(cell: Cell) -> None:
    """A baseline on the cell's exact split, stored like a model cell (metrics.json + run.json)."""
    if cell.finished:
        return
    started = time.perf_counter()
    train, test, problem_type = cell.train, cell.test, cell.problem_type
    num_classes = int(train["label"].max()) + 1 if problem_type == "classification" else None
    scores = run_baseline(cell.method, train["sequence"].tolist(), train["label"].to_numpy(),
                          test["sequence"].tolist(), problem_type, num_classes, cell.config.seed)
    metrics = compute_metrics(problem_type, test["label"].to_numpy(), scores)
    _add_to_json(cell.path / "run.json", {"wall_time_s": round(time.perf_counter() - started, 3),
                                          "trainable_params": baseline_params(cell.method, problem_type, num_classes)})
    write_json_atomic({"test": metrics}, cell.path / "metrics.json")  # last: a cell with it is finished


def baseline_params(name: str, problem_type: str, num_classes: int | None) -> int:
    """Fitted numbers: class frequencies (or the mean), or the linear model on 420 composition features."""
    if name == "majority":
        return num_classes or 1
    outputs = 1 if problem_type == "regression" or num_classes == 2 else num_classes
    return 421 * outputs


def cell_row(cell: Cell) -> dict:
    """One CSV row: the cell's keys and settings, every test metric, and its cost."""
    saved = json.loads((cell.path / "metrics.json").read_text())
    metrics = saved.get("test", {})
    run = json.loads((cell.path / "run.json").read_text()) if (cell.path / "run.json").exists() else {}
    baseline = not cell.trains_a_model
    return {"task": cell.config.data.task, "method": cell.method, "seed": cell.config.seed, "fold": cell.fold,
            # the rows the final weights trained on (a refit or BiDoRA's retrain: all of the cell's training rows)
            "n_train": saved.get("train_rows", len(cell.train)),
            "n_test": len(cell.test), "train_split_rows": cell.train_split_rows,
            "overrides": " ".join(cell.overrides) or None, "refit_epochs": saved.get("refit_epochs"),
            "max_epochs": None if baseline else cell.config.optim.max_epochs,
            "trainable_params": run.get("trainable_params"), "wall_time_s": run.get("wall_time_s"),
            "peak_rss_mb": run.get("cell_peak_rss_mb"), "backbone": None if baseline else run.get("backbone"),
            "pretrained": None if baseline else run.get("pretrained"),
            "predictions": str(cell.path / "predictions.csv") if (cell.path / "predictions.csv").exists() else None,
            **metrics}


def parse_seeds(text: str) -> list[int]:
    """`0-4` → [0, 1, 2, 3, 4]; `0,2,7` → [0, 2, 7]; ranges and lists combine (`0-2,9`)."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"seeds '{text}': use a range like 0-4 or a list like 0,1,2") from None
    return seeds

def parse_max_train(text: str | None, option: str = "--max-train", unit: str = "ROWS") -> dict[str, int]:
    """`thermostability=400,mic=800` → {"thermostability": 400, "mic": 800}; `option` and `unit` name it in errors."""
    limits = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        task, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"{option} '{text}': use TASK={unit} pairs, e.g. thermostability=400,mic=800")
        limits[task.strip()] = int(count)
    return limits


# ---------------------------------------------------------------- per-cell peak memory


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (Linux ≥ 4.0), so the next reading is one cell's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """VmHWM since the last reset; ru_maxrss (whole-process peak) where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _add_to_json(path: Path, values: dict) -> None:
    current = json.loads(path.read_text()) if path.exists() else {}
    write_json_atomic({**current, **values}, path)
