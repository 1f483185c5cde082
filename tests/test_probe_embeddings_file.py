"""`data.embeddings_file`: the probe on precomputed vectors matched by record id (tiny random-init backbone)."""

import json

import numpy as np
import pandas as pd
import pytest

from protadapt.cli import main
from protadapt.data.tasks import get_task


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """A small custom task (train 48, test 16, from bbb) and `protadapt embed` of all its records."""
    directory = tmp_path_factory.mktemp("custom")
    frame = get_task("bbb").load()
    train = frame[frame["split"] == "train"].sample(48, random_state=0)[["id", "sequence", "label"]]
    test = frame[frame["split"] == "test"].sample(16, random_state=0)[["id", "sequence", "label"]]
    train.to_csv(directory / "train.csv", index=False)
    test.to_csv(directory / "test.csv", index=False)
    pd.concat([train, test])[["id", "sequence"]].to_csv(directory / "all.csv", index=False)
    assert main(["embed", str(directory / "all.csv"), "-o", str(directory / "all.npz"), "--backbone", "tiny",
                 "--random-init"]) == 0
    return directory


def fit_args(files, out, *extra):
    return ["fit", "--task", "custom", "--method", "probe", "--backbone", "tiny", "--random-init", "--quiet",
            "--out", str(out), f"data.train_file={files / 'train.csv'}", f"data.test_file={files / 'test.csv'}", *extra]


def one_line_error(capsys, args) -> str:
    capsys.readouterr()  # what earlier commands printed
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("protadapt: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_probe_on_the_file_equals_the_probe_on_the_backbone(task_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTADAPT_CACHE_DIR", str(tmp_path / "cache"))
    from protadapt.backbones.esm import ESMBackbone

    assert main(fit_args(task_files, tmp_path / "backbone")) == 0
    calls = {"n": 0}
    original = ESMBackbone.hidden_states
    monkeypatch.setattr(ESMBackbone, "hidden_states", lambda *a: calls.__setitem__("n", calls["n"] + 1) or original(*a))
    monkeypatch.setenv("PROTADAPT_CACHE_DIR", str(tmp_path / "empty-cache"))  # nothing cached: the file feeds it
    assert main(fit_args(task_files, tmp_path / "file", f"data.embeddings_file={task_files / 'all.npz'}")) == 0
    assert calls["n"] == 0  # the backbone never ran: training, validation and test vectors came from the file
    from_backbone, from_file = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("backbone", "file"))
    for split in ("val", "test"):
        assert from_file[split].keys() == from_backbone[split].keys()
        for metric, value in from_backbone[split].items():
            # the file's vectors were embedded in other batches (other padding): ~1e-7 apart, so probabilities
            # agree to 1e-6, but a probability that close to a bin edge moves the binned ECE by more
            tolerance = 1e-3 if metric == "ece" else 1e-6
            assert from_file[split][metric] == pytest.approx(value, abs=tolerance), (split, metric)
    probe = json.loads((tmp_path / "file" / "probe.json").read_text())
    assert probe["embeddings_file"] == str((task_files / "all.npz").resolve())
    assert json.loads((tmp_path / "file" / "adapter.json").read_text())["embeddings_file"] == probe["embeddings_file"]
    own, other = (pd.read_csv(tmp_path / run / "predictions.csv")[["prob_0", "prob_1"]].to_numpy()
                  for run in ("file", "backbone"))
    assert main(["predict", str(tmp_path / "file"), str(task_files / "test.csv"), "-o", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")[["prob_0", "prob_1"]].to_numpy()
    np.testing.assert_allclose(predicted, own, atol=2e-6)  # predict reloads the run exactly
    # two probes fitted (lbfgs, tol 1e-4) on vectors ~1e-7 apart: probabilities agree to the solver's tolerance
    np.testing.assert_allclose(predicted, other, atol=1e-3)
    assert calls["n"] == 0  # predict on the run directory read the same file

    new = tmp_path / "new.csv"
    new.write_text("id,sequence\nnot_in_file,MKTAYIAKQR\n")
    err = one_line_error(capsys, ["predict", str(tmp_path / "file"), str(new), "-o", str(tmp_path / "q.csv")])
    assert "all.npz" in err and "'not_in_file'" in err and "protadapt embed" in err


def test_missing_ids_are_a_one_line_error_naming_the_file_and_the_first_ids(task_files, tmp_path, capsys):
    data = dict(np.load(task_files / "all.npz"))
    keep = np.arange(len(data["ids"])) < len(data["ids"]) - 7  # the last 7 test records have no vector
    np.savez(tmp_path / "part.npz", **{name: array[keep] for name, array in data.items()})
    err = one_line_error(capsys, fit_args(task_files, tmp_path / "run", f"data.embeddings_file={tmp_path / 'part.npz'}"))
    missing = data["ids"][~keep]
    assert "part.npz" in err and "no vector for 7 record(s)" in err
    assert all(f"'{i}'" in err for i in missing[:5]) and f"'{missing[5]}'" not in err and "… 2 more" in err


def test_extra_ids_in_no_split_are_a_one_line_error(task_files, tmp_path, capsys):
    import h5py

    data = dict(np.load(task_files / "all.npz"))
    with h5py.File(tmp_path / "more.h5", "w") as f:  # the .h5 layout `protadapt embed` writes
        f["ids"] = np.array([*data["ids"], "stray_1", "stray_2"], dtype=object).astype("S")
        f["mean_layer2"] = np.concatenate([data["mean_layer2"], np.zeros((2, data["mean_layer2"].shape[1]), np.float32)])
    err = one_line_error(capsys, fit_args(task_files, tmp_path / "run", f"data.embeddings_file={tmp_path / 'more.h5'}"))
    assert "more.h5" in err and "2 id(s) are in no split" in err and "'stray_1', 'stray_2'" in err


@pytest.mark.parametrize("problem", ["suffix", "not_npz", "absent", "pooling", "width"])
def test_a_file_that_cannot_feed_the_probe_is_a_one_line_error(problem, task_files, tmp_path, capsys):
    path, extra = task_files / "all.npz", []
    if problem == "suffix":
        path = task_files / "train.csv"
    elif problem == "not_npz":
        path = tmp_path / "bad.npz"
        path.write_text("not an archive")
    elif problem == "absent":
        path = tmp_path / "absent.npz"
    elif problem == "pooling":
        extra = ["head.pooling=bos"]
    else:
        data = dict(np.load(path))
        path = tmp_path / "narrow.npz"
        np.savez(path, ids=data["ids"], mean_layer2=data["mean_layer2"][:, :5])
    err = one_line_error(capsys, fit_args(task_files, tmp_path / "run", f"data.embeddings_file={path}", *extra))
    assert path.name in err
    assert {"suffix": "unknown format '.csv'", "not_npz": "not an .npz archive", "absent": "no such file",
            "pooling": "no 'bos_layer2' array", "width": "has width"}[problem] in err


def test_a_method_other_than_the_probe_is_refused(task_files, tmp_path, capsys):
    args = fit_args(task_files, tmp_path / "run", f"data.embeddings_file={task_files / 'all.npz'}")
    args[args.index("probe")] = "lora"
    err = one_line_error(capsys, args)
    assert "feeds only --method probe" in err and "'lora'" in err
