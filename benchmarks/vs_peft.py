"""protadapt vs Hugging Face PEFT on the same weights: LoRA and DoRA, rank 8, q/k/v/out.

    .venv/bin/python -m benchmarks.vs_peft                    # writes benchmarks/results/vs_peft.md
    .venv/bin/python -m benchmarks.vs_peft --quick            # 8M, two small shapes, fewer repeats
    .venv/bin/python -m benchmarks.vs_peft --device cuda      # on a GPU (memory from torch.cuda)

Ours: fair-esm ESM2 in `ProteinPredictor` (mean pooling + linear head). Theirs: transformers'
`EsmForSequenceClassification` built from the HF config in shared/models, weights copied from ours
with `HF_TO_FAIR_ESM`, wrapped by `peft.get_peft_model`. Both adapt exactly the 4·L attention
projections: PEFT's `target_modules=["query","key","value","dense"]` would also wrap
`intermediate.dense`, `output.dense` (the FFN) and `classifier.dense`, so PEFT gets a full-name
regex instead. A check at start-up asserts identical hidden states with identical adapter values.

`--archs ESMC AntiBERTy`: the transformers families. ESM C: the 300M architecture's layer (width
960, 15 heads, SwiGLU 2560) at 2 layers, random init, in protadapt's ESM C backbone vs
`EsmcForSequenceClassification`; AntiBERTy: the real checkpoint (8 layers × 512) in protadapt's
BERT backbone vs `BertForSequenceClassification`. Both sides run transformers' own modules, so
these rows compare the adapters and the training loop around them.
"""

from __future__ import annotations

import argparse
import json
import gc
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import (environment_line, interleaved, markdown_table, mib, peak_memory, pick_device,
                    run_worker, write_result)

from protadapt.adapters import AdapterConfig, linear_adapters
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import ARCHITECTURES, HF_DERIVED, build_random, esmc, hf_to_fair_esm_key, load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor

# the real HF configs of the ESM-2 checkpoints (config.json only), as shipped beside the repository
HF_CONFIGS = Path(os.environ.get("PROTADAPT_MODEL_DIR", Path(__file__).resolve().parents[2] / "shared" / "models"))
ARCHS = {"8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D", "650M": "esm2_t33_650M_UR50D",
         "ESMC": "esmc_300m", "AntiBERTy": "antiberty"}
HF_ARCHS = ("ESMC", "AntiBERTy")  # transformers families: ours wraps the same transformers module
PEFT_TARGETS = r"esm\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
PEFT_HF_TARGETS = {"esmc": r"esmc\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
                   "bert": r"bert\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"}
ESMC_LAYERS = 2  # the 300M layer at 2 layers: a CPU step of the full 30 would take minutes
# method label -> (protadapt method, detach_norm, PEFT use_dora)
METHODS = {
    "LoRA": ("lora", False, False),
    "DoRA (‖V‖ detached)": ("dora", True, True),  # PEFT always detaches ‖V‖ (DoRA §4.3)
    "DoRA (exact grad)": ("dora", False, True),  # protadapt's default; PEFT has no such option
}
RANK, ALPHA = 8, 16.0


def hf_config_dir(arch: str) -> Path:
    return Path(HF_CONFIGS) / f"{ARCHS[arch]}_hf_config"


def hf_config(arch: str):
    """The checkpoint's HF config; 650M (no config shipped) as 35M's with 650M's published sizes."""
    from transformers import EsmConfig

    if hf_config_dir(arch).exists():
        return EsmConfig.from_pretrained(hf_config_dir(arch), num_labels=2)
    shape = ARCHITECTURES[ARCHS[arch]]
    return EsmConfig.from_pretrained(hf_config_dir("35M"), num_labels=2, num_hidden_layers=shape.num_layers,
                                     hidden_size=shape.embed_dim, num_attention_heads=shape.attention_heads,
                                     intermediate_size=shape.ffn_dim)


