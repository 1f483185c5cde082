"""The fit / predict / evaluate / cv commands end to end, on the tiny backbone and real task data.

Every fit is 1 epoch at batch size 16 on one CPU thread, so the whole file runs in about two
minutes. Figures (tested in test_plots.py) are switched off except in one test, because drawing
them costs more than training the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import protadapt.training.run as run_module
from protadapt.cli import main
from protadapt.rundir import RunInterrupted
from protadapt.config import load_config
from protadapt.data.tasks import get_task
from protadapt.training.module import PredictorModule

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--backbone", "tiny", "--quiet", "optim.max_epochs=1", "data.batch_size=16"]
METHODS = ("lora", "dora", "bidora", "full", "head", "wegeft", "prompt")
REGRESSION_METHODS = ("lora", "bidora", "full", "wegeft", "prompt")
RUN_FILES = ("config.yaml", "adapter.safetensors", "adapter.json", "metrics.json", "predictions.csv", "run.json")


@pytest.fixture
def with_figures():
    """Requested by the one test that keeps the run's figures."""


@pytest.fixture(autouse=True)
def no_figures(request, monkeypatch):
    if "with_figures" not in request.fixturenames:
        monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
        monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- data files


def bbb_test() -> pd.DataFrame:
    frame = get_task("bbb").load()
    return frame[frame["split"] == "test"].reset_index(drop=True)


def write_fasta(frame: pd.DataFrame, path: Path) -> Path:
    path.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in frame.itertuples()))
    return path


