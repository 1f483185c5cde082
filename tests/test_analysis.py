"""Weight-decomposition analysis: synthetic updates with known ΔM and ΔD give exactly those values."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from protadapt.evaluation.analysis import (
    analyse_layers,
    by_matrix_type,
    decompose,
    delta_m_delta_d,
    fit_line,
    matrix_type,
)
from protadapt.evaluation.plots import plot_delta_m_delta_d


def analyse_checkpoints(checkpoints, names):
    """Layer pairs per checkpoint, stacked with a checkpoint column (what `analyze` does with a run's checkpoints)."""
    return pd.concat([analyse_layers(pairs).assign(checkpoint=name) for pairs, name in zip(checkpoints, names)],
                     ignore_index=True)[["checkpoint", "layer", "delta_m", "delta_d"]]


def scaled_and_rotated(w0, scales, angles, seed=0):
    """Each row i of w0 scaled by scales[i] and turned by angles[i] in a plane containing it."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for row, scale, angle in zip(w0, scales, angles):
        unit = row / row.norm()
        other = torch.randn(row.shape, generator=generator, dtype=row.dtype)
        other = other - (other @ unit) * unit
        other = other / other.norm()
        rows.append(scale * row.norm() * (math.cos(angle) * unit + math.sin(angle) * other))
    return torch.stack(rows)


def test_decompose_is_per_row():
    weight = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    magnitude, direction = decompose(weight)
    torch.testing.assert_close(magnitude, torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(direction, torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(magnitude[:, None] * direction, weight)


def test_hand_example_in_the_plane():
    w0 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    # row 0: length 3 -> 6, turned 60 degrees; row 1: length kept, turned 90 degrees
    w = torch.tensor([[6 * math.cos(math.pi / 3), 6 * math.sin(math.pi / 3)], [-2.0, 0.0]])
    delta_m, delta_d = delta_m_delta_d(w0, w)
    assert delta_m == pytest.approx((3 + 0) / 2)
    assert delta_d == pytest.approx(((1 - 0.5) + (1 - 0)) / 2)


def test_known_scales_and_angles_give_exact_delta_m_and_delta_d():
    w0 = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scales = torch.linspace(0.5, 1.5, 8, dtype=torch.float64)
    angles = torch.linspace(0.0, math.pi / 2, 8, dtype=torch.float64)
    w = scaled_and_rotated(w0, scales, angles)
    delta_m, delta_d = delta_m_delta_d(w0, w)
    assert delta_m == pytest.approx(float(((scales - 1).abs() * w0.norm(dim=1)).mean()), rel=1e-12)
    assert delta_d == pytest.approx(float((1 - torch.cos(angles)).mean()), rel=1e-12)


def test_rows_not_columns_carry_the_magnitude():
    w0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    column_scaled = w0.clone()
    column_scaled[:, 0] *= 3.0  # changes every row a little
    row_scaled = w0.clone()
    row_scaled[0] *= 3.0  # changes one row's length only, no direction
    delta_m, delta_d = delta_m_delta_d(w0, row_scaled)
    assert delta_m == pytest.approx(2.0 * float(w0[0].norm()) / 4, rel=1e-5)
    assert delta_d == pytest.approx(0.0, abs=1e-6)
    assert delta_m_delta_d(w0, column_scaled)[1] > 1e-3


def test_dora_update_with_fixed_magnitude_moves_direction_only():
    generator = torch.Generator().manual_seed(3)
    w0 = torch.randn(5, 7, generator=generator)
    v = w0 + 0.3 * torch.randn(5, 2, generator=generator) @ torch.randn(2, 7, generator=generator)
    w = w0.norm(dim=1, keepdim=True) * v / v.norm(dim=1, keepdim=True)  # m = ‖W0‖ rows, V moved
    delta_m, delta_d = delta_m_delta_d(w0, w)
    assert delta_m == pytest.approx(0.0, abs=1e-5)
    assert delta_d > 0


def test_analyse_layers_and_fit_line():
    w0 = torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pairs = {}
    for i, strength in enumerate([0.1, 0.2, 0.3, 0.4]):
        pairs[f"layers.{i}.q_proj"] = (w0, scaled_and_rotated(w0, [1 + strength] * 6, [strength] * 6))
    df = analyse_layers(pairs)
    assert list(df.columns) == ["layer", "delta_m", "delta_d"]
    assert list(df["layer"]) == list(pairs)
    strengths = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(df["delta_m"], strengths * float(w0.norm(dim=1).mean()))
    np.testing.assert_allclose(df["delta_d"], 1 - np.cos(strengths))
    # ΔM is linear in the strength, so r is that of (strength, 1 - cos strength)
    assert fit_line(df)[2] == pytest.approx(np.corrcoef(strengths, 1 - np.cos(strengths))[0, 1])
    linear = pd.DataFrame({"delta_m": [1.0, 3.0, 5.0], "delta_d": [0.0, 1.0, 2.0]})
    assert fit_line(linear) == pytest.approx((2.0, 1.0, 1.0))
    assert fit_line(pd.DataFrame({"delta_m": [1.0, -1.0, 3.0], "delta_d": [0.0, 1.0, 2.0]}))[2] == pytest.approx(0.5)
    assert all(math.isnan(v) for v in fit_line(linear.iloc[:2]))


def test_matrix_types():
    names = ["layers.0.self_attn.q_proj", "layers.11.self_attn.k_proj", "layers.2.self_attn.v_proj",
             "layers.2.self_attn.out_proj", "layers.5.fc1", "layers.5.fc2"]
    assert [matrix_type(n) for n in names] == ["q", "k", "v", "out", "fc1", "fc2"]


def weights_with(delta_m, delta_d, layer_type, n_layers):
    """Layers whose rows (unit length) are scaled by 1 + ΔM and turned by arccos(1 − ΔD): exactly that ΔM, ΔD."""
    w0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w0 = w0 / w0.norm(dim=1, keepdim=True)
    return {f"layers.{i}.self_attn.{layer_type}_proj": (w0, scaled_and_rotated(w0, [1 + m] * 5, [math.acos(1 - d)] * 5))
            for i, (m, d) in enumerate(zip(delta_m, delta_d)) if i < n_layers}


def test_slope_and_r_per_matrix_type_over_layers_and_checkpoints():
    # ΔD x = 0.01·(0, 1, 2, 3) over 2 layers × 2 checkpoints; ΔM = 0.5 + b·x + e with e = 0.01·(1, −1, −1, 1)
    # orthogonal to x − mean(x): the slope is exactly b, and r = b·sqrt(Σ(x − x̄)²) / sqrt(b²Σ(x − x̄)² + Σe²)
    x, e = 0.01 * np.arange(4.0), 0.01 * np.array([1.0, -1.0, -1.0, 1.0])
    checkpoints = []
    for step in range(2):
        pairs = {}
        for kind, b in (("q", -8.0), ("v", -2.0)):
            delta_m = 0.5 + b * x + e
            pairs.update(weights_with(delta_m[2 * step:2 * step + 2], x[2 * step:2 * step + 2], kind, 2))
        checkpoints.append(pairs)
    layers = analyse_checkpoints(checkpoints, names=["step100", "step200"]).assign(method="bidora", run="r")
    final = layers[layers["checkpoint"] == "step200"].assign(checkpoint="final")  # equal weights: no new points
    table = by_matrix_type(pd.concat([layers, final])).set_index("matrix_type")
    for kind, b in (("q", -8.0), ("v", -2.0)):
        row = table.loc[kind]
        sxx, see = float(((x - x.mean()) ** 2).sum()), float((e**2).sum())
        assert row["slope"] == pytest.approx(b, rel=1e-9)
        assert row["r"] == pytest.approx(b * math.sqrt(sxx) / math.sqrt(b * b * sxx + see), rel=1e-9)
        assert (row["points"], row["checkpoints"], row["runs"]) == (4, 2, 1)
    assert table.loc["q", "r"] == pytest.approx(-8 * math.sqrt(5) / 18, rel=1e-9)  # −0.9938


def test_delta_m_delta_d_figure_has_a_panel_per_method_and_type(tmp_path):
    rng = np.random.default_rng(0)
    layers = pd.DataFrame({"method": ["dora"] * 8 + ["full"] * 8, "checkpoint": (["fit/best"] * 4 + ["final"] * 4) * 2,
                           "layer": ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj",
                                     "layers.0.self_attn.v_proj", "layers.1.self_attn.v_proj"] * 4,
                           "delta_m": rng.random(16), "delta_d": rng.random(16)})
    path = plot_delta_m_delta_d(layers, tmp_path / "nested" / "dm_dd.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(path.read_bytes()[16:20], "big"), int.from_bytes(path.read_bytes()[20:24], "big")
    assert (width, height) == (round(2 * 3.6 * 120), round(2 * 3.2 * 120))  # 2 types across, 2 methods down
