"""Exact --resume: kill -9 a real `protadapt fit` at several points, resume, and get the same bytes.

The fit runs as a subprocess on the tiny backbone and the real bbb data; it is killed after a chosen
epoch's checkpoint appears (and, for mid-epoch kills, a little later), then resumed. `metrics.json`
must equal an uninterrupted run's byte for byte. SIGINT gives exit 130, the resume hint and a
resumable run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
SIGINT_EPOCHS = 60  # a tiny epoch is ~0.06 s idle: the interrupt after epoch 1 has ~3 s of epochs left to land in


def command(out: Path, method: str, backbone: str = "tiny", *extra: str, epochs: int = EPOCHS) -> list[str]:
    random = [] if backbone == "tiny" else ["--random-init"]
    return [sys.executable, "-m", "protadapt.cli", "fit", "--task", "bbb", "--method", method, "--backbone", backbone, *random,
            "--out", str(out), f"optim.max_epochs={epochs}", "optim.patience=100", "data.batch_size=16",
            "adapter.dropout=0.1", "head.dropout=0.2", *extra]


def environment() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("PROTADAPT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    return env


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=600, **kwargs)


def kill_after(args: list[str], run_dir: Path, checkpoints: int, extra_wait: float, sig: int) -> tuple[int, str]:
    """Start the fit; send `sig` once `checkpoints` epoch checkpoints were written, plus `extra_wait` s."""
    log = run_dir.with_suffix(".stderr")
    with open(log, "w") as stderr:
        process = subprocess.Popen(args, env=environment(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        seen: dict[Path, int] = {}
        written = 0
        while written < checkpoints and process.poll() is None:
            for path in run_dir.glob("checkpoints/*/last.ckpt"):
                stamp = path.stat().st_mtime_ns
                written += seen.get(path) != stamp
                seen[path] = stamp
            time.sleep(0.02)
        time.sleep(extra_wait)
        process.send_signal(sig)
        process.wait(timeout=120)
    return process.returncode, log.read_text()


def uninterrupted(tmp_path: Path, method: str, backbone: str = "tiny", epochs: int = EPOCHS) -> bytes:
    result = run(command(tmp_path / "whole", method, backbone, epochs=epochs))
    assert result.returncode == 0, result.stderr[-2000:]
    return (tmp_path / "whole" / "metrics.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("method, backbone", [("lora", "tiny"), ("bidora", "tiny"), ("lora", "esm2_t6_8M_UR50D")])
def test_kill_9_then_resume_gives_the_same_metrics(method, backbone, tmp_path):
    expected = uninterrupted(tmp_path, method, backbone)
    for name, epochs_done, extra_wait in (("after1", 1, 0.0), ("mid3", 2, 0.4), ("late", EPOCHS, 0.3)):
        out = tmp_path / name
        code, _ = kill_after(command(out, method, backbone), out, epochs_done, extra_wait, signal.SIGKILL)
        if name != "late":  # the late kill may land after the run finished
            assert code == -signal.SIGKILL and not (out / "complete.json").exists()
        resumed = run(command(out, method, backbone, "--resume"))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert (out / "metrics.json").read_bytes() == expected, name


@pytest.mark.slow
def test_sigint_exits_130_with_the_hint_and_resumes_exactly(tmp_path):
    expected = uninterrupted(tmp_path, "lora", epochs=SIGINT_EPOCHS)
    out = tmp_path / "interrupted"
    code, stderr = kill_after(command(out, "lora", epochs=SIGINT_EPOCHS), out, 1, 0.2, signal.SIGINT)
    assert code == 130
    assert "protadapt: interrupted (resume with --resume)" in stderr
    assert "Traceback" not in stderr
    assert (out / "checkpoints" / "fit" / "last.ckpt").is_file() and not (out / "complete.json").exists()
    again = run(command(out, "lora", epochs=SIGINT_EPOCHS))  # without --resume an interrupted run is refused
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = run(command(out, "lora", "tiny", "--resume", epochs=SIGINT_EPOCHS))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == expected
