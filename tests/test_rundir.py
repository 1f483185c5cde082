"""Run directories and outputs: locks, refusal/overwrite, collision-free names, completion manifest,
writes that never replace a device or an input, full disk naming the file, per-epoch progress lines."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import protadapt.training.run as run_module
from protadapt import files, rundir
from protadapt.cli import main
from protadapt.config import load_config
from protadapt.outputs import OutputError, output_path


def test_a_second_claim_is_refused_naming_the_holder(tmp_path):
    with rundir.claim(tmp_path / "run"):
        with pytest.raises(rundir.RunDirError, match=f"in use by pid {os.getpid()}"):
            with rundir.claim(tmp_path / "run", resume=True):
                pass
    with rundir.claim(tmp_path / "run", resume=True):  # released: free again
        pass


def test_existing_run_refused_unless_resumed_or_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="--resume.*--overwrite"):
        with rundir.claim(run):
            pass
    assert (run / "metrics.json").read_text() == "{}"
    with rundir.claim(run, overwrite=True):
        assert [p.name for p in run.iterdir()] == [rundir.LOCK]


def test_a_failed_start_leaves_no_directory(tmp_path):
    with pytest.raises(ValueError):
        with rundir.claim(tmp_path / "a" / "b" / "run"):
            raise ValueError("validation failed")
    assert list(tmp_path.iterdir()) == []


def test_custom_run_names_differ_by_file(tmp_path):
    names = set()
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.csv").write_text(f"id,sequence,label\n{folder},MKTA,1\n")
        config = load_config(None, ["data.task=custom", f"data.train_file={tmp_path / folder / 'train.csv'}"])
        names.add(rundir.default_name(config))
    assert len(names) == 2 and all(name.startswith("custom-train-") for name in names)


def test_manifest_catches_a_flipped_byte(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "adapter.safetensors").write_bytes(b"0123456789")
    with pytest.raises(rundir.RunDirError, match="incomplete run"):
        rundir.check_complete(tmp_path)
    rundir.mark_complete(tmp_path)
    rundir.check_complete(tmp_path)
    (tmp_path / "adapter.safetensors").write_bytes(b"0123456788")
    with pytest.raises(rundir.RunDirError, match="adapter.safetensors: changed"):
        rundir.check_complete(tmp_path)


def test_a_device_is_written_in_place_never_replaced():
    before = os.stat("/dev/null")
    files.write_text_atomic("x\n", "/dev/null")
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.WriteError, match=r"metrics.json: cannot write \(No space left on device\)"):
        files.write_json_atomic({"a": 1}, tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary left behind


def test_output_directory_means_a_file_in_it(tmp_path):
    (tmp_path / "in.fasta").write_text(">a\nMKTA\n")
    (tmp_path / "out").mkdir()
    assert output_path(str(tmp_path / "out"), tmp_path / "in.fasta", ".predictions.csv") == \
        tmp_path / "out" / "in.predictions.csv"
    assert output_path(f"{tmp_path / 'out'}/", tmp_path / "in.fasta", ".x") == tmp_path / "out" / "in.x"
    with pytest.raises(OutputError, match="is the input"):
        output_path(str(tmp_path / "in.fasta"), tmp_path / "in.fasta", ".x")


def test_non_terminal_progress_is_a_line_per_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
    code = main(["fit", "--task", "bbb", "--method", "head", "--backbone", "tiny", "optim.max_epochs=2",
                 "data.batch_size=32", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0
    assert "\r" not in err
    assert [line.split()[1] for line in err.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
