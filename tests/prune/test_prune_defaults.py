"""Defaults that keep a user's model alive, and config typos that name themselves."""

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.quant.api import quantize

MIN_LAYER_DENSITY = 0.3  # no layer may lose (almost) everything at 50% overall


class ConvHead(nn.Module):
    """A wide conv feeding a small Linear head: their Wanda scores live on different scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_wanda_defaults_to_row_scope_and_keeps_every_layer_alive():
    assert PruneConfig(method="wanda").scope == "row"
    assert PruneConfig(method="wanda", scope="global").scope == "global"  # an explicit choice stays
    torch.manual_seed(0)
    model, batch = ConvHead(), torch.randn(4, 3, 8, 8) * 5
    rec = prune(model, {"sparsity": 0.5, "method": "wanda"}, data=[batch])
    assert all(1 - entry["sparsity"] > MIN_LAYER_DENSITY for entry in rec.modules.values())


def test_a_layer_pruned_to_nothing_is_warned_about():
    torch.manual_seed(0)
    model, batch = ConvHead(), torch.randn(4, 3, 8, 8) * 5
    with pytest.warns(UserWarning, match=r"lost \(almost\) every weight.*'fc'"):
        prune(model, {"sparsity": 0.5, "method": "wanda", "scope": "global"}, data=[batch])


def test_a_misspelled_field_is_named():
    with pytest.raises(ConfigError, match=r"unknown QuantConfig field\(s\) \['wieght_bits'\]"):
        quantize(nn.Sequential(nn.Linear(4, 4)), {"wieght_bits": 4})
