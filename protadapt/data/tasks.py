"""Registry of benchmark tasks: where their data lives, how to fetch it, and how to score them.

Data directory: the ``data_dir`` argument, else ``$PROTADAPT_DATA_DIR``, else
``~/.cache/protadapt/data``; a task's canonical file is ``<dir>/<task>/<task>.csv`` with columns
id, sequence, label, split (+ extras). When it is missing, the task downloads its published raw
files into ``<dir>/<task>/raw/``, checks their sha256 and converts them (`download`). bbb's
canonical file ships inside the package (``protadapt/data/bundled/``), so it never needs either.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from protadapt.data import converters
from protadapt.data.download import DATA_DIR_ENV, download
from protadapt.data.io import DataError, read_sequences

if TYPE_CHECKING:
    from protadapt.config import DataConfig

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
BBB_CSV_SHA256 = "def347a8c7d899a8a9a4baf2a45d38c87933163ce00ec9fb2fa2c2c479169322"  # bundled/bbb.csv
# DataConfig keys passed to read_sequences for a custom task
READ_OPTIONS = ("sequence_column", "label_column", "id_column", "conflicts", "truncate", "duplicate_ids",
                "labels_file")
SPLITS = ("train", "test")
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "mcc", "auroc")
REGRESSION_METRICS = ("mse", "rmse", "mae", "pearson", "spearman", "r2")


@dataclass(frozen=True)
class RawFile:
    """One file exactly as published, pinned by commit in its URL and by the sha256 of its bytes."""

    name: str  # path under <dir>/<task>/raw/
    url: str
    sha256: str | None  # None: used with a "not verified" warning


@dataclass(frozen=True)
class Task:
    """A benchmark: its data file, problem type, metrics and the published files behind it."""

    name: str
    problem_type: str
    num_classes: int  # 2 for binary classification, 1 for regression
    metrics: tuple[str, ...]
    primary_metric: str
    description: str
    file_name: str
    source: str = ""  # repository (at a pinned commit) the raw files come from
    raw_files: tuple[RawFile, ...] = ()
    convert: Callable[[Path], pd.DataFrame] | None = field(default=None, repr=False)  # raw dir -> canonical
    conflicts: str = "error"  # io.read_sequences policy for identical sequences with different labels
    bundled: bool = False  # the canonical file ships in protadapt/data/bundled/ (no download, no data dir)
    classes: tuple = ()  # class labels in index order (classification)

    def path(self, data_dir: str | os.PathLike | None = None) -> Path:
        if self.bundled:
            return BUNDLED_DIR / self.file_name
        return resolve_data_dir(data_dir) / self.name / self.file_name

    def load(self, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
        """Columns id, sequence, label, split (+ the task's extras); downloads when possible."""
        path = self.path(data_dir)
        if not path.exists():
            download(self, path)
        frame = read_sequences(path, problem_type=self.problem_type, require_labels=True, conflicts=self.conflicts,
                               classes=self.classes or None)
        _check_split_column(frame, path)
        return frame


@dataclass(frozen=True)
class CustomTask:
    """A user's own labelled file (plus an optional test file), loaded like a registered task."""

    name: str
    problem_type: str
    num_classes: int
    metrics: tuple[str, ...]
    primary_metric: str
    description: str
    train_path: Path
    test_path: Path | None = None
    read_kwargs: dict = field(default_factory=dict, compare=False)
    classes: tuple = ()  # class labels as written in the file, in index order

    def load(self, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
        """Same shape as `Task.load`; ``data_dir`` is ignored (the paths are explicit)."""
        kwargs = {**self.read_kwargs, "problem_type": self.problem_type, "require_labels": True,
                  "classes": self.classes or None}
        frame = read_sequences(self.train_path, **kwargs)
        if self.test_path is None:
            if "split" not in frame:
                frame["split"] = "train"
            _check_split_column(frame, self.train_path)
            return frame
        kwargs.pop("labels_file", None)  # data.labels_file labels the training file only
        test = read_sequences(self.test_path, **{**kwargs, "min_class_count": 1})
        frame = pd.concat([frame.assign(split="train"), test.assign(split="test")], ignore_index=True)
        repeated = frame["id"][frame["id"].duplicated()]
        if len(repeated):
            raise DataError(f"{self.test_path.name}: id {repeated.iloc[0]!r} is also used in {self.train_path.name}; "
                            "make ids unique")
        frame.attrs = {"source": str(self.train_path), "problem_type": self.problem_type, "classes": list(self.classes)}
        return frame


def custom_task(
    path: str | os.PathLike,
    problem_type: str | None = None,
    test_path: str | os.PathLike | None = None,
    **read_kwargs,
) -> CustomTask:
    """Describe a user's file as a task; the problem type and classes are read from its labels."""
    path = Path(path)
    read_kwargs.pop("require_labels", None)
    probe = read_sequences(path, problem_type=problem_type, require_labels=True, **read_kwargs)
    problem_type, classes = probe.attrs["problem_type"], tuple(probe.attrs["classes"])
    if "split" in probe:
        if test_path is not None:
            raise DataError(f"{path.name}: has a 'split' column and a test file was also given; use one or the other")
        _check_split_column(probe, path)
    train_labels = probe["label"][probe["split"] == "train"] if "split" in probe else probe["label"]
    if problem_type == "classification" and (train_labels.nunique() < len(classes) or len(classes) < 2):
        raise DataError(f"{path.name}: classification needs at least 2 classes, each in the training split; "
                        f"found {train_labels.nunique()} of {', '.join(map(str, classes))} in train")
    return CustomTask(
        name=path.stem,
        problem_type=problem_type,
        num_classes=len(classes) if problem_type == "classification" else 1,
        metrics=CLASSIFICATION_METRICS if problem_type == "classification" else REGRESSION_METRICS,
        primary_metric="accuracy" if problem_type == "classification" else "mse",
        description=f"user data from {path}",
        train_path=path,
        test_path=None if test_path is None else Path(test_path),
        read_kwargs=read_kwargs,
        classes=classes,
    )


def get_task(name: str) -> Task:
    """The registered task called ``name``, with a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def resolve_task(data: "DataConfig") -> Task | CustomTask:
    """The task a run's data settings name: a registered one, or the user's own file (`custom`).

    The table options (data.sequence_column, ...) are for custom tasks."""
    if data.task != "custom":
        given = [key for key in ("train_file", "test_file", "labels_file") if getattr(data, key)]
        if given:
            raise DataError(f"data.{given[0]} is for --task custom; the task here is '{data.task}'")
        return get_task(data.task)
    if not data.train_file:
        raise DataError("the custom task needs a labelled file: data.train_file=PATH (CSV, TSV or FASTA)")
    options = {key: getattr(data, key) for key in READ_OPTIONS}
    return custom_task(data.train_file, problem_type=data.problem_type, test_path=data.test_file, **options)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Argument, else $PROTADAPT_DATA_DIR, else ~/.cache/protadapt/data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path.home() / ".cache" / "protadapt" / "data"


def describe(task_or_df: Task | CustomTask | pd.DataFrame, data_dir: str | os.PathLike | None = None) -> str:
    """Counts per split, class balance or label statistics, and the length distribution."""
    frame = task_or_df if isinstance(task_or_df, pd.DataFrame) else task_or_df.load(data_dir)
    problem_type = getattr(task_or_df, "problem_type", None) or frame.attrs.get("problem_type")
    if problem_type is None and frame["label"].notna().any():
        problem_type = "classification" if pd.api.types.is_integer_dtype(frame["label"]) else "regression"
    parts = [(name, frame[frame["split"] == name]) for name in SPLITS] if "split" in frame else []
    parts = [(name, part) for name, part in parts if len(part)] + [("all", frame)]
    rows = [["split", "n", "labels", "length min/median/mean/max"]]
    for name, part in parts:
        lengths = part["sequence"].str.len()
        length_text = f"{lengths.min()} / {lengths.median():g} / {lengths.mean():.1f} / {lengths.max()}"
        rows.append([name, str(len(part)), _label_summary(part["label"], problem_type, frame.attrs.get("classes")), length_text])
    return _format_table(rows)


def format_task_list(data_dir: str | os.PathLike | None = None) -> str:
    """Text for `protadapt data list`: one line per task and where its data is expected."""
    rows = [["task", "type", "primary metric", "data", "description"]]
    for task in TASKS.values():
        if task.bundled:
            status = "bundled"
        elif task.path(data_dir).exists():
            status = "present"
        else:
            status = "downloadable" if task.convert is not None else "missing"
        rows.append([task.name, task.problem_type, task.primary_metric, status, task.description])
    return f"{_format_table(rows)}\ndata directory: {resolve_data_dir(data_dir)} (set {DATA_DIR_ENV} to change it)"


def format_task_info(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Text for `protadapt data info NAME`: the task's card and `describe` of its data.

    ``name`` may also be a path to a labelled FASTA/CSV/TSV file.
    """
    task = custom_task(name) if name not in TASKS and Path(name).is_file() else get_task(name)
    lines = [
        f"{task.name}: {task.description}",
        f"problem type: {task.problem_type} ({task.num_classes} {'classes' if task.num_classes > 1 else 'output'})",
        f"metrics: {', '.join(task.metrics)} (primary: {task.primary_metric})",
    ]
    if isinstance(task, Task):
        lines.append(f"file: {task.path(data_dir)}")
        lines.append(f"source: {task.source}")
        lines.extend(f"  {raw.name}  sha256 {raw.sha256[:16]}..." for raw in task.raw_files)
    try:
        lines.append(describe(task, data_dir))
    except DataError as error:
        lines.append(f"data: not available ({error})")
    return "\n".join(lines)


# --- helpers -------------------------------------------------------------------------------


def _check_split_column(frame: pd.DataFrame, path: Path) -> None:
    if "split" not in frame:
        raise DataError(f"{path.name} line 1: no 'split' column; add one with values train/test")
    unknown = ~frame["split"].isin(SPLITS)
    if unknown.any():
        row = int(np.argmax(unknown.to_numpy()))
        value = frame["split"].iloc[row]
        problem = "no split value" if pd.isna(value) else f"split {value!r} is not one of {', '.join(SPLITS)}"
        raise DataError(f"{path.name} (id {frame['id'].iloc[row]!r}): {problem}; fix the split column")
    if not (frame["split"] == "train").any():
        raise DataError(f"{path.name}: no row has split 'train'; a task needs training data")


def _format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, for terminal output."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _label_summary(labels: pd.Series, problem_type: str | None, classes: list | None = None) -> str:
    labels = labels.dropna()
    if labels.empty:
        return "none"
    if problem_type == "classification":
        counts = labels.astype(int).value_counts().sort_index()
        names = classes or range(int(counts.index.max()) + 1)
        return ", ".join(f"{names[label]}: {count} ({count / len(labels):.0%})" for label, count in counts.items())
    return (
        f"mean {labels.mean():.3g} sd {labels.std():.3g} "
        f"min {labels.min():.3g} median {labels.median():.3g} max {labels.max():.3g}"
    )


def _github_raw(repository: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repository}/{commit}/{urllib.parse.quote(path)}"


def _github_tree(repository: str, commit: str, folder: str) -> str:
    return f"https://github.com/{repository}/tree/{commit}/{urllib.parse.quote(folder)}"


_BBB_REPO = ("dzjxzyd/UniDL4BioPep", "d595145e27fd48386328710a93bb296378ed2717")
_HOTPROTEIN_REPO = ("Oh-myungsok/hotprotein-app", "78b25bff7453d998d0f8ab01de3f0c378ccb1281")
_GRAMPA_REPO = ("zswitten/Antimicrobial-Peptides", "a6819dcd671291af8013627a2d2fbc32858346bc")
_HOTPROTEIN_SHA256 = {
    "d1_fasta_clean.tar": "46ee9d7f91ea273fb32530aa71e3a492b6b43c3110640df36cd89a116037d4c1",
    "d1_0_classification.pkl": "4e365beb680955a82d79cf122ac4bdfd27a70bfd62ea8bbb7b5b7f26624c2c7d",
    "d1_1_classification.pkl": "e329937f328857240f5e8b62ad0b91f91d5cf952e354b52c705bbd5d5f74e25f",
    "d1_2_classification.pkl": "9f5310dc659a11461c7cda82bf1ef875dd510c2249f8d564884260e342b15045",
    "d1_3_classification.pkl": "b010911eddee020dc87fd0aef91ea07e4a314327d5890be56666771814112030",
    "d1_4_classification.pkl": "5807e944816c15181703130ff2889cdf2c5b111d65077e6c63f81ec68570e5d3",
    "d1_5_classification.pkl": "b266ce493c35054a2a0b6635a3321f88db812914548ac6ae28b7eb537df23b9b",
    "d1_6_classification.pkl": "bbc05da3669aeb2d597188fc4c8b6b4ca3f86b78520abb52b1d13f7416f23114",
    "d1_7_classification.pkl": "08c2cc3541b27874b54ed26ea8f6a5f764b773e2033e0394c123c8d15e82745d",
    "d1_8_classification.pkl": "d9575f11eee41c63da6d57c550a31b162434bb6022c4b0086df8333d5c7771a3",
    "d1_9_classification.pkl": "6471ad5ab1696a439d7bbd49fb5caf213d584df6caffb625654c857f17757c92",
    "d1_1.pkl": "ae30f3249cbcbc776f949ba9aee753c2abd34ac0b9761acf76e48346a6ee1013",  # growth temperatures
}

TASKS: dict[str, Task] = {
    "bbb": Task(
        name="bbb",
        problem_type="classification",
        num_classes=2,
        metrics=CLASSIFICATION_METRICS,
        primary_metric="accuracy",
        description="blood-brain-barrier penetrating peptides, 1 = penetrates (BBPpred, Dai et al. 2021)",
        file_name="bbb.csv",
        source=_github_tree(*_BBB_REPO, "11. BBP Blood-Brain Barrier Peptides"),
        raw_files=tuple(
            RawFile(name, _github_raw(*_BBB_REPO, f"11. BBP Blood-Brain Barrier Peptides/{name}"), sha256)
            for name, sha256 in (
                ("BBP_train.xlsx", "39014f730d0772bf19a2773383eb9e92194d5a31ec2f940c432b23b863642260"),
                ("BBP_test.xlsx", "8508279491f08a7d869ed157b41e309eacf609f2efd877b06d95c9463b9cca49"),
            )
        ),
        convert=converters.convert_bbb,
        bundled=True,
        classes=(0, 1),
        conflicts="drop",  # AGCKNFFWKTFTSC is in train as both 0 and 1; both copies go, with a warning
    ),
    "thermostability": Task(
        name="thermostability",
        problem_type="classification",
        num_classes=2,
        metrics=CLASSIFICATION_METRICS,
        primary_metric="accuracy",
        description="protein from an organism growing at >= 75 C, 1 = hot (HotProtein HP-S2C2, Chen et al. 2023)",
        file_name="thermostability.csv",
        source=_github_tree(*_HOTPROTEIN_REPO, "s2c2"),
        raw_files=tuple(
            RawFile(f"s2c2/{name}", _github_raw(*_HOTPROTEIN_REPO, f"s2c2/{name}"), sha256)
            for name, sha256 in _HOTPROTEIN_SHA256.items()
        ),
        convert=converters.convert_thermostability,
        classes=(0, 1),
    ),
    "mic": Task(
        name="mic",
        problem_type="regression",
        num_classes=1,
        metrics=REGRESSION_METRICS,
        primary_metric="mse",
        description="log10 MIC (uM) of antimicrobial peptides against E. coli (GRAMPA, Witten & Witten 2019)",
        file_name="mic.csv",
        source=_github_tree(*_GRAMPA_REPO, "models/Saved_variables"),
        raw_files=(
            RawFile(
                "ecoli_train_with_c_df.pkl",
                _github_raw(*_GRAMPA_REPO, "models/Saved_variables/ecoli_train_with_c_df.pkl"),
                "9be08862e5c82c2dacc15c7793456de17d9183676846614d06bbeeecef1756b2",
            ),
            RawFile(
                "ecoli_test_df.pkl",
                _github_raw(*_GRAMPA_REPO, "models/Saved_variables/ecoli_test_df.pkl"),
                "918c51f7c60ce76773db28783d011b860ac1b2e6d8650d26ef1d2e7b68b1b9a0",
            ),
        ),
        convert=converters.convert_mic,
    ),
}
