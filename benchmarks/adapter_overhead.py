"""What LoRA and DoRA cost on top of the bare ESM-2 8M backbone, on CPU.

    .venv/bin/python -m benchmarks.adapter_overhead [--repeats 30] [--threads 1]

Model: the exact ESM-2 8M architecture, random init (`load_backbone(..., random_init=True)`);
adapters r=8, α=16 on q/k/v/out of every layer, their parameters perturbed so merging does real
work. Input: 16 sequences of 40–60 residues (seeded), padded. Writes
`benchmarks/results/adapter_overhead.md`.

1. Inference: forward time under `torch.inference_mode`, median of `--repeats` interleaved runs
   (bare, LoRA, DoRA, …, bare, LoRA, …) after warm-up, for the bare backbone, each adapter
   unmerged, and each merged. Target: merged / bare ≤ 1.02. Two clocks: wall time, and the
   process's CPU time (`time.process_time`). With one torch thread (the default here) CPU time is
   the work done, and barely moves when other jobs compete for the cores, so the ratios use it.
2. Training: one step = forward + cross-entropy + backward + AdamW, with a 2-class head, timed the
   same way; and its peak memory, measured as the rise of the process's peak resident set (Linux
   `VmHWM`, reset just before the step) during one step after a warm-up step — in a fresh process
   per variant, so heap freed by another variant cannot hide an allocation (`common.peak_memory`).
   It includes allocator slack, so compare variants with each other, not with tensor sizes.
   DoRA runs three ways: ‖V‖ by the low-rank expansion (protadapt's default), ‖V‖ materialised as
   `(W0 + s·B·A).norm(dim=1)` (swapped in by monkeypatching `DoRALinear.direction_norm`), and
   `detach_norm=True`. Full fine-tuning of the bare backbone is the reference row.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, cpu_model, markdown_table, mib, peak_memory, run_worker

from protadapt.adapters import AdapterConfig, DoRALinear, merge_adapters
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import Backbone, load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

BACKBONE = "esm2_t6_8M_UR50D"
BATCH, MIN_RESIDUES, MAX_RESIDUES = 16, 40, 60
RANK, ALPHA = 8, 16.0
CPU = torch.device("cpu")
CONTROL = "bare backbone again (noise control)"
INFERENCE_HEADER = ["model", "CPU ms (median)", "÷ bare (CPU)", "wall ms (median)", "÷ bare (wall)"]
TRAINING_HEADER = ["variant", "trainable params", "CPU ms / step", "÷ full FT", "÷ LoRA", "wall ms / step",
                   "peak extra RSS MiB"]

TRAINING_VARIANTS = {  # name -> (adapter config, materialise ‖V‖?)
    "full fine-tuning (bare backbone)": (AdapterConfig(method="full"), False),
    "LoRA": (AdapterConfig(method="lora", rank=RANK, alpha=ALPHA), False),
    "DoRA, low-rank ‖V‖": (AdapterConfig(method="dora", rank=RANK, alpha=ALPHA), False),
    "DoRA, materialised ‖V‖": (AdapterConfig(method="dora", rank=RANK, alpha=ALPHA), True),
    "DoRA, low-rank ‖V‖, detach_norm": (AdapterConfig(method="dora", rank=RANK, alpha=ALPHA, detach_norm=True), False),
}


def materialised_direction_norm(self: DoRALinear) -> torch.Tensor:
    """‖V‖ per output row with V = W0 + s·B·A formed in full (out × in), as PEFT does."""
    return (self.base_layer.weight + (self.up @ self.down) * self.scaling).norm(dim=1)


@contextmanager
def materialised_norm(enabled: bool = True):
    low_rank = DoRALinear.direction_norm
    if enabled:
        DoRALinear.direction_norm = materialised_direction_norm
    try:
        yield
    finally:
        DoRALinear.direction_norm = low_rank


def make_tokens(backbone: Backbone, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_RESIDUES, MAX_RESIDUES + 1, (BATCH,), generator=generator).tolist()
    alphabet = backbone.alphabet
    tokens = torch.full((BATCH, max(lengths) + 2), alphabet.padding_idx)
    for row, length in enumerate(lengths):
        residues = torch.randint(4, 24, (length,), generator=generator)  # the 20 standard amino acids
        tokens[row, : length + 2] = torch.cat([torch.tensor([alphabet.cls_idx]), residues, torch.tensor([alphabet.eos_idx])])
    return tokens


def adapted(base: Backbone, config: AdapterConfig) -> ProteinPredictor:
    predictor = ProteinPredictor(copy.deepcopy(base), HeadConfig(num_classes=2, dropout=0.0), config)
    perturb_as_if_trained(predictor, std=0.02, seed=1)  # non-zero B and moved magnitudes: merged ≠ base weights
    return predictor


# ---------------------------------------------------------------- 1. inference


def inference(base: Backbone, tokens: torch.Tensor, repeats: int) -> list[list[object]]:
    models = {"bare backbone": base.eval()}
    for method, label in (("lora", "LoRA"), ("dora", "DoRA")):
        unmerged = adapted(base, AdapterConfig(method=method, rank=RANK, alpha=ALPHA)).backbone.eval()
        merged = copy.deepcopy(unmerged)
        merge_adapters(merged)
        with torch.inference_mode():
            assert (merged(tokens) - unmerged(tokens)).abs().max() < 1e-4, "merge changed the output"
        models[f"{label} unmerged"] = unmerged
        models[f"{label} merged"] = merged

    def forward(model, materialise=False):
        def call():
            with torch.inference_mode(), materialised_norm(materialise):
                model(tokens)
        return call

    candidates = {name: forward(model) for name, model in models.items()}
    candidates["DoRA unmerged, materialised ‖V‖"] = forward(models["DoRA unmerged"], materialise=True)
    candidates[CONTROL] = forward(models["bare backbone"])  # same model again: the noise floor of a ratio
    wall, cpu = interleaved_clocks(candidates, repeats=repeats, warmup=3)
    return [[name, f"{1e3 * cpu[name]:.1f}", f"{cpu[name] / cpu['bare backbone']:.3f}",
             f"{1e3 * wall[name]:.1f}", f"{wall[name] / wall['bare backbone']:.3f}"] for name in candidates]


def interleaved_clocks(candidates: dict, repeats: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds per call, the candidates run in turn (A, B, A, B, …) after warm-up."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - wall_start)
    median = lambda times: {name: statistics.median(values) for name, values in times.items()}  # noqa: E731
    return median(wall), median(cpu)


# ---------------------------------------------------------------- 2. training step


def training_step(base: Backbone, tokens: torch.Tensor, variant: str):
    config, materialise = TRAINING_VARIANTS[variant]
    predictor = adapted(base, config).train()
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-4)
    labels = torch.arange(tokens.shape[0]) % 2

    def step():
        with materialised_norm(materialise):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(predictor(tokens), labels).backward()
            optimizer.step()
    return step


def memory_worker(variant: str, threads: int) -> None:
    """In a fresh process: peak extra resident memory of one steady-state training step."""
    torch.set_num_threads(threads)
    base = load_backbone(BACKBONE, random_init=True)
    step = training_step(base, make_tokens(base), variant)
    step()  # warm-up: AdamW state and allocator pools exist before the measured step
    print(f'{{"peak_bytes": {peak_memory(step, CPU)}}}')


def training(base: Backbone, tokens: torch.Tensor, repeats: int, threads: int) -> list[list[object]]:
    wall, cpu = interleaved_clocks({v: training_step(base, tokens, v) for v in TRAINING_VARIANTS}, repeats, warmup=2)
    reference, lora = cpu["full fine-tuning (bare backbone)"], cpu["LoRA"]
    rows = []
    for variant in TRAINING_VARIANTS:
        peak = run_worker(__spec__.name, [variant, str(threads)])["peak_bytes"]
        config = TRAINING_VARIANTS[variant][0]
        trainable = sum(p.numel() for p in adapted(base, config).parameters() if p.requires_grad)
        rows.append([variant, f"{trainable:,}", f"{1e3 * cpu[variant]:.1f}", f"{cpu[variant] / reference:.3f}",
                     f"{cpu[variant] / lora:.3f}", f"{1e3 * wall[variant]:.1f}", mib(peak)])
    return rows


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable on a shared machine; tiny ops gain little)")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        memory_worker(args.worker[0], int(args.worker[1]))
        return

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.time()
    base = load_backbone(BACKBONE, random_init=True)
    tokens = make_tokens(base)
    print("inference …", flush=True)
    inference_rows = inference(base, tokens, args.repeats)
    print(markdown_table(INFERENCE_HEADER, inference_rows), flush=True)
    print("training …", flush=True)
    training_rows = training(base, tokens, max(5, args.repeats // 3), args.threads)
    print(markdown_table(TRAINING_HEADER, training_rows), flush=True)
    load_after = os.getloadavg()[0]

    merged = {row[0]: float(row[2]) for row in inference_rows}  # CPU-time ratios
    worst_merged = max(merged["LoRA merged"], merged["DoRA merged"])
    residues = int((tokens > 3).sum())
    command = "`" + " ".join([".venv/bin/python -m benchmarks.adapter_overhead", *sys.argv[1:]]) + "`"
    report = f"""# Adapter overhead: LoRA and DoRA vs the bare ESM-2 8M backbone (CPU)

