"""`protadapt doctor`: the set-up at a glance — versions, devices, where weights and data are found.

Paste its output into a bug report. It only looks: nothing is downloaded, created or loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("protadapt", "torch", "lightning", "fair-esm", "numpy", "pandas", "scikit-learn", "tensorboard",
            "transformers", "huggingface_hub", "antiberty")


def report() -> str:
    """The whole report as text, one `key: value` line per fact, grouped under headings."""
    sections = [("versions", versions()), ("devices", devices()), ("weights", weights()),
                ("backbones usable now", usable_backbones()), ("data", data())]
    lines = []
    for title, rows in sections:
        lines.append(f"[{title}]")
        lines.extend(f"  {key}: {value}" for key, value in rows)
    return "\n".join(lines)


def versions() -> list[tuple[str, str]]:
    rows = [("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform())]
    for package in PACKAGES:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    return rows


def devices() -> list[tuple[str, str]]:
    import torch

    rows = [("cpu threads", str(torch.get_num_threads()))]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("cuda", f"{len(names)} GPU(s): {', '.join(names)} (CUDA {torch.version.cuda})"))
        rows.append(("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported: use --precision 16-mixed"))
    else:
        rows.append(("cuda", "not available" + (f" (torch built with CUDA {torch.version.cuda})"
                                                if torch.version.cuda else " (CPU-only torch build)")))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    rows.append(("default accelerator", "gpu" if torch.cuda.is_available()
                 else "mps" if mps is not None and mps.is_available() else "cpu"))
    return rows


def weights() -> list[tuple[str, str]]:
    """Where each known model's weights are looked for, and which of those places hold files."""
    import torch

    from protadapt.backbones import ARCHITECTURES, MODEL_DIR_ENV, weight_search_paths

    rows = [(MODEL_DIR_ENV, os.environ.get(MODEL_DIR_ENV) or "not set"),
            ("torch hub cache", str(Path(torch.hub.get_dir()) / "checkpoints"))]
    found = []
    for name in ARCHITECTURES:
        if name == "tiny":
            continue
        hits = [str(path) for path in weight_search_paths(name) if path.exists()]
        if hits:
            found.append(f"{name} -> {hits[0]}")
    rows.append(("models with weights", "; ".join(found) if found else
                 "none found (pass a .pt file or HF directory with --backbone, or use --random-init)"))
    return rows + hf_weights()


def usable_backbones() -> list[tuple[str, str]]:
    """Per named backbone: ready (weights here), downloadable (online only), or which extra to install."""
    from importlib.util import find_spec

    from protadapt.backbones import ARCHITECTURES, HF_FAMILIES, hf_weight_locations, weight_search_paths
    from protadapt.backbones.bert import ANTIBERTY

    has_hf = find_spec("transformers") is not None
    hf_found = hf_weight_locations() if has_hf else {}
    rows = []
    for name, architecture in ARCHITECTURES.items():
        if name == "tiny":
            continue
        if architecture.family not in HF_FAMILIES:
            hits = [path for path in weight_search_paths(name) if path.exists()]
            status = f"ready ({hits[0]})" if hits else "downloadable from fair-esm when online (or --random-init)"
        elif not has_hf:
            status = "install the extra: pip install 'protadapt[antiberty]'" if name == ANTIBERTY \
                else "install the extra: pip install 'protadapt[hf]'"
        elif hf_found.get(name):
            status = f"ready ({hf_found[name]})"
        elif name == ANTIBERTY:
            status = "install its weights: pip install 'protadapt[antiberty]'"
        else:
            status = "downloadable from the Hugging Face hub when online (or --random-init)"
        rows.append((name, status))
    return rows


def hf_weights() -> list[tuple[str, str]]:
    """The transformers families (ESM C, BERT): whether the extra is installed, which weights are found."""
    from importlib.util import find_spec

    from protadapt.backbones import hf_weight_locations
    from protadapt.backbones.weights import HF_EXTRA

    if find_spec("transformers") is None:
        return [("ESM C / BERT backbones", f"transformers not installed: {HF_EXTRA}")]
    hits = [f"{name} -> {path}" for name, path in hf_weight_locations().items() if path is not None]
    return [("ESM C / BERT weights", "; ".join(hits) if hits else
             "none found (put HF directories in $PROTADAPT_MODEL_DIR/<name>/, or use --random-init)")]


def data() -> list[tuple[str, str]]:
    from protadapt.data.tasks import DATA_DIR_ENV, TASKS, resolve_data_dir

    rows = [(DATA_DIR_ENV, os.environ.get(DATA_DIR_ENV) or "not set"),
            ("data directory", str(resolve_data_dir()))]
    for name, task in TASKS.items():
        path = task.path()
        status = "found" if path.exists() else ("missing, downloadable" if task.convert is not None else "missing")
        rows.append((f"task {name}", f"{status} ({path})"))
    return rows
