"""`comparison.md`: the comparison table shaped like the BiDoRA paper's Table 4, with its statistics.

Per task: each metric as mean ± sd over runs, trainable parameters, and for each method against
the reference (BiDoRA) a paired Wilcoxon signed-rank p and a bootstrap 95 % CI of the mean
difference, paired on seed (and fold). The header says what ran: backbone, pretrained or random
init, seeds, machine and wall time, so a CPU run is never mistaken for the paper.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence

import pandas as pd
import torch

from protadapt.evaluation.baselines import BASELINES
from protadapt.evaluation.statistics import compare_to_reference, summarise

SHOWN_METRICS = {"classification": ("accuracy", "f1", "mcc", "auroc"), "regression": ("mse", "mae", "pearson", "spearman")}
TESTED_METRICS = {"classification": ("accuracy", "f1"), "regression": ("mse",)}  # the paper's Table 4 columns


def comparison_markdown(table: pd.DataFrame, *, reference: str = "bidora", command: str = "",
                        machine: str | None = None, wall_time_s: float | None = None,
                        notes: Sequence[str] = ()) -> str:
    """The whole report for a comparison table (one row per run, as compare writes it)."""
    lines = ["# Methods × tasks comparison", ""]
    lines += _header(table, reference, command, machine or machine_description(), wall_time_s)
    lines += [f"- {note}" for note in notes]
    for task, runs in table.groupby("task", sort=False):
        lines += ["", *task_section(str(task), runs, reference)]
    return "\n".join(lines) + "\n"


def task_section(task: str, runs: pd.DataFrame, reference: str = "bidora") -> list[str]:
    """Settings line, mean ± sd table, and the paired tests against the reference, for one task."""
    problem_type = "classification" if "accuracy" in runs.columns and runs["accuracy"].notna().any() else "regression"
    shown = [m for m in SHOWN_METRICS[problem_type] if m in runs.columns]
    lines = [f"## {task} ({problem_type}, test-set metrics)", "", _settings(runs), ""]
    lines += ["| method | trainable params | " + " | ".join(shown) + " | runs | wall time / run (s) | peak RSS (MB) |",
              "|---" * (len(shown) + 5) + "|"]
    for method, method_runs in runs.groupby("method", sort=False):
        cells = [mean_sd(method_runs[m], _digits(m)) for m in shown]
        lines.append(f"| {_label(method, reference)} | {_params(method_runs['trainable_params'])} | "
                     + " | ".join(cells) + f" | {len(method_runs)} | {_mean(method_runs['wall_time_s'], 1)} | "
                     f"{_mean(method_runs['peak_rss_mb'], 0)} |")
    if reference not in set(runs["method"]):
        return lines + ["", f"No {reference} runs: no paired comparison."]
    pair_on = ["seed", "fold"] if runs["fold"].notna().any() else ["seed"]
    lines += ["", f"Paired against **{reference}** over matched {' and '.join(pair_on)}s: difference = method − "
              f"{reference} (mean and 95 % bootstrap CI, 10 000 resamples of the pairs), two-sided Wilcoxon "
              "signed-rank p.", "",
              "| method | " + " | ".join(f"Δ {m} [95 % CI] | p ({m})" for m in TESTED_METRICS[problem_type])
              + " | pairs |", "|---" * (2 * len(TESTED_METRICS[problem_type]) + 2) + "|"]
    tests = {m: compare_to_reference(runs, m, reference, pair_on).set_index("method")
             for m in TESTED_METRICS[problem_type] if m in runs.columns}
    for method in runs["method"].unique():
        if method == reference:
            continue
        cells = []
        for metric, result in tests.items():
            row = result.loc[method]
            cells += [f"{_signed(row.diff_mean, _digits(metric))} [{_signed(row.diff_ci_low, _digits(metric))}, "
                      f"{_signed(row.diff_ci_high, _digits(metric))}]", format_p(row.p_value)]
        pairs = int(next(iter(tests.values())).loc[method].n_pairs)
        lines.append(f"| {_label(method, reference)} | " + " | ".join(cells) + f" | {pairs} |")
    return lines


def mean_sd(values: pd.Series, digits: int = 3) -> str:
    """`mean ± sd` over runs; a single run shows its value with `(n = 1)`."""
    mean, sd = summarise(values.dropna())
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} (n = 1)" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def machine_description() -> str:
    """CPU model and cores, GPU (if any), torch version: enough to tell a laptop CPU run from the paper's."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"CPU {cpu} ({os.cpu_count()} cores visible), GPU: {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def _header(table: pd.DataFrame, reference: str, command: str, machine: str, wall_time_s: float | None) -> list[str]:
    models = table[~table["method"].isin(BASELINES)]
    backbones = ", ".join(sorted(str(b) for b in models["backbone"].dropna().unique())) or "–"
    pretrained = set(models["pretrained"].dropna().astype(bool))
    weights = ("pretrained" if pretrained == {True} else "**random-init (NOT pretrained)**" if pretrained == {False}
               else "mixed pretrained and random-init" if pretrained else "–")
    lines = [f"- Backbone: {backbones}, weights {weights}."]
    if pretrained == {False}:
        lines.append("- These numbers come from randomly initialised backbones. They test the pipeline and the statistics; "
                     "they say nothing about the paper's Table 4 (ESM-2 650M, pretrained, GPU).")
    seeds = sorted(int(s) for s in table["seed"].unique())
    folds = sorted(int(f) for f in table["fold"].dropna().unique())
    lines.append(f"- Seeds: {', '.join(map(str, seeds))}; "
                 + (f"{len(folds)}-fold cross-validation on each training split" if folds else "the tasks' own train/test split")
                 + f"; reference for the paired tests: {reference}.")
    lines.append(f"- Machine: {machine}.")
    cells = pd.to_numeric(table["wall_time_s"], errors="coerce").sum()
    total = f"{wall_time_s / 60:.1f} min for the command; " if wall_time_s is not None else ""
    lines.append(f"- Wall time: {total}{cells / 60:.1f} min summed over the {len(table)} runs.")
    if command:
        lines.append(f"- Command: `{command}`")
    return lines


