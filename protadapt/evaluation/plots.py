"""PNG figures of predictions and training logs, drawn on Agg figures (no pyplot, no display)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import cm
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn import metrics as skm

from protadapt.evaluation.calibration import expected_calibration_error, reliability_bins
from protadapt.evaluation.analysis import by_matrix_type, distinct_points
from protadapt.evaluation.metrics import compute_metrics

log = logging.getLogger(__name__)

_STAGE_PREFIX = re.compile(r"^(inner_train|train|val|valid|validation|test|predict)[_/]")
_LIGHTNING_SUFFIX = re.compile(r"_(step|epoch)$")  # added by self.log(on_step=True, on_epoch=True)


def plot_roc_pr(y_true: ArrayLike, y_score: ArrayLike, path: str | Path) -> Path:
    """ROC and precision-recall curves; binary on P(class 1), multiclass one-vs-rest per class present."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1:
        y_score = np.column_stack([1.0 - y_score, y_score])
    fig, (roc_ax, pr_ax) = new_figure(1, 2, panel_size=(5, 4.5))
    classes = [1] if y_score.shape[1] == 2 else list(range(y_score.shape[1]))
    for k in classes:
        positive = y_true == k
        if positive.all() or not positive.any():  # a curve needs both positives and negatives
            continue
        label = "" if len(classes) == 1 else f"class {k}: "
        fpr, tpr, _ = skm.roc_curve(positive, y_score[:, k])
        precision, recall, _ = skm.precision_recall_curve(positive, y_score[:, k])
        roc_ax.plot(fpr, tpr, label=f"{label}AUC {skm.auc(fpr, tpr):.3f}")
        average_precision = skm.average_precision_score(positive, y_score[:, k])
        pr_ax.plot(recall, precision, label=f"{label}AP {average_precision:.3f}")
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.05))
    for ax in (roc_ax, pr_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize="small")
    return save_figure(fig, path)