def write_labelled(frame: pd.DataFrame, path: Path) -> Path:
    frame[["id", "sequence", "label"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def regression_files(tmp_path_factory) -> tuple[Path, Path]:
    """120 MIC peptides (96 train, 24 test) as a user's own regression CSVs."""
    mic = get_task("mic").load()
    rows = mic[mic["split"] == "train"].sample(120, random_state=0).reset_index(drop=True)
    folder = tmp_path_factory.mktemp("regression")
    train, test = folder / "mic_train.csv", folder / "mic_test.csv"
    rows.iloc[:96][["id", "sequence", "label"]].to_csv(train, index=False)
    rows.iloc[96:][["id", "sequence", "label"]].to_csv(test, index=False)
    return train, test


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """One trained classification run shared by the error-path tests."""
    run_dir = tmp_path_factory.mktemp("lora_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
        patch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        assert main(["fit", "--task", "bbb", "--method", "lora", *QUICK, "--out", str(run_dir)]) == 0
        torch.set_num_threads(threads)
    return run_dir


# ---------------------------------------------------------------- fit → predict → evaluate


@pytest.mark.parametrize("method", METHODS)
def test_fit_predict_evaluate_classification(method, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "fit", "--task", "bbb", "--method", method, *QUICK, "--out", run_dir)
    assert code == 0, err
    metrics = check_run_dir(run_dir, out)
    test = bbb_test()
    assert metrics["test"]["n"] == len(test)
    if method == "bidora":
        assert {p.name for p in (run_dir / "logs").iterdir()} == {"search", "retrain"}

    saved = pd.read_csv(run_dir / "predictions.csv")
    assert list(saved.columns) == ["id", "prediction", "prob_0", "prob_1", "label", "nearest_train_identity", "in_domain"]
    assert metrics["test"]["accuracy"] == pytest.approx((saved["prediction"] == saved["label"]).mean())
    assert saved["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(saved[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=2e-6)

    predicted = predict(capsys, run_dir, write_fasta(test, tmp_path / "test.fasta"), tmp_path / "out.csv")
    assert list(predicted.columns) == ["id", "prediction", "prob_0", "prob_1", "nearest_train_identity", "in_domain"]
    pd.testing.assert_frame_equal(predicted, saved.drop(columns="label"))

    evaluated = evaluate(capsys, run_dir, write_labelled(test, tmp_path / "test.csv"))
    assert evaluated == {key: metrics["test"][key] for key in evaluated}
    assert set(metrics["test"]) - set(evaluated) == {"ece"} and 0 <= metrics["test"]["ece"] <= 1


@pytest.mark.parametrize("method", REGRESSION_METHODS)
def test_fit_predict_evaluate_regression(method, regression_files, tmp_path, capsys):
    train, test_file = regression_files
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "fit", "--task", "custom", "--method", method, *QUICK, "--out", run_dir,
                         f"data.train_file={train}", f"data.test_file={test_file}")
    assert code == 0, err
    metrics = check_run_dir(run_dir, out)
    assert metrics["test"]["n"] == 24 and {"mse", "pearson"} <= set(metrics["test"])

    test = pd.read_csv(test_file)
    saved = pd.read_csv(run_dir / "predictions.csv")
    assert list(saved.columns) == ["id", "prediction", "label", "nearest_train_identity", "in_domain"]
    np.testing.assert_allclose(saved["label"], test["label"])

    predicted = predict(capsys, run_dir, write_fasta(test, tmp_path / "test.fasta"), tmp_path / "out.csv")
    assert list(predicted.columns) == ["id", "prediction", "nearest_train_identity", "in_domain"]
    pd.testing.assert_frame_equal(predicted, saved.drop(columns="label"))

    assert evaluate(capsys, run_dir, test_file) == metrics["test"]


def test_fit_writes_figures_and_logs(with_figures, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "fit", "--task", "bbb", "--method", "dora", *QUICK, "--out", run_dir)
    assert code == 0, err
    assert (run_dir / "test_roc_pr.png").stat().st_size > 0
    assert (run_dir / "test_reliability.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (run_dir / "training_curves_fit.png").stat().st_size > 0
    logged = pd.read_csv(run_dir / "logs" / "fit" / "metrics.csv")
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(logged.columns)


def check_run_dir(run_dir: Path, stdout: str) -> dict:
    """The files a run directory promises, and metrics.json = what `fit` printed."""
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs").glob("*/metrics.csv")), "no Lightning CSV logs"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val", "test"} <= set(metrics)
    printed = json.loads(stdout)
    assert printed["run_dir"] == str(run_dir)
    assert printed["test"] == metrics["test"]
    load_config(run_dir / "config.yaml")  # the resolved config reloads without error
    return metrics


def predict(capsys, run_dir: Path, fasta: Path, output: Path) -> pd.DataFrame:
    code, out, err = cli(capsys, "predict", run_dir, fasta, "-o", output, "--batch-size", 16, "--quiet")
    assert code == 0, err
    assert "wrote" in out and str(output) in out
    return pd.read_csv(output)


def evaluate(capsys, run_dir: Path, labelled: Path) -> dict:
    code, out, err = cli(capsys, "evaluate", run_dir, labelled, "--batch-size", 16)
    assert code == 0, err
    return json.loads(out)


def test_evaluate_writes_json_when_asked(lora_run, tmp_path, capsys):
    labelled = write_labelled(bbb_test(), tmp_path / "test.csv")
    code, out, err = cli(capsys, "evaluate", lora_run, labelled, "--batch-size", 16, "-o", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(out)


# ---------------------------------------------------------------- predict: bad input


@pytest.mark.parametrize("content, names", [
    (">good\nACDEFG\n>bad_record\nACDJKL\n", "bad_record"),
    ("", None),
    (">only_header\n", "only_header"),
])
def test_predict_bad_input_is_one_line_and_writes_nothing(lora_run, tmp_path, capsys, content, names):
    fasta = tmp_path / "input.fasta"
    fasta.write_text(content)
    output = tmp_path / "out.csv"
    code, out, err = cli(capsys, "predict", lora_run, fasta, "-o", output, "--quiet")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("protadapt: error:") and "input.fasta" in lines[0]
    if names:
        assert names in lines[0]
    assert "Traceback" not in err
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.fasta"]


def test_predict_missing_run_dir_is_one_line(tmp_path, capsys):
    fasta = write_fasta(bbb_test().head(3), tmp_path / "x.fasta")
    code, _, err = cli(capsys, "predict", tmp_path / "no_such_run", fasta, "-o", tmp_path / "out.csv")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_predict_bf16_on_the_cpu_and_a_missing_gpu_is_one_line(lora_run, tmp_path, capsys):
    fasta = write_fasta(bbb_test().head(8), tmp_path / "x.fasta")
    full, low = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    assert cli(capsys, "predict", lora_run, fasta, "-o", full, "--quiet", "--device", "cpu")[0] == 0
    assert cli(capsys, "predict", lora_run, fasta, "-o", low, "--quiet", "--precision", "bf16")[0] == 0
    full_probs, low_probs = pd.read_csv(full)["prob_1"], pd.read_csv(low)["prob_1"]
    assert (full_probs - low_probs).abs().max() < 3e-2
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, "predict", lora_run, fasta, "-o", tmp_path / "gpu.csv", "--device", "cuda")
        assert code == 1 and len(err.strip().splitlines()) == 1 and "no CUDA device" in err
        assert not (tmp_path / "gpu.csv").exists()


# ---------------------------------------------------------------- cross-validation


def test_cv_bidora_folds_and_inner_split_inside_each_fold(tmp_path, capsys, monkeypatch):
    splits: dict[int, tuple[set, set, set]] = {}  # per fold: train ids, inner validation ids, test ids

    class RecordingDataModule(run_module.ProteinDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            splits[id(self)] = (set(self.train["id"]), set(self.inner_val_df["id"]), set(self.test["id"]))

    monkeypatch.setattr(run_module, "ProteinDataModule", RecordingDataModule)
    out = tmp_path / "cv"
    code, stdout, err = cli(capsys, "cv", "--task", "bbb", "--method", "bidora", *QUICK, "--folds", 3, "--out", out)
    assert code == 0, err

    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 3 and folds["fold"].tolist() == [0, 1, 2] and set(folds["repeat"]) == {0}
    assert {"accuracy", "f1", "mcc", "auroc"} <= set(folds.columns)
    summary = pd.read_csv(out / "summary.csv").set_index("metric")
    assert summary.loc["accuracy", "mean"] == pytest.approx(folds["accuracy"].mean())
    assert summary.loc["accuracy", "sd"] == pytest.approx(folds["accuracy"].std(ddof=1))
    assert (summary["n"] == 3).all()
    text = (out / "summary.md").read_text()
    assert "3 folds" in text and "± " in text and f"{folds['accuracy'].mean():.4f}" in text
    for fold in range(3):
        assert (out / f"repeat0-fold{fold}" / "metrics.json").is_file()

    bbb_train = get_task("bbb").load().query("split == 'train'")
    seen = list(splits.values())
    assert len(seen) == 3
    fold_tests = [test for _, _, test in seen]
    assert set().union(*fold_tests) == set(bbb_train["id"])  # the folds partition the training split
    for fold_train, inner_val, fold_test in seen:
        assert not fold_train & fold_test
        assert inner_val < fold_train and not inner_val & fold_test  # BiDoRA's split is inside the fold
        assert len(inner_val) == pytest.approx(0.2 * len(fold_train), abs=2)


# ---------------------------------------------------------------- reproducibility and resume


def test_same_seed_gives_byte_identical_metrics(tmp_path, capsys):
    for name in ("a", "b"):  # configs/smoke.yaml: tiny backbone, 1 epoch of bbb, BiDoRA
        code, _, err = cli(capsys, "fit", "--config", REPO / "configs" / "smoke.yaml", "--seed", 3,
                           "--out", tmp_path / name)
        assert code == 0, err
    for file in ("metrics.json", "predictions.csv", "adapter.safetensors"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_resume_continues_from_last_checkpoint(tmp_path, capsys, monkeypatch):
    steps: list[int] = []
    original = PredictorModule.training_step

    def counting_step(self, batch, batch_idx):
        steps.append(self.trainer.current_epoch)
        if self.trainer.current_epoch == 1 and interrupt:
            raise RunInterrupted("SIGINT")  # what the signal handler raises on Ctrl-C
        return original(self, batch, batch_idx)

    interrupt = True
    monkeypatch.setattr(PredictorModule, "training_step", counting_step)
    run_dir = tmp_path / "run"
    args = ["fit", "--task", "bbb", "--method", "lora", "--backbone", "tiny", "--quiet", "data.batch_size=32",
            "optim.patience=10", "optim.max_epochs=2", "--out", run_dir]
    code, _, err = cli(capsys, *args)
    assert code == 130 and err.strip() == "protadapt: interrupted (resume with --resume)"
    first = torch.load(run_dir / "checkpoints" / "fit" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and not (run_dir / "complete.json").exists()
    per_epoch = steps.count(0)

    steps.clear()
    interrupt = False
    code, _, err = cli(capsys, *args, "--resume")
    assert code == 0, err
    assert steps == [1] * per_epoch  # only the second epoch ran: no restart from epoch 0
    second = torch.load(run_dir / "checkpoints" / "fit" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 2 * first["global_step"]  # steps continued from the checkpoint
    logged = pd.read_csv(run_dir / "logs" / "fit" / "metrics.csv")
    assert sorted(logged["epoch"].dropna().unique().astype(int)) == [0, 1]  # epoch 0's log survives
    code, _, err = cli(capsys, *args, "optim.lr=0.5", "--resume")
    assert code == 1 and "optim.lr=0.5" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- configs


def test_unknown_yaml_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    code, _, err = cli(capsys, "fit", "--config", config, "--backbone", "tiny", "--out", tmp_path / "run")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "bad.yaml" in err and "optim.learning_rate" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1e-4", ["optim.lrr", "unknown"]),
    ("optim.max_epochs=two", ["optim.max_epochs", "integer"]),
    ("optim.lr=fast", ["optim.lr", "number"]),
    ("optim=3", ["optim", "section"]),
    ("nonsense", ["key=value"]),
    ("bilevel.hypergradient=darts_two", ["bilevel.hypergradient", "darts_one_sided"]),
    ("bilevel.unroll_steps=0", ["bilevel.unroll_steps", "at least 1"]),
    ("optim.lr=-1e-3", ["optim.lr must be 0 or above, not -0.001"]),
    ("bilevel.magnitude_lr=-1", ["bilevel.magnitude_lr must be 0 or above, not -1.0"]),
    ("bilevel.retrain_lr=-0.5", ["bilevel.retrain_lr must be 0 or above, not -0.5"]),
    ("optim.schedule=step", ["optim.schedule", "cosine"]),
    ("trainer.logger=csv,wandb", ["trainer.logger", "wandb"]),
    ("adapter.method=lorra", ["adapter.method", "lorra", "wegeft"]),
    ("head.pooling=max", ["head.pooling", "mean"]),
])
def test_bad_override_is_one_line(tmp_path, capsys, override, words):
    code, _, err = cli(capsys, "fit", "--method", "bidora", "--backbone", "tiny", "--out", tmp_path / "run", override)
    assert code == 1
    assert not (tmp_path / "run").exists()  # nothing written
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_configs_load_and_name_their_command(path):
    config = load_config(path)
    assert path.read_text().splitlines()[0] == f"# protadapt fit --config configs/{path.name}"
    assert config.data.task == path.stem or path.stem not in ("bbb", "thermostability", "mic")


@pytest.mark.parametrize("task", ["bbb", "thermostability", "mic"])
def test_bundled_task_configs_load_and_name_their_task(task):
    assert load_config(REPO / "configs" / f"{task}.yaml").data.task == task


def test_config_precedence_yaml_then_flags_then_overrides(tmp_path):
    from protadapt.cli import build_parser, run_config

    config = tmp_path / "c.yaml"
    config.write_text("seed: 5\noptim:\n  lr: 0.5\n  max_epochs: 3\n")
    args = build_parser().parse_args(["fit", "--config", str(config), "--seed", "7", "optim.lr=0.25"])
    resolved = run_config(args)
    assert (resolved.seed, resolved.optim.lr, resolved.optim.max_epochs) == (7, 0.25, 3)


def test_overrides_may_follow_options(tmp_path, capsys):
    code, _, err = cli(capsys, "fit", "--backbone", "tiny", "--out", tmp_path / "run", "optim.lrr=1")
    assert code == 1 and "optim.lrr" in err  # reached the config, not argparse
    with pytest.raises(SystemExit):  # a stray word or option after the overrides is still a usage error
        main(["fit", "--out", str(tmp_path), "optim.lr=1", "--seed", "1", "stray", "--bogus"])
    assert "unrecognized arguments: stray --bogus" in capsys.readouterr().err


def test_exponent_floats_are_numbers():
    """YAML 1.1 reads `1e-4` (no dot) as a string; the config must still get a float."""
    config = load_config(None, ["optim.lr=1e-4", "bilevel.magnitude_lr=2", "bilevel.retrain_lr=5E-5"])
    assert (config.optim.lr, config.bilevel.magnitude_lr, config.bilevel.retrain_lr) == (1e-4, 2.0, 5e-5)
    assert all(isinstance(v, float) for v in (config.optim.lr, config.bilevel.magnitude_lr, config.bilevel.retrain_lr))
