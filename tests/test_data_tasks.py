"""Task registry: the three real tasks load with their published counts; download is checked offline."""

import logging
import os
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protadapt.data import download, tasks
from protadapt.data.io import DataError
from protadapt.data.tasks import (
    TASKS,
    custom_task,
    describe,
    format_task_info,
    format_task_list,
    get_task,
    resolve_data_dir,
)





def split_counts(frame: pd.DataFrame) -> dict:
    return frame["split"].value_counts().to_dict()


# --- the real tasks ------------------------------------------------------------------------


def test_bbb_loads_with_readme_counts_and_drops_the_conflict(data_dir, caplog, no_network):
    with caplog.at_level(logging.WARNING):
        frame = get_task("bbb").load(data_dir)
    # README: 200 train / 38 test; AGCKNFFWKTFTSC is in train twice with labels 0 and 1
    assert split_counts(frame) == {"train": 198, "test": 38}
    assert "dropped 2 record(s) of 1 sequence(s)" in caplog.text
    assert "AGCKNFFWKTFTSC" not in set(frame["sequence"])
    assert frame.groupby("split")["label"].value_counts().to_dict() == {
        ("test", 0): 19, ("test", 1): 19, ("train", 0): 99, ("train", 1): 99,
    }
    assert frame["label"].dtype == np.int64
    assert frame.columns.tolist()[:4] == ["id", "sequence", "label", "split"]


def test_thermostability_loads_with_readme_counts(data_dir, no_network):
    frame = get_task("thermostability").load(data_dir)
    assert split_counts(frame) == {"train": 1768, "test": 197}
    assert frame["label"].value_counts().to_dict() == {0: 1237, 1: 728}
    assert frame["sequence"].str.count("X").sum() == 14
    assert frame["sequence"].str.len().between(250, 550).all()
    assert {"growth_temp", "fold"} <= set(frame.columns)
    assert (frame.loc[frame["split"] == "test", "fold"] == 1).all()


def test_mic_loads_with_readme_counts(data_dir, no_network):
    frame = get_task("mic").load(data_dir)
    assert split_counts(frame) == {"train": 4050, "test": 509}
    assert frame["label"].dtype == np.float64
    assert frame.groupby("split")["c_amidated"].sum().to_dict() == {"train": 1122, "test": 176}
    train = frame[frame["split"] == "train"]
    assert train["label"].min() == pytest.approx(-1.64, abs=0.01)
    assert train["label"].max() == pytest.approx(3.51, abs=0.01)
    assert not set(train["sequence"]) & set(frame.loc[frame["split"] == "test", "sequence"])


def test_registry_metadata():
    assert set(TASKS) == {"bbb", "thermostability", "mic"}
    assert (TASKS["bbb"].num_classes, TASKS["bbb"].primary_metric) == (2, "accuracy")
    assert (TASKS["thermostability"].num_classes, TASKS["thermostability"].primary_metric) == (2, "accuracy")
    assert (TASKS["mic"].num_classes, TASKS["mic"].primary_metric, TASKS["mic"].problem_type) == (1, "mse", "regression")
    for task in TASKS.values():
        assert task.primary_metric in task.metrics
        assert all(len(raw.sha256) == 64 and raw.url.startswith("https://") for raw in task.raw_files)


def test_raw_file_hashes_match_the_shared_copies(data_dir):
    """The pinned sha256 values are those of the files in <data>/<task>/raw."""
    for task in TASKS.values():
        sums = dict(line.split()[::-1] for line in (data_dir / task.name / "SHA256SUMS").read_text().splitlines())
        for raw in task.raw_files:
            assert sums[f"raw/{raw.name}"] == raw.sha256


