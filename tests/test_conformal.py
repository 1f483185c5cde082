"""Conformal sets and intervals: equal to crepes / MAPIE on the same scores, and they cover what they promise."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from crepes import ConformalClassifier, ConformalRegressor

from protadapt.evaluation.conformal import Conformal, ConformalError, calibrate, class_scores, prediction_columns

N_CAL = 203  # alpha (n + 1) is not an integer at 0.1 / 0.2: crepes' p >= alpha then equals the usual p > alpha


def dirichlet_task(seed: int, n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(classes), size=n)
    labels = (rng.random(n)[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)
    return probabilities, labels


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_split_sets_equal_crepes(alpha, score):
    probabilities, labels = dirichlet_task(0, N_CAL)
    new, _ = dirichlet_task(1, 400)
    conformal = calibrate("classification", probabilities, labels, alpha=alpha, method="split", score=score)
    reference = ConformalClassifier().fit(class_scores(probabilities, score)[np.arange(N_CAL), labels])
    expected = reference.predict_set(class_scores(new, score), confidence=1 - alpha, smoothing=False)
    sets = conformal.prediction_sets(new)
    np.testing.assert_array_equal(sets, expected.astype(bool))
    assert 1.0 < sets.sum(axis=1).mean() < 3.0  # neither all singletons nor all full


def test_aps_score_is_mass_at_least_as_likely():
    scores = class_scores(np.array([[0.5, 0.3, 0.2]]), "aps")
    np.testing.assert_allclose(scores, [[0.5, 0.8, 1.0]])


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_class_conditional_sets_equal_crepes_per_class(alpha):
    probabilities, labels = dirichlet_task(2, N_CAL)
    new, _ = dirichlet_task(3, 400)
    conformal = calibrate("classification", probabilities, labels, alpha=alpha, method="split", score="lac",
                          class_conditional=True)
    sets = conformal.prediction_sets(new)
    for k in range(3):
        reference = ConformalClassifier().fit(1 - probabilities[labels == k, k])
        p_values = reference.predict_p((1 - new[:, k])[:, None], smoothing=False)[:, 0]
        np.testing.assert_array_equal(sets[:, k], p_values > alpha)  # the usual rule; predict_set uses >=


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("score", ["absolute", "normalized"])
def test_split_intervals_equal_crepes(alpha, score):
    rng = np.random.default_rng(4)
    predictions, new = rng.normal(size=N_CAL), rng.normal(size=300)
    sigmas, new_sigmas = rng.uniform(0.5, 2, N_CAL), rng.uniform(0.5, 2, 300)
    targets = predictions + sigmas * rng.normal(size=N_CAL)
    normalized = score == "normalized"
    conformal = calibrate("regression", predictions, targets, alpha=alpha, method="split", score=score,
                          sigmas=sigmas if normalized else None)
    lower, upper = conformal.intervals(new, new_sigmas if normalized else None)
    reference = ConformalRegressor().fit(targets - predictions, sigmas=sigmas if normalized else None)
    expected = reference.predict_int(new, sigmas=new_sigmas if normalized else None, confidence=1 - alpha)
    np.testing.assert_allclose(lower, expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(upper, expected[:, 1], rtol=0, atol=1e-12)


def fold_models(problem_type: str, seed: int, n: int = 151, k: int = 5):
    """Out-of-fold scores, fold indices and fold-model scores of new points for a linear model, plus MAPIE's splitter."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(seed)
    x, new = rng.normal(size=(n, 4)), rng.normal(size=(40, 4))
    if problem_type == "regression":
        model, y = Ridge(), x @ rng.normal(size=4) + rng.normal(size=n)
    else:
        logits = x @ rng.normal(size=(4, 3))
        model = LogisticRegression()
        y = (rng.random(n)[:, None] > (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).cumsum(1)).sum(1)
    splitter = KFold(k, shuffle=True, random_state=seed)
    out_of_fold = np.empty((n, 3)) if problem_type == "classification" else np.empty(n)
    folds, on_new = np.empty(n, dtype=np.int64), []
    for fold, (train, test) in enumerate(splitter.split(x)):
        fitted = clone(model).fit(x[train], y[train])
        score = fitted.predict_proba if problem_type == "classification" else fitted.predict
        out_of_fold[test], folds[test] = score(x[test]), fold
        on_new.append(score(new))
    return x, y, new, model, splitter, out_of_fold, folds, np.array(on_new)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_cv_plus_intervals_equal_mapie(alpha):
    from mapie.regression import CrossConformalRegressor

    x, y, new, model, splitter, out_of_fold, folds, on_new = fold_models("regression", 5)
    conformal = calibrate("regression", out_of_fold, y, alpha=alpha, method="cv+", score="absolute", folds=folds)
    lower, upper = conformal.intervals(on_new)
    mapie = CrossConformalRegressor(model, confidence_level=1 - alpha, method="plus", cv=splitter)
    _, expected = mapie.fit_conformalize(x, y).predict_interval(new)
    np.testing.assert_allclose(lower, expected[:, 0, 0], atol=1e-12)
    np.testing.assert_allclose(upper, expected[:, 1, 0], atol=1e-12)
    assert np.all(upper - lower > 0)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_cv_plus_sets_equal_mapie_crossval(alpha):
    from mapie.classification import CrossConformalClassifier

    x, y, new, model, splitter, out_of_fold, folds, on_new = fold_models("classification", 6)
    conformal = calibrate("classification", out_of_fold, y, alpha=alpha, method="cv+", score="lac", folds=folds)
    mapie = CrossConformalClassifier(model, confidence_level=1 - alpha, conformity_score="lac", cv=splitter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = mapie.fit_conformalize(x, y).predict_set(new, agg_scores="crossval")
    sets = conformal.prediction_sets(on_new)
    np.testing.assert_array_equal(sets, expected[:, :, 0])
    assert sets.sum(axis=1).mean() < 3.0


@pytest.mark.parametrize("method", ["split", "cv+"])
def test_json_round_trip_gives_the_same_sets(tmp_path, method):
    probabilities, labels = dirichlet_task(7, 120)
    folds = np.arange(120) % 4 if method == "cv+" else None
    conformal = calibrate("classification", probabilities, labels, alpha=0.1, method=method, score="aps",
                          folds=folds, members=("repeat0-fold0", "repeat0-fold1", "repeat0-fold2", "repeat0-fold3")
                          if method == "cv+" else ())
    new = dirichlet_task(8, 50)[0]
    new = np.stack([new] * 4) if method == "cv+" else new
    loaded = Conformal.load(conformal.save(tmp_path / "conformal.json"))
    np.testing.assert_array_equal(loaded.prediction_sets(new), conformal.prediction_sets(new))
    np.testing.assert_array_equal(loaded.prediction_sets(new, alpha=0.3), conformal.prediction_sets(new, alpha=0.3))
    state = json.loads((tmp_path / "conformal.json").read_text())
    assert state["n"] == 120 and state["method"] == method and state["alpha"] == 0.1
    assert loaded.members == conformal.members


def test_bad_state_and_bad_input_are_one_line_errors(tmp_path):
    (tmp_path / "conformal.json").write_text('{"format": 99}')
    with pytest.raises(ConformalError, match=r"conformal.json: .*format 99.*refit"):
        Conformal.load(tmp_path / "conformal.json")
    (tmp_path / "conformal.json").write_text("not json")
    with pytest.raises(ConformalError, match="not a protadapt conformal state"):
        Conformal.load(tmp_path / "conformal.json")
    probabilities, labels = dirichlet_task(9, 30)
    with pytest.raises(ConformalError, match="alpha must be between 0 and 1"):
        calibrate("classification", probabilities, labels, alpha=1.5, method="split", score="lac")
    with pytest.raises(ConformalError, match="unknown classification score"):
        calibrate("classification", probabilities, labels, alpha=0.1, method="split", score="absolute")
    with pytest.raises(ConformalError, match="labels must be 0..2"):
        calibrate("classification", probabilities, labels + 1, alpha=0.1, method="split", score="lac")
    with pytest.raises(ConformalError, match="fold index"):
        calibrate("classification", probabilities, labels, alpha=0.1, method="cv+", score="lac", folds=[0] * 29 + [2])
    with pytest.raises(ConformalError, match="sigmas must be"):
        calibrate("regression", np.zeros(3), np.ones(3), alpha=0.1, method="split", score="normalized", sigmas=[1, 0, 1])
    conformal = calibrate("classification", probabilities, labels, alpha=0.1, method="split", score="lac")
    with pytest.raises(ConformalError, match="N x C probabilities with C = 3"):
        conformal.prediction_sets(probabilities[:, :2])


def test_too_few_calibration_rows_give_full_sets_and_infinite_intervals():
    probabilities, labels = dirichlet_task(10, 8)  # ceil(9 * 0.9) = 9 > 8 rows
    sets = calibrate("classification", probabilities, labels, alpha=0.1, method="split", score="lac") \
        .prediction_sets(probabilities)
    assert sets.all()
    lower, upper = calibrate("regression", np.zeros(8), np.arange(8.0), alpha=0.1, method="split",
                             score="absolute").intervals(np.zeros(2))
    assert np.all(np.isinf(lower)) and np.all(np.isinf(upper))


def test_prediction_columns_name_the_level_and_list_labels():
    conformal = calibrate("classification", np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]] * 10),
                          np.array([0, 1, 0] * 10), alpha=0.2, method="split", score="lac")  # threshold 0.6
    columns = prediction_columns(conformal, np.array([[0.95, 0.05], [0.5, 0.5], [0.3, 0.7]]), ["neg", "pos"])
    assert columns["set_0.2"] == ["neg", "neg|pos", "pos"]
    assert columns["set_size_0.2"].tolist() == [1, 2, 1]
    regression = calibrate("regression", np.zeros(30), np.linspace(-1, 1, 30), alpha=0.1, method="split",
                           score="absolute")
    columns = prediction_columns(regression, np.array([0.0, 2.0]))
    threshold = np.sort(np.abs(np.linspace(-1, 1, 30)))[27]  # ceil(31 * 0.9) = 28th smallest
    np.testing.assert_allclose(columns["upper_0.1"], np.round([threshold, 2 + threshold], 6))
    np.testing.assert_allclose(columns["lower_0.1"], np.round([-threshold, 2 - threshold], 6))
