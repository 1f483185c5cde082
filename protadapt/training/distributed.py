"""DDP helpers for a run: this process's rank, and a check that every rank trained the same weights."""

from __future__ import annotations

import hashlib

import torch

from protadapt.model import ProteinPredictor


def global_rank() -> int:
    """This process's rank in an initialised torch.distributed group (DDP), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and float32 bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().float().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(predictor: ProteinPredictor) -> dict | None:
    """Under DDP: digests of every rank's trained tensors, gathered; an error if any rank differs.

    Returns None in a single process, else {"world_size", "trained_sha256", "magnitudes_sha256"}.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    state = predictor.trainable_state()
    magnitude_ids = {id(p) for p in predictor.magnitude_parameters()}
    magnitudes = {name: p for name, p in predictor.named_parameters() if id(p) in magnitude_ids}
    mine = (state_digest(state), state_digest(magnitudes))
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    if len(set(gathered)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights ({len(set(gathered))} distinct states); "
                           "please report this with `protadapt doctor` output")
    return {"world_size": len(gathered), "trained_sha256": [g[0] for g in gathered],
            "magnitudes_sha256": [g[1] for g in gathered] if magnitudes else []}
