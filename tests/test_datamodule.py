"""Batches: fair-esm tokens, right shapes and padding, seeded bucketing, order restored, Lightning-ready."""

import esm
import lightning
import numpy as np
import pandas as pd
import pytest
import torch

from protadapt.data.datamodule import LengthBucketBatchSampler, ProteinDataModule, make_loader, restore_order
from protadapt.data.io import read_sequences
from protadapt.data.tasks import get_task

SPLIT = {"batch_size": 16, "val_fraction": 0.2}  # the DataConfig defaults


@pytest.fixture(scope="module")
def alphabet():
    return esm.data.Alphabet.from_architecture("ESM-1b")  # ESM-2 uses this alphabet


@pytest.fixture(scope="module")
def thermo_train() -> pd.DataFrame:
    frame = get_task("thermostability").load()
    return frame[frame["split"] == "train"].reset_index(drop=True)


def random_frame(n=57, seed=0, regression=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWYXBZUO"))
    sequences = ["".join(rng.choice(letters, rng.integers(3, 60))) for _ in range(n)]
    labels = rng.normal(size=n) if regression else np.tile([0, 1, 2], n)[:n]
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "sequence": sequences, "label": labels})


def padding_fraction(loader, padding_idx) -> float:
    padded = total = 0
    for batch in loader:
        padded += (batch["tokens"] == padding_idx).sum().item()
        total += batch["tokens"].numel()
    return padded / total


@pytest.mark.parametrize("shuffle", [True, False])
def test_tokens_equal_fair_esm_batch_converter(alphabet, shuffle):
    frame = random_frame()
    converter = alphabet.get_batch_converter()
    for batch in make_loader(frame, alphabet, 8, shuffle=shuffle, problem_type="classification"):
        rows = batch["index"].numpy()
        _, _, expected = converter(list(zip(frame["id"].iloc[rows], frame["sequence"].iloc[rows])))
        assert torch.equal(batch["tokens"], expected)
        assert batch["ids"] == frame["id"].iloc[rows].tolist()


def test_batch_shapes_padding_and_label_types(alphabet):
    frame = random_frame()
    batch = next(iter(make_loader(frame, alphabet, 8, shuffle=True, problem_type="classification")))
    lengths = frame["sequence"].str.len().to_numpy()[batch["index"].numpy()]
    assert batch["tokens"].shape == (8, lengths.max() + 2)
    assert batch["tokens"].dtype == torch.long
    assert (batch["tokens"][:, 0] == alphabet.cls_idx).all()
    for row, length in enumerate(lengths):
        assert batch["tokens"][row, length + 1] == alphabet.eos_idx
        assert (batch["tokens"][row, length + 2 :] == alphabet.padding_idx).all()
        assert (batch["tokens"][row, 1 : length + 1] != alphabet.padding_idx).all()
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (8,)
    assert batch["index"].dtype == torch.long
    regression = next(iter(make_loader(random_frame(regression=True), alphabet, 8, shuffle=False, problem_type="regression")))
    assert regression["labels"].dtype == torch.float32


def test_predict_loader_without_labels_and_order_restored(alphabet, tmp_path):
    path = tmp_path / "query.fasta"
    path.write_text(">q1\nMKTAYIAKQR\n>q2\nAC\n>q3\nMKVLAAGIVGLLLAAQGC\n>q4\nRRWW\n")
    frame = read_sequences(path)
    loader = make_loader(frame, alphabet, batch_size=3, shuffle=False)
    batches = list(loader)
    assert all("labels" not in batch for batch in batches)
    visited = torch.cat([batch["index"] for batch in batches])
    assert visited.tolist() == [1, 3, 0, 2]  # shortest first
    lengths = [(batch["tokens"] != alphabet.padding_idx).sum(1) - 2 for batch in batches]
    restored = restore_order(lengths, [batch["index"] for batch in batches])
    assert restored.tolist() == frame["sequence"].str.len().tolist()


def test_bucket_sampler_is_a_seeded_permutation_per_epoch():
    lengths = np.random.default_rng(0).integers(5, 500, 1000)
    sampler = LengthBucketBatchSampler(lengths, 16, seed=7)
    first = list(sampler)
    second = list(sampler)  # next epoch
    assert len(first) == len(sampler) == 63
    assert sorted(i for batch in first for i in batch) == list(range(1000))
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(LengthBucketBatchSampler(lengths, 16, seed=7)) == first
    assert list(LengthBucketBatchSampler(lengths, 16, seed=8)) != first


def test_bucketed_batches_pad_less_than_naive(alphabet, thermo_train):
    bucketed = padding_fraction(make_loader(thermo_train, alphabet, 16, shuffle=True, seed=0), alphabet.padding_idx)
    generator = torch.Generator().manual_seed(0)
    naive_loader = torch.utils.data.DataLoader(
        make_loader(thermo_train, alphabet, 16, shuffle=False).dataset,
        batch_size=16, shuffle=True, generator=generator,
        collate_fn=make_loader(thermo_train, alphabet, 16, shuffle=False).dataset.collate,
    )
    naive = padding_fraction(naive_loader, alphabet.padding_idx)
    assert bucketed < 0.05 < 0.15 < naive


