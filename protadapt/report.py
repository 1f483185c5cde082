"""`comparison.md`: the comparison table shaped like the BiDoRA paper's Table 4, with its statistics.

Per task: each metric as mean ± sd over runs, trainable parameters, and for each method against
the reference (BiDoRA) the mean paired difference with its t-interval (Nadeau–Bengio under CV),
the Wilcoxon signed-rank p (Nadeau–Bengio p under CV) and Holm-adjusted p over the table; on a
fixed test set also McNemar's and DeLong's tests per seed from the cells' predictions.csv (the
`predictions` column, read relative to the working directory). With several tasks, a Wilcoxon
over (task, seed) pairs. The header says what ran: backbone, pretrained or random init, seeds,
machine and wall time, so a CPU run is never mistaken for the paper.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch

from protadapt.evaluation.baselines import BASELINES
from protadapt.evaluation.statistics import across_tasks, compare_to_reference, holm, summarise, wilcoxon_min_p
from protadapt.evaluation.testset import compare_predictions

SHOWN_METRICS = {"classification": ("accuracy", "f1", "mcc", "auroc"), "regression": ("mse", "mae", "pearson", "spearman")}
TESTED_METRICS = {"classification": ("accuracy", "f1"), "regression": ("mse",)}  # the paper's Table 4 columns


def comparison_markdown(table: pd.DataFrame, *, reference: str = "bidora", command: str = "",
                        machine: str | None = None, wall_time_s: float | None = None,
                        notes: Sequence[str] = (), identity_below: float | None = None) -> str:
    """The whole report for a comparison table; `identity_below` adds each task's metric on its far test rows."""
    lines = ["# Methods × tasks comparison", ""]
    lines += _header(table, reference, command, machine or machine_description(), wall_time_s)
    lines += [f"- {note}" for note in notes]
    for task, runs in table.groupby("task", sort=False):
        lines += ["", *task_section(str(task), runs, reference)]
        lines += identity_section(runs, identity_below) if identity_below is not None else []
    lines += across_tasks_section(table, reference)
    return "\n".join(lines) + "\n"


def task_section(task: str, runs: pd.DataFrame, reference: str = "bidora") -> list[str]:
    """Settings line, mean ± sd table, and the paired tests against the reference, for one task."""
    problem_type = "classification" if "accuracy" in runs.columns and runs["accuracy"].notna().any() else "regression"
    shown = [m for m in SHOWN_METRICS[problem_type] if m in runs.columns]
    lines = [f"## {task} ({problem_type}, test-set metrics)", "", _settings(runs), ""]
    lines += ["| method | training rows | trainable params | " + " | ".join(shown)
              + " | runs | wall time / run (s) | peak RSS (MB) |", "|---" * (len(shown) + 6) + "|"]
    for method, method_runs in runs.groupby("method", sort=False):
        cells = [mean_sd(method_runs[m], _digits(m)) for m in shown]
        rows = _range(sorted(int(n) for n in method_runs["n_train"].unique()))
        lines.append(f"| {_label(method, reference)} | {rows} | {_params(method_runs['trainable_params'])} | "
                     + " | ".join(cells) + f" | {len(method_runs)} | {_mean(method_runs['wall_time_s'], 1)} | "
                     f"{_mean(method_runs['peak_rss_mb'], 0)} |")
    if reference not in set(runs["method"]):
        return lines + ["", f"No {reference} runs: no paired comparison."]
    lines += ["", *paired_section(runs, reference, problem_type)]
    return lines + test_set_section(runs, reference)


