"""Sequences per second of `predict_scores` (LoRA / DoRA predictors, 8M) against a bare fair-esm
forward over the same sequences in the same batches, and against naive padded batching.

    .venv/bin/python -m benchmarks.predict_throughput [--device cuda] [--n 512] [--precision fp16]

Sequences: the BBB peptides plus a seeded subsample of the MIC peptides (real sequences, labels
unused), or `--task thermostability` for longer proteins. `bare, bucketed` runs
`esm.ESM2(tokens, repr_layers=[L])` on the batches `predict_scores` builds (shortest first);
`bare, naive` the same model on batches of the rows in a random order, padded to their longest.
One more row runs the DoRA predictor under `--precision` autocast (default bf16), against the bare
forward under the same autocast. Writes `benchmarks/results/predict_throughput[_TASK][_DEVICE].md`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import torch

from benchmarks.common import environment_line, interleaved, markdown_table, pick_device, write_result

from protadapt.adapters import AdapterConfig
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import load_backbone
from protadapt.data.datamodule import ProteinDataset, make_loader
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.data.tasks import get_task
from protadapt.inference import predict_scores

ARCH = "esm2_t6_8M_UR50D"


def sequences(task: str, n: int, seed: int = 0) -> pd.DataFrame:
    names = ["bbb", "mic"] if task == "peptides" else [task]
    frame = pd.concat([get_task(name).load() for name in names])
    frame = frame[frame["sequence"].str.len() <= 1022]
    return frame.sample(n=min(n, len(frame)), random_state=seed)[["id", "sequence"]].reset_index(drop=True)


def trained_like(method: str, device: torch.device) -> ProteinPredictor:
    """A predictor whose adapters are off their init point, as after training."""
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone(ARCH, random_init=True), HeadConfig(), AdapterConfig(method=method))
    return perturb_as_if_trained(predictor, std=0.02).to(device)


def token_batches(frame: pd.DataFrame, alphabet, batch_size: int, order: str, device) -> list[torch.Tensor]:
    if order == "bucketed":
        loader = make_loader(frame, alphabet, batch_size=batch_size, shuffle=False)
        return [batch["tokens"].to(device) for batch in loader]
    dataset = ProteinDataset(frame, alphabet)
    positions = np.random.default_rng(0).permutation(len(frame)).tolist()
    return [dataset.collate(positions[i:i + batch_size])["tokens"].to(device)
            for i in range(0, len(positions), batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", default="peptides", choices=["peptides", "thermostability"])
    parser.add_argument("--n", type=int, default=512, help="sequences")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"], help="autocast dtype of the extra rows")
    options = parser.parse_args()
    device = pick_device(options.device)
    torch.set_num_threads(options.threads)
    frame = sequences(options.task, options.n)

    bare = load_backbone(ARCH, random_init=True).model.to(device).eval()
    alphabet = load_backbone("tiny").alphabet
    num_layers = bare.num_layers
    bucketed = token_batches(frame, alphabet, options.batch_size, "bucketed", device)
    naive = token_batches(frame, alphabet, options.batch_size, "naive", device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}[options.precision]

    def bare_forward(batches, dtype=None):
        def run():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for tokens in batches:
                    bare(tokens, repr_layers=[num_layers])["representations"][num_layers].cpu()
        return run

    lora, dora = trained_like("lora", device), trained_like("dora", device)
    low = options.precision
    candidates = {
        "bare fair-esm, bucketed batches": bare_forward(bucketed),
        "predict_scores, LoRA": lambda: predict_scores(lora, frame, options.batch_size),
        "predict_scores, DoRA": lambda: predict_scores(dora, frame, options.batch_size),
        "bare fair-esm, naive padded batches (random order)": bare_forward(naive),
        f"bare fair-esm, bucketed batches, {low} autocast": bare_forward(bucketed, autocast),
        f"predict_scores, DoRA, {low} autocast": lambda: predict_scores(dora, frame, options.batch_size,
                                                                        precision=low),
    }
    times = interleaved(candidates, device, options.repeats)
    reference = times["bare fair-esm, bucketed batches"]
    pad = {name: sum(int(t.ne(alphabet.padding_idx).sum()) for t in b) / sum(t.numel() for t in b)
           for name, b in (("bucketed", bucketed), ("naive", naive))}
    lengths = frame["sequence"].str.len()
    rows = [[name, f"{len(frame) / t:.1f}", f"**{reference / t:.2f}**"] for name, t in times.items()]
    command = " ".join(["python -m benchmarks.predict_throughput", *sys.argv[1:]])
    text = f"""# Prediction throughput: `predict_scores` vs a bare fair-esm forward

Command: `{command}` (median of {options.repeats} interleaved rounds after a warm-up).
{environment_line(device)}; random-init ESM-2 8M ({ARCH}).

{len(frame)} {"BBB + MIC peptide" if options.task == "peptides" else options.task} sequences (length median {lengths.median():.0f}, max {lengths.max()}), batch
{options.batch_size}. Real tokens per batch cell: {pad['bucketed']:.2f} in length-sorted batches,
{pad['naive']:.2f} in random-order batches.

{markdown_table(["path", "sequences/s", "vs bare, bucketed, fp32 (goal ≥ 0.9)"], rows)}
{NOTE}"""
    write_result(text, "predict_throughput" + ("" if options.task == "peptides" else f"_{options.task}"), device)


NOTE = """
`predict_scores` merges the adapters (no low-rank or ‖V‖ work per call), runs under
`torch.inference_mode` on length-sorted batches, and adds only tokenisation, pooling, the head, the
merge/unmerge and a copy of the adapted weights that keeps W0 bit-exact across calls. Its ESM-2
forward is protadapt's own loop (fused SDPA attention and fused GELU), which is why it can beat the
bare fair-esm module, whose GELU is five separate element-wise kernels. The autocast rows compare
like with like (both under the same autocast); whether bf16 helps on a CPU depends on native bf16
support (AVX512-BF16 / AMX); on recent GPUs it does. No GPU numbers here: none was lent to this task;
run with `--device cuda` to record them.
"""


if __name__ == "__main__":
    main()
