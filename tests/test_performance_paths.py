"""The fast paths give the same numbers as the plain ones (correctness only, no timings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from protadapt.adapters import AdapterConfig
from protadapt.adapters.perturb import perturb_as_if_trained
from protadapt.backbones import load_backbone
from protadapt.heads import HeadConfig
from protadapt.model import ProteinPredictor
from protadapt.inference import predict_scores

@pytest.mark.parametrize("precision, tolerance", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_predict_precision_autocasts_and_returns_float32(precision, tolerance):
    torch.manual_seed(0)
    predictor = ProteinPredictor(load_backbone("tiny"), HeadConfig(), AdapterConfig(method="dora", rank=4))
    perturb_as_if_trained(predictor, std=0.1)
    frame = pd.DataFrame({"id": ["a", "b", "c"], "sequence": ["MKV", "ACDEFGHIK", "LLLL"]})
    full = predict_scores(predictor, frame, batch_size=2)
    low = predict_scores(predictor, frame, batch_size=2, precision=precision)
    assert low.dtype == np.float32 and np.allclose(low.sum(1), 1.0, atol=1e-5)
    assert not np.array_equal(low, full)  # autocast really ran (on the CPU here, CUDA on a GPU)
    np.testing.assert_allclose(low, full, atol=tolerance)
    torch.testing.assert_close(predict_scores(predictor, frame, batch_size=2), full)  # weights left exact
    with pytest.raises(ValueError, match="precision"):
        predict_scores(predictor, frame, precision="fp8")


def test_dora_low_rank_norm_equals_the_materialised_norm():
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40).double()
    from protadapt.adapters import DoRALinear

    dora = DoRALinear(layer, AdapterConfig(method="dora", rank=3))
    perturb_as_if_trained(dora, std=0.3)
    materialised = (layer.weight + dora.delta_weight()).norm(dim=1)
    torch.testing.assert_close(dora.direction_norm(), materialised, rtol=1e-10, atol=1e-12)


def test_peft_comparison_adapts_the_same_layers_with_the_same_function():
    """The benchmark's own check, run as the benchmark runs (a module of the repository, not an import)."""
    pytest.importorskip("peft")
    import json
    import subprocess
    import sys
    from pathlib import Path

    completed = subprocess.run([sys.executable, "-m", "benchmarks.vs_peft", "--check-only", "--archs", "8M",
                                "--device", "cpu"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 0, completed.stderr[-2000:]
    check = json.loads(completed.stdout.strip().splitlines()[-1])
    if not check["hf_config"]:
        pytest.skip("no HF config for esm2_t6_8M_UR50D")
    assert check["max_diff"] < 1e-4
