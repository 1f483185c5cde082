"""Precomputed embeddings (`data.embeddings_file`): the probe's vectors looked up by record id, no backbone pass.

The file has the layout `protadapt embed` writes (.npz, .h5 or .parquet): `ids` and one
`<pooling>_layer<L>` array (N × E) per pooling and layer. Every record of the data must have a
vector and every vector a record; the width must be the backbone's, so the fitted probe is a head
the run directory can keep. A file is read once per process (until it changes on disk).
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from protadapt.data.errors import DataError
from protadapt.embeddings.extract import resolve_layer
from protadapt.embeddings.writers import FORMATS

SHOWN_IDS = 5  # ids named in a missing/extra-id error


def file_features(path: str | Path, ids: Sequence[str], backbone, layers: Sequence[int],
                  pooling: str) -> dict[int, np.ndarray]:
    """`{layer: [N, E] float32}` for `ids` (in their order) from the file; a one-line error on any missing id."""
    index = _id_index(path)
    missing = [str(i) for i in dict.fromkeys(ids) if str(i) not in index]
    if missing:
        raise DataError(f"data.embeddings_file {path}: no vector for {len(missing)} record(s) "
                        f"({_named(missing)}); a probe on data.embeddings_file reads every record's vector from it: "
                        f"add them with `protadapt embed`")
    rows = np.fromiter((index[str(i)] for i in ids), dtype=np.int64, count=len(ids))
    layers = dict.fromkeys(resolve_layer(backbone, layer) for layer in layers)
    return {layer: _array(path, f"{pooling}_layer{layer}", backbone)[rows].astype(np.float32) for layer in layers}


def check_no_extra_ids(path: str | Path, ids: Sequence[str]) -> None:
    """A one-line error when the file has vectors of records that are in no split of the data."""
    known = {str(i) for i in ids}
    extra = [i for i in _id_index(path) if i not in known]
    if extra:
        raise DataError(f"data.embeddings_file {path}: {len(extra)} id(s) are in no split of the data "
                        f"({_named(extra)}); is it the file of this data set? Remove them from the file")


def _array(path: str | Path, name: str, backbone) -> np.ndarray:
    """One pooled array of the file, checked against the backbone's width."""
    arrays = _read(*_stamp(path))
    if name not in arrays:
        pooled = sorted(a for a in arrays if a != "ids" and not a.startswith("residues_")) or ["none"]
        raise DataError(f"data.embeddings_file {path}: no '{name}' array (the probe's layer and pooling); it has: "
                        f"{', '.join(pooled)}; set adapter.probe_layers / head.pooling to one of them, or "
                        f"write it with `protadapt embed --layers L --pooling P`")
    array = arrays[name]
    if array.ndim != 2 or array.shape[1] != backbone.embed_dim:
        raise DataError(f"data.embeddings_file {path}: '{name}' has shape {tuple(array.shape)}, but the backbone "
                        f"{backbone.architecture.name} has width {backbone.embed_dim}; set backbone= to the model "
                        f"that made the vectors")
    return array


def _id_index(path: str | Path) -> dict[str, int]:
    return _index(*_stamp(path))


def _stamp(path: str | Path) -> tuple[str, int, int]:
    """(path, mtime, size): the memo key, so a rewritten file is read again."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise DataError(f"data.embeddings_file {path}: unknown format '{path.suffix}'; use {', '.join(FORMATS)} "
                        f"(as `protadapt embed` writes)")
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"data.embeddings_file {path}: no such file; write it with `protadapt embed`") from None
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def _index(path: str, mtime: int, size: int) -> dict[str, int]:
    ids = _read(path, mtime, size)["ids"]
    index = {str(i): row for row, i in enumerate(ids)}
    if len(index) != len(ids):
        repeated = [i for i, count in Counter(ids.tolist()).items() if count > 1]
        raise DataError(f"data.embeddings_file {path}: {len(repeated)} repeated id(s) ({_named(repeated)}); "
                        f"every record needs one vector")
    return index


@lru_cache(maxsize=4)
def _read(path: str, mtime: int, size: int) -> dict[str, np.ndarray]:
    """`ids` and every pooled array of the file (per-residue arrays are not read)."""
    try:
        arrays = {".npz": _read_npz, ".h5": _read_h5, ".parquet": _read_parquet}[Path(path).suffix](path)
    except DataError:
        raise
    except Exception as error:  # a damaged or foreign file: one line, whatever the reader raised
        raise DataError(f"data.embeddings_file {path}: cannot read it ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    if "ids" not in arrays:
        raise DataError(f"data.embeddings_file {path}: no 'ids' array; the file must be as `protadapt embed` writes it")
    arrays["ids"] = np.asarray(arrays["ids"]).astype(str)
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"data.embeddings_file {path}: arrays of different lengths ({lengths})")
    return arrays


def _pooled(names) -> list[str]:
    return [name for name in names if name != "offsets" and not name.startswith("residues_")]


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError(f"data.embeddings_file {path}: not an .npz archive; write it with "
                        f"`protadapt embed -o FILE.npz`")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in _pooled(data.files)}


def _read_h5(path: str) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as data:
        arrays = {name: data[name][()] for name in _pooled(data.keys()) if name != "ids"}
        return arrays | ({"ids": data["ids"].asstr()[()]} if "ids" in data else {})


def _read_parquet(path: str) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise DataError(f"data.embeddings_file {path}: reading .parquet needs the pyarrow package: "
                        f"pip install pyarrow") from None

    table = pq.read_table(path)
    arrays = {"ids": np.asarray(table.column("id").to_pylist(), dtype=str)} if "id" in table.column_names else {}
    for name in _pooled(n for n in table.column_names if n != "id"):
        arrays[name] = np.asarray(table.column(name).to_pylist(), dtype=np.float32)
    return arrays


def _named(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown + (f", … {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")
