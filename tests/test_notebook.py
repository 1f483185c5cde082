"""notebooks/quickstart.ipynb: stored without outputs, and runs top to bottom on the tiny backbone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"strip outputs of: {cell.source[:60]!r}"


def test_quickstart_runs(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")

    # A kernel of this interpreter (the venv's), whatever kernels are installed elsewhere.
    spec = tmp_path / "jupyter" / "kernels" / "protadapt-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "protadapt tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path / "quickstart"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="protadapt-test", timeout=600,
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (tmp_path / "quickstart" / "bidora" / "metrics.json").exists()
    assert (tmp_path / "quickstart" / "analysis" / "delta_m_delta_d.png").exists()
    assert (tmp_path / "quickstart" / "compare" / "comparison.csv").exists()
