"""`trainer.strategy=fsdp` (FSDP2) on CPUs over gloo: the config refusals, the strategy, the block groups per
family, sharding and unsharding a predictor, and the CLI trained under FSDP reloading without it."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file

from protadapt.adapters import AdapterConfig
from protadapt.backbones import bert, build_random, esmc, load_backbone
from protadapt.backbones.base import Architecture
from protadapt.config import ConfigError, load_config
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.training import fsdp
from protadapt.training.trainer import make_strategy

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {  # tiny random architectures and the class each family's transformer blocks have
    "esm2": (Architecture("tiny", "esm2", 2, 32, 4), "TransformerLayer"),
    "esm1b": (Architecture("esm1b_tiny", "esm1b", 2, 32, 4, True), "TransformerLayer"),
    "esmc": (esmc.esmc_architecture("esmc_tiny", esmc.esmc_config_dict(2, 64, 4, 128)), "EsmcLayer"),
    "bert": (bert.bert_architecture("antiberty", bert.bert_config_dict(2, 64, 4, 128, 25, 64)), "BertLayer"),
}


def tiny_predictor(method: str = "lora", architecture: Architecture | None = None) -> ProteinPredictor:
    torch.manual_seed(0)
    backbone = build_random(architecture) if architecture else load_backbone("tiny")
    predictor = ProteinPredictor(backbone, HeadConfig(problem_type="classification", num_classes=2),
                                 AdapterConfig(method=method, rank=2))
    with torch.no_grad():  # adapters start as the identity: move them so the sharded forward has work to show
        for parameter in predictor.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return predictor


def tokens(predictor: ProteinPredictor) -> torch.Tensor:
    t = predictor.backbone.tokenizer
    rows = [[t.cls_idx, *t.encode(s), t.eos_idx] for s in ("ACDEFGHIKL", "MNPQRS")]
    batch = torch.full((2, 12), t.padding_idx)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.tensor(row)
    return batch


# ------------------------------------------------------------ config and strategy, no processes launched


@pytest.mark.parametrize("override, message", [
    ("adapter.method=bidora", "bidora's bi-level search"),
    ("trainer.precision=16-mixed", "does not support trainer.precision=16-mixed"),
])
def test_what_fsdp_cannot_train_is_a_one_line_config_error(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, ["trainer.strategy=fsdp", override])
    assert "\n" not in str(error.value)


def test_fsdp_builds_the_strategy_with_its_precision_and_other_names_pass_through():
    strategy = make_strategy(load_config(None, ["trainer.strategy=fsdp", "trainer.precision=bf16-mixed"]))
    assert isinstance(strategy, fsdp.AdapterFSDPStrategy)
    assert strategy.mp_policy.param_dtype == torch.bfloat16 and strategy.mp_policy.reduce_dtype == torch.float32
    assert strategy._save_distributed_checkpoint is False and strategy._tensor_parallel_size == 1
    assert make_strategy(load_config(None, ["trainer.strategy=fsdp"])).mp_policy.param_dtype is None
    assert make_strategy(load_config(None, ["trainer.strategy=ddp"])) == "ddp"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_sharded_by_its_transformer_blocks(family):
    architecture, block_class = FAMILIES[family]
    predictor = tiny_predictor("dora", architecture)
    blocks = fsdp.transformer_blocks(predictor.backbone)
    assert [type(b).__name__ for b in blocks] == [block_class] * architecture.num_layers
    for block in blocks:  # the group covers every parameter of the block exactly once
        holders = fsdp.parameter_holders(block)
        owned = [id(p) for h in holders for p in h.parameters()]
        assert sorted(owned) == sorted(id(p) for p in block.parameters()) and len(set(owned)) == len(owned)
        adapted = [h for h in holders if hasattr(h, "base_layer")]
        assert adapted and all(type(h).__name__ == "DoRALinear" for h in adapted)  # base layer inside its adapter


def test_blocks_that_cannot_be_told_apart_are_a_config_error():
    predictor = tiny_predictor()
    predictor.backbone.model.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(2))
    with pytest.raises(ConfigError, match="cannot tell the 2 transformer blocks of tiny"):
        fsdp.transformer_blocks(predictor.backbone)


# ------------------------------------------------------------ sharding itself, one process (world of 1)


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield torch.distributed.device_mesh.init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_sharding_keeps_outputs_and_unsharding_restores_a_plain_predictor(one_rank):
    predictor = tiny_predictor().eval()
    batch = tokens(predictor)
    before, names = predictor(batch).detach(), list(predictor.state_dict())
    trained = {k: v.clone() for k, v in predictor.trainable_state().items()}
    for phase in range(2):  # a later phase (refit, retraining) shards the unsharded predictor again
        fsdp.shard_predictor(predictor, one_rank)
        assert type(predictor).__name__ == "FSDPProteinPredictor"
        assert all(type(p).__name__ == "DTensor" for p in predictor.parameters())
        state = fsdp.trainable_full_state(predictor)
        assert list(state) == list(trained) and all(state[k].equal(trained[k]) for k in state)
        torch.testing.assert_close(predictor(batch).detach(), before)
        fsdp.unshard(predictor)
        assert type(predictor) is ProteinPredictor
        assert not any(type(m).__name__.startswith("FSDP") for m in predictor.modules())
        assert all(type(p) is torch.nn.Parameter for p in predictor.parameters())
        assert list(predictor.state_dict()) == names
        assert predictor(batch).detach().equal(before)
    predictor.load_state_dict(predictor.state_dict())  # FSDP's load hooks are gone with it


# ------------------------------------------------------------ two processes on gloo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_worker(rank: int, port: int, out: Path) -> None:
    """Shard over 2 ranks, train one step, gather the trainable tensors, unshard; rank 0 saves the run files."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    predictor = tiny_predictor("dora").eval()  # no dropout: the sharded and the plain step see the same function
    batch, plain = tokens(predictor), copy.deepcopy(predictor)
    fsdp.shard_predictor(predictor, torch.distributed.device_mesh.init_device_mesh("cpu", (2,)))
    local = {n: p.to_local().numel() for n, p in predictor.named_parameters()}
    for model in (predictor, plain):  # the same step, sharded and plain (each rank the same batch)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=0.5)
        model(batch)[:, 1].sum().backward()
        optimizer.step()
    gathered = fsdp.trainable_full_state(predictor)
    fsdp.unshard(predictor)
    record = {"local": local, "full": {n: p.numel() for n, p in predictor.named_parameters()},
              "gathered": gathered, "plain": plain.trainable_state(), "after": predictor.trainable_state()}
    if rank == 0:  # alone: the unsharded predictor runs no collective
        record["output"] = predictor(batch).detach()
        predictor.save(out / "run", {"labels": [0, 1]})
    torch.save(record, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch and protadapt: ~15 s on the shared cores
def test_two_ranks_shard_train_gather_and_save_what_one_process_reloads(tmp_path):
    mp.spawn(two_rank_worker, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    blocks = [n for n in ranks[0]["full"] if ".layers.0." in n and n.endswith("base_layer.weight")]
    assert blocks and all(ranks[r]["local"][n] == ranks[0]["full"][n] // 2 for r in range(2) for n in blocks)
    for record in ranks:  # every rank gathered the same trained tensors as a plain step computes
        assert list(record["gathered"]) == list(record["plain"])
        for key, value in record["plain"].items():
            torch.testing.assert_close(record["gathered"][key], value, rtol=1e-5, atol=1e-6)
            assert record["after"][key].equal(record["gathered"][key])
    reloaded, _ = ProteinPredictor.load(tmp_path / "run")
    assert reloaded(tokens(reloaded)).detach().equal(ranks[0]["output"])


# ------------------------------------------------------------ the CLI: fit under FSDP, predict without it


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> Path:
    frame = pd.read_csv(Path(os.environ["PROTADAPT_DATA_DIR"]) / "bbb" / "bbb.csv")
    frame = frame.drop_duplicates("sequence", keep=False)
    parts = [frame[(frame["split"] == split) & (frame["label"] == label)].head(n)
             for split, n in (("train", 24), ("test", 8)) for label in (0, 1)]
    path = tmp_path_factory.mktemp("fsdp") / "small_bbb.csv"
    pd.concat(parts)[["id", "sequence", "label", "split"]].to_csv(path, index=False)
    return path


def cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, "-m", "protadapt.cli", *arguments], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fit_on_two_ranks(strategy: str, data: Path, out: Path) -> None:
    cli("fit", "--task", "custom", "--method", "lora", "--backbone", "tiny", "--accelerator", "cpu", "--devices", "2",
        "--strategy", strategy, "--quiet", "--out", str(out), f"data.train_file={data}", "optim.max_epochs=2",
        "data.batch_size=8", cwd=out.parent)


def header(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {key: (f.get_slice(key).get_dtype(), f.get_slice(key).get_shape()) for key in f.keys()} | {"metadata": f.metadata()}


@pytest.mark.slow  # two 2-process fits and a predict: ~3 min on 2 shared cores
def test_a_run_trained_under_fsdp_is_a_ddp_run_and_reloads_without_fsdp(small_task, tmp_path):
    fit_on_two_ranks("fsdp", small_task, tmp_path / "fsdp")
    fit_on_two_ranks("ddp", small_task, tmp_path / "ddp")
    sharded, replicated = tmp_path / "fsdp", tmp_path / "ddp"

    # the same files in the same format: names, dtypes, shapes, metadata; the values equal to rounding
    assert header(sharded / "adapter.safetensors") == header(replicated / "adapter.safetensors")
    assert (sharded / "adapter.json").read_bytes() == (replicated / "adapter.json").read_bytes()
    a, b = load_file(str(sharded / "adapter.safetensors")), load_file(str(replicated / "adapter.safetensors"))
    assert any(not v.equal(tiny_predictor().trainable_state()[k]) for k, v in a.items())  # it trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert json.loads((sharded / "run.json").read_text())["distributed"]["world_size"] == 2

    # the checkpoints hold the trainable tensors only, gathered whole
    checkpoint = torch.load(sharded / "checkpoints" / "fit" / "last.ckpt", weights_only=True)
    assert sorted(checkpoint["state_dict"]) == sorted(f"predictor.{k}" for k in a)
    assert all(checkpoint["state_dict"][f"predictor.{k}"].shape == a[k].shape for k in a)

    # `protadapt predict` in one process, no FSDP: the probabilities the FSDP run wrote for its test rows
    test = pd.read_csv(small_task).query("split == 'test'")[["id", "sequence"]]
    test.to_csv(tmp_path / "test.csv", index=False)
    cli("predict", str(sharded), str(tmp_path / "test.csv"), "-o", str(tmp_path / "pred.csv"), "--quiet", cwd=tmp_path)
    written, predicted = pd.read_csv(sharded / "predictions.csv"), pd.read_csv(tmp_path / "pred.csv")
    assert list(predicted["id"]) == list(written["id"])
    assert (predicted["prob_1"] - written["prob_1"]).abs().max() < 1e-6
