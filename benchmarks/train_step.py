"""Training-step cost of each method through the real Lightning modules, and one whole default fit.

    .venv/bin/python -m benchmarks.train_step [--repeats 6] [--threads 1] [--skip-fit]
    .venv/bin/python -m benchmarks.train_step --device cuda --backbone esm2_t33_650M_UR50D

Model: the exact ESM-2 8M architecture, random init; adapters r=8, α=16 on q/k/v/out. Batch: the
16 longest bbb training peptides (fixed, padded once). Every method runs its own module's step inside a `lightning.Trainer`:
`PredictorModule` (forward + loss + backward + AdamW, automatic optimisation) for LoRA, DoRA and
full fine-tuning; `BiDoRAModule.training_step` (lower step, hypergradient, upper step) for BiDoRA
(all four hypergradients), with the same batch as inner_train and inner_val; and PEFT's LoRA on
transformers' ESM with the same weights (`vs_peft.build_pair`), the unfused LoRA step the official
BiDoRA figure is counted in, so the #14 targets are read in both units. A callback times each
step (wall, and process CPU time or synchronised GPU time); methods run in rounds (A, B, C, …, A, B, C, …) so outside
load hits all alike; medians after warm-up. Ratios use CPU time, which with one torch thread is
the work done and barely moves when other jobs compete for the cores. Peak memory: rise of the
peak resident set during one steady-state `fit` of one step, in a fresh process per method
(`common.peak_memory`). Then `protadapt fit --task bbb --backbone esm2_t6_8M_UR50D --random-init`
(all defaults) is timed once. Writes `benchmarks/results/train_step.md` (other backbones or `--device cuda`:
`train_step_BACKBONE_DEVICE.md`).
"""

from __future__ import annotations

import argparse
import logging
import math
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

from benchmarks.common import RESULTS_DIR, cpu_model, markdown_table, mib, peak_memory, pick_device, run_worker

import lightning as L

from protadapt.adapters import AdapterConfig
from protadapt.backbones import load_backbone
from protadapt.config import BilevelConfig, OptimConfig
from protadapt.data.datamodule import make_loader
from protadapt.data.tasks import get_task
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training.bilevel import BiDoRAModule
from protadapt.training.module import PredictorModule

BACKBONE = "esm2_t6_8M_UR50D"
BATCH = 16
RANK, ALPHA = 8, 16.0
DEVICE = torch.device("cpu")  # --device; main() and the memory worker set it
# the unit the official BiDoRA figure is counted in: a LoRA step of the unfused kind (W0·x + B·A·x, as the
# official code's loralib layers and PEFT compute it), on transformers' ESM with the same weights
PEFT_LORA = "PEFT LoRA (reference unit)"
METHODS = {  # name -> (adapter method, hypergradient for BiDoRA, lower steps per upper step)
    "LoRA": ("lora", None, 1),
    "DoRA": ("dora", None, 1),
    "BiDoRA first_order": ("bidora", "first_order", 1),
    "BiDoRA darts (Betty's, default)": ("bidora", "darts", 1),
    "BiDoRA darts_one_sided": ("bidora", "darts_one_sided", 1),
    "BiDoRA darts_unrolled": ("bidora", "darts_unrolled", 1),
    "BiDoRA darts, unroll_steps=2": ("bidora", "darts", 2),
    "full fine-tuning": ("full", None, 1),
    PEFT_LORA: ("peft_lora", None, 1),
}
# issue #14: the official code's reported cost (3.92× LoRA) for darts, 3.0× LoRA for its one-sided form
TARGETS = {"BiDoRA darts (Betty's, default)": 3.92, "BiDoRA darts_one_sided": 3.0}


def header() -> list[str]:
    work, memory = ("CPU", "peak extra RSS MiB") if DEVICE.type == "cpu" else ("GPU (synced wall)", "peak extra CUDA MiB")
    return ["method", f"{work} ms / step", f"÷ LoRA ({work})", f"÷ DoRA ({work})", f"÷ PEFT LoRA ({work})",
            "wall ms / step", "÷ LoRA (wall)", memory, "target: ÷ LoRA, ÷ PEFT LoRA"]


