"""Backbones: a name, path or directory in, a frozen-ready encoder of per-residue vectors out.

Families (`base.Backbone` subclasses): fair-esm ESM-2 / ESM-1b (`esm`, `esm_hf`), ESM C (`esmc`)
and BERT-family encoders (`bert`); the last two need the `protadapt[hf]` extra (transformers).

Resolution order for `load_backbone(spec)`:
1. `tiny` — a 2-layer, 32-wide random ESM-2 for tests.
2. An existing path: a fair-esm `.pt` checkpoint, or an HF-format directory whose `config.json`
   says `esm` (ESM-2), `esmc` or `bert`.
3. A known name (`ARCHITECTURES`): with `random_init=True` the exact architecture, randomly
   initialised; otherwise pretrained weights. fair-esm names: `$PROTADAPT_MODEL_DIR` (`<name>.pt` or
   an HF directory `<name>/`), the torch hub cache, then a download into it. ESM C and ProtBert:
   `$PROTADAPT_MODEL_DIR/<name>/`, the Hugging Face cache, then the hub. AntiBERTy: the installed
   `antiberty` package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protadapt.backbones import bert, esm, esmc, hf
from protadapt.backbones.base import FAMILIES, WEIGHT_DTYPES, Architecture, Backbone, BackboneError, family, \
    store_frozen_weights
from protadapt.backbones.esm import (
    FAIR_ESM_URL,
    KNOWN_SHA256,
    MAX_RESIDUES,
    build_esm,
    esm_linear_shapes,
    load_fair_esm_checkpoint,
    wrap_esm,
)
from protadapt.backbones.esm_hf import HF_DERIVED, HF_TO_FAIR_ESM, hf_architecture, hf_to_fair_esm_key, load_hf_directory
from protadapt.backbones.hf import read_config
from protadapt.backbones.weights import MODEL_DIR_ENV, cached_snapshot, download, hf_snapshot, weight_search_paths
from protadapt.files import one_line

ESM_ARCHITECTURES = esm.ARCHITECTURES
ARCHITECTURES: dict[str, Architecture] = {**ESM_ARCHITECTURES, **esmc.ARCHITECTURES, **bert.ARCHITECTURES}
HF_FAMILIES = ("esmc", "bert")


def load_backbone(spec: str, *, random_init: bool = False) -> Backbone:
    """Load a backbone by name, fair-esm checkpoint path or HF-format directory."""
    path = Path(spec).expanduser()
    if spec in ARCHITECTURES and (random_init or spec == "tiny"):
        return build_random(ARCHITECTURES[spec])
    if path.exists():
        if random_init:  # the architecture of a local HF config, without its weights
            return build_random(directory_architecture(path))
        return _load_path(path)
    if spec not in ARCHITECTURES:
        known = ", ".join(name for name in ARCHITECTURES if name != "tiny")
        raise BackboneError(f"unknown backbone '{spec}': not a file or directory, and not one of: tiny, {known}")
    if spec == bert.ANTIBERTY:
        return bert.load_bert_directory(bert.antiberty_directory(), name=spec)
    if spec in esmc.HUB_IDS:
        return esmc.load_esmc_directory(hf_snapshot(esmc.HUB_IDS[spec], spec), name=spec)
    if spec in bert.HUB_IDS:
        return bert.load_bert_directory(hf_snapshot(bert.HUB_IDS[spec], spec), name=spec)
    return _load_named(spec)


def build_random(architecture: Architecture, seed: int = 0) -> Backbone:
    """The exact architecture with random weights, the same for the same seed (so a run reloads)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = build_model(architecture)
    return family(architecture.family)(model, tokenizer, architecture, pretrained=False,
                                       source=f"random-init:seed={seed}")


def build_model(architecture: Architecture) -> tuple[nn.Module, object]:
    """The family's module for `architecture` with its own initialisation, and its tokenizer."""
    if architecture.family == "esmc":
        return esmc.build_esmc(architecture)
    if architecture.family == "bert":
        return bert.build_bert(architecture)
    family(architecture.family)  # an unknown family is a one-line error
    return build_esm(architecture)


