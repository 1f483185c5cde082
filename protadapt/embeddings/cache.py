"""Pooled embeddings kept once per (backbone identity, layer, pooling, sequence), shared by every run.

One SQLite file holds them: several processes may read and write it at once (SQLite's own file
locking, WAL journal), each write is one transaction, and the least recently used rows are dropped
when the file grows past its cap. Vectors are stored as float32 bytes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CACHE_DIR_ENV = "PROTADAPT_CACHE_DIR"


@dataclass
class CacheConfig:
    directory: str | None = None  # default: $PROTADAPT_CACHE_DIR, else ~/.cache/protadapt
    max_mb: int = 2048  # least recently used embeddings are dropped beyond this
    enabled: bool = True


class EmbeddingCache:
    """`get` and `put` pooled vectors under a key prefix naming backbone identity, layer and pooling."""

    def __init__(self, config: CacheConfig | None = None):
        self.config = config or CacheConfig()
        directory = Path(self.config.directory or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "protadapt")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "embeddings.sqlite"
        self.max_bytes = int(self.config.max_mb) * 1024 * 1024
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL, "
                       "bytes INTEGER NOT NULL, used REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS by_use ON vectors (used)")

    def get(self, prefix: str, sequences: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those sequences that have one (others are simply absent)."""
        keys = {_key(prefix, s): s for s in dict.fromkeys(sequences)}
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            for chunk in _chunks(list(keys), 500):
                marks = ",".join("?" * len(chunk))
                for key, blob in db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk):
                    found[keys[bytes(key)]] = np.frombuffer(blob, dtype=np.float32).copy()
                db.execute(f"UPDATE vectors SET used = ? WHERE key IN ({marks})", [time.time(), *chunk])
        return found

    def put(self, prefix: str, vectors: dict[str, np.ndarray]) -> None:
        now = time.time()
        rows = [(_key(prefix, s), np.ascontiguousarray(v, dtype=np.float32).tobytes(), now) for s, v in vectors.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO vectors (key, vector, bytes, used) VALUES (?, ?, ?, ?)",
                           [(k, v, len(v), t) for k, v, t in rows])
            self._evict(db)

    def total_bytes(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM vectors").fetchone()[0])

    def _evict(self, db: sqlite3.Connection) -> None:
        total = int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM vectors").fetchone()[0])
        if total <= self.max_bytes:
            return
        excess, dropped = total - int(0.9 * self.max_bytes), 0  # drop to 90 %: not on every later write
        for key, size in db.execute("SELECT key, bytes FROM vectors ORDER BY used").fetchall():
            if dropped >= excess:
                break
            db.execute("DELETE FROM vectors WHERE key = ?", (key,))
            dropped += size

    def _connect(self) -> sqlite3.Connection:
        """A connection whose `with` block is one transaction; waits up to a minute for another writer."""
        return _Closing(sqlite3.connect(self.path, timeout=60.0, isolation_level="IMMEDIATE"))


def backbone_identity(backbone: nn.Module) -> str:
    """A digest of every tensor of the module (names, shapes, dtypes and bytes): the same weights, the same key.

    Computed once per module object. It covers adapters too, so a run's merged or unmerged adapted
    backbone never shares entries with the plain one.
    """
    cached = getattr(backbone, "_protadapt_identity", None)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(backbone.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    identity = digest.hexdigest()
    object.__setattr__(backbone, "_protadapt_identity", identity)
    return identity


def key_prefix(identity: str, layer: int, pooling: str) -> str:
    return f"{identity}|layer={layer}|pooling={pooling}"


def _key(prefix: str, sequence: str) -> bytes:
    return hashlib.sha256(f"{prefix}|{sequence}".encode()).digest()


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Closing:
    """sqlite3's connection context manager commits but never closes; this one does both."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.connection.commit()
            else:
                self.connection.rollback()
        finally:
            self.connection.close()