def fit_command() -> list[str]:
    accelerator = ["--accelerator", "gpu"] if DEVICE.type == "cuda" else []
    return ["fit", "--task", "bbb", "--backbone", BACKBONE, "--random-init", "--quiet", *accelerator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (each runs every method's steps)")
    # after the warm-up step, a whole number of upper-step cycles for every unroll_steps value
    cycle = math.lcm(*(unroll for _, _, unroll in METHODS.values()))
    parser.add_argument("--steps", type=int, default=1 + cycle,
                        help=f"steps per method per round; the first is warm-up (default 1 + {cycle})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (CPU time) or cuda (synchronised wall time)")
    parser.add_argument("--backbone", default=BACKBONE, help="e.g. esm2_t33_650M_UR50D on a GPU")
    parser.add_argument("--skip-fit", action="store_true", help="do not time the whole default fit")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "THREADS", "DEVICE", "BACKBONE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return memory_worker(*args.worker)
    use(args.device, args.backbone)

    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    batch = bbb_batch()
    wall, cpu = step_times(batch, args.repeats, args.steps)
    rows = []
    for name in cpu:
        peak = run_worker(__spec__.name, [name, str(args.threads), str(DEVICE), BACKBONE])["peak_bytes"]
        per_peft = f"{cpu[name] / cpu[PEFT_LORA]:.2f}" if PEFT_LORA in cpu else "–"
        rows.append([name, f"{1e3 * cpu[name]:.0f}", f"{cpu[name] / cpu['LoRA']:.2f}", f"{cpu[name] / cpu['DoRA']:.2f}",
                     per_peft, f"{1e3 * wall[name]:.0f}", f"{wall[name] / wall['LoRA']:.2f}", mib(peak),
                     verdict(name, cpu)])
    scaling = batch_scaling(batch)
    fit_seconds = None if args.skip_fit else time_default_fit(args.threads)
    load_after = os.getloadavg()[0]
    write_report(args, batch, rows, scaling, fit_seconds, load_before, load_after, cpu)


def verdict(name: str, cpu: dict[str, float]) -> str:
    target = TARGETS.get(name)
    if target is None:
        return ""
    met = lambda unit: f"{'met' if cpu[name] / cpu[unit] <= target else 'NOT met'} ({cpu[name] / cpu[unit]:.3f})"  # noqa: E731
    return f"≤ {target}×: " + ", ".join(met(unit) for unit in ("LoRA", PEFT_LORA) if unit in cpu)


def use(device: str, backbone: str) -> None:
    global DEVICE, BACKBONE
    DEVICE, BACKBONE = pick_device(device), backbone


def clock() -> float:
    """Process CPU time on the CPU (the work done, robust to other jobs); synchronised wall time on a GPU."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        return time.perf_counter()
    return time.process_time()


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
    if method == "peft_lora":
        return PeftLoRAModule()
    predictor = ProteinPredictor(load_backbone(BACKBONE, random_init=True), HeadConfig(),
                                 AdapterConfig(method=method, rank=RANK, alpha=ALPHA))
    optim = OptimConfig(lr=1e-5 if method == "full" else 1e-3)
    if method == "bidora":
        return BiDoRAModule(predictor, optim, BilevelConfig(hypergradient=hypergradient, unroll_steps=unroll_steps))
    return PredictorModule(predictor, optim)


def has_peft_twin() -> bool:
    """Whether `vs_peft` can build the backbone in transformers (not the tiny test model)."""
    from benchmarks.vs_peft import ARCHS

    return BACKBONE in ARCHS.values()


class PeftLoRAModule(L.LightningModule):
    """PEFT's LoRA (r, α and targets as ours) on transformers' `EsmForSequenceClassification` holding the
    same backbone weights (`vs_peft.build_pair`): forward, cross-entropy, backward, clipping, AdamW."""

    def __init__(self):
        super().__init__()
        from benchmarks.vs_peft import ARCHS, build_pair

        arch = {checkpoint: key for key, checkpoint in ARCHS.items()}[BACKBONE]
        self.peft = build_pair(arch, "LoRA", DEVICE, with_ours=False)[1]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"]
        mask = tokens.ne(self.peft.config.pad_token_id)
        return torch.nn.functional.cross_entropy(self.peft(input_ids=tokens, attention_mask=mask).logits,
                                                 batch["labels"])

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.peft.parameters() if p.requires_grad], lr=1e-3)


class StepClock(L.Callback):
    """Wall and `clock()` seconds of each training step (hooks around the whole step)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        work = clock()
        self._start = (time.perf_counter(), work)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        work = clock()
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(work - self._start[1])


def run_steps(module: L.LightningModule, batch: dict, steps: int, callbacks=()) -> None:
    """`steps` training steps of `module` on `batch`, in a fresh Trainer (no logging, no checkpoints)."""
    item = {"inner_train": batch, "inner_val": batch} if isinstance(module, BiDoRAModule) else batch
    trainer = L.Trainer(max_epochs=1,  # one epoch = `steps` batches
                        accelerator="gpu" if DEVICE.type == "cuda" else "cpu",
                        devices=[DEVICE.index or 0] if DEVICE.type == "cuda" else 1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), num_sanity_val_steps=0,
                        gradient_clip_val=None if isinstance(module, BiDoRAModule) else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=DataLoader([item] * steps, batch_size=None))


def batch_scaling(batch: dict, runs: int = 7) -> tuple[float, float]:
    """`clock()` seconds of one DoRA forward + backward (to the magnitudes) over the batch and over it
    twice stacked — what batching the DARTS V⁺/V⁻ pair into one forward would cost against two passes."""
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(BACKBONE, random_init=True), HeadConfig(),
                                 AdapterConfig(method="dora", rank=RANK, alpha=ALPHA)).to(DEVICE)
    magnitudes = predictor.magnitude_parameters()
    batch = {key: value.to(DEVICE) for key, value in batch.items() if key in ("tokens", "labels")}

    def pass_seconds(tokens: torch.Tensor, labels: torch.Tensor) -> float:
        times = []
        for _ in range(runs + 1):
            start = clock()
            torch.autograd.grad(torch.nn.functional.cross_entropy(predictor(tokens), labels), magnitudes)
            times.append(clock() - start)
        return statistics.median(times[1:])

    single = pass_seconds(batch["tokens"], batch["labels"])
    double = pass_seconds(batch["tokens"].repeat(2, 1), batch["labels"].repeat(2))
    return single, double


