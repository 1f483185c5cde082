"""`cross_validate`: k-fold (× repeats) `fit` runs on a task's training split, with a summary table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from protadapt.config import RunConfig
from protadapt.data.splits import kfold_splits, split_groups
from protadapt.data.tasks import Task, resolve_task
from protadapt import rundir
from protadapt.files import write_csv_atomic, write_text_atomic
from protadapt.training.calibrate import write_cv_conformal
from protadapt.training.distributed import global_rank
from protadapt.training.run import fit

log = logging.getLogger(__name__)


@dataclass
class Folds:
    """How the training split is cut: `folds` parts, the whole cut repeated with new seeds `repeats` times."""

    folds: int = 5
    repeats: int = 1


def cross_validate(config: RunConfig, folds: Folds | None = None, out: str | Path | None = None, *,
                   resume: bool = False, overwrite: bool = False) -> pd.DataFrame:
    """k-fold (× repeats) CV on the task's training split; each fold does its own inner split."""
    out = Path(out or Path(config.out) / f"cv-{rundir.default_name(config)}")
    with rundir.claim(out, resume=resume, overwrite=overwrite):
        return cross_validate_claimed(config, folds or Folds(), out, resume)


def cross_validate_claimed(config: RunConfig, folds: Folds, out: Path, resume: bool) -> pd.DataFrame:
    """`cross_validate` inside its output directory's lock; on resume every fold resumes (or is redone)."""
    if config.data.test_file:
        log.warning("cv: data.test_file=%s is ignored; the folds come from data.train_file", config.data.test_file)
    task = resolve_task(replace(config.data, test_file=None))
    frame = task.load()
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    groups = split_groups(train, config.data)
    rows = []
    splits = kfold_splits(train["label"].to_numpy(), folds.folds, repeats=folds.repeats, seed=config.seed,
                          problem_type=task.problem_type, groups=groups)
    from tqdm.auto import tqdm

    progress = tqdm(list(splits), desc="cv folds", unit="fold", disable=config.quiet or global_rank() != 0)
    for number, (train_idx, test_idx) in enumerate(progress):
        repeat, fold = divmod(number, folds.folds)
        result = fit(config, out / f"repeat{repeat}-fold{fold}", resume=resume, train=train.iloc[train_idx],
                     test=train.iloc[test_idx], figures=False)
        if result.is_global_zero:
            rows.append({"repeat": repeat, "fold": fold, **result.metrics["test"]})
    if global_rank() != 0:
        return pd.DataFrame(rows)
    table = pd.DataFrame(rows)
    write_csv_atomic(table, out / "folds.csv")
    summary = summarise_folds(table)
    write_csv_atomic(summary, out / "summary.csv")
    write_text_atomic(summary_markdown(summary, task, config, folds), out / "summary.md")
    write_cv_conformal(out, config, task.problem_type)
    return table


def summarise_folds(table: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in table.columns if c not in ("repeat", "fold")]
    return pd.DataFrame({"metric": metrics, "mean": [table[m].mean() for m in metrics],
                         "sd": [table[m].std(ddof=1) for m in metrics], "n": len(table)})


def summary_markdown(summary: pd.DataFrame, task: Task, config: RunConfig, folds: Folds) -> str:
    lines = [f"# Cross-validation: {task.name}, {config.adapter.method}",
             "", f"{folds.folds} folds × {folds.repeats} repeat(s), seed {config.seed}, backbone {config.backbone}"
             f"{' (random init)' if config.random_init else ''}.", "", "| metric | mean ± sd |", "|---|---|"]
    lines += [f"| {r.metric} | {r.mean:.4f} ± {r.sd:.4f} |" for r in summary.itertuples()]
    return "\n".join(lines) + "\n"
