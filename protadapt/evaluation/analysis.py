"""The DoRA paper's weight-decomposition analysis: how far fine-tuning moved magnitudes (ΔM) vs directions (ΔD).

Convention (fixed by the project): weights are `out x in` as in nn.Linear and protadapt's DoRA
keeps one magnitude per output feature, so a weight's magnitudes are its ROW norms
(`W.norm(dim=1)`) and its direction vectors are its rows. The paper writes the same analysis
per column of its `in x out` (transposed) notation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from protadapt.evaluation.plots import new_figure, save_figure

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


def correlation(df: pd.DataFrame) -> float:
    """Pearson r of ΔM vs ΔD over layers (the paper's summary number); NaN below 3 layers or when constant."""
    delta_m = df["delta_m"].to_numpy(dtype=np.float64)
    delta_d = df["delta_d"].to_numpy(dtype=np.float64)
    if len(df) < 3 or np.ptp(delta_m) == 0 or np.ptp(delta_d) == 0:
        return float("nan")
    return float(stats.pearsonr(delta_d, delta_m)[0])


def scatter_plot(frames: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """One panel per method, ΔD on x and ΔM on y as in the DoRA paper, titled with the method's correlation.

    Frames with a `checkpoint` column are coloured by checkpoint.
    """
    fig, axes = new_figure(1, max(1, len(frames)), panel_size=(4.5, 4))
    for ax, (method, df) in zip(axes, frames.items()):
        groups = df.groupby("checkpoint", sort=False) if "checkpoint" in df.columns else [(None, df)]
        for checkpoint, points in groups:
            label = None if checkpoint is None else str(checkpoint)
            ax.scatter(points["delta_d"], points["delta_m"], s=18, label=label)
        if "checkpoint" in df.columns:
            ax.legend(title="checkpoint", fontsize="small")
        ax.set(xlabel="ΔD (mean 1 − cos)", ylabel="ΔM (mean |Δ magnitude|)")
        ax.set_title(f"{method}: r = {correlation(df):.2f}")
    return save_figure(fig, path)
