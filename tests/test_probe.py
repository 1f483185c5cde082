"""`--method probe`, the embedding cache in fit/cv, and `protadapt embed` (tiny and 8M random-init backbones)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protadapt.backbones.esm import ESMBackbone
from protadapt.backbones import load_backbone
from protadapt.cli import main
from protadapt.config import load_config
from protadapt.data.tasks import get_task
from protadapt.embeddings.cache import CacheConfig, EmbeddingCache
from protadapt.embeddings.extract import pooled_embeddings
from protadapt.heads import pool
from protadapt.training.run import fit


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("PROTADAPT_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def forward_calls(monkeypatch):
    """Counts ESM-2 passes (the forward and every embedding go through `hidden_states`)."""
    calls = {"n": 0}
    original = ESMBackbone.hidden_states

    def counted(self, tokens, layers):
        calls["n"] += 1
        return original(self, tokens, layers)

    monkeypatch.setattr(ESMBackbone, "hidden_states", counted)
    return calls


def probe_config(tmp_path, backbone="tiny", *extra):
    return load_config(None, ["data.task=bbb", "adapter.method=probe", f"backbone={backbone}", "random_init=true",
                              "quiet=true", *extra])


def test_probe_equals_a_direct_scikit_learn_fit_on_the_same_embeddings(tmp_path, cache_dir):
    result = fit(probe_config(tmp_path), tmp_path / "run")
    frame = get_task("bbb").load()
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    backbone = load_backbone("tiny", random_init=True)
    x_train = pooled_embeddings(backbone, train["sequence"].tolist())[2]
    x_test = pooled_embeddings(backbone, test["sequence"].tolist())[2]
    probe = json.loads((tmp_path / "run" / "probe.json").read_text())
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=probe["regularisation"], max_iter=5000))
    reference.fit(x_train, train["label"].to_numpy())
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    np.testing.assert_allclose(predictions[["prob_0", "prob_1"]].to_numpy(), reference.predict_proba(x_test), atol=2e-6)
    accuracy = float((reference.predict(x_test) == test["label"].to_numpy()).mean())
    assert result.metrics["test"]["accuracy"] == pytest.approx(accuracy)
    assert probe["train_rows"] == len(train) == 198


def test_a_second_identical_run_embeds_nothing_and_a_changed_backbone_misses(tmp_path, cache_dir, forward_calls):
    fit(probe_config(tmp_path), tmp_path / "first")
    first = forward_calls["n"]
    assert first > 0
    fit(probe_config(tmp_path), tmp_path / "second")
    assert forward_calls["n"] == first  # train, inner validation and test rows all came from the cache
    first_metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert json.loads((tmp_path / "second" / "metrics.json").read_text()) == first_metrics
    fit(probe_config(tmp_path, "tiny", "head.pooling=bos"), tmp_path / "bos")
    assert forward_calls["n"] > first  # another pooling is another key


def test_cached_and_forward_predictions_agree(tmp_path, cache_dir):
    from protadapt.inference import predict_scores
    from protadapt.model import ProteinPredictor

    fit(probe_config(tmp_path), tmp_path / "run")
    predictor, _ = ProteinPredictor.load(tmp_path / "run")
    test = get_task("bbb").load().query("split == 'test'")
    cached = predict_scores(predictor, test, cache=EmbeddingCache(CacheConfig(directory=str(cache_dir))))
    np.testing.assert_allclose(cached, predict_scores(predictor, test), atol=1e-6)


def test_cv_probe_on_the_8m_architecture_offline(tmp_path, cache_dir, capsys):
    code = main(["cv", "--task", "bbb", "--method", "probe", "--backbone", "esm2_t6_8M_UR50D", "--random-init",
                 "--folds", "3", "--quiet", "--out", str(tmp_path / "cv")])
    assert code == 0, capsys.readouterr().err
    folds = pd.read_csv(tmp_path / "cv" / "folds.csv")
    assert len(folds) == 3 and folds["accuracy"].between(0.4, 1.0).all() and folds["n"].sum() == 198
    assert not list((tmp_path / "cv").glob("*/*.png"))  # folds draw no test-set figures (~1 s each)


def test_probe_refuses_a_hidden_head(tmp_path, cache_dir, capsys):
    code = main(["fit", "--task", "bbb", "--method", "probe", "--backbone", "tiny", "--random-init", "--quiet",
                 "--out", str(tmp_path / "run"), "head.hidden_dim=8"])
    assert code == 1
    assert "unset head.hidden_dim" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_embed_equals_the_models_pooled_representation(tmp_path, suffix, capsys):
    fasta = "data/examples/peptides.fasta"
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", fasta, "-o", str(out), "--backbone", "tiny", "--layers", "-1", "--pooling", "mean,bos",
                 "--per-residue", "--batch-size", "3"]) == 0, capsys.readouterr().err
    if suffix == ".npz":
        data = dict(np.load(out))
    else:
        import h5py

        with h5py.File(out) as f:
            data = {k: f[k][()] for k in f}
        data["ids"] = data["ids"].astype(str)
    from protadapt.data.io import read_sequences
    from protadapt.data.datamodule import make_loader

    frame = read_sequences(fasta)
    backbone = load_backbone("tiny")
    assert list(data["ids"]) == frame["id"].tolist()
    batch = next(iter(make_loader(frame, backbone.alphabet, batch_size=len(frame), shuffle=False)))
    with torch.no_grad():
        hidden = backbone.eval()(batch["tokens"])
    order = batch["index"].numpy()
    for pooling in ("mean", "bos"):
        expected = pool(hidden, batch["tokens"], backbone, pooling).numpy()
        np.testing.assert_allclose(data[f"{pooling}_layer2"][order], expected, atol=1e-6)
    for row, index in enumerate(order):
        length = len(frame["sequence"][index])
        start, end = data["offsets"][index], data["offsets"][index + 1]
        assert end - start == length
        np.testing.assert_allclose(data["residues_layer2"][start:end], hidden[row, 1:length + 1].numpy(), atol=1e-6)


def test_probe_keeps_the_layer_with_the_best_internal_cv_score_and_reloads_it(tmp_path, cache_dir):
    from protadapt.embeddings.probe import fit_probe
    from protadapt.inference import predict_scores
    from protadapt.model import ProteinPredictor

    config = probe_config(tmp_path, "tiny", "adapter.probe_layers=[0,1,2]")
    fit(config, tmp_path / "run")
    frame = get_task("bbb").load()
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    backbone = load_backbone("tiny", random_init=True)
    features = pooled_embeddings(backbone, train["sequence"].tolist(), (0, 1, 2))
    expected = fit_probe(features, train["label"].to_numpy(), "classification", 2, seed=0)
    saved = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert saved["adapter"]["probe_layers"] == [expected.layer]
    assert json.loads((tmp_path / "run" / "probe.json").read_text())["layer"] == expected.layer
    predictor, _ = ProteinPredictor.load(tmp_path / "run")
    assert predictor.backbone.output_layer == (None if expected.layer == 2 else expected.layer)
    x_test = pooled_embeddings(backbone, test["sequence"].tolist(), (expected.layer,))[expected.layer]
    from protadapt.embeddings.probe import probe_scores

    np.testing.assert_allclose(predict_scores(predictor, test), probe_scores(expected, x_test, "classification"),
                               atol=2e-6)


def test_inner_layers_equal_fair_esm_representations():
    backbone = load_backbone("esm2_t6_8M_UR50D", random_init=True).eval()
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9, 2, 1], [0, 5, 6, 7, 8, 9, 10, 2]])
    with torch.no_grad():
        reference = backbone.model(tokens, repr_layers=[0, 3, 6])["representations"]
        states = backbone.hidden_states(tokens, [0, 3, 6])
        for layer in (0, 3, 6):
            torch.testing.assert_close(states[layer], reference[layer], atol=1e-5, rtol=0)
        backbone.output_layer = 3
        torch.testing.assert_close(backbone(tokens), reference[3], atol=1e-5, rtol=0)
