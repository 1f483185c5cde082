"""The one-GEMM adapted linear (`fused_low_rank_linear`) that LoRA and DoRA take for batches of many
rows computes the same function and the same gradients as the two-GEMM autograd path, and is the
frozen layer bit for bit at init."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from protadapt.adapters import AdapterConfig, DoRALinear
from protadapt.adapters.dora import _FusedDoRA
from protadapt.adapters.lora import LoRALinear, fused_low_rank_linear

CASES = [("lora", False), ("dora", False), ("dora", True)]  # (method, detach_norm)


def layer_pair(method: str, detach: bool, dtype=torch.float64) -> tuple[nn.Module, nn.Module]:
    """Two equal trained-looking layers: one takes the fused path, the other is forced off it."""
    torch.manual_seed(0)
    base = nn.Linear(24, 16).to(dtype)
    config = AdapterConfig(method=method, rank=4, alpha=8.0, detach_norm=detach)
    fused = (DoRALinear if method == "dora" else LoRALinear)(base, config)
    with torch.no_grad():
        fused.up.normal_(0, 0.3)
        if method == "dora":
            fused.magnitude.mul_(1 + 0.2 * torch.randn(fused.magnitude.shape, dtype=dtype))
            fused.magnitude[3] = 0.0  # a switched-off row: its gradient cannot come from the output
    plain = copy.deepcopy(fused)
    plain.fuses = lambda x: False
    return fused, plain


@pytest.mark.parametrize("method,detach", CASES)
def test_fused_path_matches_the_two_gemm_path_in_value_and_gradients(method, detach):
    fused, plain = layer_pair(method, detach)
    x = torch.randn(5, 12, 24, dtype=torch.float64)  # 60 rows: 60·(24+16) ≥ 24·16, so it fuses
    target = torch.randn(5, 12, 16, dtype=torch.float64)
    grads = {}
    for name, layer in (("fused", fused), ("plain", plain)):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        assert type(out.grad_fn).__name__.startswith("_Fused") == (name == "fused")
        ((out - target) ** 2).sum().backward()
        grads[name] = [out.detach(), inputs.grad] + [p.grad for p in layer.parameters() if p.requires_grad]
    assert len(grads["fused"]) == (5 if method == "dora" else 4)
    for got, expected in zip(grads["fused"], grads["plain"]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_fused_gradients_pass_gradcheck(method):
    torch.manual_seed(1)
    base = nn.Linear(6, 5).double().requires_grad_(False)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    down = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    if method == "lora":
        function = lambda x, d, u: fused_low_rank_linear(x, base, d, u, 2.0)  # noqa: E731
        assert torch.autograd.gradcheck(function, (x, down, up))
        assert torch.autograd.gradgradcheck(function, (x, down, up))  # BiDoRA's exact mixed derivatives
        return
    magnitude = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    function = lambda x, d, u, m: _FusedDoRA.apply(x, base.weight, base.bias, d, u, m, 2.0, False)  # noqa: E731
    assert torch.autograd.gradgradcheck(function, (x, down, up, magnitude))  # BiDoRA's exact mixed derivatives
    magnitude.data[1] = 0.0  # a zero magnitude takes its own branch
    assert torch.autograd.gradcheck(function, (x, down, up, magnitude))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_fused_path_is_the_frozen_layer_bit_for_bit_at_init(method):
    torch.manual_seed(2)
    base = nn.Linear(64, 64)
    layer = (DoRALinear if method == "dora" else LoRALinear)(copy.deepcopy(base), AdapterConfig(method=method))
    x = torch.randn(3, 40, 64)
    out = layer(x)
    assert type(out.grad_fn).__name__.startswith("_Fused")
    assert torch.equal(out, base(x))


def test_few_rows_or_dropout_keep_the_two_gemm_path():
    base = nn.Linear(64, 64)
    assert not LoRALinear(copy.deepcopy(base), AdapterConfig()).fuses(torch.randn(2, 64))
    assert not LoRALinear(copy.deepcopy(base), AdapterConfig(dropout=0.1)).fuses(torch.randn(200, 64))
    assert LoRALinear(copy.deepcopy(base), AdapterConfig()).fuses(torch.randn(200, 64))