_build_model = build_model  # the name the adapter counting used


def linear_shapes(architecture: Architecture) -> list[tuple[str, int, int]]:
    """(path, in, out) of every linear an adapter may target; transformers families on the meta device."""
    if architecture.family not in HF_FAMILIES:
        return esm_linear_shapes(architecture)
    with torch.device("meta"):
        model, _ = build_model(architecture)
    return hf.linear_shapes(model)


def resolve_architecture(spec: str) -> Architecture:
    """The architecture a name or HF directory describes, without loading any weights."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return directory_architecture(path)
    if spec not in ARCHITECTURES:
        raise BackboneError(f"unknown backbone '{spec}'; choose one of {', '.join(ARCHITECTURES)} or an HF directory")
    return ARCHITECTURES[spec]


def directory_architecture(directory: Path) -> Architecture:
    """ESM-2, ESM C or BERT, as the directory's `config.json` says."""
    model_type = read_config(directory).get("model_type") if (directory / "config.json").exists() else None
    if model_type == "esmc":
        return esmc.esmc_directory_architecture(directory)
    if model_type == "bert":
        return bert.bert_directory_architecture(directory)
    return hf_architecture(directory)


def rebuild(record: dict) -> Backbone:
    """The backbone a run saved: the seeded random init again, or the same weights loaded again."""
    if not record.get("pretrained"):
        seed = int(record.get("source", "").partition("seed=")[2] or 0)  # build_random's source names its seed
        return build_random(Architecture.from_record(record), seed=seed)
    source = Path(record["source"])
    return _load_path(source, name=record["name"]) if source.exists() else load_backbone(record["name"])


def hf_weight_locations() -> dict[str, Path | None]:
    """Where each named ESM C / BERT model's weights would be found offline (nothing is loaded)."""
    found: dict[str, Path | None] = {}
    for name, repo_id in {**esmc.HUB_IDS, **bert.HUB_IDS}.items():
        found[name] = cached_snapshot(repo_id, name)
    try:
        found[bert.ANTIBERTY] = bert.antiberty_directory()
    except BackboneError:
        found[bert.ANTIBERTY] = None
    return found


def _load_named(name: str) -> Backbone:
    candidates = weight_search_paths(name)
    for candidate in candidates:
        if candidate.exists():
            return _load_path(candidate, name=name)
    destination = candidates[-1]
    try:
        download(FAIR_ESM_URL.format(name=name), destination, KNOWN_SHA256.get(name))
    except OSError as error:
        looked = ", ".join(str(p) for p in candidates)
        raise BackboneError(
            f"no weights for {name}: looked for {looked}; download failed ({one_line(error)}). "
            f"Put the fair-esm file {name}.pt (or an HF directory {name}/) in ${MODEL_DIR_ENV}, "
            f"or use --random-init for offline work"
        ) from None
    return _load_path(destination, name=name)


def _load_path(path: Path, name: str | None = None) -> Backbone:
    if not path.is_dir():
        return load_fair_esm_checkpoint(path, name=name)
    if not (path / "config.json").exists():
        raise BackboneError(f"{path}: a directory without config.json; expected an HF-format model directory")
    model_type = read_config(path).get("model_type")
    if model_type == "esmc":
        return esmc.load_esmc_directory(path, name=name)
    if model_type == "bert":
        return bert.load_bert_directory(path, name=name)
    return load_hf_directory(path)


__all__ = [
    "ARCHITECTURES", "FAIR_ESM_URL", "FAMILIES", "HF_DERIVED", "HF_TO_FAIR_ESM", "KNOWN_SHA256", "MAX_RESIDUES",
    "MODEL_DIR_ENV", "Architecture", "Backbone", "BackboneError", "build_model", "build_random", "download",
    "hf_architecture", "hf_to_fair_esm_key", "hf_weight_locations", "linear_shapes", "load_backbone", "load_hf_directory", "rebuild",
    "resolve_architecture", "store_frozen_weights", "weight_search_paths", "WEIGHT_DTYPES", "wrap_esm",
]
