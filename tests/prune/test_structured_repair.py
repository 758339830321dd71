"""Accuracy of structured pruning on BatchNorm CNNs: mean compensation, variance importance,
global allocation and BatchNorm recalibration, each measured against the unpruned model."""

import copy
import warnings

import pytest
import torch
from torch import nn

from mmcompress.prune.compensate import graph_input_stats, measured_input_stats
from mmcompress.prune.dependency import trace
from mmcompress.prune.mean_flow import gaussian_moments
from mmcompress.prune.repair import recalibrate_batchnorm
from mmcompress.prune.structured import prune_structured

COMPENSATION_GAIN = 0.7  # compensated output error is at most this fraction of the uncompensated one
MEAN_TOLERANCE = 0.15  # data-free mean of a BN -> ReLU6 channel vs measured, relative to the channel's std
RECAL_GAIN = 0.8  # BN recalibration (reference transfer) leaves at most this fraction of the error
STATS_ATOL = 1e-5


class BNNet(nn.Module):
    """conv-BN-ReLU6 -> expand 1x1 -> depthwise -> project 1x1 (no bias) -> BN -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 24, 1, bias=False), nn.BatchNorm2d(24),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _trained_looking(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Positive BN shifts (channels with a large mean after ReLU6) and running statistics that are
    the true statistics of the data (as after training)."""
    torch.manual_seed(seed)
    model = BNNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.0, 2.0), m.weight.uniform_(0.3, 1.5)
    data = torch.randn(64, 3, 12, 12)
    recalibrate_batchnorm(model, [data[:32], data[32:]])
    return model.eval(), data


