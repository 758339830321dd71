"""Structured pruning with `scope: "sensitivity"`: per-group ratios from the measured output change
of masking each group (prune/sensitivity.py)."""

import copy
import importlib

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.prune.dependency import channel_groups, trace
from mmcompress.prune.heads import output_difference
from mmcompress.prune.sensitivity import allocate, group_sensitivity, interpolated
from mmcompress.prune.structured import StructuredConfig, prune_structured


class TwoBranches(nn.Module):
    """Two hidden layers read by one head; the "loud" branch carries most of the output."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet, self.loud = nn.Linear(12, 32), nn.Linear(12, 32)
        self.head = nn.Linear(64, 6)
        with torch.no_grad():
            self.head.weight[:, :32] *= 0.05

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.quiet(x)), torch.relu(self.loud(x))], 1))


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(64, 12, generator=g) for _ in range(3)]


def test_interpolation_and_allocation():
    assert interpolated((0.25, 0.5), (1.0, 3.0), 0.125) == 0.25  # quadratic below the first probe
    assert interpolated((0.25, 0.5), (1.0, 3.0), 0.375) == 2.0
    assert interpolated((0.25, 0.5), (1.0, 3.0), 0.75) == 5.0  # extrapolated along the last slope
    costly, cheap = (lambda r: 10 * r), (lambda r: r)
    assert allocate([costly, cheap], [10, 10], 0.3, 0.6) == [10, 4]  # the cheap group gives all it may
    assert allocate([costly, cheap], [10, 10], 0.5, 0.6) == [6, 4]  # then the costly one
    keeps = allocate([cheap, cheap, costly], [40, 20, 40], 0.3, 0.9, round_to=4)
    assert abs(100 - sum(keeps) - 30) <= 4 and all(k % 4 == 0 for k in keeps) and keeps[2] == 40


def test_probe_equals_pruning_with_mean_compensation(monkeypatch):
    """Masking a unit with its mean at the consumer's input is what removing it with mean compensation does."""
    torch.manual_seed(0)
    model, calib = TwoBranches().eval(), _calib()
    example = calib[0][:2]
    group = next(g for g in channel_groups(model, example, trace(model, example)).values() if "loud" in g.producers)
    order = torch.randperm(32)
    with torch.no_grad():
        refs = [model(b) for b in calib]
        hidden = torch.cat([torch.relu(torch.cat([model.quiet(b), model.loud(b)], 1)) for b in calib])
        change = group_sensitivity(model, dict(model.named_modules()), group, order, [0.25], calib, refs,
                                   {"head": (hidden.mean(0), None)})[0]  # fmt: skip
    scores = torch.zeros(32)
    scores[order[8:]] = 1.0  # the probe's first 8 units go
    plan = importlib.import_module("mmcompress.prune.channel_plan")
    original = plan._scores
    monkeypatch.setattr(plan, "_scores", lambda g, *a: scores if "loud" in g.producers else original(g, *a))
    pruned = copy.deepcopy(model)
    prune_structured(pruned, {"loud": {"ratio": 0.25}, "_default": None}, example_inputs=example, calib=calib)
    with torch.no_grad():
        actual = sum(output_difference(r, pruned(b), b) for b, r in zip(calib, refs, strict=True)) / len(calib)
    assert change > 0 and abs(change - actual) <= 1e-4 * actual


def test_sensitivity_scope_spares_the_loud_branch():
    torch.manual_seed(0)
    model, calib = TwoBranches().eval(), _calib()
    cfg = {"ratio": 0.3, "scope": "sensitivity", "max_ratio": 0.6}
    reference = copy.deepcopy(model)
    rec = prune_structured(
        model, {"quiet": cfg, "loud": cfg, "_default": None}, example_inputs=calib[0][:2], calib=calib
    )
    quiet, loud = rec.modules["quiet"], rec.modules["loud"]
    assert quiet["kept"] == 13 and loud["kept"] == 32  # 19 of 64 units go, all from the quiet branch (cap 60%)
    assert quiet["scope"] == "sensitivity" and len(quiet["sensitivity"]) == 2
    assert quiet["sensitivity"][0] < loud["sensitivity"][0]
    assert model(calib[0]).shape == reference(calib[0]).shape
    layer = copy.deepcopy(reference)
    prune_structured(layer, {"quiet": {"ratio": 0.3}, "loud": {"ratio": 0.3}, "_default": None},
                     example_inputs=calib[0][:2], calib=calib)  # fmt: skip
    with torch.no_grad():
        err = lambda m: sum(output_difference(reference(b), m(b), b) for b in calib)  # noqa: E731
        assert err(model) < err(layer)