def paired_section(runs: pd.DataFrame, reference: str, problem_type: str) -> list[str]:
    """Method − reference per tested metric: mean and CI, p, Holm-adjusted p over the table, pairs."""
    cv = runs["fold"].notna().any()
    pair_on = ["seed", "fold"] if cv else ["seed"]
    ratio = float((runs["n_test"] / runs["n_train"]).mean()) if cv else None
    metrics = [m for m in TESTED_METRICS[problem_type] if m in runs.columns]
    tests = {m: compare_to_reference(runs, m, reference, pair_on, ratio).set_index("method") for m in metrics}
    methods = [m for m in runs["method"].unique() if m != reference]
    p_column = "p_nb" if cv else "p_value"
    adjusted = holm([tests[m].loc[method, p_column] for method in methods for m in metrics])
    holm_of = dict(zip([(method, m) for method in methods for m in metrics], adjusted))
    n_test = int(runs["n_test"].iloc[0]) if not cv and runs["n_test"].nunique() == 1 else None
    lines = [_paired_method_text(reference, pair_on, ratio, len(adjusted), n_test), "",
             "| method | " + " | ".join(f"Δ {m} [95 % CI] | p ({m}) | Holm p ({m})" for m in metrics) + " | pairs |",
             "|---" * (3 * len(metrics) + 2) + "|"]
    for method in methods:
        cells = []
        for metric, result in tests.items():
            row = result.loc[method]
            digits = _digits(metric)
            rows_text = f" ({row.diff_mean * n_test:+.1f} of {n_test})" if n_test and metric == "accuracy" and \
                not math.isnan(row.diff_mean) else ""
            cells += [f"{_signed(row.diff_mean, digits)}{rows_text} [{_signed(row.diff_ci_low, digits)}, "
                      f"{_signed(row.diff_ci_high, digits)}]", format_p(row[p_column]),
                      format_p(holm_of[(method, metric)])]
        lines.append(f"| {_label(method, reference)} | " + " | ".join(cells)
                     + f" | {int(next(iter(tests.values())).loc[method].n_pairs)} |")
    if not cv:
        lines += wilcoxon_floor_notes(int(tests[m].loc[method, "n_nonzero"]) for method in methods for m in metrics)
    return lines


def test_set_section(runs: pd.DataFrame, reference: str) -> list[str]:
    """Per seed on the fixed test set: McNemar's exact test and, for two classes, DeLong's test of AUROC."""
    if "predictions" not in runs.columns or runs["fold"].notna().any() or "accuracy" not in runs.columns:
        return []
    order = {method: index for index, method in enumerate(runs["method"].unique())}
    files = {(r.method, r.seed): Path(r.predictions) for r in runs.sort_values("seed").itertuples()
             if isinstance(r.predictions, str) and Path(r.predictions).exists()}
    files = dict(sorted(files.items(), key=lambda item: order[item[0][0]]))  # by method, then seed
    rows = []
    for (method, seed), path in files.items():
        if method != reference and (reference, seed) in files:
            result = compare_predictions(pd.read_csv(path), pd.read_csv(files[(reference, seed)]))
            rows.append(f"| {_label(method, reference)} | {seed} | {result['only_method']} / "
                        f"{result['only_reference']} of {result['n_rows']} | {format_p(result['p_mcnemar'])} | "
                        f"{_signed(result['auroc_diff'], 3)} | {format_p(result['p_delong'])} |")
    if not rows:
        return []
    return ["", f"Same test rows, one seed at a time: rows only the method / only {reference} got right, McNemar's "
            f"exact p, and Δ AUROC (method − {reference}) with DeLong's p (two classes only). These test two fitted "
            "models on one test set; the seeds share those rows, so their p-values are not independent and are not "
            "combined — the seed-level test above is the test of the method.", "",
            f"| method | seed | right only method / only {reference} | McNemar p | Δ AUROC | DeLong p |",
            "|---|---|---|---|---|---|", *rows]


def identity_section(runs: pd.DataFrame, threshold: float) -> list[str]:
    """Per method, the headline metric on the test rows whose nearest training identity is below `threshold`."""
    from protadapt.data.identity import metrics_below_identity

    problem_type = "classification" if "accuracy" in runs.columns and runs["accuracy"].notna().any() else "regression"
    metric = TESTED_METRICS[problem_type][0]
    rows, counts = [], set()
    for method, method_runs in runs[runs["fold"].isna()].groupby("method", sort=False):
        values = []
        for path in method_runs["predictions"].dropna():
            predictions = pd.read_csv(path)
            if "nearest_train_identity" not in predictions or "label" not in predictions:
                continue
            below = metrics_below_identity(predictions, threshold, problem_type)
            counts.add(below["n"])
            values.append(below.get(metric, float("nan")))
        if values:
            rows.append(f"| {method} | {mean_sd(pd.Series(values, dtype=float), _digits(metric))} | {len(values)} |")
    if not rows:
        return []
    n = ", ".join(str(c) for c in sorted(counts))
    return ["", f"Test rows whose nearest training sequence is below {threshold:g} identity ({n} of "
            f"{_range(sorted(int(v) for v in runs['n_test'].unique()))} rows; blank identities, below the "
            "reporting floor, count as below): the same metric on them alone.", "",
            f"| method | {metric} below {threshold:g} identity | runs |", "|---|---|---|", *rows]


