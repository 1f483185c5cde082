"""Frozen-embedding probe: `cv --method probe --folds 5` with a cold and a warm embedding cache, vs LoRA.

Command: `python -m benchmarks.probe` (add `--device cuda` on a GPU). Backbone: the ESM-2 8M
architecture, random init (no weights here). bbb: probe cold, probe warm, and `cv --method lora`
with the default settings; thermostability: probe cold and warm (`--thermostability-lora` adds
LoRA, which takes hours on a CPU). Each cv runs in this process after a warm-up, so imports are
not counted; wall seconds and this process's CPU seconds (user + system, which other jobs on a
shared machine inflate less), one run each (the folds are themselves repeats). Writes
benchmarks/results/probe.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks.common import cpu_model, environment_line, markdown_table, pick_device, write_result
from protadapt.config import load_config
from protadapt.training.cv import Folds, cross_validate

BACKBONE = "esm2_t6_8M_UR50D"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--thermostability-lora", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cv_seconds("probe", "bbb", accelerator, f"{scratch}/warmup-cache", f"{scratch}/warmup")  # imports, first plots
        for task in ("bbb", "thermostability"):
            cache = f"{scratch}/cache-{task}"
            cold = cv_seconds("probe", task, accelerator, cache, f"{scratch}/{task}-cold")
            warm = cv_seconds("probe", task, accelerator, cache, f"{scratch}/{task}-warm")
            rows += [[task, "probe, cold cache", *cold, ""],
                     [task, "probe, warm cache", *warm, f"{float(cold[1]) / float(warm[1]):.1f}× less CPU than cold"]]
            if task == "bbb" or args.thermostability_lora:
                lora = cv_seconds("lora", task, accelerator, f"{scratch}/lora-cache", f"{scratch}/{task}-lora")
                rows.append([task, "lora (default fit settings)", *lora,
                             f"{float(lora[1]) / float(warm[1]):.0f}× the warm probe's CPU"])
    write_results(rows, device, load_before, os.getloadavg()[0])


def cv_seconds(method: str, task: str, accelerator: str, cache: str, out: str) -> list[str]:
    """[wall seconds, CPU seconds, mean fold accuracy] of a 5-fold cv on the task's training split."""
    config = load_config(None, [f"data.task={task}", f"adapter.method={method}", f"backbone={BACKBONE}",
                                "random_init=true", "quiet=true", f"cache.directory={cache}",
                                f"trainer.accelerator={accelerator}", "trainer.logger=none"])
    started, cpu = time.perf_counter(), time.process_time()
    table = cross_validate(config, Folds(5), out)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return [f"{wall:.1f}", f"{cpu:.1f}", f"{float(table['accuracy'].mean()):.3f}"]


def write_results(rows: list, device: torch.device, load_before: float, load_after: float) -> None:
    text = "\n".join([
        "# Frozen-embedding probe: cv with a cold and a warm embedding cache (ESM-2 8M architecture, random init)", "",
        "Command: `python -m benchmarks.probe`" + ("" if device.type == "cpu" else f" --device {device.type}") + ".", "",
        f"Machine: {cpu_model()}; {environment_line(device)}. Load average {load_before:.1f} before, "
        f"{load_after:.1f} after (2 cores; other jobs shared the machine when the load exceeds 2).", "",
        "Each row is one `cross_validate(..., Folds(5))` in-process after a warm-up (imports not counted), "
        "5 folds of the task's training split (bbb 198 peptides, thermostability 1,768 proteins), seed 0. "
        "Accuracy is the mean over folds — random weights, so it says nothing about pretrained models. "
        "CPU s is this process's user + system time: where other jobs share the cores, wall time grows with the "
        "load and CPU time much less, so compare CPU s across runs. `cv` folds draw no test-set figures.", "",
        markdown_table(["task", "run", "wall s", "CPU s", "mean fold accuracy", "note"], rows), "",
        "Goal (issue #17): warm-cache probe cv on bbb under 5 s here.", ""])
    write_result(text, "probe", device)


if __name__ == "__main__":
    main()
