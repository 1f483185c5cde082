"""Training-step cost of each method through the real Lightning modules, and one whole default fit.

    .venv/bin/python benchmarks/train_step.py [--repeats 6] [--threads 1] [--skip-fit]

Model: the exact ESM-2 8M architecture, random init; adapters r=8, α=16 on q/k/v/out. Batch: the
16 longest bbb training peptides (fixed, padded once). Every method runs its own module's step inside a `lightning.Trainer`:
`AdapterModule` (forward + loss + backward + AdamW, automatic optimisation) for LoRA, DoRA and
full fine-tuning; `BiDoRAModule.training_step` (lower step, hypergradient, upper step) for BiDoRA
first-order and DARTS, with the same batch as inner_train and inner_val. A callback times each
step (wall and process CPU time); methods run in rounds (A, B, C, …, A, B, C, …) so outside
load hits all alike; medians after warm-up. Ratios use CPU time, which with one torch thread is
the work done and barely moves when other jobs compete for the cores. Peak memory: rise of the
peak resident set during one steady-state `fit` of one step, in a fresh process per method
(`common.peak_memory`). Then `protadapt fit --task bbb --backbone esm2_t6_8M_UR50D --random-init`
(all defaults) is timed once. Writes `benchmarks/results/train_step.md`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_overhead import cpu_model  # noqa: E402
from common import RESULTS_DIR, markdown_table, mib, peak_memory, run_worker  # noqa: E402

import lightning as L  # noqa: E402

from protadapt.adapters import AdapterConfig  # noqa: E402
from protadapt.backbones import load_backbone  # noqa: E402
from protadapt.config import BilevelConfig, OptimConfig  # noqa: E402
from protadapt.data.datamodule import make_loader  # noqa: E402
from protadapt.data.tasks import get_task  # noqa: E402
from protadapt.heads import HeadConfig, ProteinPredictor  # noqa: E402
from protadapt.training.bilevel import BiDoRAModule  # noqa: E402
from protadapt.training.module import AdapterModule  # noqa: E402

BACKBONE = "esm2_t6_8M_UR50D"
BATCH = 16
RANK, ALPHA = 8, 16.0
CPU = torch.device("cpu")
REFERENCE = "DoRA"
METHODS = {  # name -> (adapter method, hypergradient for BiDoRA, lower steps per upper step)
    "LoRA": ("lora", None, 1),
    "DoRA": ("dora", None, 1),
    "BiDoRA first-order": ("bidora", "first_order", 1),
    "BiDoRA DARTS": ("bidora", "darts", 1),
    "BiDoRA first-order, unroll_steps=2": ("bidora", "first_order", 2),
    "BiDoRA DARTS, unroll_steps=2": ("bidora", "darts", 2),
    "full fine-tuning": ("full", None, 1),
}
TARGETS = {"BiDoRA first-order": 1.5, "BiDoRA DARTS": 3.0,
           "BiDoRA first-order, unroll_steps=2": 1.5, "BiDoRA DARTS, unroll_steps=2": 3.0}
HEADER = ["method", "CPU ms / step (median)", "÷ DoRA (CPU)", "wall ms / step", "÷ DoRA (wall)", "peak extra RSS MiB",
          "target"]
FIT_COMMAND = ["fit", "--task", "bbb", "--backbone", BACKBONE, "--random-init", "--quiet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (each runs every method's steps)")
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round; the first is warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-fit", action="store_true", help="do not time the whole default fit")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return memory_worker(args.worker[0], int(args.worker[1]))

    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    batch = bbb_batch()
    wall, cpu = step_times(batch, args.repeats, args.steps)
    rows = []
    for name in METHODS:
        peak = run_worker(Path(__file__), [name, str(args.threads)])["peak_bytes"]
        ratio = cpu[name] / cpu[REFERENCE]
        target = TARGETS.get(name)
        verdict = "" if target is None else f"≤ {target}× : {'met' if ratio <= target else 'NOT met'}"
        rows.append([name, f"{1e3 * cpu[name]:.0f}", f"{ratio:.2f}", f"{1e3 * wall[name]:.0f}",
                     f"{wall[name] / wall[REFERENCE]:.2f}", mib(peak), verdict])
    fit_seconds = None if args.skip_fit else time_default_fit(args.threads)
    load_after = os.getloadavg()[0]
    write_report(args, batch, rows, fit_seconds, load_before, load_after)


def bbb_batch() -> dict:
    """The 16 longest bbb training peptides (28–53 residues), one fixed padded batch."""
    frame = get_task("bbb").load()
    train = frame[frame["split"] == "train"]
    longest = train.assign(length=train["sequence"].str.len()).nlargest(BATCH, "length", keep="first")
    alphabet = load_backbone("tiny").alphabet
    loader = make_loader(longest.reset_index(drop=True), alphabet, BATCH, shuffle=False,
                         problem_type="classification")
    return next(iter(loader))


def build_module(name: str) -> L.LightningModule:
    method, hypergradient, unroll_steps = METHODS[name]
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(BACKBONE, random_init=True), HeadConfig(),
                                 AdapterConfig(method=method, rank=RANK, alpha=ALPHA))
    optim = OptimConfig(lr=1e-5 if method == "full" else 1e-3)
    if method == "bidora":
        return BiDoRAModule(predictor, optim, BilevelConfig(hypergradient=hypergradient, unroll_steps=unroll_steps))
    return AdapterModule(predictor, optim)


class StepClock(L.Callback):
    """Wall and process-CPU seconds of each training step (hooks around the whole step)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def run_steps(module: L.LightningModule, batch: dict, steps: int, callbacks=()) -> None:
    """`steps` training steps of `module` on `batch`, in a fresh Trainer (no logging, no checkpoints)."""
    item = {"inner_train": batch, "inner_val": batch} if isinstance(module, BiDoRAModule) else batch
    trainer = L.Trainer(max_epochs=1, accelerator="cpu",  # one epoch = `steps` batches (BiDoRA counts 2 per step)
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), num_sanity_val_steps=0,
                        gradient_clip_val=None if isinstance(module, BiDoRAModule) else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=DataLoader([item] * steps, batch_size=None))