def build_pair(arch: str, method: str, device: torch.device, with_ours: bool = True, with_peft: bool = True):
    """(protadapt predictor, PEFT model) with the same backbone weights; either may be None."""
    from peft import LoraConfig, get_peft_model
    from transformers import EsmForSequenceClassification

    ours_method, detach, use_dora = METHODS[method]
    backbone = bench_backbone(arch)
    peft_model = None
    if with_peft and arch in HF_ARCHS:
        hf, targets = hf_task_model(backbone), PEFT_HF_TARGETS[backbone.architecture.family]
    elif with_peft:
        hf, targets = EsmForSequenceClassification(hf_config(arch)), PEFT_TARGETS
        fair_state = backbone.model.state_dict()
        with torch.no_grad():
            for key, tensor in hf.state_dict().items():
                if key.startswith(("classifier.", "esm.contact_head.")) or HF_DERIVED.search(key):
                    continue
                tensor.copy_(fair_state[hf_to_fair_esm_key(key)])
    if with_peft:
        peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
                                 use_dora=use_dora)
        peft_model = get_peft_model(hf, peft_config)
        for parameter in peft_model.base_model.model.classifier.parameters():
            parameter.requires_grad_(True)
        wrapped = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
        assert len(wrapped) == 4 * backbone.architecture.num_layers, wrapped
        peft_model.to(device)
    ours = None
    if with_ours:
        ours = ProteinPredictor(backbone, HeadConfig(dropout=0.0),
                                AdapterConfig(method=ours_method, rank=RANK, alpha=ALPHA, detach_norm=detach))
        ours.to(device)
    return ours, peft_model


def bench_backbone(arch: str):
    """The backbone of one benchmark row: fair-esm random init, ESM C (2 layers), real AntiBERTy."""
    if arch == "AntiBERTy":
        return load_backbone("antiberty")
    if arch == "ESMC":
        config = {**ARCHITECTURES["esmc_300m"].hf_config, "num_hidden_layers": ESMC_LAYERS}
        return build_random(esmc.esmc_architecture(f"esmc_300m_{ESMC_LAYERS}layers", config))
    return load_backbone(ARCHS[arch], random_init=True)


def hf_task_model(backbone):
    """transformers' sequence classifier of the backbone's config, its encoder holding the same weights."""
    import transformers

    arch = backbone.architecture
    kind = {"esmc": (transformers.EsmcConfig, transformers.EsmcForSequenceClassification),
            "bert": (transformers.BertConfig, transformers.BertForSequenceClassification)}[arch.family]
    model = kind[1](kind[0].from_dict(arch.hf_config, num_labels=2, attn_implementation="sdpa"))
    missing, unexpected = model.base_model.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("pooler.") for key in missing), (missing, unexpected)
    return model