def test_unknown_task_error_lists_known_tasks():
    with pytest.raises(DataError) as caught:
        get_task("bbbp")
    assert str(caught.value) == "unknown task 'bbbp'; known tasks: bbb, mic, thermostability"


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(tasks.DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "protadapt" / "data"
    monkeypatch.setenv(tasks.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert TASKS["mic"].path() == tmp_path / "env" / "mic" / "mic.csv"


# --- download, offline ---------------------------------------------------------------------


def serve_from(directory: Path, calls: list):
    """A fetch_url stand-in that serves raw files from a local folder by their name."""

    def fetch(url, task, path):
        calls.append(url)
        name = next(raw.name for raw in task.raw_files if raw.url == url)
        return (directory / name).read_bytes()

    return fetch


def downloaded_bbb():
    """bbb as it was before it was bundled: fetched from source and converted."""
    return replace(get_task("bbb"), bundled=False)


def test_bbb_download_converts_to_the_canonical_csv(monkeypatch, tmp_path, data_dir):
    calls = []
    monkeypatch.setattr(download, "fetch_url", serve_from(data_dir / "bbb" / "raw", calls))
    frame = downloaded_bbb().load(tmp_path)
    assert len(calls) == 2 and all("d595145e27fd48386328710a93bb296378ed2717" in url for url in calls)
    written = tmp_path / "bbb" / "bbb.csv"
    assert pd.read_csv(written).equals(pd.read_csv(data_dir / "bbb" / "bbb.csv"))
    assert sorted(os.listdir(tmp_path / "bbb" / "raw")) == ["BBP_test.xlsx", "BBP_train.xlsx"]
    assert split_counts(frame) == {"train": 198, "test": 38}
    downloaded_bbb().load(tmp_path)  # second load reads the converted file
    assert len(calls) == 2


def test_download_reuses_checked_raw_files(monkeypatch, tmp_path, data_dir):
    raw_dir = tmp_path / "bbb" / "raw"
    raw_dir.mkdir(parents=True)
    for name in ("BBP_train.xlsx", "BBP_test.xlsx"):
        (raw_dir / name).write_bytes((data_dir / "bbb" / "raw" / name).read_bytes())
    calls = []
    monkeypatch.setattr(download, "fetch_url", serve_from(data_dir / "bbb" / "raw", calls))
    downloaded_bbb().load(tmp_path)
    assert calls == []


def test_download_with_wrong_checksum_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(download, "fetch_url", lambda url, task, path: b"not the published file")
    with pytest.raises(DataError) as caught:
        downloaded_bbb().load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "sha256" in message and "nothing was written" in message
    assert not (tmp_path / "bbb" / "bbb.csv").exists()
    assert not (tmp_path / "bbb" / "raw").exists() or os.listdir(tmp_path / "bbb" / "raw") == []


def test_offline_download_error_names_file_and_variable(monkeypatch, tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as caught:
        downloaded_bbb().load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "bbb" / "bbb.csv") in message
    assert "Temporary failure in name resolution" in message and "PROTADAPT_DATA_DIR" in message
    assert not (tmp_path / "bbb").exists()


def test_bad_split_value_is_reported(tmp_path):
    task_dir = tmp_path / "mic"
    task_dir.mkdir()
    (task_dir / "mic.csv").write_text("id,sequence,label,split\na,KK,1.0,train\nb,RR,2.0,valid\n")
    with pytest.raises(DataError, match=r"mic.csv \(id 'b'\): split 'valid' is not one of train, test"):
        get_task("mic").load(tmp_path)


# --- custom tasks --------------------------------------------------------------------------


def test_custom_csv_with_split_column(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("id,sequence,label,split\na,AC,0,train\nb,DE,1,train\nc,FG,0,train\nd,HI,1,train\ne,KL,1,test\n")
    task = custom_task(path)
    assert (task.name, task.problem_type, task.num_classes, task.primary_metric) == ("mine", "classification", 2, "accuracy")
    frame = task.load()
    assert split_counts(frame) == {"train": 4, "test": 1}


def test_custom_fasta_with_test_file_and_regression(tmp_path):
    (tmp_path / "train.fasta").write_text(">a label=0.5\nAC\n>b label=1.25\nDE\n>c label=2\nFG\n")
    (tmp_path / "test.fasta").write_text(">t label=0.1\nKL\n")
    task = custom_task(tmp_path / "train.fasta", test_path=tmp_path / "test.fasta")
    assert (task.problem_type, task.num_classes, task.primary_metric) == ("regression", 1, "mse")
    frame = task.load()
    assert frame["split"].tolist() == ["train", "train", "train", "test"]
    assert frame["label"].tolist() == [0.5, 1.25, 2.0, 0.1]


def test_custom_without_split_is_all_train(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("sequence,label\nAC,0\nDE,0\nFG,1\nHI,1\n")
    assert custom_task(path).load()["split"].tolist() == ["train"] * 4


@pytest.mark.parametrize(
    ("content", "test_content", "fragment"),
    [
        ("sequence,label\nAC,1\nDE,1\nFG,1\nHI,1\n", None, "classification needs at least 2 classes"),
        ("sequence,label,split\nAC,0,train\nDE,0,train\nFG,1,test\nHI,1,test\n", None, "found 1 of 0, 1 in train"),
        ("id,sequence,label\na,AC,no\nb,DE,no\nc,FG,yes\nd,HI,yes\n", "id,sequence,label\nt,KL,maybe\n",
         "t.csv line 2 (id 't'): label 'maybe' is not one of the classes no, yes"),
        ("sequence,label,split\nAC,0,train\nDE,0,train\nFG,1,train\nHI,1,train\n", "sequence,label\nKL,0\n", "has a 'split' column and a test file"),
        ("sequence,label,split\nAC,0,train\nDE,0,train\nFG,1,train\nHI,1,\n", None, "(id 'x_3'): no split value"),
        ("id,sequence,label\na,AC,0\nb,DE,0\nc,FG,1\nd,HI,1\n", "id,sequence,label\na,KL,0\n", "id 'a' is also used in x.csv"),
    ],
)
def test_custom_task_errors(tmp_path, content, test_content, fragment):
    path = tmp_path / "x.csv"
    path.write_text(content)
    test_path = None
    if test_content is not None:
        test_path = tmp_path / "t.csv"
        test_path.write_text(test_content)
    with pytest.raises(DataError) as caught:
        custom_task(path, test_path=test_path).load()
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


# --- text for the CLI ----------------------------------------------------------------------


def test_describe_classification_and_regression(data_dir):
    text = describe(get_task("bbb"), data_dir)
    assert "train  198  0: 99 (50%), 1: 99 (50%)" in text
    assert "5 / 17 / 19.3 / 53" in text
    text = describe(get_task("mic").load(data_dir))
    assert "train  4050" in text and "mean 1.13" in text and "2 / 19 / 21.9 / 190" in text


def test_format_task_list_and_info(data_dir, tmp_path, monkeypatch):
    listing = format_task_list(data_dir)
    for name in TASKS:
        assert name in listing
    assert f"data directory: {data_dir}" in listing
    assert "downloadable" in format_task_list(tmp_path) and "bundled" in format_task_list(tmp_path)
    info = format_task_info("thermostability", data_dir)
    assert "primary: accuracy" in info and "1768" in info and "sha256 46ee9d7f91ea273f" in info
    monkeypatch.setattr(download, "fetch_url", lambda url, task, path: b"")
    offline_info = format_task_info("mic", tmp_path)
    assert "data: not available" in offline_info
    custom = tmp_path / "mine.csv"
    custom.write_text("sequence,label\nAC,0\nDE,0\nFG,1\nHI,1\n")
    assert "all    4" in format_task_info(str(custom))