def _error(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = reference(x)
        return float((model(x) - want).pow(2).mean() / want.pow(2).mean())


@pytest.mark.parametrize("calib", [False, True])
def test_mean_compensation_reduces_the_output_error(calib):
    base, data = _trained_looking()
    test = torch.randn(32, 3, 12, 12)
    errors = {}
    for compensate in (False, True):
        model = copy.deepcopy(base)
        kwargs = {"calib": [data]} if calib else {}
        config = {"re:(stem|block).*": {"ratio": 0.5, "compensate": compensate}}
        record = prune_structured(model, config, example_inputs=data[:2], **kwargs)
        errors[compensate] = _error(model, base, test)
    assert record.modules["block.0"]["compensation"] == {"block.6": "norm:block.7"}  # after the depthwise conv
    assert errors[True] < COMPENSATION_GAIN * errors[False]


def test_data_free_means_match_measured_means_of_a_bn_relu6_channel():
    model, data = _trained_looking()
    modules = dict(model.named_modules())
    free = graph_input_stats(trace(model, data[:2]), modules, ["block.0", "block.6"])
    measured = measured_input_stats(model, {n: modules[n] for n in ("block.0", "block.6")}, [data])
    for name in ("block.0", "block.6"):
        (mean, _), (true_mean, true_var) = free[name], measured[name]
        assert ((mean - true_mean).abs() / true_var.sqrt()).max() < MEAN_TOLERANCE


def test_gaussian_moments_of_relu6_match_the_closed_form():
    mean, var = torch.tensor([-1.0, 0.5, 3.0, 7.0]), torch.tensor([1.0, 4.0, 2.0, 0.25])
    got, _ = gaussian_moments(lambda x: x.clamp(0, 6), mean, var)
    normal = torch.distributions.Normal(mean, var.sqrt())
    x = torch.linspace(-20, 20, 400001)[:, None]
    want = (x.clamp(0, 6) * normal.log_prob(x).exp()).sum(0) * (40 / 400000)
    assert torch.allclose(got, want, atol=1e-4)


def test_variance_importance_keeps_the_channels_the_consumer_relies_on():
    model, data = _trained_looking()
    with torch.no_grad():
        model.block[6].weight[:, :8] *= 20  # the projection leans on 8 hidden channels ...
        model.block[0].weight[:8] *= 0.05  # ... whose expand kernels are small
    config = {"block.0": {"ratio": 0.5, "method": "magnitude"}}
    magnitude = prune_structured(copy.deepcopy(model), config, example_inputs=data[:2])
    variance = prune_structured(model, {"block.0": {"ratio": 0.5, "method": "variance"}}, example_inputs=data[:2])
    assert set(range(8)) <= set(variance.modules["block.0"]["keep"])
    assert set(range(8)) - set(magnitude.modules["block.0"]["keep"])  # L1 of the producer misses them


def test_global_scope_meets_the_overall_ratio_within_per_group_caps():
    model, data = _trained_looking()
    with torch.no_grad():
        model.block[0].weight[:24] *= 1e-3  # half the hidden channels carry almost nothing
    cfg = {"ratio": 0.3, "scope": "global", "max_ratio": 0.6, "compensate": False, "method": "magnitude"}
    config = {"re:(stem|block).*": cfg}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # per-group ratios differ from 0.3 on purpose: no rounding warning
        record = prune_structured(model, config, example_inputs=data[:2])
    groups = [e for e in record.modules.values() if e["structure"] == "channels"]
    units = sum(e["before"] for e in groups)
    removed = sum(e["before"] - e["kept"] for e in groups)
    assert abs(removed / units - 0.3) <= 1 / units and record.metrics["units_removed"] == removed / units
    assert all(e["removed_ratio"] <= 0.6 + 1e-9 for e in groups)
    by_name = {e["group"]["producers"][0]: e for e in groups}
    assert by_name["block.0"]["removed_ratio"] > 0.3  # the weak group gives more than the average
    assert model(data[:2]).shape == (2, 10)


def test_batchnorm_recalibration_estimates_the_data_statistics_and_restores_modes():
    model, data = _trained_looking()
    model.train()
    model.head.train(False)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    shifted = data * 2 + 1
    assert recalibrate_batchnorm(model, [shifted[:32], shifted[32:]]) == 2  # equal batches: exact mean
    stem = model.stem[0](shifted)  # the first BN's input
    assert torch.allclose(model.stem[1].running_mean, stem.mean((0, 2, 3)), atol=STATS_ATOL)
    assert torch.allclose(model.stem[1].running_var, stem.var((0, 2, 3)), rtol=0.05)  # mean of batch variances
    assert model.training and not model.head.training and model.stem[1].momentum == 0.1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_reference_transfer_keeps_an_unpruned_model_and_repairs_a_pruned_one():
    base, data = _trained_looking()
    same = copy.deepcopy(base)
    recalibrate_batchnorm(same, [data[:7] * 3], reference=base)  # a narrow, shifted calibration set
    for a, b in zip(same.modules(), base.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-4)
            assert torch.allclose(a.running_var, b.running_var, rtol=1e-4)
    model = copy.deepcopy(base)
    record = prune_structured(model, {"re:(stem|block).*": {"ratio": 0.5}}, example_inputs=data[:2])
    test = torch.randn(32, 3, 12, 12)
    before = _error(model, base, test)
    recalibrate_batchnorm(model, [data[:32], data[32:]], reference=base, record=record)
    assert _error(model, base, test) < RECAL_GAIN * before


def test_a_consumer_without_bias_gets_one_and_replay_recreates_it():
    from mmcompress.core.record import Record
    from mmcompress.prune.structured import replay_structured

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 6, bias=False), nn.Linear(6, 2),
        ).eval()  # fmt: skip

    model, x = build(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model[1].bias.fill_(1.0)  # removed channels carry a clear positive mean
    record = prune_structured(model, {"0": {"ratio": 0.5}}, example_inputs=x)
    assert record.modules["0"]["compensation"] == {"5": "new bias"} and model[5].bias is not None
    fresh = build()
    replay_structured(fresh, Record.from_json(record.to_json()))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
