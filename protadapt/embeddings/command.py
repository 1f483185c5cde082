"""`protadapt embed`: a sequence file in, pooled (and optionally per-residue) embeddings out.

Records are read and validated by the data layer, processed in chunks of `CHUNK` in file order
(length-bucketed batches inside a chunk), and streamed into the output file, so memory stays
bounded on 100,000 sequences; the file appears only once it is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from protadapt.embeddings.extract import POOLINGS, embed_batches, resolve_layer
from protadapt.embeddings.writers import embedding_writer

CHUNK = 2048  # records per chunk: the most embeddings held in memory at once


def embed_file(backbone, frame: pd.DataFrame, output: str | Path, layers: Sequence[int] = (-1,),
               poolings: Sequence[str] = ("mean",), per_residue: bool = False, batch_size: int = 32) -> Path:
    """Write `frame`'s embeddings to `output` (.npz, .h5 or .parquet); returns the path written."""
    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; choose from: {', '.join(POOLINGS)}")
    layers = [resolve_layer(backbone, layer) for layer in layers]
    width = backbone.embed_dim
    widths = {f"{p}_layer{layer}": width for layer in layers for p in poolings}
    if per_residue:
        widths |= {f"residues_layer{layer}": width for layer in layers}
    output = Path(output)
    with embedding_writer(output, len(frame), widths) as writer:
        for start in range(0, len(frame), CHUNK):
            chunk = frame.iloc[start:start + CHUNK].reset_index(drop=True)
            writer.write(chunk["id"].astype(str).tolist(), _in_file_order(backbone, chunk, layers, poolings,
                                                                         per_residue, batch_size))
    return output


def _in_file_order(backbone, chunk: pd.DataFrame, layers, poolings, per_residue: bool, batch_size: int) -> dict:
    """The chunk's arrays with rows back in file order (the batches come shortest first)."""
    parts = list(embed_batches(backbone, chunk, layers, poolings, batch_size, per_residue))
    order = np.concatenate([part["index"] for _, part in parts])
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    arrays: dict = {}
    for name in parts[0][1]:
        if name == "index":
            continue
        if name.startswith("residues_"):
            flat = [matrix for _, part in parts for matrix in part[name]]
            arrays[name] = [flat[i] for i in position]
        else:
            arrays[name] = np.concatenate([part[name] for _, part in parts])[position]
    return arrays