def plot_regression_scatter(y_true: ArrayLike, y_pred: ArrayLike, path: str | Path) -> Path:
    """Predicted vs true with the y = x line; the title carries Pearson r."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    pearson = compute_metrics("regression", y_true, y_pred)["pearson"]
    fig, (ax,) = new_figure(1, 1, panel_size=(5, 5))
    ax.scatter(y_true, y_pred, s=14, alpha=0.7)
    both = np.concatenate([y_true, y_pred])
    low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1, label="y = x")
    ax.set(xlabel="true", ylabel="predicted", title=f"Pearson r = {pearson:.3f} (n = {len(y_true)})")
    ax.legend(loc="upper left", fontsize="small")
    return save_figure(fig, path)


def plot_training_curves(metrics_csv_path: str | Path, path: str | Path) -> Path | None:
    """Every logged number vs step from a Lightning CSVLogger metrics.csv, one panel per metric family.

    `train_loss`, `val_loss` and `train_loss_epoch` share the panel "loss". Returns None and
    writes nothing when the file holds no numeric data (e.g. a run that stopped before logging).
    """
    try:
        log_table = pd.read_csv(metrics_csv_path)
    except pd.errors.EmptyDataError:
        log_table = pd.DataFrame()
    x_name = next((c for c in ("step", "epoch") if c in log_table.columns), None)
    families: dict[str, list[str]] = {}
    for column in log_table.columns:
        values = pd.to_numeric(log_table[column], errors="coerce")
        if column not in ("step", "epoch") and values.notna().any():
            families.setdefault(metric_family(column), []).append(column)
    if not families:
        log.info("no numeric metrics in %s; no training-curve plot written", metrics_csv_path)
        return None
    x = pd.to_numeric(log_table[x_name], errors="coerce") if x_name else pd.Series(np.arange(len(log_table)))
    ncols = min(3, len(families))
    fig, axes = new_figure(math.ceil(len(families) / ncols), ncols, panel_size=(4.5, 3.5))
    for ax, (family, columns) in zip(axes, families.items()):
        for column in columns:
            values = pd.to_numeric(log_table[column], errors="coerce")
            logged = values.notna() & x.notna()
            ax.plot(x[logged], values[logged], marker="o", markersize=3, label=column)
        ax.set(xlabel=x_name or "row", title=family)
        ax.legend(fontsize="small")
    for ax in axes[len(families):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def plot_delta_m_delta_d(layers: pd.DataFrame, path: str | Path) -> Path:
    """The DoRA paper's figure: ΔM vs ΔD, one panel per method (row) and matrix type (column).

    Points are layers, coloured by checkpoint in the order given (early to late), each drawn once
    at the first checkpoint it appears in (`analysis.distinct_points`); each panel draws its
    least-squares line and is titled with the slope and Pearson r of `analysis.by_matrix_type`.
    """
    if "checkpoint" not in layers.columns:
        layers = layers.assign(checkpoint="final")
    summary = by_matrix_type(layers).set_index(["method", "matrix_type"])
    checkpoints = list(layers["checkpoint"].astype(str).unique())
    layers = distinct_points(layers)
    methods, kinds = list(layers["method"].unique()), list(layers["matrix_type"].unique())
    colours = dict(zip(checkpoints, cm.viridis(np.linspace(0.0, 0.9, len(checkpoints)))))
    fig, axes = new_figure(len(methods), len(kinds), panel_size=(3.6, 3.2))
    for index, (method, kind) in enumerate((m, k) for m in methods for k in kinds):
        ax, points = axes[index], layers[(layers["method"] == method) & (layers["matrix_type"] == kind)]
        for checkpoint, group in points.groupby(points["checkpoint"].astype(str), sort=False):
            ax.scatter(group["delta_d"], group["delta_m"], s=16, color=colours[checkpoint], label=checkpoint)
        fitted = summary.loc[(method, kind)] if (method, kind) in summary.index else None
        if fitted is not None and not math.isnan(fitted["slope"]):
            x = np.linspace(points["delta_d"].min(), points["delta_d"].max(), 2)
            ax.plot(x, fitted["intercept"] + fitted["slope"] * x, color="grey", linewidth=1)
        slope, r = (fitted["slope"], fitted["r"]) if fitted is not None else (math.nan, math.nan)
        ax.set(xlabel="ΔD (mean 1 − cos)", ylabel="ΔM (mean |Δm|)",
               title=f"{method} · {kind}: slope {slope:.3g}, r {r:.2f}")
    axes[0].legend(title="checkpoint", fontsize="x-small")
    return save_figure(fig, path)


def metric_family(column: str) -> str:
    """Metric name without its stage prefix and Lightning suffix: 'val_loss_epoch' -> 'loss'."""
    return _LIGHTNING_SUFFIX.sub("", _STAGE_PREFIX.sub("", column))


def new_figure(nrows: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """An Agg-backed figure and its axes as a flat list; no pyplot state, so nothing leaks between plots."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG, creating parent folders, and return the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_reliability_diagram(y_true: ArrayLike, probabilities: ArrayLike, path: str | Path, n_bins: int) -> Path:
    """Accuracy vs confidence per equal-width bin (the diagonal is perfect calibration), rows per bin below."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    ece = expected_calibration_error(y_true, probabilities, n_bins)
    fig, (top, bottom) = new_figure(2, 1, panel_size=(5, 2.6))
    width = 1.0 / n_bins
    top.bar(bins["lower"], bins["accuracy"], width=width, align="edge", edgecolor="black", label="accuracy")
    top.bar(bins["lower"], bins["confidence"] - bins["accuracy"], bottom=bins["accuracy"], width=width,
            align="edge", color="red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
            title=f"ECE = {ece:.3f} ({n_bins} equal-width bins, n = {int(bins['count'].sum())})")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (probability of the predicted class)", ylabel="rows")
    return save_figure(fig, path)
