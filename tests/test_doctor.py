"""`protadapt doctor` shows versions, devices, and which weights and task files it finds where."""

from __future__ import annotations

import shutil

import torch

from protadapt import cli, doctor


def test_report_names_versions_devices_weights_and_data(tmp_path, monkeypatch, shared_dir):
    models = tmp_path / "models"
    models.mkdir()
    (models / "esm2_t6_8M_UR50D.pt").write_bytes(b"not read, only found")
    (models / "esm2_t12_35M_UR50D").mkdir()  # an HF directory counts too
    data = tmp_path / "data"
    (data / "bbb").mkdir(parents=True)
    shutil.copy(shared_dir / "data" / "bbb" / "bbb.csv", data / "bbb" / "bbb.csv")
    monkeypatch.setenv("PROTADAPT_MODEL_DIR", str(models))
    monkeypatch.setenv("PROTADAPT_DATA_DIR", str(data))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache

    text = doctor.report()

    for heading in ("[versions]", "[devices]", "[weights]", "[backbones usable now]", "[data]"):
        assert heading in text
    assert f"torch: {torch.__version__}" in text
    for package in ("python", "lightning", "fair-esm", "protadapt"):
        assert f"  {package}: " in text
    assert "cuda: " in text and "mps: " in text
    assert f"PROTADAPT_MODEL_DIR: {models}" in text
    assert f"esm2_t6_8M_UR50D -> {models / 'esm2_t6_8M_UR50D.pt'}" in text
    assert f"esm2_t12_35M_UR50D -> {models / 'esm2_t12_35M_UR50D'}" in text
    weights = text.split("[weights]")[1].split("[backbones usable now]")[0]
    assert "esm2_t33_650M_UR50D" not in weights
    usable = dict(doctor.usable_backbones())
    assert usable["esm2_t6_8M_UR50D"] == f"ready ({models / 'esm2_t6_8M_UR50D.pt'})"
    assert usable["esm2_t33_650M_UR50D"].startswith("downloadable from fair-esm")
    assert usable["antiberty"].startswith("ready (")  # the antiberty extra is part of [dev]
    assert "task bbb: found (" in text and "bundled" in text  # bbb ships inside the package
    assert "task mic: missing" in text


def test_no_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTADAPT_MODEL_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    rows = dict(doctor.weights())
    assert rows["PROTADAPT_MODEL_DIR"] == "not set"
    assert "--random-init" in rows["models with weights"]


def test_cli_doctor_prints_the_report(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[versions]") and "[data]" in out
