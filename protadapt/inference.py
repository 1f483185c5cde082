"""Predictions from a trained predictor: merged adapters, inference mode, length-bucketed batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from protadapt.adapters import merge_adapters, unmerge_adapters
from protadapt.data.datamodule import make_loader
from protadapt.embeddings.cache import EmbeddingCache
from protadapt.embeddings.extract import pooled_embeddings
from protadapt.embeddings.precomputed import file_features
from protadapt.evaluation.metrics import compute_metrics
from protadapt.model import ProteinPredictor


AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}': no CUDA device is visible (torch.cuda.is_available() is False)")
    return device


def predict_scores(predictor: ProteinPredictor, frame: pd.DataFrame, batch_size: int = 32,
                   progress: bool = False, precision: str = "32", cache: EmbeddingCache | None = None) -> np.ndarray:
    """Class probabilities `[N, C]` or values `[N]`, in the row order of `frame`.

    `precision` "bf16" / "fp16" runs the forward under autocast on the predictor's device (CUDA or
    CPU); scores come back as float32 either way. With a `cache`, a method whose output is the head
    on frozen pooled states (probe, head) takes those states from it: a sequence is embedded once.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(AUTOCAST_DTYPES)}")
    if predictor.embeddings_file:  # a probe fitted on precomputed vectors reads them by record id
        return head_scores(predictor, precomputed_vectors(predictor, frame))
    if cache is not None and predictor.method.frozen_features and precision == "32":
        return cached_scores(predictor, frame, batch_size, cache)
    loader = make_loader(frame.reset_index(drop=True), predictor.backbone.alphabet, batch_size=batch_size,
                         shuffle=False, seed=0, problem_type=predictor.problem_type)
    device = next(predictor.parameters()).device
    autocast_dtype = AUTOCAST_DTYPES[precision]
    was_training = predictor.training
    predictor.eval()
    merge_adapters(predictor)  # exact: unmerging puts the very same W0 tensors back
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype,
                                                    enabled=autocast_dtype is not None):
            for batch in _progress(loader, progress):
                output = predictor.scores(predictor(batch["tokens"].to(device)).float())
                results.append((batch["index"], output.cpu()))
    finally:
        unmerge_adapters(predictor)
        predictor.train(was_training)
    index = torch.cat([r[0] for r in results]).numpy()
    values = torch.cat([r[1] for r in results]).numpy()
    ordered = np.empty_like(values)
    ordered[index] = values
    return ordered


def cached_scores(predictor: ProteinPredictor, frame: pd.DataFrame, batch_size: int,
                  cache: EmbeddingCache) -> np.ndarray:
    """The head on cached pooled embeddings: the same numbers as the forward, without re-embedding."""
    backbone = predictor.backbone
    layer = backbone.architecture.num_layers if backbone.output_layer is None else backbone.output_layer
    pooled = pooled_embeddings(backbone, frame["sequence"].tolist(), (layer,), predictor.head_config.pooling,
                               batch_size, cache)
    return head_scores(predictor, pooled[layer])


def precomputed_vectors(predictor: ProteinPredictor, frame: pd.DataFrame) -> np.ndarray:
    """The frame's pooled vectors of the probe's layer, from the run's `data.embeddings_file`."""
    backbone = predictor.backbone
    layer = backbone.architecture.num_layers if backbone.output_layer is None else backbone.output_layer
    vectors = file_features(predictor.embeddings_file, frame["id"].astype(str).tolist(), backbone, (layer,),
                            predictor.head_config.pooling)
    return vectors[layer]


def head_scores(predictor: ProteinPredictor, pooled: np.ndarray) -> np.ndarray:
    """The head on pooled embeddings `[N, E]`: what the forward computes after the backbone."""
    device = next(predictor.parameters()).device
    was_training = predictor.training
    predictor.eval()
    try:
        with torch.inference_mode():
            return predictor.scores(predictor.head(torch.from_numpy(pooled).to(device))).cpu().numpy()
    finally:
        predictor.train(was_training)


def evaluate_frame(predictor: ProteinPredictor, frame: pd.DataFrame, batch_size: int = 32,
                   scores: np.ndarray | None = None, precision: str = "32") -> dict[str, float]:
    """The predictor's metrics on a labelled frame (`scores`: its predictions, when already made)."""
    scores = predict_scores(predictor, frame, batch_size, precision=precision) if scores is None else scores
    metrics = compute_metrics(predictor.problem_type, frame["label"].to_numpy(), scores)
    return {k: float(v) for k, v in metrics.items()} | {"n": int(len(frame))}


def prediction_frame(predictor: ProteinPredictor, frame: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """One row per record: id, prediction, class probabilities (or the value), and the label if known."""
    out = pd.DataFrame({"id": frame["id"].to_numpy()})
    labels = predictor.labels if predictor.problem_type == "classification" else []
    if labels:
        out["prediction"] = [labels[i] for i in scores.argmax(1)]
        for column, label in enumerate(labels):
            out[f"prob_{label}"] = scores[:, column].round(6)
    else:
        out["prediction"] = scores.round(6)
    if "label" in frame and frame["label"].notna().all():
        out["label"] = [labels[i] for i in frame["label"]] if labels else frame["label"].to_numpy()
    return out


def _progress(loader, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc="predicting", unit="batch")
