"""The limit as the yardstick: an adapter step against the frozen backbone's own forward + backward.

    python -m benchmarks.limit                      # 8M and 35M, CPU: writes benchmarks/results/limit.md
    python -m benchmarks.limit --device cuda        # writes limit_cuda.md

The bare pass ("limit") is the backbone with every weight frozen and gradients of activations only:
a trainable scalar multiplies the input embeddings (a forward hook on `embed_tokens`), so backward
runs through every layer but computes no weight gradient; the head trains as in every other row.
Against it: a LoRA step, a DoRA step and a BiDoRA `darts` step (r=8, α=16 on q/k/v/out), each the
module's real step inside a `lightning.Trainer` (`benchmarks.train_step.run_steps`), so the loop,
loss and AdamW are the same in every row. Batches: the 16 longest bbb training peptides, and
thermostability proteins (the first `--thermo-n` of the training split with at most
`--thermo-max` residues, padded once). Ratios use process CPU time on the CPU (synchronised wall
time on a GPU), methods in interleaved rounds, medians after a warm-up step per round.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys

import torch
from torch import nn

from benchmarks import train_step
from benchmarks.common import cpu_model, environment_line, markdown_table, write_result
from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.config import OptimConfig
from protadapt.data.datamodule import make_loader
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.module import PredictorModule

ARCHS = {"tiny": "tiny", "8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D", "150M": "esm2_t30_150M_UR50D",
         "650M": "esm2_t33_650M_UR50D"}
METHODS = {"limit (frozen, activation grads only)": None, "LoRA": "LoRA", "DoRA": "DoRA",
           "BiDoRA darts": "BiDoRA darts (Betty's, default)"}
GOALS = {"LoRA": 1.10, "DoRA": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["8M", "35M"], choices=sorted(ARCHS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round; the first is warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bbb-n", type=int, default=16)
    parser.add_argument("--thermo-n", type=int, default=4)
    parser.add_argument("--thermo-max", type=int, default=400, help="longest thermostability protein kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    batches = {"bbb": peptide_batch(args.bbb_n), "thermostability": protein_batch(args.thermo_n, args.thermo_max)}
    rows = []
    for arch in args.archs:
        train_step.use(args.device, ARCHS[arch])
        for task, batch in batches.items():
            rows += ratio_rows(arch, task, batch, measure(batch, args.repeats, args.steps))
    write_report(args, batches, rows, load_before, os.getloadavg()[0])


def peptide_batch(n: int) -> dict:
    """The `n` longest bbb training peptides, one fixed padded batch."""
    frame = get_task("bbb").load()
    train = frame[frame["split"] == "train"]
    return fixed_batch(train.assign(length=train["sequence"].str.len()).nlargest(n, "length", keep="first"))


def protein_batch(n: int, longest: int) -> dict:
    """The first `n` thermostability training proteins of at most `longest` residues."""
    frame = get_task("thermostability").load()
    train = frame[(frame["split"] == "train") & (frame["sequence"].str.len() <= longest)]
    return fixed_batch(train.head(n))


def fixed_batch(frame) -> dict:
    loader = make_loader(frame.reset_index(drop=True), load_backbone("tiny").alphabet, len(frame), shuffle=False,
                         problem_type="classification")
    return next(iter(loader))


def bare_module() -> PredictorModule:
    """Every backbone weight frozen; a trainable scalar on the input embeddings carries backward through all layers."""
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(train_step.BACKBONE, random_init=True), HeadConfig(),
                                 AdapterConfig(method="head"))
    predictor.activation_scale = nn.Parameter(torch.ones(()))
    embed = predictor.backbone.model.embed_tokens
    embed.register_forward_hook(lambda module, inputs, output: output * predictor.activation_scale)
    assert not any(p.requires_grad for p in predictor.backbone.parameters())
    return PredictorModule(predictor, OptimConfig(lr=1e-3))


def measure(batch: dict, repeats: int, steps: int) -> dict[str, float]:
    """Median `train_step.clock()` seconds per step of each method, in interleaved rounds."""
    modules = {name: bare_module() if key is None else train_step.build_module(key) for name, key in METHODS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(repeats):
        for name, module in modules.items():
            clock = train_step.StepClock()
            train_step.run_steps(module, batch, steps, [clock])
            seconds[name] += clock.cpu[1:]
    return {name: statistics.median(values) for name, values in seconds.items()}


def ratio_rows(arch: str, task: str, batch: dict, seconds: dict[str, float]) -> list[list[str]]:
    bare = seconds[next(iter(METHODS))]
    shape = "×".join(str(d) for d in batch["tokens"].shape)
    rows = []
    for name, value in seconds.items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"≤ {goal:.2f}×: {'met' if value / bare <= goal else 'not met'}"
        rows.append([arch, task, shape, name, f"{1e3 * value:.1f}", f"{value / bare:.2f}", verdict])
    return rows


def write_report(args, batches: dict, rows: list, load_before: float, load_after: float) -> None:
    device = train_step.DEVICE
    work = "CPU ms / step" if device.type == "cpu" else "GPU ms / step (synced wall)"
    lengths = {task: ((b["tokens"] != 1).sum(1) - 2) for task, b in batches.items()}
    span = "; ".join(f"{task} {int(v.min())}–{int(v.max())} residues" for task, v in lengths.items())
    text = f"""# The limit: adapter steps ÷ the frozen backbone's forward + backward

Command: `python -m benchmarks.limit {' '.join(sys.argv[1:])}` ({args.repeats} rounds × {args.steps} steps, first of each round warm-up).

Machine: {cpu_model()}; {environment_line(device)}. Load average {load_before:.1f} before and {load_after:.1f} after
(shared machine: other jobs came and went; the ratios use process CPU time, which moves much less with
outside load than wall time, but contention for caches still adds noise of a few per cent).

Batches: {span}. Random-init architectures (the cost does not depend on the weights).

{markdown_table(["backbone", "task", "batch (B×T)", "step", work, "÷ limit", "goal"], rows)}

The limit row is the whole Lightning step with a frozen backbone (forward, loss, backward with
activation gradients only, AdamW on the head and one scalar); the other rows are the same step
with the method's adapters, so each ratio is what the adapter adds to the pass itself.
"""
    write_result(text, "limit", device)


if __name__ == "__main__":
    main()
