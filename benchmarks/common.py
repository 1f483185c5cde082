"""Timing and memory helpers shared by the benchmark scripts.

Timing: `interleaved` runs several candidates A/B/A/B… so that load from other processes on a
shared machine hits all of them alike, and reports medians. Memory: `peak_memory` measures the
peak *extra* memory of one call — `torch.cuda.max_memory_allocated` on a GPU; on CPU the
process's peak resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`) minus the
resident set just before the call. CPU numbers include allocator slack and are only meaningful in
a fresh process per configuration (`run_worker`), because freed heap is reused without showing
up as new resident memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from protadapt.inference import pick_device

REPO = Path(__file__).resolve().parents[1]
# PROTADAPT_RESULTS_DIR: write results elsewhere (tests of benchmarks/gpu.sh keep the committed ones intact)
RESULTS_DIR = Path(os.environ.get("PROTADAPT_RESULTS_DIR") or REPO / "benchmarks" / "results")

__all__ = ["REPO", "RESULTS_DIR", "cpu_model", "environment_line", "interleaved", "markdown_table", "mib", "peak_memory",
           "pick_device", "run_worker", "synchronize", "time_call", "write_result"]


def write_result(text: str, stem: str, device: torch.device, out: Path | None = None) -> Path:
    """Write and print a benchmark's report: `out`, else `<stem>.md` (CPU) or `<stem>_<device>.md` in RESULTS_DIR."""
    path = out or RESULTS_DIR / (f"{stem}.md" if device.type == "cpu" else f"{stem}_{device.type}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def interleaved(candidates: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5,
                warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each candidate, run in turn (A, B, A, B, …) after warm-up; `clock`:
    wall time by default, `time.process_time` for the work done on a loaded CPU."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(time_call(fn, device, clock))
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by `fn` above what was held before it (see module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident set (Linux ≥ 4.0)
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def run_worker(module: str, args: list[str]) -> dict:
    """Run `python -m MODULE --worker ARGS…` in a fresh interpreter; it prints one JSON line last."""
    completed = subprocess.run([sys.executable, "-m", module, "--worker", *args], capture_output=True, text=True,
                               check=False, cwd=REPO)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- reporting


def environment_line(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        # the vector kernels torch dispatches to: bf16 is fast only on CPUs with native bf16 (AVX512-BF16, AMX)
        where = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, " \
                f"{torch.get_num_threads()} torch thread(s), {torch.backends.cpu.get_cpu_capability()} kernels)"
    return f"torch {torch.__version__}, {where}"


def cpu_model() -> str:
    """The CPU's model name, for the results' environment lines."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f}"
