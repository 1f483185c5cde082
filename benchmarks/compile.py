"""`trainer.compile=true` against eager: step time, compile time, and a whole default `fit`.

    python -m benchmarks.compile                 # 8M, CPU: writes benchmarks/results/compile.md
    python -m benchmarks.compile --device cuda   # writes compile_cuda.md

Steps: a LoRA step (forward, cross-entropy, backward, AdamW; r=8, α=16 on q/k/v/out) of the ESM-2 8M
architecture (random init) on the 16 longest bbb training peptides, the backbone eager or compiled
in place (`nn.Module.compile`, what `trainer.compile` does); the first compiled step includes the
compilation. Fit: `protadapt fit --task bbb --backbone esm2_t6_8M_UR50D --random-init` with all
defaults, with and without `trainer.compile=true` (wall and CPU time of the child process).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks import train_step
from benchmarks.common import cpu_model, environment_line, markdown_table, write_result
from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="esm2_t6_8M_UR50D")
    parser.add_argument("--steps", type=int, default=8, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_step.use(args.device, args.backbone)
    load_before = os.getloadavg()[0]
    batch = train_step.bbb_batch()
    steps = {name: step_seconds(batch, compiled, args.steps) for name, compiled in (("eager", False), ("compiled", True))}
    fits = {} if args.skip_fit else {name: fit_seconds(args.backbone, args.threads, flag)
                                     for name, flag in (("eager", []), ("compiled", ["trainer.compile=true"]))}
    write_report(args, batch, steps, fits, load_before, os.getloadavg()[0])


def step_seconds(batch: dict, compiled: bool, steps: int) -> tuple[float, float]:
    """(first step, median of the next `steps`) in `train_step.clock()` seconds."""
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(train_step.BACKBONE, random_init=True), HeadConfig(),
                                 AdapterConfig(method="lora", rank=train_step.RANK, alpha=train_step.ALPHA))
    predictor.to(train_step.DEVICE)
    if compiled:
        predictor.backbone.compile()
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-3)
    tokens, labels = batch["tokens"].to(train_step.DEVICE), batch["labels"].to(train_step.DEVICE)
    times = []
    for _ in range(steps + 1):
        start = train_step.clock()
        optimizer.zero_grad()
        F.cross_entropy(predictor(tokens), labels).backward()
        optimizer.step()
        times.append(train_step.clock() - start)
    return times[0], statistics.median(times[1:])


def fit_seconds(backbone: str, threads: int, overrides: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one default `protadapt fit` on bbb."""
    protadapt = os.path.join(os.path.dirname(sys.executable), "protadapt")
    accelerator = ["--accelerator", "gpu"] if train_step.DEVICE.type == "cuda" else []
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([protadapt, "fit", "--task", "bbb", "--backbone", backbone, "--random-init", "--quiet",
                        *accelerator, "--out", out, *overrides], check=True, env=environment, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def write_report(args, batch: dict, steps: dict, fits: dict, load_before: float, load_after: float) -> None:
    device = train_step.DEVICE
    work = "CPU" if device.type == "cpu" else "GPU (synced wall)"
    rows = [[name, f"{first:.1f}", f"{1e3 * median:.1f}", f"{steps['eager'][1] / median:.2f}"]
            for name, (first, median) in steps.items()]
    fit_rows = [[name, f"{wall:.0f}", f"{cpu:.0f}", f"{fits['eager'][0] / wall:.2f}"] for name, (wall, cpu) in fits.items()]
    won = bool(fits) and fits["eager"][0] / fits["compiled"][0] >= 1.2
    fit_text = "not run (--skip-fit)" if not fits else markdown_table(
        ["fit", "wall s", "CPU s", "speed-up (wall)"], fit_rows) + \
        f"\n\nDefault `fit` with compile ≥ 1.2× faster after compile time: **{'yes' if won else 'no'}**."
    text = f"""# torch.compile of the backbone: steps and a whole fit ({args.backbone}, random init)

Command: `python -m benchmarks.compile {' '.join(sys.argv[1:])}`.

Machine: {cpu_model()}; {environment_line(device)}; `g++` present (inductor's CPU backend needs it).
Load average {load_before:.1f} before and {load_after:.1f} after (shared machine; step times are {work} time).

LoRA step on bbb, batch {'×'.join(str(d) for d in batch['tokens'].shape)}:

{markdown_table(["backbone", f"first step s ({work}, incl. compile)", f"steady ms / step ({work})", "speed-up"], rows)}

Whole default fit (`protadapt fit --task bbb --backbone {args.backbone} --random-init`; length-bucketed
batches of varying shapes, evaluation in eval mode: each new shape or mode can recompile):

{fit_text}
"""
    write_result(text, "compile", device)


if __name__ == "__main__":
    main()
