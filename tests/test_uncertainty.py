"""The run-directory glue: calibration.json's temperature, conformal.json written by fit/cv, and predict's columns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from protadapt.ensemble import calibrate_cv
from protadapt.evaluation.calibration import apply_temperature, logits_from_probabilities
from protadapt.evaluation.conformal import ConformalError
from protadapt.uncertainty import scaled_scores, uncertainty_columns, write_split_conformal, write_temperature


def overconfident(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 3))
    labels = (rng.random(n)[:, None] > softmax(logits, axis=1).cumsum(axis=1)).sum(axis=1)
    return softmax(3.0 * logits, axis=1), labels


def test_temperature_is_written_and_applied_to_later_scores(tmp_path):
    scores, labels = overconfident(0, 3000)
    state = write_temperature(tmp_path, scores, labels, 15)
    assert state["temperature"] == pytest.approx(3.0, rel=0.1)
    assert state["val_ece_after"] < state["val_ece_before"] / 3
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == state["temperature"]
    new = overconfident(1, 10)[0]
    np.testing.assert_allclose(scaled_scores(tmp_path, new),
                               apply_temperature(logits_from_probabilities(new), state["temperature"]))
    np.testing.assert_array_equal(scaled_scores(tmp_path / "elsewhere", new), new)  # no file: unchanged
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(ConformalError, match="calibration.json: unreadable"):
        scaled_scores(tmp_path, new)


def test_single_run_gets_sets_and_no_spread(tmp_path):
    scores, labels = overconfident(2, 300)
    write_split_conformal(tmp_path, "classification", scores, labels, alpha=0.1, score="lac", class_conditional=True)
    new = overconfident(3, 5)[0]
    mean, columns = uncertainty_columns(tmp_path, {"run": new}, "classification", ["a", "b", "c"])
    np.testing.assert_array_equal(mean, new)
    assert set(columns) == {"set_0.1", "set_size_0.1"} and len(columns["set_0.1"]) == 5
    assert all(set(row.split("|")) <= {"a", "b", "c"} for row in columns["set_0.1"] if row)
    _, columns = uncertainty_columns(tmp_path, {"run": new}, "classification", ["a", "b", "c"], alpha=0.3)
    assert "set_0.3" in columns


def test_runs_without_conformal_state_get_the_spread_only(tmp_path):
    mean, columns = uncertainty_columns(tmp_path, {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 2.0])}, "regression", [])
    np.testing.assert_allclose(mean, [2.0, 2.0])
    assert list(columns) == ["spread"]
    np.testing.assert_allclose(columns["spread"], [1.0, 0.0])


def test_cv_directory_gets_cv_plus_intervals_and_spread(tmp_path):
    rng = np.random.default_rng(4)
    for fold in range(3):
        run = tmp_path / f"repeat0-fold{fold}"
        run.mkdir()
        (run / "adapter.safetensors").write_bytes(b"")
        (run / "adapter.json").write_text(json.dumps({"task": "mic", "problem_type": "regression", "labels": [],
                                                      "backbone": {"name": "tiny"}}))
        values = rng.normal(size=30)
        pd.DataFrame({"id": [f"{fold}-{i}" for i in range(30)], "prediction": values,
                      "label": values + rng.normal(size=30)}).to_csv(run / "predictions.csv", index=False)
    calibrate_cv(tmp_path, alpha=0.2, score="absolute").save(tmp_path / "conformal.json")
    on_new = {f"repeat0-fold{k}": np.array([0.0, 5.0]) + 0.1 * k for k in range(3)}
    mean, columns = uncertainty_columns(tmp_path, on_new, "regression", [])
    np.testing.assert_allclose(mean, [0.1, 5.1])
    assert set(columns) == {"spread", "lower_0.2", "upper_0.2"}
    assert np.all(columns["lower_0.2"] < mean) and np.all(columns["upper_0.2"] > mean)
