"""protadapt vs Hugging Face PEFT on the same ESM-2 weights: LoRA and DoRA, rank 8, q/k/v/out.

    .venv/bin/python benchmarks/vs_peft.py                    # writes benchmarks/results/vs_peft.md
    .venv/bin/python benchmarks/vs_peft.py --quick            # 8M, two small shapes, fewer repeats
    .venv/bin/python benchmarks/vs_peft.py --device cuda      # on a GPU (memory from torch.cuda)

Ours: fair-esm ESM2 in `ProteinPredictor` (mean pooling + linear head). Theirs: transformers'
`EsmForSequenceClassification` built from the HF config in shared/models, weights copied from ours
with `HF_TO_FAIR_ESM`, wrapped by `peft.get_peft_model`. Both adapt exactly the 4·L attention
projections: PEFT's `target_modules=["query","key","value","dense"]` would also wrap
`intermediate.dense`, `output.dense` (the FFN) and `classifier.dense`, so PEFT gets a full-name
regex instead. A check at start-up asserts identical hidden states with identical adapter values.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (environment_line, interleaved, markdown_table, mib, peak_memory,  # noqa: E402
                    pick_device, run_worker)

from protadapt.adapters import AdapterConfig, linear_adapters  # noqa: E402
from protadapt.backbones import HF_DERIVED, hf_to_fair_esm_key, load_backbone  # noqa: E402
from protadapt.heads import HeadConfig, ProteinPredictor  # noqa: E402

HF_CONFIGS = Path("/work/shared/models")
ARCHS = {"8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D"}
PEFT_TARGETS = r"esm\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
# method label -> (protadapt method, detach_norm, PEFT use_dora)
METHODS = {
    "LoRA": ("lora", False, False),
    "DoRA (‖V‖ detached)": ("dora", True, True),  # PEFT always detaches ‖V‖ (DoRA §4.3)
    "DoRA (exact grad)": ("dora", False, True),  # protadapt's default; PEFT has no such option
}
RANK, ALPHA = 8, 16.0


def hf_config_dir(arch: str) -> Path:
    return Path(HF_CONFIGS) / f"{ARCHS[arch]}_hf_config"


def build_pair(arch: str, method: str, device: torch.device, with_ours: bool = True, with_peft: bool = True):
    """(protadapt predictor, PEFT model) with the same backbone weights; either may be None."""
    from peft import LoraConfig, get_peft_model
    from transformers import EsmConfig, EsmForSequenceClassification

    ours_method, detach, use_dora = METHODS[method]
    backbone = load_backbone(ARCHS[arch], random_init=True)
    peft_model = None
    if with_peft:
        config = EsmConfig.from_pretrained(hf_config_dir(arch), num_labels=2)
        hf = EsmForSequenceClassification(config)
        fair_state = backbone.model.state_dict()
        with torch.no_grad():
            for key, tensor in hf.state_dict().items():
                if key.startswith(("classifier.", "esm.contact_head.")) or HF_DERIVED.search(key):
                    continue
                tensor.copy_(fair_state[hf_to_fair_esm_key(key)])
        peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=PEFT_TARGETS,
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


def peft_layers(peft_model) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers keyed by the fair-esm path of the projection they wrap."""
    found = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in getattr(module, "lora_A", {}):
            key = re.sub(r"^base_model\.model\.", "", name) + ".weight"
            found[hf_to_fair_esm_key(key).removesuffix(".weight")] = module
    return found


def check_same_function(arch: str, device: torch.device) -> float:
    """Largest |difference| of final hidden states, DoRA with random adapter values copied across."""
    ours, theirs = build_pair(arch, "DoRA (exact grad)", device)
    torch.manual_seed(1)
    layers = peft_layers(theirs)
    with torch.no_grad():
        for name, layer in linear_adapters(ours.backbone.model).items():
            layer.up.normal_(0, 0.05)
            layer.magnitude.mul_(1 + 0.1 * torch.randn_like(layer.magnitude))
            peft_layer = layers[name]
            peft_layer.lora_A["default"].weight.copy_(layer.down)
            peft_layer.lora_B["default"].weight.copy_(layer.up)
            peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    tokens = random_tokens(2, 40, device)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        mine = ours.backbone(tokens)
        other = theirs.base_model.model.esm(input_ids=tokens, attention_mask=tokens.ne(1)).last_hidden_state
    return float((mine - other).abs().max())


def random_tokens(batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """`length` tokens per row: BOS, residues, EOS; no padding (every row is full)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, (batch, length), generator=generator)
    tokens[:, 0], tokens[:, -1] = 0, 2
    return tokens.to(device)


def step_functions(ours, theirs, tokens: torch.Tensor):
    """Closures: a full training step (forward, backward, AdamW) and an eval forward, per side."""
    labels = torch.arange(tokens.shape[0], device=tokens.device) % 2
    mask = tokens.ne(1)
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
    train, _ = step_functions(ours, theirs, random_tokens(int(batch), int(length), device))
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vs_peft_table.md"),
                        help="generated table; results/vs_peft.md quotes it with the analysis")
    options = parser.parse_args()
    if options.quick:
        options.archs, options.shapes, options.repeats = ["8M"], ["8x64", "16x128"], 3
    device = pick_device(options.device)
    torch.set_num_threads(options.threads)

    rows, checks = [], {}
    for arch in options.archs:
        checks[arch] = check_same_function(arch, device)
        print(f"{arch}: max |hidden ours − hidden PEFT| with equal DoRA adapters = {checks[arch]:.2e}", flush=True)
        for shape in options.shapes:
            batch, length = parse_shape(shape)
            if arch != "8M" and batch * length > 512 and device.type == "cpu":
                continue  # CPU time: 35M only on shapes of at most 512 tokens per batch
            for method in METHODS:
                ours, theirs = build_pair(arch, method, device)
                train, evaluate = step_functions(ours, theirs, random_tokens(batch, length, device))
                train_time = interleaved(train, device, options.repeats)
                eval_time = interleaved(evaluate, device, options.repeats)
                memory = {"ours": float("nan"), "peft": float("nan")}
                if not options.no_memory:
                    for side in ("ours", "peft"):
                        memory[side] = run_worker(Path(__file__), [arch, side, method, str(batch), str(length),
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
    text = [f"<!-- generated by benchmarks/vs_peft.py; {environment_line(device)} -->",
            markdown_table(header, rows), "",
            "Equality check (max |Δ hidden state|, random DoRA values copied into PEFT): "
            + ", ".join(f"{a}: {v:.1e}" for a, v in checks.items())]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
