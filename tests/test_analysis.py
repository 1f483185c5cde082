"""Weight-decomposition analysis: synthetic updates with known ΔM and ΔD give exactly those values."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from protadapt.evaluation.analysis import (
    analyse_layers,
    correlation,
    decompose,
    delta_m_delta_d,
    scatter_plot,
)


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


def test_analyse_layers_and_correlation():
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
    assert correlation(df) == pytest.approx(np.corrcoef(strengths, 1 - np.cos(strengths))[0, 1])
    linear = pd.DataFrame({"delta_m": [1.0, 3.0, 5.0], "delta_d": [0.0, 1.0, 2.0]})
    assert correlation(linear) == pytest.approx(1.0)
    assert correlation(pd.DataFrame({"delta_m": [1.0, -1.0, 3.0], "delta_d": [0.0, 1.0, 2.0]})) == pytest.approx(0.5)
    assert math.isnan(correlation(linear.iloc[:2]))


def test_scatter_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    frames = {
        "full_ft": pd.DataFrame({"layer": list("abcd"), "delta_m": rng.random(4), "delta_d": rng.random(4)}),
        "dora": pd.DataFrame({"checkpoint": [0, 0, 1, 1], "layer": list("abab"),
                              "delta_m": rng.random(4), "delta_d": rng.random(4)}),
    }
    path = scatter_plot(frames, tmp_path / "nested" / "dm_dd.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
