"""Padding and throughput of length-bucketed vs naive (random-order) batching, and packed
(padding-free) batches vs the length buckets.

    python -m benchmarks.padding [--batch-size 16] [--subset 256] [--repeats 2] [--arch tiny|8M] [--data-dir DIR]
        [--device cpu|cuda] [--tasks thermostability mic] [--archs 8M 35M] [--batches 1 4] [--rounds 3]
        [--attentions loop nested mask] [--skip-naive]

Data: the thermostability training set (1768 proteins, 250-550 residues). Padding fraction is
measured over the whole set (five seeds); throughput is residues per second of tokenisation
(loader with collation) alone over the whole set, and of tokenisation + forward pass of a
random-init ESM-2 (``tiny``: ``ESM2(2, 32, 4)``, default, as CPU time is scarce; ``8M``:
``ESM2(6, 320, 20)``) under ``torch.inference_mode`` over a seeded random subset, repeated with
the two strategies interleaved.

Packed vs bucketed (benchmarks/packing.py): the first batches of the training loader (the length
buckets) run padded, and packed with each block-diagonal attention; forward and LoRA
forward+backward, process CPU time (wall time synchronised on CUDA) in interleaved rounds.
Writes benchmarks/results/padding.md (`padding_cuda.md` with `--device cuda`, packed part only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import esm
import numpy as np
import torch
from esm.model.esm2 import ESM2
from torch.utils.data import DataLoader

from benchmarks import packing
from benchmarks.common import REPO, RESULTS_DIR, cpu_model, environment_line
from protadapt.data.datamodule import ProteinDataset, make_loader
from protadapt.data.tasks import DATA_DIR_ENV, get_task

RESULTS = RESULTS_DIR / "padding.md"
SEEDS = range(5)
ARCHITECTURES = {"tiny": (2, 32, 4), "8M": (6, 320, 20)}  # num_layers, embed_dim, attention_heads


def main() -> None:
    args = parse_args()
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    load_before = os.getloadavg()
    naive = "" if args.skip_naive or args.device != "cpu" else naive_section(args, alphabet)
    packed = packing.section(args, alphabet)
    report = header(args, load_before, os.getloadavg()) + naive + packed
    results = RESULTS if args.device == "cpu" else RESULTS.with_name(f"padding_{torch.device(args.device).type}.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(report)
    print(report)


def naive_section(args, alphabet) -> str:
    """Bucketed vs naive batching: padding fraction, tokenisation and tiny/8M forward throughput."""
    frame = get_task("thermostability").load(args.data_dir)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    subset = train.sample(n=min(args.subset, len(train)), random_state=0).reset_index(drop=True)
    loaders = {"bucketed": bucketed_loader, "naive": naive_loader}

    padding = {name: [padding_fraction(build(train, alphabet, args.batch_size, seed), alphabet) for seed in SEEDS]
               for name, build in loaders.items()}
    tokenise = {name: [] for name in loaders}
    forward = {name: [] for name in loaders}
    torch.manual_seed(0)
    num_layers, embed_dim, heads = ARCHITECTURES[args.arch]
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=heads, alphabet=alphabet).eval()
    for repeat in range(args.repeats):
        for name, build in loaders.items():
            tokenise[name].append(residues_per_second(lambda: build(train, alphabet, args.batch_size, repeat), None))
            forward[name].append(residues_per_second(lambda: build(subset, alphabet, args.batch_size, repeat), model))
            print(f"repeat {repeat} {name}: tokenise {tokenise[name][-1]:,.0f}/s, +forward {forward[name][-1]:,.0f}/s", flush=True)

    return format_naive(args, len(train), len(subset), padding, tokenise, forward)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--subset", type=int, default=256, help="proteins in the forward-pass timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="tiny", help="random-init ESM-2 for the forward timing")
    parser.add_argument("--data-dir", default=None, help=f"default: ${DATA_DIR_ENV}, else ../shared/data beside the repo")
    parser.add_argument("--skip-naive", action="store_true", help="only the packed-vs-bucketed section")
    packing.add_arguments(parser)
    args = parser.parse_args()
    shared = REPO.parent / "shared" / "data"
    if args.data_dir is None and not os.environ.get(DATA_DIR_ENV) and shared.is_dir():
        args.data_dir = str(shared)  # the CI layout
    return args


def bucketed_loader(frame, alphabet, batch_size: int, seed: int) -> DataLoader:
    return make_loader(frame, alphabet, batch_size, shuffle=True, seed=seed)


def naive_loader(frame, alphabet, batch_size: int, seed: int) -> DataLoader:
    """Random order, consecutive rows form a batch: what a plain shuffled DataLoader does."""
    dataset = ProteinDataset(frame, alphabet)
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    return DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=dataset.collate)


def padding_fraction(loader: DataLoader, alphabet) -> float:
    padded = total = 0
    for batch in loader:
        padded += int((batch["tokens"] == alphabet.padding_idx).sum())
        total += batch["tokens"].numel()
    return padded / total


def residues_per_second(build, model) -> float:
    """Residues (no BOS/EOS/padding) per wall-clock second of building, iterating and (optionally) the forward."""
    start = time.perf_counter()
    loader = build()
    residues = 0
    with torch.inference_mode():
        for batch in loader:
            residues += int(loader.dataset.lengths[batch["index"].numpy()].sum())
            if model is not None:
                model(batch["tokens"])
    return residues / (time.perf_counter() - start)


def header(args, load_before, load_after) -> str:
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = threads + " ".join(["python -m benchmarks.padding", *sys.argv[1:]])
    return "\n".join([
        "# Padding: length-bucketed vs naive batching, packed vs bucketed batches",
        "",
        f"Command: `{command}`",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores visible; {environment_line(torch.device(args.device))}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(a shared machine: other jobs ran at the same time; candidates were interleaved round by round)",
        "",
        "",
    ])


def format_naive(args, n_train, n_subset, padding, tokenise, forward) -> str:
    def mean(values):
        return statistics.mean(values)

    speedup = mean(forward["bucketed"]) / mean(forward["naive"])
    lines = [
        "## Length-bucketed vs naive batching",
        "",
        f"Data: thermostability train, {n_train} proteins (250-550 residues); batch size {args.batch_size}. "
        "Bucketed = `make_loader(shuffle=True)`: shuffle, sort by length inside chunks of 16 batches, shuffle "
        "batch order. Naive = random order, consecutive rows batched. Throughput in wall-clock residues/s.",
        "",
        f"| strategy | padding fraction (whole set, 5 seeds) | tokenise residues/s (whole set) | tokenise + ESM-2 {args.arch} forward residues/s |",
        "|---|---|---|---|",
    ]
    for name in ("bucketed", "naive"):
        lines.append(
            f"| {name} | {mean(padding[name]):.3f} (min {min(padding[name]):.3f}, max {max(padding[name]):.3f}) "
            f"| {mean(tokenise[name]):,.0f} | {mean(forward[name]):,.0f} |"
        )
    lines += [
        "",
        f"Forward timing: random-init `ESM2{ARCHITECTURES[args.arch]}` (num_layers, embed_dim, heads), `torch.inference_mode`, "
        f"a seeded random subset of {n_subset} proteins, mean of {args.repeats} repeats. "
        f"Bucketed is {speedup:.2f}x the naive throughput there.",
        "Padding fraction = padding tokens / all tokens of the token tensors (BOS/EOS count as non-padding).",
        "",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
