"""Plots write real PNG files, create their folders, and skip empty training logs without error."""

import numpy as np
import pandas as pd
import pytest

from protadapt.evaluation.plots import (
    metric_family,
    plot_regression_scatter,
    plot_roc_pr,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=10_000):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes


def test_roc_pr_binary_and_multiclass(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y_true + rng.random(40) * 0.7, 0, 1)
    binary = plot_roc_pr(y_true, np.column_stack([1 - p1, p1]), tmp_path / "a" / "b" / "roc.png")
    assert binary == tmp_path / "a" / "b" / "roc.png"
    assert_png(binary)
    y_multi = rng.integers(0, 3, 40)
    assert_png(plot_roc_pr(y_multi, rng.dirichlet([1, 1, 1], size=40), tmp_path / "multi.png"))


def test_roc_pr_with_one_class_still_writes(tmp_path):
    assert_png(plot_roc_pr([1, 1, 1], [0.2, 0.7, 0.9], tmp_path / "one_class.png"), min_bytes=5_000)


def test_regression_scatter(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    assert_png(plot_regression_scatter(y, y + rng.normal(scale=0.3, size=30), tmp_path / "out" / "scatter.png"))


def test_training_curves_from_a_lightning_log(tmp_path):
    # CSVLogger rows are sparse: train rows carry train_loss, validation rows the val_ columns
    log = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "step": [9, 9, 19, 19],
            "train_loss": [0.9, np.nan, 0.6, np.nan],
            "val_loss": [np.nan, 0.8, np.nan, 0.7],
            "val_f1": [np.nan, 0.55, np.nan, 0.65],
        }
    )
    csv = tmp_path / "metrics.csv"
    log.to_csv(csv, index=False)
    assert_png(plot_training_curves(csv, tmp_path / "curves" / "training.png"))


def test_training_curves_skip_a_log_without_numbers(tmp_path):
    header_only = tmp_path / "metrics.csv"
    header_only.write_text("epoch,step,train_loss\n")
    assert plot_training_curves(header_only, tmp_path / "never.png") is None
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert plot_training_curves(empty, tmp_path / "never.png") is None
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize(
    "column, family",
    [("train_loss", "loss"), ("val_loss", "loss"), ("train_loss_epoch", "loss"), ("val_f1", "f1"),
     ("inner_train_loss", "loss"), ("val/mcc", "mcc"), ("lr-AdamW", "lr-AdamW")],
)
def test_metric_family(column, family):
    assert metric_family(column) == family
