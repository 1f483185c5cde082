"""`--method probe`: a linear probe on frozen pooled embeddings, fitted by scikit-learn, kept as a head.

The backbone stays as loaded; the training rows are embedded once (through the embedding cache),
or read by id from `data.embeddings_file` (embeddings/precomputed.py),
a logistic-regression or ridge probe is fitted with its regularisation chosen by internal CV on
those rows, and the fitted model is written into the head's linear layer. The run directory,
`predict`, `evaluate`, `cv` and `compare` then treat it like any other method.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from protadapt.adapters.registry import Method, register_method
from protadapt.embeddings.cache import EmbeddingCache
from protadapt.data.tasks import resolve_task
from protadapt.embeddings.extract import pooled_embeddings, resolve_layer
from protadapt.embeddings.precomputed import check_no_extra_ids, file_features
from protadapt.embeddings.probe import fit_probe
from protadapt.files import write_json_atomic


def fit_probe_predictor(predictor, datamodule, config, run_dir: Path) -> None:
    """Fit the probe on every training row (its CV needs no separate validation rows) and load it into the head."""
    head_layers = [m for m in predictor.head.layers if isinstance(m, nn.Linear)]
    if len(head_layers) != 1:
        raise ValueError("--method probe fits a linear head; unset head.hidden_dim (or use --method head for an MLP)")
    train = datamodule.train
    backbone = predictor.backbone
    backbone.output_layer = None  # every candidate layer comes from one pass
    features = training_features(predictor, train, config)
    labels = train["label"].to_numpy()
    fit = fit_probe(features, labels, predictor.problem_type, predictor.head_config.num_outputs, config.seed)
    predictor.adapter_config = replace(predictor.adapter_config, probe_layers=(fit.layer,))  # saved with the run
    use_layer(backbone, predictor.adapter_config)
    linear = head_layers[0]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(fit.weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(fit.bias, dtype=linear.bias.dtype))
    model = "logistic" if predictor.problem_type == "classification" else "ridge"
    write_json_atomic({"layer": fit.layer, "regularisation": fit.regularisation, "cv_score": fit.cv_score,
                       "train_rows": int(len(train)), "model": model, "embeddings_file": predictor.embeddings_file},
                      Path(run_dir) / "probe.json")


def training_features(predictor, train, config) -> dict:
    """`{layer: [N, E]}` of the training rows: from `data.embeddings_file` by id, else the backbone via the cache."""
    layers, pooling = predictor.adapter_config.probe_layers, predictor.head_config.pooling
    source = config.data.embeddings_file
    if source is None:
        cache = EmbeddingCache(config.cache) if config.cache.enabled else None
        return pooled_embeddings(predictor.backbone, train["sequence"].tolist(), layers, pooling,
                                 config.data.batch_size, cache)
    check_no_extra_ids(source, resolve_task(config.data).load()["id"].tolist())
    features = file_features(source, train["id"].tolist(), predictor.backbone, layers, pooling)
    predictor.embeddings_file = str(Path(source).resolve())  # saved with the run: predict reads it too
    return features


def use_layer(backbone, config) -> list[str]:
    """The backbone's output is the probe's layer (its one saved candidate; the last while several remain)."""
    (layer, *others) = config.probe_layers
    backbone.output_layer = None if others or resolve_layer(backbone, layer) == backbone.architecture.num_layers \
        else resolve_layer(backbone, layer)
    return []


register_method(Method("probe", use_layer, lambda architecture, config: 0, frozen_features=True,
                       fit=fit_probe_predictor, settings=("probe_layers",)))
