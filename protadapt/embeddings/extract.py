"""Pooled (and per-residue) embeddings of sequences from a frozen backbone, through the cache.

Layers are numbered as fair-esm numbers them: 0 is the embedding layer, i the output of block i,
and the last (also −1) the final representation the heads see. Pooling is the heads' own: `mean`
over residues (specials and padding excluded) or `bos` (the first token's state).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from protadapt.embeddings.cache import EmbeddingCache, backbone_identity, key_prefix

POOLINGS = ("mean", "bos")


def pooled_embeddings(backbone, sequences: Sequence[str], layers: Sequence[int] = (-1,), pooling: str = "mean",
                      batch_size: int = 32, cache: EmbeddingCache | None = None) -> dict[int, np.ndarray]:
    """`{layer: [N, E] float32}` for the sequences (in their order); only cache misses go through the backbone."""
    layers = [resolve_layer(backbone, layer) for layer in layers]
    unique = list(dict.fromkeys(sequences))
    identity = backbone_identity(backbone) if cache is not None else ""
    known: dict[int, dict[str, np.ndarray]] = {
        layer: cache.get(key_prefix(identity, layer, pooling), unique) if cache is not None else {} for layer in layers}
    missing = [s for s in unique if any(s not in known[layer] for layer in layers)]
    if missing:
        frame = pd.DataFrame({"id": [str(i) for i in range(len(missing))], "sequence": missing})
        for batch_sequences, outputs in embed_batches(backbone, frame, layers, (pooling,), batch_size):
            for layer in layers:
                vectors = dict(zip(batch_sequences, outputs[f"{pooling}_layer{layer}"]))
                known[layer].update(vectors)
                if cache is not None:
                    cache.put(key_prefix(identity, layer, pooling), vectors)
    return {layer: np.stack([known[layer][s] for s in sequences]).astype(np.float32) for layer in layers}


def embed_batches(backbone, frame: pd.DataFrame, layers: Sequence[int], poolings: Sequence[str] = ("mean",),
                  batch_size: int = 32, per_residue: bool = False) -> Iterator[tuple[list[str], dict]]:
    """Length-sorted batches of `frame`: (sequences of the batch, {"<pooling>_layer<L>": [b, E], ...}).

    With `per_residue`, also "residues_layer<L>": a list of `[length, E]` arrays, one per sequence.
    """
    from protadapt.data.datamodule import make_loader
    from protadapt.heads import pool, residue_mask

    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; choose one of: {', '.join(POOLINGS)}")
    layers = [resolve_layer(backbone, layer) for layer in layers]
    loader = make_loader(frame.reset_index(drop=True), backbone.alphabet, batch_size=batch_size, shuffle=False)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    sequences = frame["sequence"].tolist()
    try:
        with torch.inference_mode():
            for batch in loader:
                tokens = batch["tokens"].to(device)
                states = hidden_states(backbone, tokens, layers)
                mask = residue_mask(tokens, backbone)
                out: dict[str, object] = {}
                for layer, hidden in states.items():
                    hidden = hidden.float()
                    for pooling in poolings:  # the heads' own pooling, so cached vectors are what a head sees
                        out[f"{pooling}_layer{layer}"] = pool(hidden, tokens, backbone, pooling).cpu().numpy()
                    if per_residue:
                        out[f"residues_layer{layer}"] = [h[m].cpu().numpy() for h, m in zip(hidden, mask)]
                yield [sequences[i] for i in batch["index"].tolist()], out | {"index": batch["index"].numpy()}
    finally:
        backbone.train(was_training)


def hidden_states(backbone, tokens: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-residue states of the requested layers (the backbone's own `hidden_states`, one pass)."""
    return backbone.hidden_states(tokens, list(layers))


def resolve_layer(backbone, layer: int) -> int:
    """A layer number in 0..num_layers (negative counts from the end: −1 is the last)."""
    count = backbone.architecture.num_layers
    resolved = layer + count + 1 if layer < 0 else layer
    if not 0 <= resolved <= count:
        raise ValueError(f"layer {layer} does not exist: {backbone.architecture.name} has layers 0..{count} (or -1 for the last)")
    return resolved
