"""Memory for big backbones: peak memory and time of one LoRA / DoRA step with fp32 or bf16 frozen weights
(`backbone_dtype`), with and without activation checkpointing (`trainer.checkpointing`).

    python -m benchmarks.memory                          # ESM-2 650M (8 cells) + 3B LoRA fp32 / bf16, CPU: results/memory.md
    python -m benchmarks.memory --device cuda --autocast --cells esm2_t33_650M_UR50D:lora:bfloat16:off   # memory_cuda.md

A cell is BACKBONE:METHOD:DTYPE:CHECKPOINTING and runs in its own process. The backbone is built on the
meta device, its storage allocated in the cell's dtype (`store_frozen_weights`, then `to_empty`) and
filled with random values cheaply (a repeated random block; LayerNorms 1/0, rotary frequencies as
fair-esm computes them): RANDOM weights, exact shapes and bytes. The batch is the 4 longest bbb
training peptides; LoRA / DoRA r=8, α=16 on q/k/v/out; AdamW; one step (the first: its peak is the
training peak). Memory safety on a shared machine: a cell runs only when `MemAvailable` covers its
estimate, under an address-space limit below what is available, and cells never run at once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import limit
from benchmarks.common import REPO, RESULTS_DIR, cpu_model, environment_line, markdown_table, synchronize
from protadapt.adapters import AdapterConfig
from protadapt.backbones import ARCHITECTURES, build_model, store_frozen_weights
from protadapt.backbones.base import family
from protadapt.backbones.esm import rotary_frequencies
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

M650, B3, B15 = "esm2_t33_650M_UR50D", "esm2_t36_3B_UR50D", "esm2_t48_15B_UR50D"
CELLS = [f"{M650}:{method}:{dtype}:{ckpt}" for method in ("lora", "dora") for dtype in ("float32", "bfloat16")
         for ckpt in ("off", "on")] + [f"{B3}:lora:float32:off", f"{B3}:lora:bfloat16:off"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GIB = 2**30
RESERVE = 1.5 * GIB  # left to the machine's other jobs beyond a cell's address-space limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cells", nargs="+", default=CELLS, help="BACKBONE:METHOD:float32|bfloat16:off|on")
    parser.add_argument("--batch", type=int, default=4, help="the N longest bbb training peptides")
    parser.add_argument("--autocast", action="store_true", help="the step under bf16 autocast (trainer.precision=bf16-mixed)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    load_before = os.getloadavg()[0]
    rows = [cell_row(cell, run_cell(cell, args.batch, args.device, args.autocast)) for cell in args.cells]
    write_report(args, rows, load_before, os.getloadavg()[0])


def run_cell(cell: str, batch: int, device: str, autocast: bool) -> dict:
    """One cell in a fresh process, or why it did not run (not enough memory free, or it failed)."""
    name, _, dtype, _ = cell.split(":")
    need = weight_bytes(name, dtype) * 1.2 + 1.5 * GIB  # weights + activations, optimiser, interpreter
    available = mem_available()
    if device == "cpu" and need > available - RESERVE:
        return {"skipped": f"not run: needs ~{need / GIB:.1f} GiB, {available / GIB:.1f} GiB available"}
    limit_bytes = int(available - RESERVE) if device == "cpu" else resource.RLIM_INFINITY

    def cap() -> None:  # in the child: it cannot take more than is free, whatever it does
        os.nice(15)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    print(f"{cell}: running (limit {limit_bytes / GIB:.1f} GiB)" if device == "cpu" else f"{cell}: running", flush=True)
    done = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", cell, str(batch), device, str(autocast)],
                          capture_output=True, text=True, cwd=REPO, preexec_fn=cap, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"failed under the {limit_bytes / GIB:.1f} GiB limit: {last[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(cell: str, batch: str, device_name: str, autocast: str) -> None:
    """In a fresh process: build the cell's predictor, take one training step, print its numbers as JSON."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device(device_name)
    name, method, dtype, ckpt = cell.split(":")
    data = limit.peptide_batch(int(batch))
    tokens, labels = data["tokens"].to(device), data["labels"].long().to(device)
    predictor = random_predictor(name, method, dtype, device)
    predictor.backbone.checkpointing = ckpt == "on"
    weights = sum(p.numel() * p.element_size() for p in predictor.parameters())
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-3)
    before = rss_reset() if device.type == "cpu" else cuda_reset(device)
    synchronize(device)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast == "True"):
        loss = F.cross_entropy(predictor(tokens), labels)
    loss.backward()
    optimizer.step()
    synchronize(device)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    peak = status_kib("VmHWM") * 1024 if device.type == "cpu" else torch.cuda.max_memory_allocated(device)
    print(json.dumps({"weights": weights, "before": before, "peak": peak, "cpu": cpu, "wall": wall,
                      "loss": loss.item(), "tokens": list(tokens.shape)}))


def random_predictor(name: str, method: str, dtype: str, device: torch.device) -> ProteinPredictor:
    """The exact architecture with cheap random weights, stored in `dtype` from the start (no fp32 copy)."""
    architecture = ARCHITECTURES[name]
    with torch.device("meta"):
        model, alphabet = build_model(architecture)
    backbone = family(architecture.family)(model, alphabet, architecture, pretrained=False,
                                           source="random-init:meta-fill")
    store_frozen_weights(backbone, dtype)
    backbone.to_empty(device=device)
    fill_random(backbone)
    torch.manual_seed(0)
    return ProteinPredictor(backbone, HeadConfig(), AdapterConfig(method=method, rank=8, alpha=16.0)).to(device)


