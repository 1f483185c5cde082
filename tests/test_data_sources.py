"""Tasks built from their published raw files: safe unpickling, conversion, checked downloads, bundled bbb."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import pickle
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protadapt.cli import main
from protadapt.data import download, tasks
from protadapt.data.converters import convert_mic, convert_thermostability
from protadapt.data.errors import DataError
from protadapt.data.safe_pickle import load_frame, load_plain
from protadapt.data.tasks import BBB_CSV_SHA256, get_task





def canonical(data_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(data_dir / name / f"{name}.csv", keep_default_na=False)


# --- no pickle code runs ------------------------------------------------------------------


class Exploit:
    """Unpickling this would run `os.system` (pickle's REDUCE opcode)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("loader", [load_plain, load_frame])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, loader):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"train_names": [Exploit(marker)]}, protocol=2)
    with pytest.raises(DataError) as caught:
        loader(data, "evil.pkl")
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(r"evil\.pkl: the pickle asks for (posix|nt)\.system, which this reader refuses", message)
    assert not marker.exists()


def test_plain_loader_refuses_even_numpy_and_reads_plain_dicts():
    with pytest.raises(DataError, match="numpy"):
        load_plain(pickle.dumps(np.arange(3)), "array.pkl")
    assert load_plain(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=4), "d.pkl") == {"a": [1, 2.5, "x"]}
    with pytest.raises(DataError, match="cut.pkl: not a readable pickle"):
        load_plain(pickle.dumps({"a": [1] * 100})[:20], "cut.pkl")


def test_frame_loader_reads_the_python2_grampa_pickle(data_dir):
    frame = load_frame((data_dir / "mic" / "raw" / "ecoli_test_df.pkl").read_bytes(), "ecoli_test_df.pkl")
    assert frame.shape == (509, 10)
    assert (frame["has_cterminal_amidation"] == 1).sum() == 176  # averaged over measurements: 0..1
    assert frame["value"].min() == pytest.approx(-1.22, abs=0.01) and frame["bacterium"].unique().tolist() == ["E. coli"]


# --- conversion equals the canonical tables -------------------------------------------------


def test_thermostability_conversion_equals_the_canonical_csv(data_dir):
    frame = convert_thermostability(data_dir / "thermostability" / "raw")
    expected = canonical(data_dir, "thermostability")
    pd.testing.assert_frame_equal(frame[expected.columns], expected, check_exact=True)
    assert frame.columns.tolist() == [*expected.columns, "organism"]
    assert frame.loc[frame["id"] == "A0A075WPW5", "organism"].item() == "Thermodesulfobacterium commune DSM 2178"
    assert (frame["organism"] != "").all() and frame["organism"].nunique() == 66


def test_mic_conversion_equals_the_canonical_csv(data_dir):
    pd.testing.assert_frame_equal(convert_mic(data_dir / "mic" / "raw"), canonical(data_dir, "mic"), check_exact=True)


def place_raw_files(data_dir: Path, target: Path, name: str) -> None:
    """Copy a task's raw files where its download would put them (<dir>/<task>/raw/...)."""
    for raw in get_task(name).raw_files:
        (target / name / "raw" / raw.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / name / "raw" / raw.name, target / name / "raw" / raw.name)


@pytest.mark.parametrize(("name", "counts"), [("thermostability", ("1768", "197")), ("mic", ("4050", "509"))])
def test_data_info_offline_from_raw_files_only(data_dir, tmp_path, monkeypatch, capsys, no_network, name, counts):
    place_raw_files(data_dir, tmp_path, name)
    monkeypatch.setenv(tasks.DATA_DIR_ENV, str(tmp_path))
    assert main(["data", "info", name]) == 0
    out = capsys.readouterr().out
    assert f"train  {counts[0]}" in out and f"test   {counts[1]}" in out
    written = pd.read_csv(tmp_path / name / f"{name}.csv", keep_default_na=False)
    expected = canonical(data_dir, name)
    pd.testing.assert_frame_equal(written[expected.columns], expected)


