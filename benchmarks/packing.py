"""Packed (padding-free) vs length-bucketed batches, the second part of `benchmarks.padding`.

The first batches of each task's training loader (`make_loader(shuffle=True)`: today's length
buckets) run through a random-init ESM-2 with LoRA (rank 8, attention linears), padded
(`packing=off`) and packed with each block-diagonal attention of protadapt/backbones/packing.py.
Forward (`inference_mode`) and forward+backward (a LoRA training step) are timed in interleaved
rounds: process CPU time on a CPU (robust to other processes' load), synchronised wall time on
CUDA; the median round is reported. The packed outputs are checked against the padded ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from itertools import cycle, islice

import torch

from benchmarks.common import markdown_table, synchronize
from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.backbones.packing import AUTO, attention_for
from protadapt.data.datamodule import make_loader
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

ARCHS = {"tiny": "tiny", "8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D", "150M": "esm2_t30_150M_UR50D",
         "650M": "esm2_t33_650M_UR50D"}
MODES = ("forward", "forward+backward")


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", nargs="+", default=["thermostability", "mic"])
    parser.add_argument("--archs", nargs="+", default=["8M"],
                        help=f"{', '.join(ARCHS)}; ARCH:TASK[,TASK] times that backbone on those tasks only")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="training batches per task, in --tasks order")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (after one warm-up)")
    parser.add_argument("--attentions", nargs="+", default=["loop", "nested", "mask"],
                        help="packed attentions to time (loop, nested, mask, flex)")
    parser.add_argument("--mask-max-tokens", type=int, default=2048,
                        help="time `mask` only where a packed batch has at most this many tokens (its work is L²)")


def section(args, alphabet) -> str:
    """The packed-vs-bucketed table for every task × backbone × mode."""
    device = torch.device(args.device)
    rows = []
    for task, count in zip(args.tasks, cycle(args.batches)):
        batches = first_batches(task, alphabet, args.batch_size, count, args.data_dir)
        for spec in args.archs:
            arch, _, only = spec.partition(":")
            if not only or task in only.split(","):
                rows += measure(task, arch, batches, device, args)
    return format_section(rows, args, device)


def first_batches(task: str, alphabet, batch_size: int, count: int, data_dir) -> list[torch.Tensor]:
    """The first `count` token batches the training loader (length buckets) gives on the whole train split."""
    frame = get_task(task).load(data_dir)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    loader = make_loader(train, alphabet, batch_size, shuffle=True, seed=0)
    return [batch["tokens"] for batch in islice(loader, count)]


def measure(task: str, arch: str, batches: list[torch.Tensor], device: torch.device, args) -> list[dict]:
    torch.manual_seed(0)
    model = ProteinPredictor(load_backbone(ARCHS[arch], random_init=True), HeadConfig(dropout=0.0),
                             AdapterConfig(method="lora")).to(device)
    batches = [tokens.to(device) for tokens in batches]
    pad = model.backbone.alphabet.padding_idx
    stream = max(int((t != pad).sum()) for t in batches)
    attentions = [a for a in args.attentions if a != "mask" or stream <= args.mask_max_tokens]
    names = ["off", *attentions]
    padding = sum(int((t == pad).sum()) for t in batches) / sum(t.numel() for t in batches)
    rows = []
    for mode in MODES:
        seconds = interleaved({name: partial(run, model, batches, name, mode) for name in names}, device, args.rounds)
        rows.append({"task": task, "arch": arch, "mode": mode, "sequences": sum(len(t) for t in batches),
                     "tokens": sum(int((t != pad).sum()) for t in batches), "padding": padding, "seconds": seconds,
                     "diff": max(output_diff(model, batches[0], name) for name in attentions)})
        print(f"{task} {arch} {mode}: " + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in seconds.items()), flush=True)
    return rows


def run(model: ProteinPredictor, batches: list[torch.Tensor], packing: str, mode: str) -> None:
    model.backbone.packing = packing
    for tokens in batches:
        if mode == "forward":
            with torch.inference_mode():
                model.eval()(tokens)
        else:
            model.train().zero_grad(set_to_none=True)
            model(tokens).float().pow(2).mean().backward()


def output_diff(model: ProteinPredictor, tokens: torch.Tensor, packing: str) -> float:
    """Largest |packed − padded| of the predictor's outputs on one batch (float32)."""
    with torch.inference_mode():
        model.eval().backbone.packing = "off"
        padded = model(tokens)
        model.backbone.packing = packing
        return float((model(tokens) - padded).abs().max())


def interleaved(candidates: dict[str, Callable[[], None]], device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per call (process CPU time on a CPU, synced wall time on CUDA), candidates in turn."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    for fn in candidates.values():  # warm-up: allocator, caches, flex's compilation
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def format_section(rows: list[dict], args, device: torch.device) -> str:
    clock = "process CPU ms" if device.type == "cpu" else "synced wall ms"
    header = ["task", "backbone", "batches: seq / tokens / padding", "mode", f"padded ({clock})",
              *[f"packed {name} (× padded)" for name in args.attentions], "fastest", "max abs Δ output"]
    table = []
    for row in rows:
        base = row["seconds"]["off"]
        fastest = min(row["seconds"], key=row["seconds"].get)
        table.append([row["task"], row["arch"], f"{row['sequences']} / {row['tokens']} / {row['padding']:.3f}",
                      row["mode"], f"{1e3 * base:.0f}",
                      *[f"{1e3 * row['seconds'][n]:.0f} ({row['seconds'][n] / base:.2f})" if n in row["seconds"]
                        else "not timed (L²)" for n in args.attentions],
                      "padded" if fastest == "off" else fastest, f"{row['diff']:.1e}"])
    auto = attention_for("auto", device.type)
    cuda = "" if device.type == "cuda" else (
        f" On CUDA `auto` resolves to {attention_for('auto', 'cuda')}: the expected winner (varlen kernels), "
        "unmeasured until the GPU run (`bash benchmarks/gpu.sh` writes padding_cuda.md).")
    return "\n".join([
        f"## Packed (padding-free) vs length-bucketed batches ({device.type})",
        "",
        f"The first training batches (batch size {args.batch_size}, today's length buckets) of each task, random-init "
        f"ESM-2 + LoRA (rank 8, attention), padded vs packed; median of {args.rounds} interleaved rounds after a "
        "warm-up; forward under `inference_mode`, forward+backward = one LoRA step (loss = mean squared output). "
        "`loop`: one SDPA per sequence; `nested`: SDPA on jagged nested tensors; `mask`: one SDPA over the "
        "whole stream with a boolean block-diagonal mask (timed only up to "
        f"{args.mask_max_tokens} tokens per batch); `flex`: compiled FlexAttention with a block mask.",
        "",
        markdown_table(header, table),
        "",
        f"`data.packing=auto` on {device.type} resolves to: {auto or 'padded (length buckets)'} "
        f"(protadapt/backbones/packing.py `AUTO` = {AUTO}).{cuda}",
        "",
    ])