def across_tasks_section(table: pd.DataFrame, reference: str,
                         title: str = "All tasks: paired over (task, seed)") -> list[str]:
    """When several tasks ran: Wilcoxon over (task, seed) pairs of each method against the reference."""
    metric_of = {}
    for task, runs in table.groupby("task", sort=False):
        classification = "accuracy" in runs.columns and runs["accuracy"].notna().any()
        metric_of[task] = ("accuracy", True) if classification else ("mse", False)
    if len(metric_of) < 2 or reference not in set(table["method"]):
        return []
    result = across_tasks(table, reference, metric_of)
    result["holm"] = holm(result["p_value"])
    metric_text = ", ".join(f"{task}: {'' if up else '−'}{metric}" for task, (metric, up) in metric_of.items())
    lines = ["", f"## {title}", "",
             f"Each (task, seed) result against {reference}'s, the paper's pairing unit ({metric_text}; CV folds "
             f"averaged per seed); better / worse counts the pairs where the method beat / lost to {reference}; "
             "two-sided Wilcoxon signed-rank p over the pairs (ranks mix the tasks' scales) and Holm over the "
             "methods.", "", "| method | tasks | pairs | better / worse / tied | p | Holm p |", "|---|---|---|---|---|---|"]
    for row in result.itertuples():
        lines.append(f"| {_label(row.method, reference)} | {row.tasks} | {row.n_pairs} | {row.wins} / {row.losses} / "
                     f"{row.ties} | {format_p(row.p_value)} | {format_p(row.holm)} |")
    return lines + wilcoxon_floor_notes(result["wins"] + result["losses"])


def wilcoxon_floor_notes(nonzero_counts: Iterable[int]) -> list[str]:
    """A note for each number of nonzero differences whose smallest attainable Wilcoxon p exceeds 0.05."""
    floors = sorted({int(n) for n in nonzero_counts if 0 < n and wilcoxon_min_p(int(n)) > 0.05})
    return ["", *(f"- With {n} nonzero paired difference{'s' * (n != 1)} the smallest two-sided Wilcoxon p is "
                  f"{format_p(wilcoxon_min_p(n))} > 0.05: no difference, however large, can reach p < 0.05 "
                  "with this many pairs." for n in floors)] if floors else []


def _paired_method_text(reference: str, pair_on: list[str], ratio: float | None, family: int,
                        n_test: int | None) -> str:
    """The sentence that says exactly which interval and which tests the paired table holds."""
    pairs = " and ".join(pair_on)
    if ratio is not None:
        tests = (f"mean and 95 % Nadeau–Bengio corrected interval; p: Nadeau–Bengio corrected resampled t-test "
                 f"(variance × (1/J + n_test/n_train), n_test/n_train = {ratio:.3f}, J − 1 df), as the folds of "
                 "one seed share training rows")
    else:
        tests = ("mean and 95 % Student t-interval (n − 1 df); p: two-sided Wilcoxon signed-rank (exact for these n; "
                 "differences below 1e-12 × the values' scale count as zero, closer |differences| as ties)")
    rows = (f"; Δ accuracy also in test rows (+1.0 of {n_test}: one more of the {n_test} rows right, mean over seeds)"
            if n_test else "")
    return (f"Paired against **{reference}** over matched {pairs}s: difference = method − {reference}, {tests}; "
            f"Holm p: adjusted over the table's {family} comparisons{rows}.")


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
    equal = runs.groupby(["seed", "fold"], dropna=False)["n_train"].nunique().max() == 1
    train_text = (f"{_range(n_train)} training rows per run (the rows its final weights trained on: "
                  f"{'the same for every method' if equal else 'NOT the same for every method'} of a seed/fold)")
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
