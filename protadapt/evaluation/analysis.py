"""The DoRA paper's weight-decomposition analysis: how far fine-tuning moved magnitudes (ΔM) vs directions (ΔD).

Convention (fixed by the project): weights are `out x in` as in nn.Linear and protadapt's DoRA
keeps one magnitude per output feature, so a weight's magnitudes are its ROW norms
(`W.norm(dim=1)`) and its direction vectors are its rows. The paper writes the same analysis
per column of its `in x out` (transposed) notation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats

LayerPairs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (pretrained W0, fine-tuned W)


def analyse_layers(pairs: LayerPairs) -> pd.DataFrame:
    """ΔM and ΔD of every adapted layer, one row each, in the order given.

    For each layer pass the pretrained `W0` and the effective fine-tuned `W`: for DoRA/BiDoRA
    the merged `m ⊙ V / ‖V‖`, for LoRA `W0 + (α/r)BA`, for full fine-tuning the updated weight.
    """
    rows = []
    for layer, (w0, w) in pairs.items():
        delta_m, delta_d = delta_m_delta_d(w0, w)
        rows.append({"layer": layer, "delta_m": delta_m, "delta_d": delta_d})
    return pd.DataFrame(rows, columns=["layer", "delta_m", "delta_d"])


def delta_m_delta_d(w0: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """ΔM = mean over rows of |‖w_i‖ − ‖w0_i‖|; ΔD = mean over rows of 1 − cos(w_i, w0_i)."""
    if w0.shape != w.shape or w0.ndim != 2:
        shapes = f"{tuple(w0.shape)} and {tuple(w.shape)}"
        raise ValueError(f"need two out x in weights of the same shape, got {shapes}")
    magnitude0, direction0 = decompose(w0.detach().double())
    magnitude, direction = decompose(w.detach().double())
    cosine = (direction * direction0).sum(dim=1)
    return float((magnitude - magnitude0).abs().mean()), float((1.0 - cosine).mean())


def decompose(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row norms (one magnitude per output feature) and unit rows: weight = magnitude[:, None] * direction.

    An all-zero row has no direction; its direction row is left zero.
    """
    magnitude = weight.norm(dim=1)
    safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
    return magnitude, weight / safe[:, None]


def by_matrix_type(layers: pd.DataFrame) -> pd.DataFrame:
    """Slope and Pearson r of ΔM on ΔD per method and matrix type, over layers × checkpoints (× runs).

    `layers` holds `method`, `layer`, `delta_m`, `delta_d` and optionally `run` and `checkpoint`
    (from analyse_checkpoints or `protadapt analyze`, checkpoints in time order). A checkpoint whose
    weights equal an earlier one's (Lightning's last.ckpt and the final weights often do) repeats
    its points; `distinct_points` drops the repeats so that no point counts twice.
    """
    unique = distinct_points(layers)
    rows = []
    for (method, kind), points in unique.groupby(["method", "matrix_type"], sort=False):
        slope, intercept, r = fit_line(points)
        rows.append({"method": method, "matrix_type": kind,
                     "runs": points["run"].nunique() if "run" in points else 1,
                     "checkpoints": points["checkpoint"].nunique() if "checkpoint" in points else 1,
                     "points": len(points), "slope": slope, "intercept": intercept, "r": r,
                     "delta_m_mean": points["delta_m"].mean(), "delta_d_mean": points["delta_d"].mean()})
    return pd.DataFrame(rows, columns=["method", "matrix_type", "runs", "checkpoints", "points", "slope", "intercept",
                                       "r", "delta_m_mean", "delta_d_mean"])


def distinct_points(layers: pd.DataFrame) -> pd.DataFrame:
    """Rows with a `matrix_type` column, each (run, layer, ΔM, ΔD) kept at its first (earliest) checkpoint."""
    layers = layers.assign(matrix_type=layers["layer"].map(matrix_type))
    keys = [c for c in ("run", "layer") if c in layers.columns]
    return layers.drop_duplicates([*keys, "delta_m", "delta_d"])


def fit_line(df: pd.DataFrame) -> tuple[float, float, float]:
    """Least-squares slope and intercept of ΔM (y) on ΔD (x), and Pearson r; NaN below 3 points or when constant.

    The DoRA paper's figure plots ΔM against ΔD and reads the trend's sign (negative for full
    fine-tuning and DoRA, positive for LoRA); BiDoRA's "correlation" −8.042 vs −1.784 lies
    outside [−1, 1], so it is this slope dΔM/dΔD, in ΔM units per unit ΔD. r is scale-free.
    """
    delta_m = df["delta_m"].to_numpy(dtype=np.float64)
    delta_d = df["delta_d"].to_numpy(dtype=np.float64)
    if len(df) < 3 or np.ptp(delta_m) == 0 or np.ptp(delta_d) == 0:
        return float("nan"), float("nan"), float("nan")
    line = stats.linregress(delta_d, delta_m)
    return float(line.slope), float(line.intercept), float(line.rvalue)


def matrix_type(layer: str) -> str:
    """`layers.3.self_attn.q_proj` → `q`; `layers.3.fc1` → `fc1`: the kind of matrix, the unit of one panel."""
    return layer.rsplit(".", 1)[-1].removesuffix("_proj")
