"""The `report` fixture's lines reach the terminal after a run on pytest-xdist workers (which hide a test's output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_reported_lines_are_printed_after_a_two_worker_run(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_numbers.py").write_text(
        "def test_one(report):\n    report('accuracy 0.789 on 38 rows')\n\n"
        "def test_two(report):\n    report('mse 0.43')\n    assert False\n\n"
        "def test_silent():\n    print('not a reported line')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout[-2000:]  # test_two fails: its line is still printed
    summary = done.stdout.split("numbers the integration tests measured", 1)[1]
    assert sorted(line for line in summary.splitlines()[1:3]) == ["accuracy 0.789 on 38 rows", "mse 0.43"]
    assert summary.count("accuracy 0.789") == 1 and "not a reported line" not in done.stdout