def test_bad_character_is_a_one_line_error(alphabet):
    frame = pd.DataFrame({"id": ["a"], "sequence": ["AC#"]})
    with pytest.raises(ValueError, match=r"sequence 'a': character '#' has no token in the alphabet"):
        make_loader(frame, alphabet, 4, shuffle=False)


# --- the DataModule ------------------------------------------------------------------------


def test_datamodule_inner_split_and_loaders(alphabet):
    dm = ProteinDataModule.from_task(get_task("bbb"), alphabet, batch_size=16, val_fraction=0.2, seed=3)
    dm.setup("fit")
    assert len(dm.inner_train_df) + len(dm.inner_val_df) == len(dm.train) == 198
    assert not set(dm.inner_train_df["id"]) & set(dm.inner_val_df["id"])
    assert set(dm.inner_val_df["label"]) == {0, 1}
    assert dm.inner_val_df["label"].value_counts().to_dict() == {0: 20, 1: 20}

    def ids(loader):
        return [record_id for batch in loader for record_id in batch["ids"]]

    assert sorted(ids(dm.train_dataloader())) == sorted(dm.inner_train_df["id"])
    assert sorted(ids(dm.inner_train_dataloader())) == sorted(dm.inner_train_df["id"])
    assert sorted(ids(dm.val_dataloader())) == sorted(dm.inner_val_df["id"])
    assert sorted(ids(dm.inner_val_dataloader())) == sorted(dm.inner_val_df["id"])
    assert sorted(ids(dm.full_train_dataloader())) == sorted(dm.train["id"])
    assert sorted(ids(dm.test_dataloader())) == sorted(dm.test["id"])
    assert ids(dm.val_dataloader()) == ids(dm.val_dataloader())  # evaluation order is fixed
    batch = next(iter(dm.val_dataloader()))
    assert dm.train["id"].iloc[dm.inner_val_idx[batch["index"].numpy()]].tolist() == batch["ids"]
    with pytest.raises(ValueError, match=r"no predict DataFrame"):
        dm.predict_dataloader()


def test_datamodule_is_deterministic_and_respects_groups(alphabet):
    train = random_frame(90)
    groups = np.arange(90) // 3
    first = ProteinDataModule(alphabet, train=train, problem_type="classification", groups=groups, seed=5, **SPLIT)
    second = ProteinDataModule(alphabet, train=train, problem_type="classification", groups=groups, seed=5, **SPLIT)
    first.setup()
    second.setup()
    assert np.array_equal(first.inner_val_idx, second.inner_val_idx)
    assert not set(groups[first.inner_train_idx]) & set(groups[first.inner_val_idx])
    order = [batch["ids"] for batch in first.train_dataloader()]
    assert order == [batch["ids"] for batch in second.train_dataloader()]


def test_datamodule_regression_labels(alphabet):
    frame = get_task("mic").load()
    dm = ProteinDataModule(alphabet, train=frame[frame["split"] == "train"].reset_index(drop=True), problem_type="regression", **SPLIT)
    batch = next(iter(dm.inner_val_dataloader()))
    assert batch["labels"].dtype == torch.float32


def test_datamodule_requires_labels_for_training(alphabet):
    train = random_frame(10).assign(label=[0, 1, 0, 1, 0, 1, 0, 1, 0, np.nan])
    with pytest.raises(ValueError, match="train: record 'r9' has no label"):
        ProteinDataModule(alphabet, train=train, problem_type="classification", **SPLIT).setup()


class _LengthModel(lightning.LightningModule):
    """Smallest model that exercises fit / validate / predict on the batch dict."""

    def __init__(self, padding_idx):
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.epochs_seen = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.epochs_seen.append(batch["ids"])
        length = (batch["tokens"] != self.padding_idx).sum(1).float()
        return ((self.weight * length - batch["labels"].float()) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_size", float(len(batch["ids"])))

    def predict_step(self, batch, batch_idx):
        return batch["index"], (batch["tokens"] != self.padding_idx).sum(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-6)


def test_lightning_fit_and_predict(alphabet):
    frame = get_task("bbb").load()
    train, test = (frame[frame["split"] == name].reset_index(drop=True) for name in ("train", "test"))
    dm = ProteinDataModule(alphabet, train=train, test=test, predict=test, problem_type="classification", batch_size=32, val_fraction=0.2)
    model = _LengthModel(alphabet.padding_idx)
    trainer = lightning.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.epochs_seen) == 2 and model.epochs_seen[0] != model.epochs_seen[1]
    outputs = trainer.predict(model, datamodule=dm)
    lengths = restore_order([out[1] for out in outputs], [out[0] for out in outputs])
    assert lengths.tolist() == (test["sequence"].str.len() + 2).tolist()
