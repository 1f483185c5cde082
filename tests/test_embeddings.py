"""Embedding cache, writers and the linear probe's folding into a head (no backbone needed here)."""

import multiprocessing

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protadapt.embeddings.cache import CacheConfig, EmbeddingCache, key_prefix
from protadapt.embeddings.probe import ALPHA_GRID, C_GRID, fit_probe, probe_scores
from protadapt.embeddings.writers import embedding_writer


def test_cache_returns_what_was_put_and_only_under_the_same_prefix(tmp_path):
    cache = EmbeddingCache(CacheConfig(directory=str(tmp_path)))
    vectors = {"MKT": np.arange(4, dtype=np.float32), "AAAA": np.ones(4, dtype=np.float32)}
    cache.put(key_prefix("id1", 6, "mean"), vectors)
    got = cache.get(key_prefix("id1", 6, "mean"), ["AAAA", "MKT", "GGG"])
    assert sorted(got) == ["AAAA", "MKT"]
    np.testing.assert_array_equal(got["MKT"], vectors["MKT"])
    assert cache.get(key_prefix("id1", 5, "mean"), ["MKT"]) == {}
    assert cache.get(key_prefix("id2", 6, "mean"), ["MKT"]) == {}
    assert cache.get(key_prefix("id1", 6, "bos"), ["MKT"]) == {}


def test_cache_drops_least_recently_used_rows_beyond_its_cap(tmp_path):
    cache = EmbeddingCache(CacheConfig(directory=str(tmp_path), max_mb=1))
    width = 1024  # 4 KiB per vector: 256 fit in 1 MiB
    for start in range(0, 400, 50):
        cache.put("p", {f"S{i}": np.full(width, i, dtype=np.float32) for i in range(start, start + 50)})
    assert cache.total_bytes() <= 1024 * 1024
    got = cache.get("p", [f"S{i}" for i in range(400)])
    assert "S399" in got and "S0" not in got  # newest kept, oldest dropped
    np.testing.assert_array_equal(got["S399"], np.full(width, 399, dtype=np.float32))


def _writer_process(directory: str, worker: int) -> None:
    cache = EmbeddingCache(CacheConfig(directory=directory))
    for round_ in range(20):
        cache.put("p", {f"W{worker}-{round_}-{i}": np.full(8, worker, dtype=np.float32) for i in range(20)})
        cache.get("p", [f"W{1 - worker}-{round_}-{i}" for i in range(20)])


def test_two_processes_can_share_one_cache(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer_process, args=(str(tmp_path), w)) for w in (0, 1)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    got = EmbeddingCache(CacheConfig(directory=str(tmp_path))).get("p", [f"W{w}-19-{i}" for w in (0, 1) for i in range(20)])
    assert len(got) == 40


def test_classification_probe_equals_the_scikit_learn_pipeline():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 12)) * rng.uniform(0.1, 5, size=12) + rng.normal(size=12)
    y = np.digitize(x[:, 0] + rng.normal(size=150), np.quantile(x[:, 0], [0.33, 0.66]))
    fit = fit_probe({-1: x}, y, "classification", num_classes=3, seed=0)
    scaled = StandardScaler().fit_transform(x)  # the probe standardises on all training rows, then searches C
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": C_GRID}, scoring="neg_log_loss",
                          cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(scaled, y)
    assert fit.regularisation == search.best_params_["C"]  # warm-started path, same choice as independent fits
    assert fit.cv_score == pytest.approx(search.best_score_, rel=1e-3)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=fit.regularisation, max_iter=5000)).fit(x, y)
    np.testing.assert_allclose(probe_scores(fit, x, "classification"), reference.predict_proba(x), atol=1e-9)


def test_binary_probe_gives_two_columns_and_an_absent_class_no_probability():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5))
    y = (x[:, 1] > 0).astype(int) * 2  # classes 0 and 2 of three
    fit = fit_probe({-1: x}, y, "classification", num_classes=3)
    scores = probe_scores(fit, x, "classification")
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=fit.regularisation, max_iter=5000)).fit(x, y)
    assert scores.shape == (80, 3)
    np.testing.assert_allclose(scores[:, [0, 2]], reference.predict_proba(x), atol=1e-9)
    assert scores[:, 1].max() < 1e-100


def test_regression_probe_equals_ridge_and_the_best_layer_wins():
    rng = np.random.default_rng(2)
    informative = rng.normal(size=(100, 6))
    y = informative @ np.arange(1, 7) + 0.1 * rng.normal(size=100)
    fit = fit_probe({3: rng.normal(size=(100, 6)), 6: informative}, y, "regression")
    assert fit.layer == 6
    reference = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHA_GRID)).fit(informative, y)
    np.testing.assert_allclose(probe_scores(fit, informative, "regression"), reference.predict(informative), atol=1e-8)


def test_probe_refuses_a_class_with_one_example():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="at least 2 training examples"):
        fit_probe({-1: x}, np.array([0] * 9 + [1]), "classification")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_writers_stream_chunks_into_one_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(7, 4)).astype(np.float32)
    residues = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 1, 5, 2, 2, 4, 1)]
    path = tmp_path / f"out{suffix}"
    with embedding_writer(path, 7, {"mean_layer6": 4, "residues_layer6": 4}) as writer:
        for rows in (slice(0, 3), slice(3, 7)):
            writer.write([f"s{i}" for i in range(rows.start, rows.stop)],
                         {"mean_layer6": pooled[rows], "residues_layer6": residues[rows]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no scratch left behind
    if suffix == ".npz":
        data = dict(np.load(path))
    else:
        import h5py

        with h5py.File(path) as f:
            data = {k: f[k][()] for k in f}
        data["ids"] = data["ids"].astype(str)
    assert list(data["ids"]) == [f"s{i}" for i in range(7)]
    np.testing.assert_array_equal(data["mean_layer6"], pooled)
    np.testing.assert_array_equal(data["offsets"], np.cumsum([0, 3, 1, 5, 2, 2, 4, 1]))
    np.testing.assert_array_equal(data["residues_layer6"][data["offsets"][2]:data["offsets"][3]], residues[2])


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with embedding_writer(path, 2, {"mean_layer1": 3}) as writer:
            writer.write(["a"], {"mean_layer1": np.zeros((1, 3), dtype=np.float32)})
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_the_c_walk_stops_two_steps_past_the_lowest_cv_loss(monkeypatch):
    from protadapt.embeddings import probe

    fits = []

    class Counted(LogisticRegression):
        def fit(self, x, y):
            fits.append(self.C)
            return super().fit(x, y)

    monkeypatch.setattr(probe, "LogisticRegression", Counted)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 20)), rng.integers(0, 2, 60)  # noise: the loss only rises as C grows
    fit = fit_probe({-1: x}, y, "classification")
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": C_GRID}, scoring="neg_log_loss",
                          cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(StandardScaler().fit_transform(x), y)
    assert fit.regularisation == search.best_params_["C"]  # the full grid picks the same C
    walked = list(C_GRID).index(fit.regularisation) + 1 + probe.C_PATIENCE
    assert walked < len(C_GRID) and len(fits) == 5 * walked + 1  # 5 folds per C walked, then the refit
    assert max(fits) == C_GRID[walked - 1]
