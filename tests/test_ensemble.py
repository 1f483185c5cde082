"""Ensembles: averaging with per-row spread, finding the runs of a cv directory, refusing runs that do not fit together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protadapt.ensemble import (EnsembleError, average_scores, calibrate_cv, find_run_dirs, member_scores,
                                out_of_fold_scores)


def fake_run(directory: Path, task: str = "bbb", backbone: str = "tiny", labels=(0, 1),
             predictions: pd.DataFrame | None = None) -> Path:
    """A run directory as far as the ensemble helpers read it: adapter.safetensors, adapter.json, predictions.csv."""
    directory.mkdir(parents=True)
    (directory / "adapter.safetensors").write_bytes(b"")
    metadata = {"task": task, "problem_type": "classification" if labels else "regression", "labels": list(labels),
                "backbone": {"name": backbone}}
    (directory / "adapter.json").write_text(json.dumps(metadata))
    if predictions is not None:
        predictions.to_csv(directory / "predictions.csv", index=False)
    return directory


def test_average_of_class_probabilities_and_spread_of_the_predicted_class():
    members = [np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[0.8, 0.2], [0.3, 0.7]])]
    ensemble = average_scores(members, "classification")
    np.testing.assert_allclose(ensemble.mean, [[0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_allclose(ensemble.spread, [np.std([0.9, 0.7, 0.8]), np.std([0.6, 0.8, 0.7])])
    assert ensemble.members.shape == (3, 2, 2)


def test_average_of_values_and_one_member_has_no_spread():
    ensemble = average_scores([np.array([1.0, 2.0]), np.array([3.0, 2.0])], "regression")
    np.testing.assert_allclose(ensemble.mean, [2.0, 2.0])
    np.testing.assert_allclose(ensemble.spread, [1.0, 0.0])
    single = average_scores([np.array([1.5, -1.0])], "regression")
    np.testing.assert_array_equal(single.spread, [0.0, 0.0])


def test_members_of_different_shapes_are_an_error():
    with pytest.raises(EnsembleError, match="different shapes"):
        average_scores([np.zeros((3, 2)), np.zeros((4, 2))], "classification")
    with pytest.raises(EnsembleError, match="at least one"):
        average_scores([], "regression")


def test_cv_directory_gives_its_folds_in_repeat_fold_order(tmp_path):
    for repeat in range(2):
        for fold in (0, 1, 10, 2):  # fold10 after fold2: numeric, not text, order
            fake_run(tmp_path / "cv" / f"repeat{repeat}-fold{fold}")
    (tmp_path / "cv" / "folds.csv").write_text("repeat,fold\n")
    runs = find_run_dirs([tmp_path / "cv"])
    assert [run.name for run in runs] == [f"repeat{r}-fold{k}" for r in range(2) for k in (0, 1, 2, 10)]


def test_list_of_run_dirs_and_mixed_with_a_cv_dir(tmp_path):
    single = fake_run(tmp_path / "seed1")
    fake_run(tmp_path / "cv" / "repeat0-fold0")
    runs = find_run_dirs([single, tmp_path / "cv"])
    assert runs == [single, tmp_path / "cv" / "repeat0-fold0"]
    with pytest.raises(EnsembleError, match="named twice"):
        find_run_dirs([single, single])


@pytest.mark.parametrize("field, kwargs", [("task", {"task": "mic"}), ("backbone", {"backbone": "esm2_t6_8M_UR50D"}),
                                           ("labels", {"labels": (0, 1, 2)})])
def test_runs_that_differ_are_refused_naming_the_field(tmp_path, field, kwargs):
    fake_run(tmp_path / "a")
    fake_run(tmp_path / "b", **kwargs)
    with pytest.raises(EnsembleError, match=rf"{tmp_path / 'b'}: {field} .* differs from"):
        find_run_dirs([tmp_path / "a", tmp_path / "b"])


def test_unfinished_fold_and_unknown_directory_are_errors(tmp_path):
    fake_run(tmp_path / "cv" / "repeat0-fold0")
    (tmp_path / "cv" / "repeat0-fold1").mkdir()
    with pytest.raises(EnsembleError, match=r"repeat0-fold1: no adapter.safetensors"):
        find_run_dirs([tmp_path / "cv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnsembleError, match="neither a run directory"):
        find_run_dirs([tmp_path / "empty"])
    with pytest.raises(EnsembleError, match="neither a run directory"):
        find_run_dirs([tmp_path / "missing"])


def test_out_of_fold_scores_come_from_each_folds_predictions(tmp_path):
    first = pd.DataFrame({"id": ["a", "b"], "prediction": [0, 1], "prob_0": [0.7, 0.4], "prob_1": [0.3, 0.6],
                          "label": [0, 0]})
    second = pd.DataFrame({"id": ["c"], "prediction": [1], "prob_0": [0.1], "prob_1": [0.9], "label": [1]})
    runs = [fake_run(tmp_path / "repeat0-fold0", predictions=first), fake_run(tmp_path / "repeat0-fold1", predictions=second)]
    scores, labels, folds = out_of_fold_scores(runs, "classification", [0, 1])
    np.testing.assert_allclose(scores, [[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])
    assert labels.tolist() == [0, 0, 1] and folds.tolist() == [0, 0, 1]
    third = fake_run(tmp_path / "repeat1-fold0", predictions=first)
    with pytest.raises(EnsembleError, match="id 'a' is in more than one fold"):
        out_of_fold_scores(runs + [third], "classification", [0, 1])


def test_cv_plus_from_a_cv_directory_uses_repeat_0_and_orders_members(tmp_path):
    rng = np.random.default_rng(0)
    for repeat in range(2):
        for fold in range(3):
            values = rng.normal(size=20)
            frame = pd.DataFrame({"id": [f"r{repeat}-{fold}-{i}" for i in range(20)], "prediction": values,
                                  "label": values + rng.normal(size=20)})
            fake_run(tmp_path / "cv" / f"repeat{repeat}-fold{fold}", task="mic", labels=(), predictions=frame)
    conformal = calibrate_cv(tmp_path / "cv", alpha=0.2, score="absolute")
    assert conformal.method == "cv+" and len(conformal.scores) == 60
    assert conformal.members == ("repeat0-fold0", "repeat0-fold1", "repeat0-fold2")
    on_new = {f"repeat{r}-fold{k}": np.full(4, float(k)) for r in range(2) for k in range(3)}
    stacked = member_scores(conformal, on_new)
    np.testing.assert_array_equal(stacked[:, 0], [0.0, 1.0, 2.0])
    lower, upper = conformal.intervals(stacked)
    assert np.all(lower < 1.0) and np.all(upper > 1.0)
    with pytest.raises(EnsembleError, match="needs the fold runs repeat0-fold2"):
        member_scores(conformal, {"repeat0-fold0": np.zeros(4), "repeat0-fold1": np.zeros(4)})