def step_times(batch: dict, repeats: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    names = [name for name in METHODS if name != PEFT_LORA or has_peft_twin()]
    modules = {name: build_module(name) for name in names}
    clocks = {name: StepClock() for name in names}
    for _ in range(repeats):
        for name, module in modules.items():
            clock = StepClock()
            run_steps(module, batch, steps, [clock])
            clocks[name].wall += clock.wall[1:]  # the first step of each fit is warm-up
            clocks[name].cpu += clock.cpu[1:]
    # with unroll_steps > 1 the steps alternate between cheap and dear: their mean is the cost per step
    average = {n: statistics.mean if METHODS[n][2] > 1 else statistics.median for n in names}
    return ({n: average[n](c.wall) for n, c in clocks.items()},
            {n: average[n](c.cpu) for n, c in clocks.items()})


def memory_worker(name: str, threads: str, device: str, backbone: str) -> None:
    """In a fresh process: peak extra memory (resident set, or CUDA allocations) of a one-step fit after a warm-up fit."""
    use(device, backbone)
    torch.set_num_threads(int(threads))
    batch = bbb_batch()
    module = build_module(name)
    run_steps(module, batch, 2)
    print(f'{{"peak_bytes": {peak_memory(lambda: run_steps(module, batch, 1), DEVICE)}}}')


def time_default_fit(threads: int) -> float:
    protadapt = Path(sys.executable).with_name("protadapt")
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([str(protadapt), *fit_command(), "--out", out], check=True, env=environment,
                       capture_output=True)
        return time.perf_counter() - start


PASS_COUNT_NOTE = """
Where the cost goes: forward + backward passes per step. LoRA and DoRA: 1. BiDoRA `first_order`: 2
(the lower step on inner_train; the upper step's ∇_M L_val on inner_val, which still back-propagates
through every layer). `darts` (Betty's estimator, the default): 4 — the lower step; ∇_M L_val and
v = ∇_V L_val from one inner_val pass at the V the lower step produced; ∇_M L_tr at V + εv and at
V − εv. `darts_one_sided`: 3, because ∇_M L_tr(V) at the centre of the difference comes out of the
lower step's own pass (evaluated at V before that step), so only V + εv needs a pass; on the float64
tiny model its relative error against the exact ∇_M L_val − ∇²_(M,V) L_tr·v is 1.0e-2 (central
`darts` 5.5e-5, `first_order` 1.02; `tests/test_bilevel.py`). `darts_unrolled` (the DARTS paper's
formula, ξ = the lower lr): 4, the lower pass reused for the virtual step. With the upper step every
k lower steps (`bilevel.unroll_steps=k`) the passes per step are 1 + 1/k, 1 + 3/k and 1 + 2/k; the
`unroll_steps=2` row averages over steps, since upper steps come every second. Every BiDoRA lower
step also evaluates the orthogonality regulariser R (plain DoRA has none; ≈ 0.1 of a DoRA step on 8M);
the ±εv passes leave R out, since ∇_M R = 0.

Batching the V⁺/V⁻ pair into one forward of twice the batch was measured and not built: here
a DoRA forward + backward over the batch stacked twice costs {double_ratio:.2f}× one over the batch
({double:.0f} vs {single:.0f} ms CPU), so {effect} — and the two halves need different directions, i.e. a vmap over parameter sets through
the whole ESM loop. The one-sided difference removes a whole pass on any device instead.

Threads: on this shared 2-core machine torch's default of 2 threads was ~100× slower than 1 thread
for small ops while other jobs ran (a 16×50×32 linear: 20.7 ms vs 0.18 ms), hence `--threads 1` and
`OMP_NUM_THREADS=1` for the whole fit; on a dedicated machine use the default.
"""


def overload_note(load_before: float, load_after: float) -> str:
    """A warning in the report when other jobs kept more cores busy than the machine has."""
    if max(load_before, load_after) <= (os.cpu_count() or 1):
        return ""
    return ("\n**The load exceeded the core count**: contention (shared caches, scheduling) inflates even CPU "
            "times; compare the ratios within this table, and rerun on a "
            "quiet machine for absolute figures.")


def write_report(args, batch: dict, rows: list, scaling: tuple[float, float], fit_seconds: float | None,
                 load_before: float, load_after: float, cpu: dict[str, float]) -> None:
    residues = (batch["tokens"] != 1).sum(1) - 2
    command = " ".join(["python -m benchmarks.train_step", *sys.argv[1:]])
    where = "CPU" if DEVICE.type == "cpu" else torch.cuda.get_device_name(DEVICE)
    work = "process CPU time" if DEVICE.type == "cpu" else "wall time with the GPU synchronised around each step"
    fit_line = "not run (--skip-fit)" if fit_seconds is None else \
        f"**{fit_seconds:.0f} s** wall for `protadapt {' '.join(fit_command())} --out …` (LoRA, 20 epochs max, " \
        f"early stopping patience 5, inner validation each epoch, then test-set evaluation and figures; " \
        f"OMP_NUM_THREADS={args.threads})"
    text = f"""# Training step: LoRA, DoRA, BiDoRA, full fine-tuning ({BACKBONE}, random init, {where})

Command: `{command}` ({args.repeats} rounds × {args.steps} steps per method; the first step of each round is
warm-up, the other {args.steps - 1} hold a whole number of upper-step cycles for every `unroll_steps` value below).

Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with {args.threads} thread(s); device {where}.
Load average {load_before:.1f} before and {load_after:.1f} after the measurement (the machine is shared with
other jobs that come and go); methods ran in interleaved rounds and ratios use {work} (on the CPU much
less sensitive to outside load than wall time).{overload_note(load_before, load_after)}

Batch: the 16 longest bbb training peptides ({int(residues.min())}–{int(residues.max())} residues, padded to
{batch['tokens'].shape[1]} tokens), 2-class head, mean pooling. Adapters r={RANK}, α={ALPHA:g} on q/k/v/out of every layer.
Each step is the module's real step inside a `lightning.Trainer`: `PredictorModule` (forward, cross-entropy,
backward, gradient clipping, AdamW, LR schedule) or `BiDoRAModule.training_step` (lower step on
directions + head, hypergradient, upper step on magnitudes every `unroll_steps` steps, 1 unless the row
says otherwise; the same batch as inner_train and inner_val). Full fine-tuning trains every backbone weight.
The PEFT row: `peft.get_peft_model` LoRA (same r, α, q/k/v/out) on `EsmForSequenceClassification` holding
the same weights, in a `lightning.Trainer` with the same clipping and AdamW.

{markdown_table(header(), rows)}

Targets (issue #14): `darts` at `unroll_steps=1` ≤ 3.92× LoRA (the official code's reported cost,
counted in its own LoRA steps), `darts_one_sided` ≤ 3.0× LoRA; the last column reads them in both units
(ratio in brackets; see "Against the official code's figure"). Peak extra memory: rise of the
process's peak resident set (CPU) or of `torch.cuda.max_memory_allocated` (GPU) during one steady-state
one-step `fit` after a warm-up fit, in a fresh process per method (`benchmarks/common.py: peak_memory`);
on the CPU it includes allocator slack and the Trainer's small per-fit allocations, so compare rows
with each other.
{PASS_COUNT_NOTE.format(single=1e3 * scaling[0], double=1e3 * scaling[1], double_ratio=scaling[1] / scaling[0],
                        effect=pair_effect(scaling[0], scaling[1]))}
{official_figure_section(cpu)}
## A whole default fit

{fit_line}.
"""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    default = DEVICE.type == "cpu" and BACKBONE == "esm2_t6_8M_UR50D"
    name = "train_step.md" if default else f"train_step_{BACKBONE}_{DEVICE.type}.md"
    (RESULTS_DIR / name).write_text(text)
    print(text)



def official_figure_section(cpu: dict[str, float]) -> str:
    """The targets in both units, and the pass-count floor that decides them in protadapt's own."""
    if PEFT_LORA not in cpu:
        return ""
    ms = {name: 1e3 * value for name, value in cpu.items()}
    darts, one_sided = "BiDoRA darts (Betty's, default)", "BiDoRA darts_one_sided"
    passes = [ms["BiDoRA first_order"] - ms["DoRA"], ms[one_sided] - ms["BiDoRA first_order"], ms[darts] - ms[one_sided]]
    in_units = lambda unit: f"`darts` {cpu[darts] / cpu[unit]:.2f}× and `darts_one_sided` {cpu[one_sided] / cpu[unit]:.2f}×"  # noqa: E731
    return f"""## Against the official code's figure

The 3.92× is the official BiDoRA code's `darts` step over its own LoRA step. Two LoRA units were timed
in the same interleaved rounds: protadapt's (one GEMM per adapted layer with W0 + s·B·A formed,
`lora._FusedLowRank`) and PEFT's on transformers' ESM with the same weights — the unfused
W0·x + s·B·(A·x) that the official code's layers (loralib's, on transformers' RoBERTa) compute, so the
nearer stand-in for the official unit; the official code itself (RoBERTa on GLUE through Betty) was
not run. protadapt's LoRA step is {cpu["LoRA"] / cpu[PEFT_LORA]:.2f}× PEFT's here.

- In PEFT LoRA steps: {in_units(PEFT_LORA)} (targets 3.92×, 3.0×).
- In protadapt LoRA steps: {in_units("LoRA")}. Here the floor is the pass count: `first_order` − DoRA =
  {passes[0]:.0f} ms, `darts_one_sided` − `first_order` = {passes[1]:.0f} ms, `darts` − `darts_one_sided` =
  {passes[2]:.0f} ms — each added pass costs about a whole protadapt LoRA step ({ms["LoRA"]:.0f} ms), the
  magnitude-only ones included, since every pass back-propagates through every layer. Making the
  LoRA step cheaper made this unit smaller, not BiDoRA dearer.
"""


def pair_effect(single: float, double: float) -> str:
    """What one forward + backward over the batch stacked twice would do to the ±εv pair and the darts step."""
    change = double / (2 * single) - 1
    word = "more" if change > 0 else "less"
    return f"the pair would take {abs(change):.0%} {word} time (a darts step about {abs(change) / 2:.0%} {word})"


if __name__ == "__main__":
    main()
