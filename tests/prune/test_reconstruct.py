"""Structured pruning with `reconstruct`: consumers of removed channels refit by least squares
(depthwise CNN with BatchNorm whose channels are redundant, as in real BN CNNs)."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError
from mmcompress.prune.reconstruct import refit_columns
from mmcompress.prune.structured import StructuredConfig, prune_structured, replay_structured

RECONSTRUCT_GAIN = 3.0  # output error with mean compensation / error with reconstruction


class RedundantCNN(nn.Module):
    """stem -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> 1x1 project (no bias) -> BN -> pool -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.project, self.bn3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():  # 16 channels that mix 8 (rank-8 stem, one depthwise filter, ReLU6 mostly linear)
            self.stem.weight.copy_((torch.randn(16, 8) @ torch.randn(8, 27)).view(16, 3, 3, 3) / 8)
            self.stem.bias.zero_()
            self.dw.weight.copy_(torch.randn(1, 1, 3, 3).expand(16, 1, 3, 3))
            self.bn1.bias.fill_(3.0), self.bn2.bias.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn1(self.stem(x)))
        x = nn.functional.relu6(self.bn2(self.dw(x)))
        return self.head(self.bn3(self.project(x)).mean((2, 3)))


def _setup():
    torch.manual_seed(0)
    model = RedundantCNN().eval()
    calib = [torch.randn(8, 3, 10, 10) for _ in range(4)]
    with torch.no_grad():  # running statistics that match the data
        model.train()
        for batch in calib:
            model(batch)
        model.eval()
    return model, calib, torch.randn(16, 3, 10, 10)


def _error(reconstruct: bool) -> tuple[float, nn.Module, Record]:
    model, calib, test = _setup()
    reference = copy.deepcopy(model)
    config = {"stem": StructuredConfig(ratio=0.5, reconstruct=reconstruct), "_default": None}
    rec = prune_structured(model, config, example_inputs=test[:2], calib=calib)
    ours, theirs = _features(model, test), _features(reference, test)
    return float((ours - theirs).pow(2).mean() / theirs.var()), model, rec


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the reconstructed consumer (through its BatchNorm)."""
    out = []
    handle = model.bn3.register_forward_hook(lambda m, a, y: out.append(y))
    model(x)
    handle.remove()
    return out[0]


def test_refit_moves_a_removed_duplicate_onto_its_twin():
    gram = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x1 == x0, zero mean
    assert torch.allclose(refit_columns(torch.tensor([[1.0, 2.0, 0.5]]), gram, torch.tensor([0]), 0.0),
                          torch.tensor([[3.0, 0.5]]))  # fmt: skip
    gram = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 2.0], [0.0, 2.0, 1.0]])  # x1 independent, mean 2
    assert torch.allclose(
        refit_columns(torch.tensor([[1.0, 2.0, 0.5]]), gram, torch.tensor([0]), 0.0), torch.tensor([[1.0, 4.5]])
    )  # fmt: skip  (mean compensation: 0.5 + 2 * 2)


def test_reconstruction_beats_mean_compensation_and_replays():
    compensated, _, _ = _error(reconstruct=False)
    reconstructed, model, rec = _error(reconstruct=True)
    assert reconstructed * RECONSTRUCT_GAIN < compensated, (reconstructed, compensated)
    assert model.project.weight.shape == (8, 8, 1, 1) and model.dw.weight.shape[0] == 8
    assert rec.modules["stem"]["compensation"] == {"project": "norm:bn3"}
    fresh = _setup()[0]
    replay_structured(fresh, Record.from_dict(rec.to_dict()))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))


def test_reconstruct_needs_calibration_data():
    model, _, test = _setup()
    with pytest.raises(ConfigError, match="calib"):
        prune_structured(model, {"stem": {"ratio": 0.5, "reconstruct": True}}, example_inputs=test[:2])