@torch.no_grad()
def fill_random(backbone: nn.Module) -> None:
    """Weights from one repeated random block (std 0.02), biases 0, LayerNorms 1/0, rotary frequencies exact."""
    block = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)) * 0.02  # a prime: rows differ
    for module in backbone.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0), module.bias.fill_(0.0)
            continue
        if hasattr(module, "inv_freq"):  # fair-esm RotaryEmbedding: its buffer, as its __init__ computes it
            module.inv_freq.copy_(rotary_frequencies(2 * module.inv_freq.numel()))
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if parameter_name == "bias":
                parameter.zero_()
                continue
            flat = parameter.view(-1)
            for start in range(0, flat.numel(), block.numel()):
                chunk = flat[start:start + block.numel()]
                chunk.copy_(block[:chunk.numel()])


def weight_bytes(name: str, dtype: str) -> int:
    """Bytes of the backbone's parameters stored in `dtype` (LayerNorms fp32), counted on the meta device."""
    architecture = ARCHITECTURES[name]
    with torch.device("meta"):
        model, alphabet = build_model(architecture)
    backbone = store_frozen_weights(family(architecture.family)(model, alphabet, architecture, False, "meta"), dtype)
    return sum(p.numel() * p.element_size() for p in backbone.parameters())


# ---------------------------------------------------------------- memory readings


def mem_available() -> int:
    with open("/proc/meminfo") as info:
        return next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def rss_reset() -> int:
    """Reset the peak resident set to the current one (Linux clear_refs 5) and return it in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return status_kib("VmRSS") * 1024


def cuda_reset(device: torch.device) -> int:
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


# ---------------------------------------------------------------- report


def cell_row(cell: str, result: dict) -> list[str]:
    name, method, dtype, ckpt = cell.split(":")
    head = [name.split("_")[2] if name.count("_") > 2 else name, method, dtype, ckpt]
    if "skipped" in result:
        return head + [result["skipped"], "", "", "", "", ""]
    return head + [f"{result['weights'] / GIB:.2f}", f"{result['peak'] / GIB:.2f}",
                   f"{(result['peak'] - result['before']) / 2**20:.0f}", f"{result['cpu']:.1f}", f"{result['wall']:.1f}",
                   f"{result['loss']:.3f}"]


def write_report(args, rows: list, load_before: float, load_after: float) -> None:
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    memory = ("peak RSS GiB", "step extra MiB") if cpu else ("peak CUDA GiB", "step extra MiB")
    header = ["ESM-2", "method", "frozen weights", "checkpointing", "model params GiB", *memory,
              "CPU s / step", "wall s / step", "loss"]
    big = {dtype: weight_bytes(B15, dtype) for dtype in DTYPES}
    shape = "×".join(str(n) for n in limit.peptide_batch(args.batch)["tokens"].shape)
    text = f"""# Memory for big backbones: one training step, fp32 or bf16 frozen weights (random init)

Command: `python -m benchmarks.memory {' '.join(sys.argv[1:])}`.

Machine: {cpu_model()}; {environment_line(device) if not cpu else 'CPU'}, torch {torch.__version__},
OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}, cells at nice 15. Load average {load_before:.1f} before and
{load_after:.1f} after (shared machine: one measurement per cell; CPU time is the steadier figure).

Batch: the {args.batch} longest bbb training peptides ({shape} tokens); LoRA /
DoRA r=8, α=16 on q/k/v/out; {'under bf16 autocast (trainer.precision=bf16-mixed), ' if args.autocast else 'no autocast (fp32 compute), '}one AdamW step (the first, so its peak is the training peak). RANDOM
weights of the exact architectures, built on the meta device and filled cheaply.

{markdown_table(header, rows)}

*Model params* counts every parameter's bytes (frozen weights, adapters, head). *Peak RSS* is the
process's whole resident set at its peak during the step (weights included: what must fit in memory);
*step extra* is the rise above the resident set just before it (activations, gradients, optimiser state,
allocator slack). ESM-2 15B was not tried: its weights alone are {big['float32'] / GIB:.1f} GiB in fp32 and
{big['bfloat16'] / GIB:.1f} GiB in bf16, above this machine's 24 GB (shared with other jobs).

bf16 rows store the frozen weights in bf16 and, without autocast, compute in fp32: each frozen layer
upcasts its weight per use (`store_frozen_weights`). Their higher *step extra* is most likely those
per-use copies (≤ 25 MiB each at 650M, ≤ 100 MiB at 3B) passing through the allocator, whose retained
slack the resident set counts (not verified); the peak RSS, what must fit, is lower all the same. A
first variant that computed in bf16 took 8.5 s CPU against 0.62 s for one ESM-2 8M LoRA step on this
CPU (no avx512_bf16: bf16 `aten::mm` ~40× slower than fp32; profiled by hand), so bf16 arithmetic is
left to autocast on GPUs (`--autocast`, `trainer.precision=bf16-mixed`).
"""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / ("memory.md" if cpu else f"memory_{device.type}.md")).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