def peft_layers(peft_model) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers keyed by the path (inside protadapt's `backbone.model`) of the projection they wrap."""
    prefix = peft_model.base_model.model.base_model_prefix
    found = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in getattr(module, "lora_A", {}):
            key = re.sub(r"^base_model\.model\.", "", name)
            if prefix == "esm":
                found[hf_to_fair_esm_key(key + ".weight").removesuffix(".weight")] = module
            else:
                found[key.removeprefix(prefix + ".")] = module
    return found


def check_same_function(arch: str, device: torch.device) -> float:
    """Largest |difference| of final hidden states, DoRA with random adapter values copied across."""
    ours, theirs = build_pair(arch, "DoRA (exact grad)", device)
    perturb_as_if_trained(ours.backbone.model, seed=1)
    layers = peft_layers(theirs)
    with torch.no_grad():
        for name, layer in linear_adapters(ours.backbone.model).items():
            peft_layer = layers[name]
            peft_layer.lora_A["default"].weight.copy_(layer.down)
            peft_layer.lora_B["default"].weight.copy_(layer.up)
            peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    tokens = random_tokens(2, 40, device, ours.backbone.tokenizer)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        mine = ours.backbone(tokens)
        mask = tokens.ne(ours.backbone.tokenizer.padding_idx)
        other = theirs.base_model.model.base_model(input_ids=tokens, attention_mask=mask).last_hidden_state
    return float((mine - other).abs().max())


def random_tokens(batch: int, length: int, device: torch.device, tokenizer, seed: int = 0) -> torch.Tensor:
    """`length` tokens per row: BOS/CLS, random canonical residues, EOS/SEP; no padding (every row is full)."""
    generator = torch.Generator().manual_seed(seed)
    residues = torch.tensor([tokenizer.get_idx(aa) for aa in "ACDEFGHIKLMNPQRSTVWY"])
    tokens = residues[torch.randint(len(residues), (batch, length), generator=generator)]
    tokens[:, 0], tokens[:, -1] = tokenizer.cls_idx, tokenizer.eos_idx
    return tokens.to(device)


def step_functions(ours, theirs, tokens: torch.Tensor):
    """Closures: a full training step (forward, backward, AdamW) and an eval forward, per side."""
    labels = torch.arange(tokens.shape[0], device=tokens.device) % 2
    mask = torch.ones_like(tokens, dtype=torch.bool)  # random_tokens pads nothing
    calls = {}
    if ours is not None:
        calls["ours"] = lambda: ours(tokens)
    if theirs is not None:
        calls["peft"] = lambda: theirs(input_ids=tokens, attention_mask=mask).logits
    models = {"ours": ours, "peft": theirs}
    train, evaluate = {}, {}
    for side, call in calls.items():
        model = models[side]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def train_step(model=model, call=call, optimizer=optimizer):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(call(), labels).backward()
            optimizer.step()

        def eval_forward(model=model, call=call):
            model.eval()
            with torch.inference_mode():
                call()

        train[side], evaluate[side] = train_step, eval_forward
    return train, evaluate


def worker(args: list[str]) -> None:
    """Fresh process: peak memory of two training steps of one side, one method, one shape."""
    arch, side, method, batch, length, device_name = args
    device = pick_device(device_name)
    torch.set_num_threads(1)
    ours, theirs = build_pair(arch, method, device, with_ours=side == "ours", with_peft=side == "peft")
    gc.collect()
    tokenizer = (ours.backbone if ours is not None else bench_backbone(arch)).tokenizer
    train, _ = step_functions(ours, theirs, random_tokens(int(batch), int(length), device, tokenizer))
    peak = peak_memory(lambda: [train[side]() for _ in range(2)], device)
    print(f'{{"peak": {peak}}}')


def parse_shape(text: str) -> tuple[int, int]:
    batch, length = text.lower().split("x")
    return int(batch), int(length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--archs", nargs="+", default=["8M", "35M"], choices=list(ARCHS))
    parser.add_argument("--shapes", nargs="+", default=["8x64", "16x128", "4x512"], help="batch x tokens")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check-only", action="store_true", help="only the same-function check: one JSON line per arch")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/vs_peft[_DEVICE].md")
    options = parser.parse_args()
    if options.check_only:
        for arch in options.archs:
            found = hf_config_dir(arch).exists()
            diff = check_same_function(arch, pick_device(options.device)) if found else None
            print(json.dumps({"arch": arch, "max_diff": diff, "hf_config": found}))
        return
    if options.quick:
        options.archs, options.shapes, options.repeats = ["8M"], ["8x64", "16x128"], 3
    device = pick_device(options.device)
    torch.set_num_threads(options.threads)
    # the CPU: process CPU time, the work done (a shared machine's load inflates wall time, not this)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    load_before = os.getloadavg()[0]

    rows, checks = [], {}
    for arch in options.archs:
        checks[arch] = check_same_function(arch, device)
        print(f"{arch}: max |hidden ours − hidden PEFT| with equal DoRA adapters = {checks[arch]:.2e}", flush=True)
        for shape in options.shapes:
            batch, length = parse_shape(shape)
            if arch != "8M" and batch * length > 512 and device.type == "cpu":
                continue  # CPU time: 35M only on shapes of at most 512 tokens per batch
            for method in options.methods:
                ours, theirs = build_pair(arch, method, device)
                tokens = random_tokens(batch, length, device, ours.backbone.tokenizer)
                train, evaluate = step_functions(ours, theirs, tokens)
                train_time = interleaved(train, device, options.repeats, clock=clock)
                eval_time = interleaved(evaluate, device, options.repeats, clock=clock)
                memory = {"ours": float("nan"), "peft": float("nan")}
                if not options.no_memory:
                    for side in ("ours", "peft"):
                        memory[side] = run_worker(__spec__.name, [arch, side, method, str(batch), str(length),
                                                                   device.type])["peak"]
                row = [arch, method, shape,
                       f"{train_time['ours'] * 1e3:.0f} / {train_time['peft'] * 1e3:.0f}",
                       f"**{train_time['ours'] / train_time['peft']:.2f}**",
                       f"{mib(memory['ours'])} / {mib(memory['peft'])}",
                       f"**{memory['ours'] / memory['peft']:.2f}**",
                       f"{eval_time['ours'] * 1e3:.1f} / {eval_time['peft'] * 1e3:.1f}",
                       f"**{eval_time['ours'] / eval_time['peft']:.2f}**"]
                rows.append(row)
                print(" | ".join(row), flush=True)
                del ours, theirs, train, evaluate
                gc.collect()

    header = ["arch", "method", "batch×tokens", "train step ms (ours / PEFT)", "ratio", "train peak MiB (ours / PEFT)",
              "ratio", "eval fwd ms (ours / PEFT)", "ratio"]
    command = " ".join(["python -m benchmarks.vs_peft", *sys.argv[1:]])
    ratios = {column: [float(row[index].strip("*")) for row in rows] for column, index in
              (("time", 4), ("memory", 6), ("eval", 8))}
    summary = "; ".join(f"{column} {min(values):.2f}–{max(values):.2f}" for column, values in ratios.items()
                        if values and not math.isnan(values[0]))
    text = f"""# protadapt vs Hugging Face PEFT: same ESM-2 weights, LoRA and DoRA, rank 8, q/k/v/out

Command: `{command}` ({options.repeats} interleaved timed runs per cell after a warm-up, median;
{"process CPU time" if device.type == "cpu" else "synchronised wall time"}). Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.
{environment_line(device)}; random-init weights (AntiBERTy: its real checkpoint). Ratios are **protadapt / PEFT** (< 1: protadapt
faster or leaner). Range of the ratios over all cells: {summary or "none"}.
Goals (issue #20, every 8M/35M cell): time ≤ 0.80 — {verdict(ratios["time"], 0.80)}; peak memory ≤ 0.60 — {verdict(ratios["memory"], 0.60)}.

{markdown_table(header, rows)}

Equality check (max |Δ final hidden state| with random DoRA values copied into PEFT):
{", ".join(f"{a}: {v:.1e}" for a, v in checks.items())}.
{EXPLANATION}"""
    write_result(text, "vs_peft", device, options.out)


def verdict(values: list[float], goal: float) -> str:
    """'met', or how many cells miss the goal."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "not measured"
    missed = [v for v in values if v > goal]
    return "met" if not missed else f"not met in {len(missed)} of {len(values)} cells (worst {max(missed):.2f})"


EXPLANATION = """
**Same function, same layers.** ESM-2 weights are built once (fair-esm, seed 0) and copied into
`EsmForSequenceClassification` through `HF_TO_FAIR_ESM`. PEFT gets the full-name regex
`esm\\.encoder\\.layer\\.\\d+\\.attention\\.(self\\.(query|key|value)|output\\.dense)`, and the script asserts
4·L wrapped layers. **Pitfall:** the usual `target_modules=["query","key","value","dense"]` matches
name *suffixes*, so on ESM it also wraps `intermediate.dense`, `output.dense` (the FFN) and
`classifier.dense` — more parameters and more work than protadapt's q/k/v/out. PEFT's DoRA always
detaches ‖V‖ (DoRA §4.3), so "DoRA (‖V‖ detached)" (protadapt `detach_norm=True`) is the like-for-like
row; "DoRA (exact grad)" is protadapt's default, which back-propagates through ‖V‖. The heads differ
(protadapt: mean pooling + linear; HF: BOS dense+tanh+linear) and are negligible in cost.

**Where the difference comes from.** The adapter arithmetic is the same on both sides, except that
PEFT's DoRA forms `lora_B(lora_A(eye(in)))` and the full out×in `W0 + sBA` every forward to take its
norm, which protadapt's low-rank expansion never forms (`dora_norm.md`), and protadapt accumulates
B·(A·x) into the frozen layer's output with one `addmm` instead of a separate product, scaling and
sum. The backbone differs in two
places: protadapt's ESM-2 loop runs attention through `F.scaled_dot_product_attention` (as
transformers does) and GELU through `F.gelu`, one fused kernel that keeps one tensor for backward,
where fair-esm and transformers' ESM both spell it `x·½·(1 + erf(x/√2))` — five kernels and three
saved tensors of the FFN's 4·d width per layer. That GELU is the largest single activation saving
in a frozen backbone; it made an earlier 1.12× memory cell (8M LoRA 4×256) fall below PEFT.

**Memory measured** (CPU): peak resident memory of two training steps (the first allocates AdamW
state) above the resident memory just before them — Linux `VmHWM` reset through
`/proc/self/clear_refs`, minus `VmRSS` — in a fresh process per cell, after `malloc_trim`. It counts
activations, gradients, optimizer state and allocator slack, plus one-off workspaces of the CPU math
libraries that both sides pay alike; weights are excluded. On CUDA: `torch.cuda.max_memory_allocated`
above the allocation before the steps.

**Not measured here:** GPU numbers (no GPU was lent to this task; `--device cuda` writes
`vs_peft_cuda.md`; add `--archs 8M 35M 650M` there), the 650M architecture on the CPU (too slow).
CPU timings on the 2-core shared machine move by about ±5 % between repeats of the same cell on an
idle machine, more under load: read ratios within 0.95–1.05 as equal.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