def _settings(runs: pd.DataFrame) -> str:
    """Which cells ran on what: rows, subsample, epochs, and the seeds of each method (never rounded up)."""
    models = runs[~runs["method"].isin(BASELINES)]
    split_rows = int(runs["train_split_rows"].iloc[0]) if "train_split_rows" in runs else None
    n_train = sorted(int(n) for n in runs["n_train"].unique())
    train_text = f"{_range(n_train)} training rows per run"
    if split_rows is not None and runs["fold"].isna().all() and n_train != [split_rows]:
        train_text += (f" (a fixed subsample of the {split_rows}-row training split, seed 0, stratified by class for "
                       "classification)")
    epochs = sorted(int(e) for e in models["max_epochs"].dropna().unique())
    seeds = "; ".join(f"{method}: {_seed_list(method_runs)}" for method, method_runs in runs.groupby("method", sort=False))
    return (f"{train_text}, {_range(sorted(int(n) for n in runs['n_test'].unique()))} test rows; "
            f"max_epochs {_range(epochs) if epochs else '–'}. Runs per method (seed/fold): {seeds}.")


def _seed_list(runs: pd.DataFrame) -> str:
    seeds = sorted(int(s) for s in runs["seed"].unique())
    text = ",".join(map(str, seeds))
    return f"seeds {text}" + (f" × {runs['fold'].nunique()} folds" if runs["fold"].notna().any() else "")


def _range(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _params(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    count = float(values.iloc[0])
    return f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count / 1e3:.1f} k" if count >= 1e4 else f"{int(count)}"


def _mean(values: pd.Series, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return "–" if values.empty else f"{values.mean():.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def _digits(metric: str) -> int:
    return 4 if metric in ("mse", "mae") else 3


def _label(method: str, reference: str) -> str:
    if method == reference:
        return f"**{method}** (reference)"
    return f"{method} (baseline)" if method in BASELINES else method