def step_times(batch: dict, repeats: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    modules = {name: build_module(name) for name in METHODS}
    clocks = {name: StepClock() for name in METHODS}
    for _ in range(repeats):
        for name, module in modules.items():
            clock = StepClock()
            run_steps(module, batch, steps, [clock])
            clocks[name].wall += clock.wall[1:]  # the first step of each fit is warm-up
            clocks[name].cpu += clock.cpu[1:]
    # with unroll_steps > 1 the steps alternate between cheap and dear: their mean is the cost per step
    average = {n: statistics.mean if METHODS[n][2] > 1 else statistics.median for n in METHODS}
    return ({n: average[n](c.wall) for n, c in clocks.items()},
            {n: average[n](c.cpu) for n, c in clocks.items()})


def memory_worker(name: str, threads: int) -> None:
    """In a fresh process: peak extra resident memory of a one-step fit after a warm-up fit."""
    torch.set_num_threads(threads)
    batch = bbb_batch()
    module = build_module(name)
    run_steps(module, batch, 2)
    print(f'{{"peak_bytes": {peak_memory(lambda: run_steps(module, batch, 1), CPU)}}}')


def time_default_fit(threads: int) -> float:
    protadapt = Path(sys.executable).with_name("protadapt")
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([str(protadapt), *FIT_COMMAND, "--out", out], check=True, env=environment,
                       capture_output=True)
        return time.perf_counter() - start


PASS_COUNT_NOTE = """
Why the BiDoRA targets are missed at `unroll_steps=1`: the cost is in the number of forward + backward passes per step,
not in overhead. DoRA: 1. BiDoRA first-order: 2 (lower step on inner_train; upper step, the
gradient of the inner_val loss with respect to the magnitudes, which still back-propagates through
every layer). BiDoRA DARTS: 4 (the lower gradient is reused for the virtual step, then the
inner_val gradient at V′, then the two finite-difference passes at V⁺ and V⁻). So ≈ 2× and ≈ 4×
DoRA is what the algorithm costs at `bilevel.unroll_steps=1`. With the
upper step every k lower steps (`bilevel.unroll_steps=k`) the expected cost is (1 + 1/k)× and
(1 + 3/k)× DoRA: k=2 gives ≈ 1.5× and ≈ 2.5× by the pass count (the `unroll_steps=2` rows measure it;
those rows average over steps, since upper steps come every second step).

Threads: on this shared 2-core machine torch's default of 2 threads was ~100× slower than 1 thread
for small ops while other jobs ran (a 16×50×32 linear: 20.7 ms vs 0.18 ms), hence `--threads 1` and
`OMP_NUM_THREADS=1` for the whole fit; on a dedicated machine use the default.
"""


def write_report(args, batch: dict, rows: list, fit_seconds: float | None, load_before: float,
                 load_after: float) -> None:
    residues = (batch["tokens"] != 1).sum(1) - 2
    command = "python benchmarks/train_step.py" + (f" --repeats {args.repeats}" if args.repeats != 6 else "") \
        + (" --skip-fit" if args.skip_fit else "")
    fit_line = "not run (--skip-fit)" if fit_seconds is None else \
        f"**{fit_seconds:.0f} s** wall for `protadapt {' '.join(FIT_COMMAND)} --out …` (LoRA, 20 epochs max, " \
        f"early stopping patience 5, inner validation each epoch, then test-set evaluation and figures; " \
        f"OMP_NUM_THREADS={args.threads})"
    text = f"""# Training step: LoRA, DoRA, BiDoRA, full fine-tuning (ESM-2 8M, random init, CPU)

Command: `{command}` (all defaults: {args.repeats} rounds × {args.steps} steps per method, first step of each round is warm-up).

Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with {args.threads} thread(s).
Load average {load_before:.1f} before and {load_after:.1f} after the measurement (the machine has 2 cores and
was at times shared with other jobs); methods ran in interleaved rounds and ratios use process CPU time,
which is much less sensitive to outside load than wall time.

Batch: the 16 longest bbb training peptides ({int(residues.min())}–{int(residues.max())} residues, padded to
{batch['tokens'].shape[1]} tokens), 2-class head, mean pooling. Adapters r={RANK}, α={ALPHA:g} on q/k/v/out of all 6 layers.
Each step is the module's real step inside a `lightning.Trainer`: `AdapterModule` (forward, cross-entropy,
backward, gradient clipping, AdamW, LR schedule) or `BiDoRAModule.training_step` with unroll_steps=1 (lower
step on directions + head, hypergradient, upper step on magnitudes; the same batch as inner_train and
inner_val). Full fine-tuning trains all 7.8 M backbone weights.

{markdown_table(HEADER, rows)}

Targets: BiDoRA first-order ≤ 1.5× DoRA, BiDoRA DARTS ≤ 3× DoRA (CPU time). Peak extra RSS: rise of the
process's peak resident set during one steady-state one-step `fit` after a warm-up fit, in a fresh process
per method (`benchmarks/common.py: peak_memory`); it includes allocator slack and the Trainer's small
per-fit allocations, so compare rows with each other.
{PASS_COUNT_NOTE}
## A whole default fit

{fit_line}.
"""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "train_step.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