Command: {command}
Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; took {time.time() - started:.0f} s
Machine: {cpu_model()}, {os.cpu_count()} CPU cores visible; torch {torch.__version__} with {args.threads} intra-op thread(s); Python {platform.python_version()}
Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f} — a shared machine; variants were interleaved run by run so outside load hits all alike, but absolute times are noisy.

Model: `{BACKBONE}` architecture, random init; adapters r={RANK}, α={ALPHA:g} on q/k/v/out of all 6 layers, parameters perturbed (as after training).
Input: {BATCH} sequences of {MIN_RESIDUES}–{MAX_RESIDUES} residues ({residues} residues, padded to {tokens.shape[1]} tokens).

## Inference (forward, `torch.inference_mode`, median of {args.repeats} interleaved runs after 3 warm-up runs)

CPU ms = process CPU time per forward (`time.process_time`); with {args.threads} torch thread(s) it is the work done and is
robust to other jobs on the machine; wall ms is what a user waits and carries the outside load.

{markdown_table(INFERENCE_HEADER, inference_rows)}

Target merged ÷ bare ≤ 1.02 (CPU time): {'met' if worst_merged <= 1.02 else 'NOT met'} (worst merged ratio {worst_merged:.3f}). A merged layer runs the base `nn.Linear` on the folded weight; what remains is one wrapper call per adapted linear. The control row times the bare backbone a second time in the same interleaved loop: its distance from 1.000 is the noise of every ratio here.

## Training step (forward + cross-entropy + backward + AdamW; 2-class head; median of {max(5, args.repeats // 3)} interleaved runs after 2 warm-up steps; ratios by CPU time)

{markdown_table(TRAINING_HEADER, training_rows)}

Peak extra RSS: rise of the process's peak resident set (`VmHWM`, reset before the step) during one steady-state step, one fresh process per variant (`benchmarks/common.py: peak_memory`). It counts activations, gradients and temporaries the step allocates beyond what was resident just before it (weights, AdamW state from the warm-up step; free heap is trimmed first), including allocator slack; compare rows with each other.
Materialised ‖V‖ = `(W0 + s·B·A).norm(dim=1)` forming each out × in matrix, monkeypatched over `DoRALinear.direction_norm`; low-rank ‖V‖ = protadapt's expansion (memory out × r). `detach_norm=True` treats ‖V‖ as a constant in backward (DoRA paper §4.3).
"""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "adapter_overhead.md"
    out.write_text(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
