"""benchmarks/gpu.sh end to end on the CPU (`DEVICE=cpu`, tiny shapes), into a temporary results directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ["limit.md", "checkpointing.md", "memory.md", "train_step_tiny_cpu.md", "dora_norm.md",
            "predict_throughput.md", "vs_peft.md", "padding.md"]


@pytest.mark.slow  # six benchmark scripts, each a fresh interpreter with torch and Lightning: minutes on 2 shared cores
def test_gpu_script_runs_every_benchmark_on_the_cpu_fallback(tmp_path):
    committed = {p.name: p.read_bytes() for p in (REPO / "benchmarks" / "results").glob("*.md")}
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = os.environ | {"DEVICE": "cpu", "PROTADAPT_RESULTS_DIR": str(tmp_path), "PATH": path,
                                "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], env=environment, capture_output=True,
                               text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.md")) == sorted(EXPECTED)
    for name in EXPECTED:
        text = (tmp_path / name).read_text()
        assert text.startswith("# ") and "|---|" in text, name  # a titled report with a results table
    assert "| tiny | bbb |" in (tmp_path / "limit.md").read_text()
    results = REPO / "benchmarks" / "results"
    assert {name: (results / name).read_bytes() for name in committed} == committed  # committed results untouched
