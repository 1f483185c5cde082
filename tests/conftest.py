"""Shared test setup: offline data from ../shared, tiny and 8M-architecture random backbones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
os.environ.setdefault("PROTADAPT_DATA_DIR", str(SHARED / "data"))
os.environ.setdefault("MPLBACKEND", "Agg")
if "PROTADAPT_CACHE_DIR" not in os.environ:  # the embedding cache of the probe and head runs: not the user's
    import tempfile

    os.environ["PROTADAPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="protadapt-test-cache-")


@pytest.fixture
def report(record_property):
    """`report(line)`: the line is printed after the run, also under pytest-xdist (which hides tests' output)."""
    return lambda line: record_property("report", line)


def pytest_terminal_summary(terminalreporter) -> None:
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for key, value in getattr(report, "user_properties", ()) if key == "report"]
    if lines:
        terminalreporter.section("numbers the integration tests measured")
        for line in lines:
            terminalreporter.line(line)


@pytest.fixture
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The canonical data (tests and CI point PROTADAPT_DATA_DIR at ../shared/data)."""
    return Path(os.environ.get("PROTADAPT_DATA_DIR") or SHARED / "data")


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries the network; tests swap in fetchers explicitly."""
    from protadapt.data import download

    def refuse(url, task, path):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(download, "fetch_url", refuse)


@pytest.fixture
def tokens() -> torch.Tensor:
    """A padded batch of 3 sequences in ESM-2 tokens (BOS=0, EOS=2, PAD=1)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(4, 24, (3, 12), generator=generator)
    batch[:, 0] = 0
    batch[0, -1] = 2
    batch[1, 9], batch[1, 10:] = 2, 1
    batch[2, 6], batch[2, 7:] = 2, 1
    return batch


@pytest.fixture(autouse=True)
def one_thread():
    """Test models are small: threads add nothing, and cost a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
