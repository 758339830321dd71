"""GPTQ, error analysis and mixed precision on grouped and depthwise convolutions (tiny models)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.walker import grouped_weight, layer_columns
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.gptq import accumulate_hessian, gptq_quantize
from mmcompress.quant.mixed import MixedPrecisionConfig, quantize_mixed

GPTQ_VS_RTN_GROUPED = 0.7  # GPTQ's output error on the calibration inputs, at most this fraction of RTN's


class DepthwiseNet(nn.Module):
    """A MobileNet-style model as a user would write it: stem, depthwise, dilated grouped conv, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.grouped = nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.dw(F.relu6(self.stem(x))))
        return self.head(F.relu6(self.grouped(x)).mean((2, 3)))


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Spatially correlated inputs (as photos are), so neighbouring patch columns correlate."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    return F.avg_pool2d(x, 3, stride=1, padding=1) * 3


def _layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0])) for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 4, 3, padding=1, stride=2, groups=2),
        nn.Conv2d(4, 4, 3, groups=4, dilation=2, padding="same"),
        nn.Conv2d(4, 6, (2, 4), padding="same"),
        nn.Conv2d(3, 5, (3, 2), padding="valid"),
    ],
)
def test_grouped_columns_times_grouped_weight_is_the_convolution(conv):
    x = torch.randn(2, conv.in_channels, 9, 9)
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        out = layer_columns(conv, x) @ grouped_weight(conv).transpose(1, 2)  # (g, B * L, out / g)
    g, rows, per_group = out.shape
    out = out.view(g, 2, rows // 2, per_group).permute(1, 0, 3, 2).reshape(2, -1, rows // 2)
    assert torch.allclose(out, ref.reshape(2, ref.shape[1], -1), atol=1e-5)


@pytest.mark.parametrize("act_order", [False, True])
def test_batched_gptq_solves_each_group_as_its_own_layer(act_order):
    x = torch.randn(5, 300, 9) @ torch.randn(5, 9, 9)  # 5 groups with correlated inputs
    h, _ = accumulate_hessian(torch.zeros(5, 9, 9, dtype=torch.float64), 0, x)
    w = torch.randn(5, 3, 9)
    codes, scale, zero = gptq_quantize(w, h, 4, symmetric=False, act_order=act_order)
    for j in range(5):
        single = gptq_quantize(w[j], h[j], 4, symmetric=False, act_order=act_order)
        assert all(torch.equal(a[j], b) for a, b in zip((codes, scale, zero), single, strict=True))


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_gptq_on_depthwise_and_grouped_convs_beats_round_to_nearest(scheme):
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    calib = [_smooth_images(16, seed) for seed in range(2)]
    names = ["dw", "grouped"]
    inputs = _layer_inputs(model, names, torch.cat(calib))
    errors = {}
    for method in ("rtn", "gptq"):
        q = copy.deepcopy(model)
        config = QuantConfig(weight_bits=4, scheme=scheme, method=method)
        rec = quantize(q, {n: config for n in names}, calib=calib)
        assert all(rec.modules[n]["method"] == method for n in names)
        errors[method] = {}
        with torch.no_grad():
            for n in names:
                ref, out = model.get_submodule(n)(inputs[n]), q.get_submodule(n)(inputs[n])
                errors[method][n] = float((out - ref).pow(2).sum() / ref.pow(2).sum())
    for n in names:
        assert errors["gptq"][n] <= GPTQ_VS_RTN_GROUPED * errors["rtn"][n], (n, errors)


def test_mixed_precision_plans_and_runs_with_depthwise_convs():
    model = DepthwiseNet().eval()
    calib = [_smooth_images(8, 0)]
    base = QuantConfig(granularity="per_group", group_size=8, layer_types=("linear", "conv"))
    config = MixedPrecisionConfig(bits_options=(4, 8), average_bits=6.0, base=base)
    with pytest.warns(UserWarning, match="3 layer.*per-channel steps"):  # 27, 9 and 36 inputs; the head has 32
        record, plan = quantize_mixed(model, config, calib)
    assert record.modules["dw"]["grid"]["group_size"] is None and record.modules["head"]["grid"]["group_size"] == 8
    assert plan.average_bits["_rest"] <= 6.0 + 1e-9
    assert set(plan.bits) == {"stem", "dw", "grouped", "head"}
    assert all(set(s) == {4, 8} and s[4] >= s[8] for s in plan.sensitivity.values())
    assert {n: m["bits"] for n, m in record.modules.items()} == plan.bits
    assert torch.isfinite(model(calib[0])).all()


@pytest.mark.parametrize(
    "conv",
    [nn.Conv1d(6, 4, 3, padding=1, stride=2, groups=2), nn.Conv1d(4, 6, 4, padding="same", dilation=2)],
)
def test_conv1d_columns_times_grouped_weight_is_the_convolution(conv):
    x = torch.randn(2, conv.in_channels, 17)
    with torch.no_grad():
        ref = conv(x) - conv.bias[:, None]
        out = layer_columns(conv, x) @ grouped_weight(conv).transpose(1, 2)  # (g, B * L, out / g)
    g, rows, per_group = out.shape
    out = out.view(g, 2, rows // 2, per_group).permute(1, 0, 3, 2).reshape(2, -1, rows // 2)
    assert torch.allclose(out, ref, atol=1e-5)


def test_gptq_solves_conv1d_front_ends_better_than_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(16, 32, 3, padding=1), nn.GELU(), nn.Conv1d(32, 32, 3, stride=2, padding=1))
    signal = torch.randn(64, 16, 40).cumsum(-1) / 4  # smooth, correlated inputs like audio features
    calib, test = list(signal[:48].split(8)), signal[48:]
    with torch.no_grad():
        ref = model(test)
    errors = {}
    for method in ("rtn", "gptq"):
        quantized = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "rounding to nearest" warning for Conv1d
            quantize(quantized, QuantConfig(weight_bits=3, method=method), calib=calib)
        with torch.no_grad():
            errors[method] = float((quantized(test) - ref).pow(2).mean())
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