def test_sensitivity_scope_needs_calibration_and_channels():
    model = TwoBranches()
    with pytest.raises(ConfigError, match="scope 'sensitivity'"):
        prune_structured(model, {"quiet": {"ratio": 0.3, "scope": "sensitivity"}}, example_inputs=torch.randn(2, 12))
    with pytest.raises(ValueError, match="heads use scope"):
        StructuredConfig(unit="heads", scope="sensitivity")
    assert StructuredConfig(scope="sensitivity", ablation_batches=2).ablation_batches == 2
    with pytest.raises(ValueError, match="max_ratio 0.2 is below ratio 0.5"):
        StructuredConfig(ratio=0.5, scope="sensitivity", max_ratio=0.2)
    with pytest.raises(ValueError, match="not 'layer'"):
        StructuredConfig(ratio=0.5, max_ratio=0.7)


def test_reconstruction_scores_rank_units_up_to_the_cap(monkeypatch):
    """Allocation may take a group past `ratio` (up to the cap): greedy OBS must order that many units."""
    plan = importlib.import_module("mmcompress.prune.channel_plan")
    steps, original = [], plan.reconstruction_scores
    monkeypatch.setattr(plan, "reconstruction_scores", lambda *a: steps.append(a[-1]) or original(*a))
    model, calib = TwoBranches().eval(), _calib()
    cfg = {"ratio": 0.25, "scope": "sensitivity", "max_ratio": 0.5, "method": "reconstruction"}
    prune_structured(model, {"quiet": cfg, "loud": cfg, "_default": None}, example_inputs=calib[0][:2], calib=calib)
    assert steps == [16, 16]  # half of each group's 32 units, not a quarter


def test_parameter_budget_counts_what_slicing_removes():
    from mmcompress.prune.sensitivity import parameter_count

    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    example = torch.randn(2, 8)
    found = channel_groups(chain, example, trace(chain, example)).values()
    groups = sorted((g for g in found if not g.pinned), key=lambda g: g.producers)  # the output layer's is pinned
    removed_of, total = parameter_count(groups, dict(chain.named_modules()))
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total == params(chain)
    sliced = copy.deepcopy(chain)
    prune_structured(sliced, {"0": {"ratio": 0.5}, "2": {"ratio": 0.25}, "_default": None}, example_inputs=example)
    assert removed_of([8, 4]) == params(chain) - params(sliced)  # neighbours counted once, as slicing removes them

    model, calib = TwoBranches().eval(), _calib()
    before = params(model)
    cfg = {"ratio": 0.3, "scope": "sensitivity", "max_ratio": 0.6, "budget": "params"}
    targets = {"quiet": cfg, "loud": cfg, "_default": None}
    prune_structured(model, targets, example_inputs=calib[0][:2], calib=calib)
    assert abs((before - params(model)) / before - 0.3) < 0.02  # every layer here is touched by the two groups
    with pytest.raises(ValueError, match="budget 'params' applies to scope 'sensitivity'"):
        StructuredConfig(budget="params")


class LstmAndConv(nn.Module):
    """An LSTM text tower and a BN + depthwise conv image tower concatenated into one head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lstm = nn.Linear(5, 12), nn.LSTM(12, 16, batch_first=True)
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.head = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Linear(16 + 8, 3)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(torch.relu(self.emb(x)))
        v = self.dw(torch.relu(self.bn(self.conv(image)))).mean((2, 3))
        return self.head(torch.cat([h[:, -1], v], 1))


def test_parameter_count_matches_slicing_through_lstm_depthwise_and_concatenation():
    from mmcompress.prune.sensitivity import parameter_count

    model, example = LstmAndConv().eval(), (torch.randn(2, 4, 5), torch.randn(2, 1, 6, 6))
    found = channel_groups(model, example, trace(model, example)).values()
    groups = sorted((g for g in found if not g.pinned), key=lambda g: g.producers)  # conv, emb, lstm
    removed_of, total = parameter_count(groups, dict(model.named_modules()))
    sliced = copy.deepcopy(model)
    ratios = {"conv": 0.5, "emb": 0.25, "lstm": 0.5}
    prune_structured(sliced, {**{k: {"ratio": r} for k, r in ratios.items()}, "_default": None}, example_inputs=example)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total == params(model)
    assert removed_of([4, 3, 8]) == params(model) - params(sliced)
