"""Tokenised, length-bucketed batches of sequence DataFrames, and the Lightning DataModule.

A batch is a dict: ``tokens`` LongTensor[B, T] (BOS/cls + residues + EOS, padded with the
alphabet's padding index, exactly as fair-esm's BatchConverter does), ``labels`` LongTensor[B]
(classification) or FloatTensor[B] (regression) when every row has a label, ``index``
LongTensor[B] (row positions in the DataFrame the loader was built from) and ``ids`` list[str].

Training loaders shuffle, then sort by length inside chunks of 16 batches and shuffle the batch
order (seeded by seed and epoch), so batches carry little padding but still vary. Evaluation
loaders go through the rows shortest first; ``index`` (or `restore_order`) maps results back.

Under DDP (`distributed=True`, used by the DataModule's train, validation and test loaders) each
process takes its own share: training batches are dealt round-robin from the one seeded order
all ranks compute, evaluation rows are strided over ranks, and every rank gets the same number
of batches, so no collective waits on a rank that has run out.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import lightning
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler

from protadapt.data.splits import inner_split


class ProteinDataModule(lightning.LightningDataModule):
    """Train/test/predict frames in, inner train/validation split and bucketed loaders out.

    `batch_size` and `val_fraction` come from the run's `DataConfig` (their defaults live there)."""

    def __init__(
        self,
        alphabet,
        *,
        train: pd.DataFrame | None = None,
        test: pd.DataFrame | None = None,
        predict: pd.DataFrame | None = None,
        problem_type: str,
        batch_size: int,
        val_fraction: float,
        seed: int = 0,
        groups: Sequence | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        if groups is not None and (train is None or len(groups) != len(train)):
            raise ValueError("groups must hold one id per row of train")
        self.alphabet = alphabet
        self.train, self.test, self.predict = train, test, predict
        self.problem_type = problem_type
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.groups = None if groups is None else np.asarray(groups)
        self.num_workers = num_workers
        self.inner_train_idx: np.ndarray | None = None  # positions in train
        self.inner_val_idx: np.ndarray | None = None
        self.inner_train_df: pd.DataFrame | None = None
        self.inner_val_df: pd.DataFrame | None = None

    @classmethod
    def from_task(cls, task, alphabet, data_dir=None, **kwargs) -> "ProteinDataModule":
        """Load a registered (or custom) task and use its train/test split column."""
        frame = task.load(data_dir)
        parts = {name: frame[frame["split"] == name].reset_index(drop=True) for name in ("train", "test")}
        return cls(alphabet, train=parts["train"], test=parts["test"] if len(parts["test"]) else None,
                   problem_type=task.problem_type, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Split train into inner train / validation once (stratified, seeded, groups kept whole)."""
        if self.train is None or self.inner_train_df is not None:
            return
        labels = _labels_or_raise(self.train, "train")
        self.inner_train_idx, self.inner_val_idx = inner_split(
            labels, self.val_fraction, self.seed, problem_type=self.problem_type, groups=self.groups
        )
        self.inner_train_df = self.train.iloc[self.inner_train_idx].reset_index(drop=True)
        self.inner_val_df = self.train.iloc[self.inner_val_idx].reset_index(drop=True)

    def train_dataloader(self) -> DataLoader:
        return self.inner_train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._inner()[1], shuffle=False, stream=0)

    def test_dataloader(self) -> DataLoader:
        return self._loader(_need(self.test, "test"), shuffle=False, stream=0)

    def predict_dataloader(self) -> DataLoader:
        # not sharded: Trainer.predict does not gather, so every rank predicts every row
        return self._loader(_need(self.predict, "predict"), shuffle=False, stream=0, distributed=False)

    def inner_train_dataloader(self) -> DataLoader:
        """Lower level of BiDoRA (and ordinary training): the inner train part, shuffled."""
        return self._loader(self._inner()[0], shuffle=True, stream=1)

    def inner_val_dataloader(self) -> DataLoader:
        """Upper level of BiDoRA: the validation part, shuffled."""
        return self._loader(self._inner()[1], shuffle=True, stream=2)

    def bilevel_dataloader(self) -> CombinedLoader:
        """BiDoRA's search: batches `{"inner_train": ..., "inner_val": ...}`, the shorter part cycled."""
        with warnings.catch_warnings():  # a deprecation inside Lightning's CombinedLoader, not the caller's
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).* is deprecated.*")
            return CombinedLoader({"inner_train": self.inner_train_dataloader(),
                                   "inner_val": self.inner_val_dataloader()}, mode="max_size_cycle")

    def full_train_dataloader(self) -> DataLoader:
        """All of train, shuffled: BiDoRA's retrain phase gives back what validation took."""
        return self._loader(_need(self.train, "train"), shuffle=True, stream=3)

    def _inner(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        _need(self.train, "train")
        self.setup()
        return self.inner_train_df, self.inner_val_df

    def _loader(self, frame: pd.DataFrame, shuffle: bool, stream: int, distributed: bool = True) -> DataLoader:
        seed = int(np.random.SeedSequence([self.seed, stream]).generate_state(1)[0])
        return make_loader(frame, self.alphabet, self.batch_size, shuffle, seed, self.problem_type, self.num_workers,
                           distributed=distributed)


def make_loader(
    df: pd.DataFrame,
    alphabet,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    problem_type: str | None = None,
    num_workers: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader over ``df``: bucketed and reshuffled each epoch, or shortest-first when not shuffled.

    ``distributed``: shard across the processes of an initialised torch.distributed group (DDP).
    """
    dataset = ProteinDataset(df, alphabet, problem_type)
    if shuffle:
        sampler = LengthBucketBatchSampler(dataset.lengths, batch_size, seed=seed, distributed=distributed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=num_workers)
    if distributed:
        sampler = ShardedEvalBatchSampler(dataset.lengths, batch_size)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=num_workers)
    shortest_first = np.argsort(dataset.lengths, kind="stable").tolist()
    return DataLoader(
        dataset, batch_size=batch_size, sampler=shortest_first, collate_fn=dataset.collate, num_workers=num_workers
    )


def restore_order(values: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch outputs and put them back in DataFrame row order."""
    index = torch.cat(list(indices))
    ordered = torch.empty_like(torch.cat(list(values)))
    ordered[index] = torch.cat(list(values))
    return ordered


class ProteinDataset(Dataset):
    """Rows of a DataFrame, tokenised once; item i is row position i, `collate` builds batches."""

    def __init__(self, df: pd.DataFrame, alphabet, problem_type: str | None = None):
        if not len(df):
            raise ValueError("cannot build a loader from an empty DataFrame")
        self.alphabet = alphabet
        self.ids = df["id"].astype(str).tolist() if "id" in df else [str(i) for i in range(len(df))]
        table = _token_table(alphabet)
        self.residues = [_encode(sequence, table, record_id) for sequence, record_id in zip(df["sequence"], self.ids)]
        self.lengths = np.array([len(tokens) for tokens in self.residues], dtype=np.int64)
        self.labels = _label_tensor(df, problem_type)

    def __len__(self) -> int:
        return len(self.residues)

    def __getitem__(self, position: int) -> int:
        return position

    def collate(self, positions: list[int]) -> dict:
        """Pad like fair-esm's BatchConverter: cls, residues, eos, then padding_idx."""
        bos, eos = int(self.alphabet.prepend_bos), int(self.alphabet.append_eos)
        width = int(self.lengths[positions].max()) + bos + eos
        tokens = torch.full((len(positions), width), self.alphabet.padding_idx, dtype=torch.long)
        for row, position in enumerate(positions):
            length = int(self.lengths[position])
            tokens[row, bos : bos + length] = torch.from_numpy(self.residues[position])
            if bos:
                tokens[row, 0] = self.alphabet.cls_idx
            if eos:
                tokens[row, bos + length] = self.alphabet.eos_idx
        batch = {
            "tokens": tokens,
            "index": torch.tensor(positions, dtype=torch.long),
            "ids": [self.ids[position] for position in positions],
        }
        if self.labels is not None:
            batch["labels"] = self.labels[positions]
        return batch


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Seeded batches of similar length: permute, sort within chunks, shuffle batch order.

    The order depends only on (seed, epoch). Lightning calls `set_epoch` before each epoch; used
    by hand, each new iteration moves to the next epoch.

    With several processes (`num_replicas`, `rank`, or read from torch.distributed when
    `distributed=True`) every rank computes the same order and takes batches rank, rank + R, …;
    the list is first padded by wrapping round to a multiple of R, so ranks get equal counts.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, batches_per_chunk: int = 16,
                 num_replicas: int | None = None, rank: int | None = None, distributed: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk = batch_size * batches_per_chunk
        self.epoch = 0
        self.replicas = _Replicas(num_replicas, rank, distributed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.replicas.world_size())

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = order[start : start + self.chunk]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        batch_order = rng.permutation(len(batches)).tolist()
        world, rank = self.replicas.world_size(), self.replicas.rank()
        batch_order += batch_order[: (-len(batch_order)) % world]  # wrap round: equal counts per rank
        for batch in batch_order[rank::world]:
            yield batches[batch].tolist()


class ShardedEvalBatchSampler(Sampler[list[int]]):
    """Evaluation under DDP: rows shortest first, strided over ranks, the same batch count on each.

    No row is repeated, so gathered metrics count every row once; each rank splits its rows into
    ceil(N / (R·batch_size)) batches of nearly equal size.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, num_replicas: int | None = None,
                 rank: int | None = None, distributed: bool = True):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.replicas = _Replicas(num_replicas, rank, distributed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / (self.batch_size * self.replicas.world_size()))

    def __iter__(self):
        world, rank = self.replicas.world_size(), self.replicas.rank()
        if len(self.lengths) < world:
            raise ValueError(f"{len(self.lengths)} evaluation rows cannot be shared by {world} processes; "
                             "use fewer devices or a larger validation split")
        mine = np.argsort(self.lengths, kind="stable")[rank::world]
        for batch in np.array_split(mine, len(self)):
            yield batch.tolist()


class _Replicas:
    """How many processes share a loader and which one this is: given, or asked of torch.distributed
    when the loader is iterated (Lightning builds the process group after the loaders exist)."""

    def __init__(self, num_replicas: int | None, rank: int | None, distributed: bool):
        if (num_replicas is None) != (rank is None):
            raise ValueError("give num_replicas and rank together")
        if num_replicas is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.fixed = None if num_replicas is None else (num_replicas, rank)
        self.distributed = distributed

    def world_size(self) -> int:
        return self._get()[0]

    def rank(self) -> int:
        return self._get()[1]

    def _get(self) -> tuple[int, int]:
        if self.fixed is not None:
            return self.fixed
        if self.distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0


# --- helpers -------------------------------------------------------------------------------


def _token_table(alphabet) -> np.ndarray:
    """Byte -> token index for the alphabet's one-letter tokens (-1: no token)."""
    table = np.full(256, -1, dtype=np.int64)
    for token, index in alphabet.tok_to_idx.items():
        if len(token) == 1:
            table[ord(token)] = index
    return table


def _encode(sequence: str, table: np.ndarray, record_id: str) -> np.ndarray:
    codes = np.frombuffer(str(sequence).encode("latin-1", "replace"), dtype=np.uint8)
    tokens = table[codes]
    if not len(tokens) or (tokens < 0).any():
        bad = "empty sequence" if not len(tokens) else f"character {str(sequence)[int(np.argmax(tokens < 0))]!r}"
        raise ValueError(f"sequence {record_id!r}: {bad} has no token in the alphabet; read the file with read_sequences first")
    return tokens


def _label_tensor(df: pd.DataFrame, problem_type: str | None) -> torch.Tensor | None:
    """Labels as a tensor when every row has one; None (no 'labels' key) otherwise."""
    if "label" not in df or df["label"].isna().any():
        return None
    problem_type = problem_type or df.attrs.get("problem_type")
    if problem_type is None:
        problem_type = "classification" if pd.api.types.is_integer_dtype(df["label"]) else "regression"
    if problem_type == "classification":
        return torch.tensor(df["label"].to_numpy(dtype=np.int64), dtype=torch.long)
    return torch.tensor(df["label"].to_numpy(dtype=np.float64), dtype=torch.float32)


def _labels_or_raise(frame: pd.DataFrame, name: str) -> np.ndarray:
    if "label" not in frame or frame["label"].isna().any():
        missing = frame["id"][frame["label"].isna()].iloc[0] if "label" in frame else None
        where = f"record {missing!r} has no label" if missing is not None else "there is no 'label' column"
        raise ValueError(f"{name}: {where}; training needs every label")
    return frame["label"].to_numpy()


def _need(frame: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if frame is None:
        raise ValueError(f"no {name} DataFrame was given to ProteinDataModule({name}=...)")
    return frame
