"""DoRA's ‖V‖: low-rank expansion (protadapt's default) vs materialising W0 + s·B·A; ‖V‖ detached
or not; unmerged eval vs merged eval (what `predict_scores` does).

    .venv/bin/python -m benchmarks.dora_norm [--device cuda] [--quick]

Three measurements: (1) the norm alone, forward + backward, for square layers of ESM-2 widths;
(2) a whole 8M training step (forward, backward, AdamW) for each norm × detach choice, time and
peak memory (a fresh process per variant, see common.peak_memory); (3) eval forward of a DoRA
predictor unmerged vs merged vs the bare backbone.
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import environment_line, interleaved, markdown_table, mib, peak_memory, pick_device, run_worker, write_result

from protadapt.adapters import AdapterConfig, DoRALinear, linear_adapters, merge_adapters
from protadapt.adapters.dora import NORM_DIM
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor


def materialised_norm(layer: DoRALinear) -> torch.Tensor:
    """The reference: ‖W0 + s·B·A‖ per row, forming the full out × in matrix (PEFT's way)."""
    return (layer.base_layer.weight + layer.delta_weight()).norm(dim=NORM_DIM)


def use_materialised(predictor: ProteinPredictor) -> None:
    for layer in linear_adapters(predictor).values():
        layer.direction_norm = (lambda layer=layer: materialised_norm(layer))


def norm_only(width: int, rank: int, device: torch.device, repeats: int) -> dict[str, float]:
    layer = DoRALinear(torch.nn.Linear(width, width), AdapterConfig(method="dora", rank=rank)).to(device)
    perturb_as_if_trained(layer, std=0.02)

    def run(norm_fn):
        def call():
            norm_fn().sum().backward()
            layer.down.grad = layer.up.grad = None
        return call

    return interleaved({"low-rank": run(layer.direction_norm), "materialised": run(lambda: materialised_norm(layer))},
                       device, repeats)


def training_setup(variant: str, batch: int, length: int, device: torch.device):
    norm, detach = variant.split("/")
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("esm2_t6_8M_UR50D", random_init=True), HeadConfig(dropout=0.0),
                                 AdapterConfig(method="dora", rank=8, detach_norm=detach == "detached")).to(device)
    if norm == "materialised":
        use_materialised(predictor)
    tokens = torch.randint(4, 24, (batch, length), device=device)
    tokens[:, 0], tokens[:, -1] = 0, 2
    labels = torch.arange(batch, device=device) % 2
    optimizer = torch.optim.AdamW([p for p in predictor.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(predictor(tokens), labels).backward()
        optimizer.step()
    return predictor, step


VARIANTS = ["low-rank/exact", "low-rank/detached", "materialised/exact", "materialised/detached"]


def worker(args: list[str]) -> None:
    variant, batch, length, device_name = args
    device = pick_device(device_name)
    torch.set_num_threads(1)
    _, step = training_setup(variant, int(batch), int(length), device)
    gc.collect()
    print(f'{{"peak": {peak_memory(lambda: [step() for _ in range(2)], device)}}}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    device = pick_device(options.device)
    torch.set_num_threads(options.threads)
    batch, length = (8, 64) if options.quick else (16, 128)
    widths = [320, 480, 1280] if options.quick else [320, 480, 1280, 2560, 5120]
    command = " ".join(["python -m benchmarks.dora_norm", *sys.argv[1:]])
    out = ["# DoRA's ‖V‖: how it is computed, whether it is detached, and eval", "",
           f"Command: `{command}` (medians of interleaved runs after a warm-up); {environment_line(device)};",
           "random-init ESM-2 8M for parts 2–3.", "",
           "## (1) ‖V‖ alone, forward + backward, rank 8", ""]
    rows = []
    for width in widths:
        t = norm_only(width, 8, device, options.repeats * 4)
        rows.append([f"{width}×{width}", f"{t['low-rank'] * 1e3:.3f}", f"{t['materialised'] * 1e3:.3f}",
                     f"**{t['low-rank'] / t['materialised']:.2f}**"])
    out.append(markdown_table(["layer", "low-rank ms", "materialised ms", "ratio"], rows))
    print("\n".join(out), flush=True)

    out += ["", "The expansion ‖v_i‖² = ‖w0_i‖² + 2s⟨b_i,(W0Aᵀ)_i⟩ + s²·b_i(AAᵀ)b_iᵀ needs out×r intermediates "
            "instead of out×in; it is the default.",
            "", f"## (2) 8M DoRA training step, {batch}×{length} tokens, q/k/v/out rank 8", ""]
    steps = {variant: training_setup(variant, batch, length, device)[1] for variant in VARIANTS}
    times = interleaved(steps, device, options.repeats)
    del steps
    gc.collect()
    rows = []
    for variant in VARIANTS:
        peak = run_worker(__spec__.name, [variant, str(batch), str(length), device.type])["peak"]
        rows.append([variant, f"{times[variant] * 1e3:.0f}", f"{times[variant] / times['low-rank/exact']:.2f}", mib(peak)])
    out.append(markdown_table(["‖V‖ / gradient", "step ms", "vs default", "peak MiB"], rows))
    print("\n".join(out[-3:]), flush=True)

    out += ["", "Peak MiB: the process's peak resident set (CPU; `torch.cuda.max_memory_allocated` on a GPU) during two "
            "steps above what was resident before, one fresh process per variant (`common.peak_memory`).",
            "", f"## (3) 8M DoRA eval forward, {batch}×{length} tokens", ""]
    predictor, _ = training_setup("low-rank/exact", batch, length, device)
    merged, _ = training_setup("low-rank/exact", batch, length, device)
    bare = ProteinPredictor(load_backbone("esm2_t6_8M_UR50D", random_init=True), HeadConfig(dropout=0.0),
                            AdapterConfig(method="head")).to(device)
    merge_adapters(merged)
    tokens = torch.randint(4, 24, (batch, length), device=device)

    def forward(model):
        def call():
            model.eval()
            with torch.inference_mode():
                model(tokens)
        return call

    times = interleaved({"unmerged (‖V‖ every call)": forward(predictor), "merged": forward(merged),
                         "bare backbone + head": forward(bare)}, device, options.repeats)
    base = times["bare backbone + head"]
    out.append(markdown_table(["eval path", "ms", "vs bare"],
                              [[k, f"{v * 1e3:.1f}", f"{v / base:.2f}"] for k, v in times.items()]))
    out += ["", EVAL_NOTE]
    write_result("\n".join(out), "dora_norm", device)


EVAL_NOTE = """Merged and bare do identical arithmetic, so their gap is this run's noise level. Decision:
**no eval-time norm cache** — inference merges adapters (zero adapter cost), and the unmerged path
(validation inside training) recomputes ‖V‖ at O(out·in·r) per layer, small next to the
O(tokens·out·in) projections; a cache would need invalidation on every optimizer step for little
gain. BiDoRA's step cost against DoRA is in `train_step.md`.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
