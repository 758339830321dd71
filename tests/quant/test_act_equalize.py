"""Activation equalization (W8A8 with per-channel weights) on a depthwise CNN: exact in float, the
activations' channel ranges equal before a depthwise conv, lower W8A8 error than without."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.quant.act_equalize import activation_scales, equalize_activations
from mmcompress.quant.api import QuantConfig, quantize

EXACT_MAX_ERR = 1e-4  # float rounding only
SPREAD_AFTER_MAX = 1.01  # depthwise input: every live channel at the widest range
W8A8_GAIN = 1.5  # W8A8 output error without / with activation equalization


class InvertedResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand, self.act1 = nn.Conv2d(8, 32, 1), nn.ReLU6()
        self.depthwise, self.act2 = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6()
        self.project = nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():  # channel ranges spread over two orders of magnitude, as after BN folding,
            scale = torch.logspace(-2, 0.5, 32)  # and a narrow channel counts as much as a wide one downstream
            self.expand.weight.mul_(scale.view(32, 1, 1, 1))
            self.expand.bias.mul_(scale)
            self.depthwise.weight.div_(scale.view(32, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act2(self.depthwise(self.act1(self.expand(x)))))
        return self.head((x + y).mean((2, 3)))


def _setup():
    torch.manual_seed(0)
    return InvertedResidual().eval(), [torch.randn(8, 8, 12, 12) for _ in range(2)], torch.randn(16, 8, 12, 12)


def test_scales_fill_a_depthwise_input_and_balance_a_dense_one():
    assert torch.allclose(activation_scales(torch.tensor([4.0, 1.0, 0.0]), None, 0.5), torch.tensor([1.0, 0.25, 1.0]))
    s = activation_scales(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0]), 0.5)  # a / s: 4 and 4 * s0 / s1
    assert float((torch.tensor([4.0, 1.0]) / s).max()) == pytest.approx(4.0)


def test_equalization_is_exact_and_evens_out_the_depthwise_input():
    model, calib, test = _setup()
    reference = copy.deepcopy(model)
    rec = equalize_activations(model, calib)
    assert rec.metrics["pairs"] == 2  # expand -> depthwise, depthwise -> project
    assert rec.modules["depthwise"]["range_spread_before"] > 10
    assert rec.modules["depthwise"]["range_spread_after"] < SPREAD_AFTER_MAX
    with torch.no_grad():
        assert float((model(test) - reference(test)).abs().max()) < EXACT_MAX_ERR


def test_w8a8_error_drops_with_activation_equalization():
    model, calib, test = _setup()
    config = QuantConfig(activations="static", act_observer="minmax")
    with torch.no_grad():
        reference = model(test)
    plain = copy.deepcopy(model)
    quantize(plain, config, calib=calib)
    equalized = copy.deepcopy(model)
    equalize_activations(equalized, calib)
    quantize(equalized, config, calib=calib)
    with torch.no_grad():
        err_plain = float((plain(test) - reference).pow(2).mean())
        err_equalized = float((equalized(test) - reference).pow(2).mean())
    assert err_plain > W8A8_GAIN * err_equalized, (err_plain, err_equalized)


def test_bad_alpha_and_quantized_models_are_refused():
    model, calib, _ = _setup()
    with pytest.raises(ValueError, match="alpha"):
        equalize_activations(model, calib, alpha=1.5)
    quantize(model, QuantConfig())
    with pytest.raises(Exception, match="before quantize"):
        equalize_activations(model, calib)
