"""Frozen-embedding probe: `cv --method probe --folds 5` with a cold and a warm embedding cache, vs LoRA.

Command: `python -m benchmarks.probe` (add `--device cuda` on a GPU). Backbone: the ESM-2 8M
architecture, random init (no weights here). bbb: probe cold, probe warm, and `cv --method lora`
with the default settings; thermostability: probe cold and warm (`--thermostability-lora` adds
LoRA, which takes hours on a CPU). Each cv runs in this process after a warm-up, so imports are
not counted; wall seconds, one run each (the folds are themselves repeats). Writes
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
            rows += [[task, "probe, cold cache", f"{cold[0]:.1f}", f"{cold[1]:.3f}", ""],
                     [task, "probe, warm cache", f"{warm[0]:.1f}", f"{warm[1]:.3f}", f"{cold[0] / warm[0]:.1f}× faster than cold"]]
            if task == "bbb" or args.thermostability_lora:
                lora = cv_seconds("lora", task, accelerator, f"{scratch}/lora-cache", f"{scratch}/{task}-lora")
                rows.append([task, "lora (default fit settings)", f"{lora[0]:.1f}", f"{lora[1]:.3f}",
                             f"{lora[0] / warm[0]:.0f}× the warm probe"])
    write_results(rows, device, load_before, os.getloadavg()[0])


def cv_seconds(method: str, task: str, accelerator: str, cache: str, out: str) -> tuple[float, float]:
    """(wall seconds, mean fold accuracy) of a 5-fold cv on the task's training split."""
    config = load_config(None, [f"data.task={task}", f"adapter.method={method}", f"backbone={BACKBONE}",
                                "random_init=true", "quiet=true", f"cache.directory={cache}",
                                f"trainer.accelerator={accelerator}", "trainer.logger=none"])
    started = time.perf_counter()
    table = cross_validate(config, Folds(5), out)
    return time.perf_counter() - started, float(table["accuracy"].mean())


def write_results(rows: list, device: torch.device, load_before: float, load_after: float) -> None:
    text = "\n".join([
        "# Frozen-embedding probe: cv with a cold and a warm embedding cache (ESM-2 8M architecture, random init)", "",
        "Command: `python -m benchmarks.probe`" + ("" if device.type == "cpu" else f" --device {device.type}") + ".", "",
        f"Machine: {cpu_model()}; {environment_line(device)}. Load average {load_before:.1f} before, "
        f"{load_after:.1f} after (2 cores; other jobs shared the machine when the load exceeds 2).", "",
        "Each row is one `cross_validate(..., Folds(5))` in-process after a warm-up (imports not counted), "
        "5 folds of the task's training split (bbb 198 peptides, thermostability 1,768 proteins), seed 0. "
        "Accuracy is the mean over folds — random weights, so it says nothing about pretrained models.", "",
        markdown_table(["task", "run", "wall s", "mean fold accuracy", "note"], rows), "",
        "Goal (issue #17): warm-cache probe cv on bbb under 5 s here.", ""])
    write_result(text, "probe", device)


if __name__ == "__main__":
    main()