# --- the download itself, from a local HTTP server ------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    """A folder served on 127.0.0.1 for the length of one test; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def served_task(monkeypatch, name: str, base: str):
    """The registered task with every URL pointing at the local server (same names, same sha256)."""
    task = get_task(name)
    local = replace(task, raw_files=tuple(replace(raw, url=f"{base}/{raw.name}") for raw in task.raw_files))
    monkeypatch.setitem(tasks.TASKS, name, local)
    return local


def test_download_over_http_converts_mic(data_dir, tmp_path, http_root, monkeypatch, caplog):
    root, base = http_root
    for raw in get_task("mic").raw_files:
        shutil.copyfile(data_dir / "mic" / "raw" / raw.name, root / raw.name)
    task = served_task(monkeypatch, "mic", base)
    with caplog.at_level(logging.INFO):
        frame = task.load(tmp_path / "data")
    assert frame["split"].value_counts().to_dict() == {"train": 4050, "test": 509}
    assert caplog.text.count("sha256 verified") == 2
    assert sorted(os.listdir(tmp_path / "data" / "mic" / "raw")) == ["ecoli_test_df.pkl", "ecoli_train_with_c_df.pkl"]


def test_download_over_http_with_wrong_checksum_leaves_nothing(data_dir, tmp_path, http_root, monkeypatch):
    root, base = http_root
    first, second = get_task("mic").raw_files
    shutil.copyfile(data_dir / "mic" / "raw" / first.name, root / first.name)
    (root / second.name).write_bytes((data_dir / "mic" / "raw" / second.name).read_bytes()[:-1] + b"!")
    task = served_task(monkeypatch, "mic", base)
    with pytest.raises(DataError) as caught:
        task.load(tmp_path / "data")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"mic: {base}/{second.name} has sha256 ") and "nothing was written" in message
    raw_dir = tmp_path / "data" / "mic" / "raw"
    assert sorted(os.listdir(raw_dir)) == [first.name]  # the checked file stays; no bad file, no temp file
    assert not (tmp_path / "data" / "mic" / "mic.csv").exists()


def test_download_without_a_pinned_digest_says_not_verified(data_dir, tmp_path, http_root, monkeypatch, caplog):
    root, base = http_root
    for raw in get_task("mic").raw_files:
        shutil.copyfile(data_dir / "mic" / "raw" / raw.name, root / raw.name)
    task = served_task(monkeypatch, "mic", base)
    task = replace(task, raw_files=(replace(task.raw_files[0], sha256=None), task.raw_files[1]))
    with caplog.at_level(logging.WARNING):
        task.load(tmp_path / "data")
    assert f"mic: {base}/ecoli_train_with_c_df.pkl: sha256 not verified" in caplog.text


def test_unreachable_server_is_one_line(tmp_path, monkeypatch):
    task = served_task(monkeypatch, "mic", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(DataError) as caught:
        task.load(tmp_path)
    assert "\n" not in str(caught.value) and "downloading http://127.0.0.1:9/" in str(caught.value)
    assert not (tmp_path / "mic").exists()


# --- bbb ships in the package -----------------------------------------------------------------


def test_bbb_is_bundled_and_needs_no_data_dir(data_dir, monkeypatch, tmp_path, no_network):
    monkeypatch.delenv(tasks.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # and no cached copy either
    task = get_task("bbb")
    assert download.sha256(task.path().read_bytes()) == BBB_CSV_SHA256
    assert task.path().read_bytes() == (data_dir / "bbb" / "bbb.csv").read_bytes()
    frame = task.load()
    assert frame["split"].value_counts().to_dict() == {"train": 198, "test": 38}
    shared = replace(task, bundled=False).load(data_dir)  # the copy in the data directory
    pd.testing.assert_frame_equal(frame, shared)
    assert not (tmp_path / ".cache").exists()


def test_bundled_csv_is_package_data():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"protadapt.data" = ["bundled/*.csv", "bundled/*.md"]' in pyproject
    note = (Path(tasks.__file__).parent / "bundled" / "README.md").read_text()
    assert "MIT" in note and "d595145e27fd48386328710a93bb296378ed2717" in note
