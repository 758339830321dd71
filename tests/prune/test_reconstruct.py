"""Structured pruning with `reconstruct`: consumers of removed channels refit by least squares
(depthwise CNN with BatchNorm whose channels are redundant, as in real BN CNNs)."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError
from mmcompress.prune.reconstruct import refit_to_reference
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


def _refit_same_inputs(weight: torch.Tensor, gram: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Refit when the pruned model sees the unpruned inputs (the first layer refit)."""
    return refit_to_reference(weight, gram[:, keep], gram[keep][:, keep], 0.0)


def test_refit_moves_a_removed_duplicate_onto_its_twin():
    gram = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x1 == x0, zero mean
    assert torch.allclose(_refit_same_inputs(torch.tensor([[1.0, 2.0, 0.5]]), gram, [0, 2]),
                          torch.tensor([[3.0, 0.5]]))  # fmt: skip
    gram = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 2.0], [0.0, 2.0, 1.0]])  # x1 independent, mean 2
    assert torch.allclose(
        _refit_same_inputs(torch.tensor([[1.0, 2.0, 0.5]]), gram, [0, 2]), torch.tensor([[1.0, 4.5]])
    )  # fmt: skip  (mean compensation: 0.5 + 2 * 2)


def test_refit_to_reference_corrects_a_shifted_input():
    """The pruned model's kept input is the reference's input plus 1: the refit bias takes the shift off."""
    torch.manual_seed(0)
    x = torch.randn(1000, 2)
    z_ref = torch.cat([x, torch.ones(1000, 1)], 1)
    z = torch.cat([x[:, :1] + 1.0, torch.ones(1000, 1)], 1)  # column 1 removed, column 0 shifted
    weight = torch.tensor([[2.0, 0.0, 0.0]])
    refit = refit_to_reference(weight, z_ref.T @ z / 1000, z.T @ z / 1000, 0.0)
    assert torch.allclose(refit, torch.tensor([[2.0, -2.0]]), atol=1e-4)


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


def _twins_and_small_units() -> nn.Module:
    """12 hidden units: 0-3 strong, 4-7 exact copies of them, 8-11 unique, read with weaker weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 3
        model[0].weight[4:8], model[0].bias[4:8] = model[0].weight[:4], model[0].bias[:4]
        model[2].weight[:, 8:] *= 0.6
    return model


def test_reconstruction_importance_removes_units_the_others_can_stand_in_for():
    calib = [torch.randn(64, 16) for _ in range(4)]
    test = torch.randn(256, 16)
    errors = {}
    for method in ("variance", "reconstruction"):
        model = _twins_and_small_units()
        reference = copy.deepcopy(model)
        config = {"0": {"ratio": 1 / 3, "method": method, "reconstruct": True}}
        record = prune_structured(model, config, example_inputs=test[:2], calib=calib)
        with torch.no_grad():
            errors[method] = float((model(test) - reference(test)).pow(2).mean() / reference(test).var())
        if method == "reconstruction":
            keep = set(record.modules["0"]["keep"])
            assert all(u in keep or u + 4 in keep for u in range(4)), keep  # never both twins
            assert sum(u in keep for u in range(8)) <= 5, keep  # most of the 4 removed are twins
    assert errors["reconstruction"] < 0.1 * errors["variance"], errors  # 0.0009 vs 0.018 here


def test_reconstruction_importance_needs_calibration_data():
    with pytest.raises(ConfigError, match="calib"):
        prune_structured(_twins_and_small_units(), {"0": {"ratio": 0.5, "method": "reconstruction"}},
                         example_inputs=torch.randn(2, 16))  # fmt: skip


def test_scarce_calibration_and_unrefittable_consumers_are_warned_and_refits_are_recorded():
    model, calib, test = _setup()
    with pytest.warns(UserWarning, match="fewer calibration rows"):  # the head: 1 row for 5 kept columns
        config = {"ratio": 0.5, "reconstruct": True}
        targets = {"stem": config, "re:project": config, "_default": None}
        rec = prune_structured(model, targets, example_inputs=test[:2], calib=[calib[0][:1]])
    assert rec.modules["stem"]["reconstructed"] == ["project"]
    assert rec.modules["project"]["reconstructed"] == ["head"]
    model, calib, test = _setup()
    model.project.padding_mode = "reflect"  # a consumer least squares does not refit here
    with pytest.warns(UserWarning, match="keep mean compensation instead: project"):
        rec = prune_structured(model, {"stem": {"ratio": 0.5, "reconstruct": True}, "_default": None},
                               example_inputs=test[:2], calib=calib)  # fmt: skip
    assert "reconstructed" not in rec.modules["stem"]


def test_one_lockstep_pass_refits_exactly_as_a_pass_per_layer(monkeypatch):
    """The sequential refit runs the pruned and unpruned graphs side by side over all batches (one
    pass); a forward pass per layer (the path for graphs that call a layer twice) gives the same model."""
    import importlib

    from mmcompress.prune.reconstruct import refit_layer

    compensate = importlib.import_module("mmcompress.prune.compensate")
    _, lockstep_model, _ = _error(reconstruct=True)
    monkeypatch.setattr(compensate, "called_once", lambda graph, names: False)
    _, per_layer_model, _ = _error(reconstruct=True)
    per_layer = per_layer_model.state_dict()
    for name, value in lockstep_model.state_dict().items():
        assert torch.allclose(value, per_layer[name], atol=1e-5), name
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # grouped layers: one regression per group
    expected = depthwise.weight.detach() / 2
    xs = [torch.randn(2, 4, 6, 6) for _ in range(3)]
    with torch.no_grad():  # inputs twice as large: the weights that give the same output are halved
        delta, rows, columns = refit_layer(depthwise, [], [(2 * x, x) for x in xs], damp=0.0)
    assert torch.allclose(depthwise.weight, expected, atol=1e-4) and delta.abs().max() < 1e-4
    assert rows == 3 * 2 * 36 and columns == 10  # 9 taps and the constant, per channel
