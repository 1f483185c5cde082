"""Issue 19 end to end on the tiny backbone: calibration part → conformal.json → predict's sets and intervals,
cv → CV+ and ensemble spread, ECE + reliability diagram, and the applicability-domain columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import protadapt.training.run as run_module
from protadapt.data.identity import identity
from protadapt.data.tasks import get_task
from protadapt.domain import DomainError, domain_columns, write_training_sequences
from test_cli import QUICK, bbb_test, cli, write_fasta

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)


def fit(capsys, run_dir: Path, *args) -> dict:
    code, out, err = cli(capsys, "fit", *args, *QUICK, "--out", run_dir)
    assert code == 0, err
    return json.loads((run_dir / "metrics.json").read_text())


def predict(capsys, output: Path, *args) -> pd.DataFrame:
    code, _, err = cli(capsys, "predict", *args, "-o", output, "--quiet")
    assert code == 0, err
    return pd.read_csv(output, keep_default_na=False, na_values=[""])


def test_calibrated_classification_run_writes_sets_ece_and_reliability(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = fit(capsys, run, "--task", "bbb", "--method", "lora", "data.calibration_fraction=0.3",
                  "uncertainty.temperature=true", "uncertainty.min_identity=0.5")
    conformal = json.loads((run / "conformal.json").read_text())
    trained = json.loads((run / "training_sequences.json").read_text())["sequences"]
    assert conformal["method"] == "split" and conformal["n"] + len(trained) == 198  # bbb train less one conflict pair
    assert json.loads((run / "calibration.json").read_text())["temperature"] > 0
    assert (run / "test_reliability.png").read_bytes().startswith(PNG)
    saved = pd.read_csv(run / "predictions.csv", keep_default_na=False, na_values=[""])
    covered = [label in members.split("|") for label, members in zip(saved["label"].astype(str), saved["set_0.1"])]
    assert metrics["test"]["coverage_0.1"] == pytest.approx(np.mean(covered))
    assert metrics["test"]["set_size_0.1"] == pytest.approx(saved["set_size_0.1"].mean())
    assert 0 <= metrics["test"]["ece"] <= 1
    below = saved["nearest_train_identity"] < 0.5
    assert metrics["test_below_min_identity"]["n"] == below.sum() and (saved["in_domain"] == ~below).all()

    test = bbb_test()
    fasta = write_fasta(test, tmp_path / "test.fasta")
    predicted = predict(capsys, tmp_path / "out.csv", run, fasta)
    pd.testing.assert_frame_equal(predicted, saved.drop(columns="label"))
    wider = predict(capsys, tmp_path / "out2.csv", run, fasta, "--alpha", "0.4")
    assert {"set_0.4", "set_size_0.4"} <= set(wider.columns) and "set_0.1" not in wider
    assert (wider["set_size_0.4"] <= predicted["set_size_0.1"]).all()

    for row in range(3):  # the identity column is the exact maximum over the stored training sequences
        best = max(identity(test["sequence"][row], sequence) for sequence in trained)
        assert predicted["nearest_train_identity"][row] == pytest.approx(best, abs=1e-4)


def test_cv_directory_predicts_mean_spread_and_cv_plus_sets(tmp_path, capsys):
    out = tmp_path / "cv"
    code, _, err = cli(capsys, "cv", "--task", "bbb", "--method", "lora", "--folds", 3, *QUICK, "--out", out)
    assert code == 0, err
    assert json.loads((out / "conformal.json").read_text())["method"] == "cv+"
    fasta = write_fasta(bbb_test().head(8), tmp_path / "few.fasta")
    ensemble = predict(capsys, tmp_path / "cv.csv", out, fasta)
    assert {"spread", "set_0.1", "set_size_0.1", "nearest_train_identity", "in_domain"} <= set(ensemble.columns)
    folds = [predict(capsys, tmp_path / f"fold{k}.csv", out / f"repeat0-fold{k}", fasta) for k in range(3)]
    np.testing.assert_allclose(ensemble["prob_1"], np.mean([fold["prob_1"] for fold in folds], axis=0), atol=2e-6)
    predicted = ensemble["prediction"].astype(str).map(lambda label: f"prob_{label}")
    own = np.stack([[fold.loc[row, column] for row, column in enumerate(predicted)] for fold in folds])
    np.testing.assert_allclose(ensemble["spread"], own.std(axis=0), atol=2e-6)
    two = predict(capsys, tmp_path / "two.csv", out / "repeat0-fold0", out / "repeat0-fold1", fasta)
    assert "spread" in two and "set_0.1" not in two  # several runs: no calibration covers their mean


def test_calibrated_regression_run_writes_intervals(tmp_path, capsys):
    mic = get_task("mic").load()
    rows = mic[mic["split"] == "train"].sample(120, random_state=1)
    rows.iloc[:96][["id", "sequence", "label"]].to_csv(tmp_path / "train.csv", index=False)
    rows.iloc[96:][["id", "sequence", "label"]].to_csv(tmp_path / "test.csv", index=False)
    run = tmp_path / "run"
    metrics = fit(capsys, run, "--task", "custom", "--method", "lora", f"data.train_file={tmp_path / 'train.csv'}",
                  f"data.test_file={tmp_path / 'test.csv'}", "data.calibration_fraction=0.3")
    saved = pd.read_csv(run / "predictions.csv")
    assert (saved["lower_0.1"] < saved["prediction"]).all() and (saved["prediction"] < saved["upper_0.1"]).all()
    inside = (saved["lower_0.1"] <= saved["label"]) & (saved["label"] <= saved["upper_0.1"])
    assert metrics["test"]["coverage_0.1"] == pytest.approx(inside.mean())
    assert "ece" not in metrics["test"] and not (run / "calibration.json").exists()
    predicted = predict(capsys, tmp_path / "out.csv", run, write_fasta(rows.iloc[96:], tmp_path / "test.fasta"))
    pd.testing.assert_frame_equal(predicted, saved.drop(columns="label"))
    assert metrics["test"]["width_0.1"] == pytest.approx((saved["upper_0.1"] - saved["lower_0.1"]).mean())


@pytest.mark.parametrize("override, message", [("data.calibration_fraction=1.2", "data.calibration_fraction"),
                                               ("uncertainty.set_score=raps", "uncertainty.set_score"),
                                               ("uncertainty.alpha=0", "uncertainty.alpha")])
def test_bad_uncertainty_settings_are_one_line(override, message, tmp_path, capsys):
    code, _, err = cli(capsys, "fit", "--backbone", "tiny", "--out", tmp_path / "run", override)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_in_domain_is_undecided_only_below_a_floor_above_the_threshold(tmp_path):
    train = ["MKTAYIAKQRQISFVKSHFSRQ", "GLFDIVKKVVGALGSLGKKW"]
    query = [train[0], "WWWWWWWWPPPPPPPPCCCCCC"]
    for floor, unrelated in ((0.9, pd.NA), (0.0, False)):
        write_training_sequences(tmp_path, train, min_identity=0.3, floor=floor)
        columns = domain_columns([tmp_path], query)
        assert columns["nearest_train_identity"][0] == 1.0 and columns["in_domain"][0] is np.True_
        assert (columns["in_domain"][1] is pd.NA) if unrelated is pd.NA else columns["in_domain"][1] is np.False_
    write_training_sequences(tmp_path, train, min_identity=None, floor=None)  # peptides: floor 0, no flag
    assert set(domain_columns([tmp_path], query)) == {"nearest_train_identity"}
    assert json.loads((tmp_path / "training_sequences.json").read_text())["identity_floor"] == 0.0
    assert domain_columns([tmp_path / "absent"], query) == {}  # a run from before the file: no columns
    (tmp_path / "training_sequences.json").write_text("[]")
    with pytest.raises(DomainError, match="training_sequences.json: unreadable"):
        domain_columns([tmp_path], query)
