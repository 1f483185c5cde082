"""DoRA's ‖V‖: low-rank expansion (protadapt's default) vs materialising W0 + s·B·A; ‖V‖ detached
or not; unmerged eval vs merged eval (what `predict_scores` does).

    .venv/bin/python benchmarks/dora_norm.py [--device cuda] [--quick]

Three measurements: (1) the norm alone, forward + backward, for square layers of ESM-2 widths;
(2) a whole 8M training step (forward, backward, AdamW) for each norm × detach choice, time and
peak memory (a fresh process per variant, see common.peak_memory); (3) eval forward of a DoRA
predictor unmerged vs merged vs the bare backbone.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment_line, interleaved, markdown_table, mib, peak_memory, pick_device, run_worker  # noqa: E402

from protadapt.adapters import AdapterConfig, DoRALinear, linear_adapters, merge_adapters  # noqa: E402
from protadapt.adapters.dora import NORM_DIM  # noqa: E402
from protadapt.backbones import load_backbone  # noqa: E402
from protadapt.heads import HeadConfig, ProteinPredictor  # noqa: E402


def materialised_norm(layer: DoRALinear) -> torch.Tensor:
    """The reference: ‖W0 + s·B·A‖ per row, forming the full out × in matrix (PEFT's way)."""
    return (layer.base_layer.weight + layer.delta_weight()).norm(dim=NORM_DIM)


def use_materialised(predictor: ProteinPredictor) -> None:
    for layer in linear_adapters(predictor).values():
        layer.direction_norm = (lambda layer=layer: materialised_norm(layer))


def norm_only(width: int, rank: int, device: torch.device, repeats: int) -> dict[str, float]:
    layer = DoRALinear(torch.nn.Linear(width, width), AdapterConfig(method="dora", rank=rank)).to(device)
    with torch.no_grad():
        layer.up.normal_(0, 0.02)

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


def bidora_steps(batch: int, length: int, device: torch.device) -> dict:
    """Step closures: DoRA, BiDoRA first-order, BiDoRA DARTS (current) and DARTS as before the reuse."""
    from protadapt.config import BilevelConfig, OptimConfig
    from protadapt.training.bilevel import BiDoRAModule, darts_hypergradient

    def tokens(seed):
        generator = torch.Generator().manual_seed(seed)
        t = torch.randint(4, 24, (batch, length), generator=generator)
        t[:, 0], t[:, -1] = 0, 2
        return {"tokens": t.to(device), "labels": (torch.arange(batch) % 2).to(device)}

    data = {"inner_train": tokens(1), "inner_val": tokens(2)}
    steps = {}
    for name in ("DoRA", "BiDoRA first-order", "BiDoRA DARTS", "BiDoRA DARTS, before reuse"):
        torch.manual_seed(0)
        method = "dora" if name == "DoRA" else "bidora"
        predictor = ProteinPredictor(load_backbone("esm2_t6_8M_UR50D", random_init=True), HeadConfig(dropout=0.0),
                                     AdapterConfig(method=method, rank=8)).to(device)
        hyper = "first_order" if "first" in name else "darts"
        module = BiDoRAModule(predictor, OptimConfig(lr=1e-4), BilevelConfig(hypergradient=hyper)) \
            if method == "bidora" else None
        directions = predictor.direction_parameters()
        magnitudes = predictor.magnitude_parameters()
        lower = torch.optim.AdamW(directions if module else [p for p in predictor.parameters() if p.requires_grad])
        upper = torch.optim.AdamW(magnitudes or [torch.nn.Parameter(torch.zeros(1))])
        if module is not None:
            keep = torch.optim.lr_scheduler.LambdaLR
            module.optimizers = lambda lower=lower, upper=upper: (lower, upper)
            module.lr_schedulers = lambda lower=lower, upper=upper: (keep(lower, lambda _: 1.0), keep(upper, lambda _: 1.0))
            module.clip_gradients = lambda optimizer, **_: torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], 1.0)
            module.log_dict = lambda *args, **kwargs: None

        if name == "DoRA":
            def step(predictor=predictor, lower=lower):
                lower.zero_grad(set_to_none=True)
                F.cross_entropy(predictor(data["inner_train"]["tokens"]), data["inner_train"]["labels"]).backward()
                torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
                lower.step()
        elif name == "BiDoRA DARTS, before reuse":  # the previous training_step: 5 forward/backward passes
            def step(module=module, directions=directions, magnitudes=magnitudes):
                lower_loss = module.lower_objective(data["inner_train"])
                module._step(lower, directions, torch.autograd.grad(lower_loss, directions))
                hyper = darts_hypergradient(lambda: module.lower_objective(data["inner_train"]),
                                            lambda: module.upper_objective(data["inner_val"]),
                                            directions, magnitudes, 1e-4)
                module._step(upper, magnitudes, hyper)
        else:
            def step(module=module):
                module.training_step(data, 0)
        steps[name] = step
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["norm", "bidora"], help="run one part: ‖V‖ (1–3) or BiDoRA cost (4)")
    options = parser.parse_args()
    device = pick_device(options.device)
    torch.set_num_threads(options.threads)
    batch, length = (8, 64) if options.quick else (16, 128)
    if options.only != "norm":
        times = interleaved(bidora_steps(batch, length, device), device, options.repeats)
        base = times["DoRA"]
        text = [f"<!-- generated by benchmarks/dora_norm.py --only bidora; {environment_line(device)} -->", "",
                f"### (4) BiDoRA step cost vs a DoRA step, 8M, inner_train and inner_val batches {batch}×{length}", "",
                markdown_table(["step", "ms", "vs DoRA"], [[k, f"{v * 1e3:.0f}", f"**{v / base:.2f}**"]
                                                         for k, v in times.items()])]
        print("\n".join(text), flush=True)
        Path("/tmp/bidora_cost_table.md").write_text("\n".join(text) + "\n")
        if options.only == "bidora":
            return
    widths = [320, 480, 1280] if options.quick else [320, 480, 1280, 2560, 5120]
    out = [f"<!-- generated by benchmarks/dora_norm.py; {environment_line(device)} -->", "",
           "### (1) ‖V‖ alone, forward + backward, rank 8", ""]
    rows = []
    for width in widths:
        t = norm_only(width, 8, device, options.repeats * 4)
        rows.append([f"{width}×{width}", f"{t['low-rank'] * 1e3:.3f}", f"{t['materialised'] * 1e3:.3f}",
                     f"**{t['low-rank'] / t['materialised']:.2f}**"])
    out.append(markdown_table(["layer", "low-rank ms", "materialised ms", "ratio"], rows))
    print("\n".join(out), flush=True)

    out += ["", f"### (2) 8M DoRA training step, {batch}×{length} tokens, q/k/v/out rank 8", ""]
    steps = {variant: training_setup(variant, batch, length, device)[1] for variant in VARIANTS}
    times = interleaved(steps, device, options.repeats)
    del steps
    gc.collect()
    rows = []
    for variant in VARIANTS:
        peak = run_worker(Path(__file__), [variant, str(batch), str(length), device.type])["peak"]
        rows.append([variant, f"{times[variant] * 1e3:.0f}", f"{times[variant] / times['low-rank/exact']:.2f}", mib(peak)])
    out.append(markdown_table(["‖V‖ / gradient", "step ms", "vs default", "peak MiB"], rows))
    print("\n".join(out[-3:]), flush=True)

    out += ["", f"### (3) 8M DoRA eval forward, {batch}×{length} tokens", ""]
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
    print("\n".join(out[-3:]), flush=True)
    Path("/tmp/dora_norm_table.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
