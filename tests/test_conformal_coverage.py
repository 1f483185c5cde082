"""Empirical coverage of conformal sets and intervals within ±0.05 of 1 − alpha, on real tasks and a known case.

The model is protadapt's composition baseline (a linear model on amino-acid + dipeptide
composition) trained on one part of each task; the held-out rest is split at random, SPLITS
times with seeds 0..SPLITS−1, into a calibration half and a test half, and the test-half coverage
is averaged. Averaged over random splits of the same rows, coverage is exactly between
1 − alpha and 1 − alpha + 1/(n_cal + 1) whatever the model is, so the band can be tight.
"""

from __future__ import annotations

import numpy as np
import pytest

from protadapt.data.tasks import get_task
from protadapt.evaluation.baselines import composition_baseline
from protadapt.evaluation.conformal import calibrate

SPLITS = 100  # random calibration/test splits averaged per case
ALPHAS = (0.1, 0.2)
TASKS = {"bbb": ("bbb", "classification", 100), "thermostability": ("thermostability", "classification", 600),
         "mic": ("mic", "regression", 1500)}  # task, problem type, rows the model trains on
_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def held_out_scores(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Composition-baseline scores and true labels/values of the rows the baseline did not train on."""
    if name not in _CACHE:
        task, problem_type, n_train = TASKS[name]
        frame = get_task(task).load()
        order = np.random.default_rng(0).permutation(len(frame))
        train, rest = frame.iloc[order[:n_train]], frame.iloc[order[n_train:]]
        scores = composition_baseline(train["sequence"].tolist(), train["label"].to_numpy(), rest["sequence"].tolist(),
                                      problem_type, seed=0, num_classes=2 if problem_type == "classification" else None)
        _CACHE[name] = scores, rest["label"].to_numpy()
    return _CACHE[name]


def split_coverage(problem_type: str, scores: np.ndarray, targets: np.ndarray, alpha: float, score: str,
                   class_conditional: bool = False) -> tuple[float, dict[int, float]]:
    """Mean test-half coverage over SPLITS random halvings, and (classification) the mean coverage within each class."""
    covered, per_class = [], {int(k): [] for k in np.unique(targets)} if problem_type == "classification" else {}
    for seed in range(SPLITS):
        order = np.random.default_rng(seed).permutation(len(targets))
        cal, test = order[: len(order) // 2], order[len(order) // 2:]
        conformal = calibrate(problem_type, scores[cal], targets[cal], alpha=alpha, method="split", score=score,
                              class_conditional=class_conditional)
        if problem_type == "classification":
            hit = conformal.prediction_sets(scores[test])[np.arange(len(test)), targets[test].astype(int)]
            for k in per_class:
                per_class[k].append(hit[targets[test] == k].mean())
        else:
            lower, upper = conformal.intervals(scores[test])
            hit = (lower <= targets[test]) & (targets[test] <= upper)
        covered.append(hit.mean())
    return float(np.mean(covered)), {k: float(np.mean(v)) for k, v in per_class.items()}


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_split_coverage_on_held_out_rows_of_real_tasks(name, alpha):
    scores, targets = held_out_scores(name)
    problem_type = TASKS[name][1]
    coverage, _ = split_coverage(problem_type, scores, targets, alpha, "lac" if problem_type == "classification"
                                 else "absolute")
    assert abs(coverage - (1 - alpha)) <= 0.05, (name, coverage)


@pytest.mark.parametrize("name", ["bbb", "thermostability"])
def test_aps_is_valid_but_conservative_on_binary_tasks(name):
    """Non-randomised APS scores every wrong binary label 1.0, so sets jump to both labels: coverage above 1 − alpha."""
    scores, targets = held_out_scores(name)
    lac, _ = split_coverage("classification", scores, targets, 0.2, "lac")
    aps, _ = split_coverage("classification", scores, targets, 0.2, "aps")
    assert aps >= 0.8 - 0.01 and aps > lac


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("name", ["bbb", "thermostability"])
def test_class_conditional_coverage_holds_within_each_class(name, alpha):
    scores, targets = held_out_scores(name)
    coverage, per_class = split_coverage("classification", scores, targets, alpha, "lac", class_conditional=True)
    assert abs(coverage - (1 - alpha)) <= 0.05
    for k, value in per_class.items():
        assert abs(value - (1 - alpha)) <= 0.05, (name, k, value)


def test_class_conditional_fixes_a_minority_class_that_marginal_calibration_under_covers():
    """Synthetic, known answer: class 1 (20% of rows) is scored badly, so marginal sets miss it far more often."""
    rng = np.random.default_rng(11)
    n = 4000
    labels = (rng.random(n) < 0.2).astype(int)
    p_true = np.where(labels == 0, rng.uniform(0.6, 1.0, n), rng.uniform(0.2, 0.7, n))
    probabilities = np.column_stack([np.where(labels == 0, p_true, 1 - p_true), np.where(labels == 1, p_true, 1 - p_true)])
    _, marginal = split_coverage("classification", probabilities, labels, 0.1, "lac")
    overall, mondrian = split_coverage("classification", probabilities, labels, 0.1, "lac", class_conditional=True)
    assert marginal[1] < 0.8 and marginal[0] > 0.9  # the minority class pays for the majority's easy rows
    assert abs(mondrian[0] - 0.9) <= 0.02 and abs(mondrian[1] - 0.9) <= 0.02 and abs(overall - 0.9) <= 0.02


@pytest.mark.parametrize("alpha", ALPHAS)
def test_known_answer_gaussian_noise(alpha):
    """y = ŷ + N(0, 1): the interval half-width tends to the normal quantile and coverage to 1 − alpha."""
    from scipy.stats import norm

    rng = np.random.default_rng(12)
    predictions = rng.normal(size=2000)
    targets = predictions + rng.normal(size=2000)
    coverage, _ = split_coverage("regression", predictions, targets, alpha, "absolute")
    assert abs(coverage - (1 - alpha)) <= 0.02
    lower, upper = calibrate("regression", predictions, targets, alpha=alpha, method="split",
                             score="absolute").intervals(np.zeros(1))
    assert upper[0] == pytest.approx(norm.ppf(1 - alpha / 2), abs=0.08) and lower[0] == -upper[0]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_known_answer_calibrated_classifier(alpha):
    """Labels drawn from the scores themselves (a perfectly calibrated 4-class model)."""
    rng = np.random.default_rng(13)
    probabilities = rng.dirichlet(np.ones(4) * 0.5, size=2000)
    labels = (rng.random(2000)[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)
    for score in ("lac", "aps"):
        coverage, _ = split_coverage("classification", probabilities, labels, alpha, score)
        assert abs(coverage - (1 - alpha)) <= 0.02, (score, coverage)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("name", ["bbb", "mic"])
def test_cv_plus_coverage_on_real_tasks(name, alpha):
    """K = 5 ridge / logistic fold models on composition features of the held-out rows; CV+ on new rows."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold

    from protadapt.evaluation.baselines import composition_features

    task, problem_type, _ = TASKS[name]
    frame = get_task(task).load()
    features, targets = composition_features(frame["sequence"].tolist()), frame["label"].to_numpy()
    covered = []
    for seed in range(5):  # CV+ refits K models per split: 5 seeded splits, the rest of the rows as new points
        order = np.random.default_rng(seed).permutation(len(frame))
        train, new = order[: min(800, len(order) // 2)], order[min(800, len(order) // 2):]
        on_new, out_of_fold, folds = [], np.empty((len(train), 2)) if problem_type == "classification" \
            else np.empty(len(train)), np.empty(len(train), dtype=np.int64)
        for fold, (fit_rows, held) in enumerate(KFold(5, shuffle=True, random_state=seed).split(train)):
            model = LogisticRegression(C=0.1, max_iter=2000) if problem_type == "classification" else Ridge(alpha=10.0)
            model.fit(features[train[fit_rows]], targets[train[fit_rows]])
            score = model.predict_proba if problem_type == "classification" else model.predict
            out_of_fold[held], folds[held] = score(features[train[held]]), fold
            on_new.append(score(features[new]))
        conformal = calibrate(problem_type, out_of_fold, targets[train], alpha=alpha, method="cv+",
                              score="lac" if problem_type == "classification" else "absolute", folds=folds)
        if problem_type == "classification":
            covered.append(conformal.prediction_sets(np.array(on_new))[np.arange(len(new)), targets[new]].mean())
        else:
            lower, upper = conformal.intervals(np.array(on_new))
            covered.append(((lower <= targets[new]) & (targets[new] <= upper)).mean())
    assert abs(np.mean(covered) - (1 - alpha)) <= 0.05, (name, covered)
