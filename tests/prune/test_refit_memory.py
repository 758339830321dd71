"""The sequential refit within a memory budget: it holds as many calibration batches as fit, and the
layers it ends on are refit on every batch, streamed one at a time."""

import copy
import importlib

import pytest
import torch
from torch import fx, nn

from mmcompress.prune.lockstep import live_bytes, lockstep
from mmcompress.prune.structured import prune_structured

sequential_refit = importlib.import_module("mmcompress.prune.sequential_refit")


class ConvThenMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.project, self.bn2 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)
        self.fc1, self.head = nn.Linear(8, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.project(torch.relu(self.bn1(self.stem(x))))))
        return self.head(torch.relu(self.fc1(x.mean((2, 3)))))


def _pruned(calib: list) -> nn.Module:
    torch.manual_seed(0)
    model = ConvThenMLP().eval()
    config = {"ratio": 0.5, "reconstruct": True, "method": "magnitude"}  # the same channels on any calib
    prune_structured(model, {"stem": config, "fc1": config, "_default": None}, example_inputs=calib[0], calib=calib)
    return model


def test_batches_beyond_the_budget_reach_the_last_layers_streamed(monkeypatch, recwarn):
    torch.manual_seed(1)
    calib = [torch.randn(8, 3, 6, 6) for _ in range(6)]
    one_batch = _pruned(calib[:1])
    assert any("head (8 rows" in str(w.message) for w in recwarn)  # 8 images for 17 columns: scarce
    recwarn.clear()
    monkeypatch.setattr(sequential_refit, "memory_budget", lambda: 1)  # room for one batch
    with pytest.warns(UserWarning, match="refits the first layers on the first 1 batches"):
        budgeted = _pruned(calib)
    assert not any("rows" in str(w.message) for w in recwarn)  # the head saw 48 rows
    assert torch.equal(budgeted.project.weight, one_batch.project.weight)  # refit on the batch it held
    assert budgeted.head.weight.shape == one_batch.head.weight.shape == (5, 16)
    assert not torch.allclose(budgeted.head.weight, one_batch.head.weight)  # refit on all six


def test_last_layers_and_live_bytes():
    model = ConvThenMLP().eval()
    graph = fx.symbolic_trace(model)
    assert sequential_refit.last_layers(graph, {"project", "fc1", "head"}) == ["head"]
    assert sequential_refit.last_layers(graph, {"project", "fc1"}) == ["fc1"]
    small, large = live_bytes(graph, torch.randn(2, 3, 6, 6)), live_bytes(graph, torch.randn(4, 3, 6, 6))
    assert small >= 2 * 16 * 36 * 4 and large == 2 * small  # at least the stem's output, in proportion


def test_batches_are_admitted_where_activations_narrow(monkeypatch):
    torch.manual_seed(2)
    model = ConvThenMLP().eval()
    graph = fx.symbolic_trace(model)
    batches = [torch.randn(8, 3, 6, 6) for _ in range(4)]
    per_batch = live_bytes(graph, batches[0])  # the stem's 16 x 6 x 6 maps
    monkeypatch.setattr(sequential_refit, "memory_budget", lambda: 2 * per_batch + 1)  # one batch at the maps
    with pytest.warns(UserWarning, match="from fc1 on"):
        held = sequential_refit.held_per_node(graph, batches)
    assert held[0] == 1 and held[-1] == 4 and held == sorted(held)
    seen = {}
    lockstep(
        graph, copy.deepcopy(model), batches, {"project", "fc1"}, lambda n, xs, rs, cs: seen.setdefault(n, xs), held
    )
    assert len(seen["project"]) == 1 and len(seen["fc1"]) == 4  # fc1 reads pooled rows: every batch fits
    expected = []
    hook = model.fc1.register_forward_pre_hook(lambda module, args: expected.append(args[0]))
    for batch in batches:
        model(batch)
    hook.remove()
    for got, want in zip(seen["fc1"], expected, strict=True):  # admitted batches ran the layers before fc1
        assert torch.allclose(got, want)
