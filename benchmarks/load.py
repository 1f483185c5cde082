"""Loading an HF-format ESM-2 directory (`config.json` + `model.safetensors`, as the hub ships it): peak memory
and time of protadapt's loader, which builds the model on the meta device, against building it with random
initialisation first and then filling it (what the loader did before, and what a plain `load_state_dict` does).

    python -m benchmarks.load [--architecture esm2_t30_150M_UR50D] [--repeats 3]    # results/load.md

The directory is written once under --work by transformers' `EsmForMaskedLM.save_pretrained` (RANDOM
weights of the exact architecture: memory and time do not depend on the values). Each load runs in a fresh
interpreter (`--worker`), alternating the two ways; the figures are medians: wall time of the load and the
process's peak resident set (`ru_maxrss`) minus its resident set after the imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, cpu_model, environment_line, markdown_table, run_worker, write_result

WAYS = {"meta": "protadapt's loader (built on the meta device)",
        "built": "random init, then filled (`load_state_dict`)"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.work) / args.architecture, args.worker)))
        return 0
    directory = write_directory(Path(args.work) / args.architecture, args.architecture)
    runs = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            runs[way].append(run_worker("benchmarks.load", [way, "--architecture", args.architecture, "--work", args.work]))
    write_result(report(runs, directory, args), "load", torch.device("cpu"), Path(args.out) if args.out else None)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="esm2_t30_150M_UR50D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/protadapt-load", help="where the HF directory is written (reused)")
    parser.add_argument("--out", help=f"report path (default {RESULTS_DIR}/load.md)")
    parser.add_argument("--worker", choices=list(WAYS), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args(argv, argparse.Namespace(argv=list(argv)))


def write_directory(directory: Path, name: str) -> Path:
    """An HF ESM-2 directory of the exact architecture with random weights (kept for the next run)."""
    if (directory / "model.safetensors").exists():
        return directory
    from transformers import EsmConfig, EsmForMaskedLM

    from protadapt.backbones import ARCHITECTURES

    arch = ARCHITECTURES[name]
    config = EsmConfig(vocab_size=33, hidden_size=arch.embed_dim, num_hidden_layers=arch.num_layers,
                       num_attention_heads=arch.attention_heads, intermediate_size=4 * arch.embed_dim,
                       position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
                       max_position_embeddings=1026, emb_layer_norm_before=False, _name_or_path=name)
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(directory)
    return directory


def worker(directory: Path, way: str) -> dict:
    """One load in this fresh process: wall seconds and peak resident MiB above the post-import baseline."""
    from protadapt.backbones import load_backbone
    from protadapt.backbones.esm import build_esm, load_state_strict
    from protadapt.backbones.esm_hf import derived_tensors, fair_esm_state, hf_architecture
    from protadapt.files import read_safetensors

    torch.set_num_threads(1)
    baseline = resident_mib()
    start = time.perf_counter()
    if way == "meta":
        model = load_backbone(str(directory)).model
    else:
        model, _ = build_esm(hf_architecture(directory))
        weights = directory / "model.safetensors"
        state = fair_esm_state(read_safetensors(weights, RuntimeError))
        state.update(derived_tensors(model, state))
        load_state_strict(model, state, weights, optional=("lm_head.", "contact_head."))
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": seconds, "peak_mib": peak_mib() - baseline, "params": params}


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(runs: dict[str, list[dict]], directory: Path, args: argparse.Namespace) -> str:
    size = (directory / "model.safetensors").stat().st_size / 2**20
    median = {way: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib")} for way, rs in runs.items()}
    rows = [[WAYS[way], f"{m['seconds']:.2f}", f"{m['peak_mib']:.0f}", f"{m['peak_mib'] / size:.2f}",
             f"{m['seconds'] / median['built']['seconds']:.2f}", f"{m['peak_mib'] / median['built']['peak_mib']:.2f}"]
            for way, m in median.items()]
    return "\n".join([
        f"# Loading an HF-format ESM-2 directory: {args.architecture} ({runs['meta'][0]['params'] / 1e6:.0f} M "
        f"parameters, RANDOM weights, model.safetensors {size:.0f} MiB)", "",
        f"- Command: `python -m benchmarks.load {' '.join(args.argv)}`".rstrip(),
        f"- Machine: {cpu_model()}; {environment_line(torch.device('cpu'))}; each load in a fresh process, "
        f"{args.repeats} per way, alternating; medians. A shared machine: wall times are upper bounds.", "",
        markdown_table(["way", "wall s", "peak extra MiB", "÷ file size", "time ÷ random-init", "memory ÷ random-init"],
                       rows), ""])


if __name__ == "__main__":
    sys.exit(main())
