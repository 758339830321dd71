"""Channels of Conv1d layers (audio and sensor front ends) shrink like Conv2d's: through BatchNorm1d,
1-D pooling and squeeze, and through transposes into a GRU or Linear that reads channels last."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.prune.structured import prune_structured, replay_structured


class KeywordSpotter(nn.Module):  # raw audio (N, 1, T) -> classes, M5-style
    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv1d(1, 16, 9, stride=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2))
        self.b2 = nn.Sequential(nn.Conv1d(16, 32, 3), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2))
        self.pool, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.b2(self.b1(x))).squeeze(-1))


class ConvGRU(nn.Module):  # (N, T, F) frames: a Conv1d over time, then a GRU
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gru, self.head = (
            nn.Conv1d(8, 16, 3, padding=1),
            nn.GRU(16, 32, batch_first=True),
            nn.Linear(32, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.head(self.gru(hidden)[0][:, -1])


def _drop(size: int, keep: list[int]) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[keep] = False
    return mask


@pytest.mark.parametrize("build, x", [(KeywordSpotter, torch.randn(3, 1, 200)), (ConvGRU, torch.randn(3, 10, 8))])
def test_conv1d_channels_shrink_exactly_like_masking_them_and_replay(build, x):
    torch.manual_seed(0)
    model = build().eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
    masked, fresh = copy.deepcopy(model), build().eval()
    config = {"ratio": 0.5, "method": "magnitude", "compensate": False}
    record = prune_structured(model, {"re:.*conv|b\\d\\.0": config, "_default": None}, example_inputs=x)
    convs = [n for n, m in masked.named_modules() if isinstance(m, nn.Conv1d)]
    assert all(record.modules[n]["structure"] == "channels" for n in convs)
    with torch.no_grad():
        for name in convs:  # zero the removed channels' outputs (after the BatchNorm where there is one)
            drop = _drop(masked.get_submodule(name).out_channels, record.modules[name]["keep"])
            conv = masked.get_submodule(name)
            conv.weight[drop], conv.bias[drop] = 0, 0
            norm = masked.get_submodule(name[:-1] + "1") if name.endswith(".0") else None
            if norm is not None:
                norm.weight[drop], norm.bias[drop] = 0, 0
        assert torch.allclose(model(x), masked(x), atol=1e-5)
        replay_structured(fresh, Record.from_dict(record.to_dict()))
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x), model(x))
    assert record.metrics["macs_removed"] > 0.15


def test_a_layer_norm_over_time_blocks_a_conv1d_group_with_the_reason():
    class TimeNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm, self.head = nn.Conv1d(4, 8, 3), nn.LayerNorm(6), nn.Linear(48, 2)

        def forward(self, x):
            return self.head(self.norm(self.conv(x)).flatten(1))  # LayerNorm over the 6 time steps

    with pytest.warns(UserWarning, match=r"'conv' \(flows into LayerNorm over another axis than the channels"):
        record = prune_structured(TimeNorm().eval(), {"_default": {"ratio": 0.5}}, example_inputs=torch.randn(2, 4, 8))
    assert record.modules["conv"]["structure"] == "kept"


def test_calibration_batches_serve_as_example_inputs_and_their_absence_is_said():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 200)
    record = prune_structured(KeywordSpotter().eval(), {"re:b1.0": {"ratio": 0.5}}, calib=[x[:4], x[4:]])
    assert record.modules["b1.0"]["kept"] == 8
    with pytest.warns(UserWarning, match="no calib= batches, so the channel scores and the compensation"):
        prune_structured(KeywordSpotter().eval(), {"re:b1.0": {"ratio": 0.5}}, example_inputs=x)


def test_conv1d_consumers_are_refit_by_least_squares():
    torch.manual_seed(0)
    model = KeywordSpotter().eval()
    signal = torch.randn(96, 1, 200).cumsum(-1) / 8  # smooth signals: correlated channels to take over
    calib, test = list(signal[:64].split(16)), signal[64:]
    with torch.no_grad():
        reference = model(test)
    errors = {}
    for reconstruct in (False, True):
        pruned = copy.deepcopy(model)
        config = {"ratio": 0.5, "method": "magnitude", "reconstruct": reconstruct}
        record = prune_structured(pruned, {"re:b1.0": config, "_default": None}, calib=calib)
        with torch.no_grad():
            errors[reconstruct] = float((pruned(test) - reference).pow(2).mean())
    assert record.modules["b1.0"]["reconstructed"] == ["b2.0"]  # the Conv1d reading the removed channels
    assert errors[True] < 0.5 * errors[False], errors
