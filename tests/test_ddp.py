"""DDP on CPU (gloo, 2 processes): sharded batches, synchronised BiDoRA, one run directory written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from protadapt.config import load_config
from protadapt.data.datamodule import LengthBucketBatchSampler, ShardedEvalBatchSampler
from protadapt.data.tasks import resolve_task
from protadapt.training.distributed import state_digest
from protadapt.training.run import build_predictor

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ samplers, one process per rank simulated


@pytest.mark.parametrize("world", [2, 3])
def test_training_batches_are_dealt_round_robin_in_equal_numbers(world):
    lengths = list(range(5, 75))  # 70 rows, batch 8: 9 batches, not a multiple of 2 or 3
    single = list(LengthBucketBatchSampler(lengths, 8, seed=3))
    shards = [LengthBucketBatchSampler(lengths, 8, seed=3, num_replicas=world, rank=r) for r in range(world)]
    per_rank = [list(sampler) for sampler in shards]
    assert {len(batches) for batches in per_rank} == {len(shards[0])}  # equal counts, as len() says
    dealt = [per_rank[i % world][i // world] for i in range(len(per_rank[0]) * world)]
    assert dealt[: len(single)] == single  # the single-process order, dealt out
    assert dealt[len(single):] == single[: len(dealt) - len(single)]  # padded by wrapping round
    for epoch_two in zip(*(list(sampler) for sampler in shards)):  # next epoch: a new order, still in step
        assert len(epoch_two) == world


def test_evaluation_rows_are_split_without_repeats_and_in_equal_batch_counts():
    lengths = [7, 3, 9, 1, 4, 8, 2, 6, 5, 10, 11]
    shards = [list(ShardedEvalBatchSampler(lengths, 2, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    rows = sorted(i for shard in shards for batch in shard for i in batch)
    assert rows == list(range(len(lengths)))
    assert list(ShardedEvalBatchSampler(lengths, 4, distributed=False)) == [[3, 6, 1, 4], [8, 7, 0, 5], [2, 9, 10]]


# ------------------------------------------------------------ the CLI under DDP


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> Path:
    """48 training and 16 test peptides of bbb, balanced: enough for 2 ranks, quick to train."""
    frame = pd.read_csv(Path(os.environ["PROTADAPT_DATA_DIR"]) / "bbb" / "bbb.csv")
    frame = frame.drop_duplicates("sequence", keep=False)  # bbb has one sequence with both labels
    parts = [frame[(frame["split"] == split) & (frame["label"] == label)].head(n)
             for split, n in (("train", 24), ("test", 8)) for label in (0, 1)]
    path = tmp_path_factory.mktemp("ddp") / "small_bbb.csv"
    pd.concat(parts)[["id", "sequence", "label", "split"]].to_csv(path, index=False)
    return path


def run_ddp(method: str, data: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "protadapt.cli", "fit", "--task", "custom", "--method", method,
               "--backbone", "tiny", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--quiet",
               "--out", str(out), f"data.train_file={data}", "optim.max_epochs=1", "data.batch_size=8",
               "bilevel.retrain_epochs=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("method", ["lora", "bidora"])
def test_ddp_fit_trains_the_same_parameters_in_step_and_writes_one_run_directory(method, small_task, tmp_path):
    out = tmp_path / "run"
    result = run_ddp(method, small_task, out)

    # one process reported, one run directory with every file, nothing written elsewhere
    assert result.stdout.count('"run_dir"') == 1, result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    files = {p.name for p in out.iterdir()}
    assert {"adapter.safetensors", "adapter.json", "config.yaml", "metrics.json", "predictions.csv", "run.json",
            "test_roc_pr.png", "logs", "checkpoints"} <= files
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16
    assert len(pd.read_csv(out / "predictions.csv")) == 16

    # the parameter groups a single-process run trains
    config = load_config(None, ["data.task=custom", f"data.train_file={small_task}", f"adapter.method={method}",
                                "backbone=tiny"])
    task = resolve_task(config.data)
    frame = task.load()
    initial = build_predictor(config, task, frame[frame["split"] == "train"]).trainable_state()
    saved = load_file(str(out / "adapter.safetensors"))
    assert set(saved) == set(initial)
    assert any(not saved[k].equal(initial[k]) for k in saved if k.endswith(".up"))  # directions were trained

    # every rank ended with the same weights; the saved ones are those
    distributed = json.loads((out / "run.json").read_text())["distributed"]
    assert distributed["world_size"] == 2
    assert len(set(distributed["trained_sha256"])) == 1
    assert distributed["trained_sha256"][0] == state_digest(saved)
    magnitudes = {k: v for k, v in saved.items() if k.endswith("magnitude")}
    if method == "bidora":
        assert magnitudes and any(not saved[k].equal(initial[k]) for k in magnitudes)  # the upper level moved them
        assert distributed["magnitudes_sha256"] == [state_digest(magnitudes)] * 2
    else:
        assert not magnitudes and distributed["magnitudes_sha256"] == []
