"""The linear probe: a scikit-learn model on frozen pooled embeddings, turned into a protadapt head.

Logistic regression (classification) or ridge (regression) on standardised features, with the
regularisation chosen by internal cross-validation on the training rows only; several candidate
layers are compared by the same internal CV score. The fitted scaler and linear model fold into
one `nn.Linear` (W·(x − μ)/σ + b = (W/σ)·x + (b − W·μ/σ)), so a probe run predicts through the same
`ProteinPredictor` path as every other method and gives the scikit-learn model's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

C_GRID = np.logspace(-4, 2, 13)  # inverse regularisation strengths of the logistic probe
C_PATIENCE = 2  # grid steps without a lower CV loss before the C walk stops
ALPHA_GRID = np.logspace(-2, 4, 13)  # ridge penalties (chosen by efficient leave-one-out)


@dataclass
class ProbeFit:
    """A fitted probe as the weights of a linear head on one layer's pooled embedding."""

    layer: int
    weight: np.ndarray  # [C, E] for classification (C ≥ 2), [1, E] for regression
    bias: np.ndarray  # [C] or [1]
    cv_score: float  # internal-CV score of the chosen layer: −log loss (classification) or −MSE (leave-one-out)
    regularisation: float  # the chosen C (logistic) or alpha (ridge)


def fit_probe(features: dict[int, np.ndarray], labels: np.ndarray, problem_type: str,
              num_classes: int = 2, seed: int = 0) -> ProbeFit:
    """Fit one probe per candidate layer in `features` and keep the layer with the best internal-CV score."""
    fits = [_fit_layer(layer, x, labels, problem_type, num_classes, seed) for layer, x in features.items()]
    return max(fits, key=lambda fit: fit.cv_score)


def probe_scores(fit: ProbeFit, x: np.ndarray, problem_type: str) -> np.ndarray:
    """What the head computes from pooled embeddings: class probabilities `[N, C]` or values `[N]`."""
    logits = x @ fit.weight.T + fit.bias
    if problem_type == "regression":
        return logits[:, 0]
    logits = logits - logits.max(1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _fit_layer(layer: int, x: np.ndarray, labels: np.ndarray, problem_type: str, num_classes: int,
               seed: int) -> ProbeFit:
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x)
    if problem_type == "classification":
        model, score, strength = _logistic(scaled, labels.astype(np.int64), seed)
        weight, bias = _class_weights(model, num_classes, x.shape[1])
    else:
        model = RidgeCV(alphas=ALPHA_GRID).fit(scaled, labels.astype(np.float64))
        weight, bias = model.coef_.reshape(1, -1), np.atleast_1d(model.intercept_).astype(np.float64)
        score, strength = float(model.best_score_), float(model.alpha_)
    scale = scaler.scale_
    folded_weight = weight / scale
    folded_bias = bias - folded_weight @ scaler.mean_
    return ProbeFit(layer, folded_weight.astype(np.float64), folded_bias.astype(np.float64), score, strength)


def _logistic(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[LogisticRegression, float, float]:
    """C by stratified k-fold log loss (smoother than accuracy on a few hundred rows), then a refit on all.

    The Cs run from strongest to weakest regularisation, each fold's fit starting from its last
    solution (the regularisation path, as LogisticRegressionCV walks it: the same optima within the
    solver's tolerance). The walk stops once the summed held-out loss has not improved for
    `C_PATIENCE` steps: past its minimum it rises as the fits overfit, and the weak-regularisation
    end is where lbfgs needs the most iterations.
    """
    smallest_class = int(np.bincount(y)[np.unique(y)].min())
    if smallest_class < 2:
        raise ValueError(f"the probe needs at least 2 training examples of every class; one class has {smallest_class}")
    folds = list(StratifiedKFold(min(5, smallest_class), shuffle=True, random_state=seed).split(x, y))
    models = [LogisticRegression(max_iter=5000, warm_start=True) for _ in folds]
    losses: list[float] = []
    for c in C_GRID:
        losses.append(sum(_held_out_log_loss(model.set_params(C=c).fit(x[train], y[train]), x[held_out], y[held_out])
                          for model, (train, held_out) in zip(models, folds)))
        if len(losses) - 1 - int(np.argmin(losses)) >= C_PATIENCE:
            break
    best = int(np.argmin(losses))
    model = LogisticRegression(C=float(C_GRID[best]), max_iter=5000).fit(x, y)
    return model, float(-losses[best] / len(folds)), float(C_GRID[best])


def _held_out_log_loss(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's `log_loss` (probabilities clipped to [eps, 1 − eps]) without its per-call validation."""
    probabilities = model.predict_proba(x)
    eps = np.finfo(probabilities.dtype).eps
    true_class = probabilities[np.arange(len(y)), np.searchsorted(model.classes_, y)]
    return float(-np.log(np.clip(true_class, eps, 1 - eps)).mean())


def _class_weights(model: LogisticRegression, num_classes: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits for every class 0..C−1 (binary: [0, z], whose softmax is sigmoid(z)); absent classes at −∞-like."""
    weight = np.zeros((num_classes, width))
    bias = np.full(num_classes, -1e4)  # a class never seen in training gets ~zero probability
    classes = model.classes_
    if len(classes) == 2:
        weight[classes[1]], bias[classes[1]] = model.coef_[0], model.intercept_[0]
        bias[classes[0]] = 0.0
    else:
        weight[classes], bias[classes] = model.coef_, model.intercept_
    return weight, bias
