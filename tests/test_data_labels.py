"""Tables as they come: class labels of any kind, table options as config keys, labels files, duplicate ids."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from protadapt.cli import main
from protadapt.config import load_config
from protadapt.data.errors import DataError
from protadapt.data.io import read_sequences
from protadapt.data.for_run import read_for_run, undefined_as_null
from protadapt.data.tasks import resolve_task
from protadapt.training import run as run_module

SEQUENCES = ["MKTAYIAK", "GLFDIVKK", "RRWQWRMK", "FLPLLAGL", "KWKLFKKI", "ACDEFGHI", "LLKKLLKK", "WWRRWWRR"]


def write(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content)
    return path


def table(tmp_path, labels: list, name: str = "t.csv", columns: str = "sequence,label"):
    rows = "".join(f"{seq},{label}\n" for seq, label in zip(SEQUENCES, labels))
    return write(tmp_path, name, f"{columns}\n{rows}")


@pytest.mark.parametrize(("labels", "classes", "indices"), [
    (["Positive", "Negative"] * 4, ["Negative", "Positive"], [1, 0] * 4),
    (["BBB+", "BBB-"] * 4, ["BBB+", "BBB-"], [0, 1] * 4),
    (["yes", "no", "no", "yes"] * 2, ["no", "yes"], [1, 0, 0, 1] * 2),
    (["2", "1"] * 4, [1, 2], [1, 0] * 4),
    (["10", "2", "-1", "2"] * 2, [-1, 2, 10], [2, 1, 0, 1] * 2),  # numbers sort numerically
])
def test_class_labels_map_to_sorted_indices(tmp_path, labels, classes, indices):
    frame = read_sequences(table(tmp_path, labels), require_labels=True)
    assert frame.attrs["problem_type"] == "classification"
    assert frame.attrs["classes"] == classes
    assert frame["label"].tolist() == indices and frame["label"].dtype == np.int64


def test_a_runs_classes_map_a_file_that_lacks_one(tmp_path):
    frame = read_sequences(table(tmp_path, ["Positive"] * 8), require_labels=True, min_class_count=1,
                           classes=["Negative", "Positive"])
    assert frame["label"].tolist() == [1] * 8


def test_prediction_ignores_labels_it_cannot_use(tmp_path, caplog):
    path = table(tmp_path, ["high", "low"] * 4)
    with caplog.at_level(logging.WARNING):
        frame = read_sequences(path, problem_type="regression")
    assert frame["label"].isna().all() and len(frame) == 8
    assert "t.csv: label column ignored (t.csv line 2 (id 't_0'): label 'high' is not a number" in caplog.text
    frame = read_sequences(path, classes=["a", "b"])  # classes the run never saw: ignored too
    assert frame["label"].isna().all()


def test_labels_file_joins_a_fasta(tmp_path):
    fasta = write(tmp_path, "p.fasta", "".join(f">p{i}\n{seq}\n" for i, seq in enumerate(SEQUENCES[:4])))
    labels = write(tmp_path, "labels.csv", "id,label\np2,yes\np0,no\np1,yes\np3,no\n")
    frame = read_sequences(fasta, require_labels=True, labels_file=labels)
    assert frame["id"].tolist() == ["p0", "p1", "p2", "p3"]
    assert frame["label"].tolist() == [0, 1, 1, 0] and frame.attrs["classes"] == ["no", "yes"]


@pytest.mark.parametrize(("labels", "fragment"), [
    ("id,label\np0,1\np1,0\np2,1\n", "p.fasta line 7 (id 'p3'): no row in labels.csv; add 'p3,LABEL' to it"),
    ("id,label\np0,1\np1,0\np2,1\np3,0\nzz,1\n", "labels.csv line 6: id 'zz' is not in p.fasta (1 such id(s))"),
    ("id,label\np0,1\np1,0\np2,1\np3,0\np0,0\n", "labels.csv line 6: id 'p0' has a second label"),
    ("name,label\np0,1\n", "labels.csv line 1: no column 'id' (columns: name, label); rename it or pass data.id_column="),
])
def test_labels_file_errors_are_one_line(tmp_path, labels, fragment):
    fasta = write(tmp_path, "p.fasta", "".join(f">p{i}\n{seq}\n" for i, seq in enumerate(SEQUENCES[:4])))
    with pytest.raises(DataError) as caught:
        read_sequences(fasta, require_labels=True, labels_file=write(tmp_path, "labels.csv", labels))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_duplicate_ids_made_unique_on_request(tmp_path, caplog):
    path = write(tmp_path, "d.csv", "id,sequence,label\na,MKT,0\na,GLF,1\nb,RRW,0\na,FLP,1\na_2,KWK,0\n")
    with pytest.raises(DataError, match="data.duplicate_ids=suffix"):
        read_sequences(path)
    with caplog.at_level(logging.WARNING):
        frame = read_sequences(path, duplicate_ids="suffix")
    assert frame["id"].tolist() == ["a", "a_3", "b", "a_4", "a_2"]  # a_2 was taken by the file
    assert "renamed 2 repeated id(s)" in caplog.text


def test_table_options_are_config_keys_that_reach_the_reader(tmp_path):
    path = write(tmp_path, "t.csv", "name,seq,type\nx,MKT,Positive\nx,GLF,Negative\ny,RRW,Positive\nz,FLP,Negative\n"
                                    "w,MKT,Negative\nv,KWK,Positive\n")
    config = load_config(None, ["data.task=custom", f"data.train_file={path}", "data.sequence_column=seq",
                                "data.label_column=type", "data.id_column=name", "data.duplicate_ids=suffix",
                                "data.conflicts=drop"])
    task = resolve_task(config.data)
    frame = task.load()
    assert task.classes == ("Negative", "Positive") and task.num_classes == 2
    assert frame["id"].tolist() == ["x_2", "y", "z", "v"]  # MKT has both labels: both copies dropped
    with pytest.raises(DataError, match="data.conflicts=drop"):
        resolve_task(load_config(None, ["data.task=custom", f"data.train_file={path}", "data.sequence_column=seq",
                                            "data.label_column=type", "data.duplicate_ids=suffix"]).data)


def test_undefined_metrics_become_null_with_a_reason(tmp_path):
    frame = read_sequences(table(tmp_path, [1] * 8), require_labels=True, min_class_count=1, classes=[0, 1])
    out = undefined_as_null({"accuracy": 1.0, "auroc": float("nan"), "n": 8}, frame)
    assert json.dumps(out) == '{"accuracy": 1.0, "auroc": null, "n": 8, "undefined": "auroc: the file has only one class"}'


# --- end to end, tiny backbone ----------------------------------------------------------------


@pytest.fixture
def string_label_run(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
    folder = tmp_path_factory.mktemp("custom")
    labels = ["Positive", "Negative"] * 4
    train = write(folder, "t.csv", "seq,type\n" + "".join(f"{s},{l}\n" for s, l in zip(SEQUENCES, labels)))
    run_dir = folder / "run"
    code = main(["fit", "--task", "custom", f"data.train_file={train}", "data.label_column=type",
                 "data.sequence_column=seq", "--backbone", "tiny", "--random-init", "optim.max_epochs=1", "--quiet",
                 "data.val_fraction=0.25", "--out", str(run_dir)])
    assert code == 0
    return folder, train, run_dir


def test_fit_and_predict_with_string_labels(string_label_run, capsys):
    folder, train, run_dir = string_label_run
    assert json.loads((run_dir / "adapter.json").read_text())["labels"] == ["Negative", "Positive"]
    out = folder / "p.csv"
    assert main(["predict", str(run_dir), str(train), "-o", str(out), "--quiet"]) == 0
    predictions = pd.read_csv(out)
    assert set(predictions["prediction"]) <= {"Positive", "Negative"} and len(predictions) == 8
    assert predictions.columns.tolist() == ["id", "prediction", "prob_Negative", "prob_Positive", "label",
                                         "nearest_train_identity", "in_domain"]
    assert predictions["label"].tolist() == ["Positive", "Negative"] * 4
    capsys.readouterr()
    unseen = write(folder, "u.csv", "seq,type\nMKTAYIAK,Maybe\nGLFDIVKK,Positive\n")
    assert main(["evaluate", str(run_dir), str(unseen)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "protadapt: error: u.csv line 2 (id 'u_0'): label 'Maybe' is not one of the classes Negative, " \
                  "Positive; remove the record or retrain with this class"
    one_class = write(folder, "one.csv", "seq,type\nMKTAYIAK,Positive\nGLFDIVKK,Positive\n")
    assert main(["evaluate", str(run_dir), str(one_class)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["auroc"] is None and metrics["undefined"] == "auroc: the file has only one class"


def test_predict_reads_default_columns_when_the_run_used_others(string_label_run, capsys):
    folder, _, run_dir = string_label_run
    other = write(folder, "o.csv", "id,sequence,label\nq1,MKTAYIAK,0.5\nq2,GLFDIVKK,x\n")
    assert main(["predict", str(run_dir), str(other), "-o", str(folder / "o.out.csv"), "--quiet"]) == 0
    predictions = pd.read_csv(folder / "o.out.csv")
    assert predictions["id"].tolist() == ["q1", "q2"] and "label" not in predictions  # unusable labels ignored
    assert read_for_run(other, run_dir, {"problem_type": "classification", "labels": ["Negative", "Positive"]},
                        require_labels=False)["label"].isna().all()


def test_cv_says_it_ignores_the_test_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
    train = table(tmp_path, ["Positive", "Negative"] * 4)
    with caplog.at_level(logging.WARNING):
        code = main(["cv", "--task", "custom", f"data.train_file={train}", f"data.test_file={train}", "--backbone",
                     "tiny", "--random-init", "--quiet", "optim.max_epochs=1", "--folds", "2", "data.val_fraction=0.5",
                     "--out", str(tmp_path / "cv")])
    assert code == 0  # the test file (here the same file: its ids would clash) is not read
    assert f"cv: data.test_file={train} is ignored; the folds come from data.train_file" in caplog.text
    assert len(pd.read_csv(tmp_path / "cv" / "folds.csv")) == 2
