"""Where pretrained files are looked for and how they are fetched: the one place that touches disk
caches or the network for weights.

Named models are looked for in `$PROTADAPT_MODEL_DIR` first, then in the cache of the tool that
publishes them (torch hub for fair-esm, the Hugging Face hub cache for ESM C and ProtBert), and only
then downloaded into that cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

import torch

from protadapt.backbones.base import BackboneError
from protadapt.files import one_line

MODEL_DIR_ENV = "PROTADAPT_MODEL_DIR"
HF_EXTRA = 'pip install "protadapt[hf]"'


log = logging.getLogger(__name__)


def weight_search_paths(name: str) -> list[Path]:
    """Where pretrained fair-esm weights for `name` are looked for, in order."""
    paths = model_dir_paths(name, suffixes=(".pt", ""))
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt")
    return paths


def model_dir_paths(name: str, suffixes: tuple[str, ...] = ("",)) -> list[Path]:
    """`$PROTADAPT_MODEL_DIR/<name><suffix>` for each suffix, when the variable is set."""
    model_dir = os.environ.get(MODEL_DIR_ENV)
    return [Path(model_dir) / f"{name}{suffix}" for suffix in suffixes] if model_dir else []


def hf_snapshot(repo_id: str, name: str) -> Path:
    """A local directory of hub model `repo_id`: `$PROTADAPT_MODEL_DIR/<name>/`, the HF cache, or a download."""
    for path in model_dir_paths(name):
        if path.is_dir():
            return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BackboneError(f"{name} needs transformers and huggingface_hub: {HF_EXTRA}") from None
    patterns = ["config.json", "*.safetensors", "*.json", "vocab.txt"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached: try the network next
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # the hub raises many types when offline
        looked = ", ".join(str(p) for p in model_dir_paths(name)) or f"${MODEL_DIR_ENV} (not set)"
        raise BackboneError(
            f"no weights for {name}: looked in {looked} and the Hugging Face cache; download of {repo_id} "
            f"failed ({one_line(error)}). Put the HF directory in ${MODEL_DIR_ENV}/{name}/, "
            f"or use --random-init for offline work") from None


def cached_snapshot(repo_id: str, name: str) -> Path | None:
    """Where `hf_snapshot` would find `repo_id` without the network, or None (only looks)."""
    for path in model_dir_paths(name):
        if path.is_dir():
            return path
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def download(url: str, destination: Path, sha256: str | None = None) -> Path:
    """Fetch `url` to `destination` atomically, checking its sha256 when one is known."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise OSError(f"checksum mismatch for {url}: got {digest.hexdigest()}, expected {sha256}")
        if not sha256:
            log.warning("%s: sha256 not verified (no published digest for this file); sha256 %s",
                        destination.name, digest.hexdigest())
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return destination
