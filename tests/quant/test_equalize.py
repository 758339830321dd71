"""Cross-layer equalization keeps the float function (ReLU6 -> per-channel clamps), or with
relu6="relu" turns the chain's ReLU6 into ReLU (fusable clamps in deployment), nothing else."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.quant.equalize import ChannelClamp, equalize_cross_layer


def _chain() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[0].weight.mul_(torch.linspace(0.1, 8, 8).view(-1, 1, 1, 1))  # very unequal channel ranges
    return model.eval()


@torch.no_grad()
def test_clamp_mode_is_exact_and_relu_mode_only_drops_the_upper_bound():
    x = torch.randn(4, 3, 10, 10) * 3
    exact, relu = _chain(), _chain()
    reference = copy.deepcopy(exact)
    equalize_cross_layer(exact)
    assert isinstance(exact[1], ChannelClamp) and isinstance(exact[3], ChannelClamp)
    torch.testing.assert_close(exact(x), reference(x), rtol=1e-4, atol=1e-4)
    record = equalize_cross_layer(relu, relu6="relu")
    assert record.config["relu6"] == "relu"
    assert type(relu[1]) is nn.ReLU and type(relu[3]) is nn.ReLU
    unbounded = copy.deepcopy(reference)
    unbounded[1], unbounded[3] = nn.ReLU(), nn.ReLU()
    torch.testing.assert_close(relu(x), unbounded(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(relu(x), reference(x))  # inputs beyond 6 exist: the float function changed
    with pytest.raises(ValueError, match="relu6 must be"):
        equalize_cross_layer(_chain(), relu6="hardtanh")
