"""Embedding files written chunk by chunk (bounded memory) and moved into place only when complete.

Layout, the same in every format: `ids` (N strings), `<pooling>_layer<L>` (N × E float32) per
pooling and layer, and with per-residue output `residues_layer<L>` (ΣT × E, the residues of all
sequences one after another) plus `offsets` (N + 1: sequence i is rows offsets[i]:offsets[i+1]).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

FORMATS = (".npz", ".h5", ".parquet")


class EmbeddingWriter(Protocol):
    def write(self, ids: list[str], arrays: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...

    def discard(self) -> None: ...


@contextmanager
def embedding_writer(path: Path, total: int, widths: dict[str, int]) -> Iterator[EmbeddingWriter]:
    """A writer for `total` rows of the named arrays (name -> width); the file appears only on success.

    Rows arrive in chunks, in file order; names starting with `residues_` are per-residue (ragged).
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: unknown embedding format '{path.suffix}'; use one of {', '.join(FORMATS)}")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    writer_class = {".npz": _NpzWriter, ".h5": _H5Writer, ".parquet": _ParquetWriter}[path.suffix]
    writer = None
    try:
        writer = writer_class(temporary, total, widths)
        yield writer
        writer.close()
        os.replace(temporary, path)
    finally:
        if writer is not None:
            writer.discard()
        temporary.unlink(missing_ok=True)


class _NpzWriter:
    """Each array streams into a .npy memory map beside the target; the maps are zipped at the end."""

    def __init__(self, path: Path, total: int, widths: dict[str, int]):
        self.path, self.total, self.widths = path, total, widths
        self.scratch = Path(tempfile.mkdtemp(prefix=".npz-parts-", dir=path.parent))
        self.pooled = {name: np.lib.format.open_memmap(self.scratch / f"{name}.npy", mode="w+", dtype=np.float32,
                                                         shape=(total, width))
                       for name, width in widths.items() if not name.startswith("residues_")}
        self.residue_parts = {name: open(self.scratch / f"{name}.raw", "wb") for name in widths if name.startswith("residues_")}
        self.ids: list[str] = []
        self.offsets = [0]
        self.row = 0

    def write(self, ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        rows = slice(self.row, self.row + len(ids))
        for name, target in self.pooled.items():
            target[rows] = arrays[name]
        for name, part in self.residue_parts.items():
            for matrix in arrays[name]:
                part.write(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
        if self.residue_parts:
            first = next(iter(self.residue_parts))
            for matrix in arrays[first]:
                self.offsets.append(self.offsets[-1] + len(matrix))
        self.ids += ids
        self.row += len(ids)

    def close(self) -> None:
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, target in self.pooled.items():
                target.flush()
                archive.write(self.scratch / f"{name}.npy", f"{name}.npy")
            for name, part in self.residue_parts.items():
                part.close()
                residues = np.memmap(self.scratch / f"{name}.raw", dtype=np.float32, mode="r",
                                     shape=(self.offsets[-1], self.widths[name]))
                np.save(self.scratch / f"{name}.npy", residues)
                archive.write(self.scratch / f"{name}.npy", f"{name}.npy")
            _add_array(archive, "ids", np.array(self.ids))
            if self.residue_parts:
                _add_array(archive, "offsets", np.array(self.offsets, dtype=np.int64))

    def discard(self) -> None:
        """Remove the scratch parts (after close, or after a failure)."""
        for part in self.residue_parts.values():
            part.close()
        self.pooled.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)


class _H5Writer:
    def __init__(self, path: Path, total: int, widths: dict[str, int]):
        h5py = _optional("h5py", ".h5")
        self.file = h5py.File(path, "w")
        self.ids = self.file.create_dataset("ids", (total,), dtype=h5py.string_dtype())
        self.arrays = {name: self.file.create_dataset(
            name, (0 if name.startswith("residues_") else total, width), dtype="float32",
            maxshape=(None, width), chunks=True) for name, width in widths.items()}
        self.offsets = [0]
        self.row = 0

    def write(self, ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        rows = slice(self.row, self.row + len(ids))
        self.ids[rows] = ids
        for name, dataset in self.arrays.items():
            if name.startswith("residues_"):
                stacked = np.concatenate(arrays[name]).astype(np.float32)
                start = dataset.shape[0]
                dataset.resize(start + len(stacked), axis=0)
                dataset[start:] = stacked
            else:
                dataset[rows] = arrays[name]
        ragged = [name for name in self.arrays if name.startswith("residues_")]
        if ragged:
            for matrix in arrays[ragged[0]]:
                self.offsets.append(self.offsets[-1] + len(matrix))
        self.row += len(ids)

    def close(self) -> None:
        if any(name.startswith("residues_") for name in self.arrays):
            self.file.create_dataset("offsets", data=np.array(self.offsets, dtype=np.int64))
        self.file.close()

    def discard(self) -> None:
        if self.file.id.valid:
            self.file.close()


class _ParquetWriter:
    """One row per sequence: `id` and one list<float32> column per pooled array (no per-residue output)."""

    def __init__(self, path: Path, total: int, widths: dict[str, int]):
        if any(name.startswith("residues_") for name in widths):
            raise ValueError(f"{path.name}: per-residue embeddings are written to .npz or .h5, not .parquet")
        self.pa = _optional("pyarrow", ".parquet")
        import pyarrow.parquet as pq

        self.names = list(widths)
        schema = self.pa.schema([("id", self.pa.string())] + [(n, self.pa.list_(self.pa.float32())) for n in self.names])
        self.writer = pq.ParquetWriter(path, schema)

    def write(self, ids: list[str], arrays: dict[str, np.ndarray]) -> None:
        columns = [self.pa.array(ids, self.pa.string())]
        columns += [self.pa.array(list(np.asarray(arrays[n], dtype=np.float32)), self.pa.list_(self.pa.float32()))
                    for n in self.names]
        self.writer.write_batch(self.pa.record_batch(columns, names=["id", *self.names]))

    def close(self) -> None:
        self.writer.close()

    def discard(self) -> None:
        self.writer.close()  # closing twice is harmless


def _add_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _optional(module: str, suffix: str):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise ValueError(f"writing {suffix} files needs the {module} package: pip install {module}") from None
