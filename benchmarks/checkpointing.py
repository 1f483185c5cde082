"""`trainer.checkpointing=true` against off: peak memory and step time of a LoRA step.

    python -m benchmarks.checkpointing                      # 8M 16×128 and 650M 2×64, CPU: results/checkpointing.md
    python -m benchmarks.checkpointing --device cuda --shapes esm2_t33_650M_UR50D:8x512

Each cell runs in a fresh process (`common.run_worker`): random-init architecture, LoRA r=8, α=16 on
q/k/v/out, random residue tokens of the given shape; one warm-up step, then the peak extra memory of
one step (`common.peak_memory`: resident set on the CPU, CUDA allocations on a GPU) and the median
CPU (or synchronised GPU) time of the following steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from benchmarks import train_step
from benchmarks.common import cpu_model, environment_line, markdown_table, mib, peak_memory, run_worker, write_result
from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

SHAPES = ["esm2_t6_8M_UR50D:16x128:5", "esm2_t33_650M_UR50D:2x64:1"]  # backbone:BxT:timed steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="BACKBONE:BxT[:STEPS]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    load_before = os.getloadavg()[0]
    rows = []
    for shape in args.shapes:
        backbone, size, *steps = shape.split(":")
        cells = {flag: run_worker(__spec__.name, [backbone, size, steps[0] if steps else "3", flag, args.device])
                 for flag in ("off", "on")}
        for flag, cell in cells.items():
            rows.append([backbone, size, flag, mib(cell["peak_bytes"]), f"{1e3 * cell['seconds']:.0f}",
                         f"{cell['peak_bytes'] / cells['off']['peak_bytes']:.2f}",
                         f"{cell['seconds'] / cells['off']['seconds']:.2f}"])
    write_report(args, rows, load_before, os.getloadavg()[0])


def worker(backbone: str, size: str, steps: str, flag: str, device: str) -> None:
    """In a fresh process: peak extra memory of one LoRA step and the median time of the next `steps`."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train_step.use(device, backbone)
    batch, length = (int(n) for n in size.split("x"))
    torch.manual_seed(0)
    model = load_backbone(backbone, random_init=True)
    predictor = ProteinPredictor(model, HeadConfig(), AdapterConfig(method="lora", rank=8, alpha=16.0)).to(train_step.DEVICE)
    predictor.backbone.checkpointing = flag == "on"
    alphabet = model.alphabet
    tokens = torch.randint(4, 24, (batch, length), device=train_step.DEVICE)  # the 20 amino acids
    tokens[:, 0], tokens[:, -1] = alphabet.cls_idx, alphabet.eos_idx
    labels = torch.randint(0, 2, (batch,), device=train_step.DEVICE)
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(predictor(tokens), labels).backward()
        optimizer.step()

    step()
    peak = peak_memory(step, train_step.DEVICE)
    times = []
    for _ in range(int(steps)):
        start = train_step.clock()
        step()
        times.append(train_step.clock() - start)
    print(json.dumps({"peak_bytes": peak, "seconds": statistics.median(times)}))


def write_report(args, rows: list, load_before: float, load_after: float) -> None:
    device = torch.device(args.device)
    memory = "peak extra RSS MiB" if device.type == "cpu" else "peak extra CUDA MiB"
    work = "CPU" if device.type == "cpu" else "GPU"
    text = f"""# Activation checkpointing: memory and step time (LoRA, random init)

Command: `python -m benchmarks.checkpointing {' '.join(sys.argv[1:])}`.

Machine: {cpu_model()}; {environment_line(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__},
OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}. Load average {load_before:.1f} before and {load_after:.1f} after
(shared machine: step times are {work} time and noisy by ~10 %; one measurement per cell).

{markdown_table(["backbone", "batch (B×T)", "checkpointing", memory, f"{work} ms / step", "memory ÷ off", "time ÷ off"], rows)}

Peak extra memory is the rise during one steady-state step (weights excluded; on the CPU it includes
allocator slack). Checkpointing keeps each layer's input only and recomputes the layer in backward.
"""
    write_result(text, "checkpointing", device)


if __name__ == "__main__":
    main()
