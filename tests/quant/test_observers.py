import pytest
import torch
from torch import nn

from mmcompress.quant.act_calibration import static_ranges
from mmcompress.quant.observers import (
    OBSERVERS,
    RangeAccumulator,
    kl_range,
    minmax_range,
    mse_clip_ratios,
    mse_range,
    observe_range,
    percentile_range,
)
from mmcompress.quant.primitives import fake_quantize


@pytest.fixture
def outliers():
    x = torch.randn(50_000)
    x[:5] = torch.tensor([80.0, -60.0, 70.0, 90.0, -75.0])
    return x


def _mse_after(x, lo, hi, bits=8):
    scale = (hi - lo) / (2**bits - 1)
    zero = round(-lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale
    return float((q - x).pow(2).mean())


def test_robust_observers_clip_rare_outliers_and_resolve_the_bulk_better(outliers):
    lo_mm, hi_mm = minmax_range(outliers)
    assert hi_mm == pytest.approx(90.0)
    bulk = outliers[5:]
    for name in ("percentile", "kl"):
        lo, hi = observe_range(outliers, name, bits=8)
        assert hi < 20 and lo > -20, name
        assert _mse_after(bulk, lo, hi) < _mse_after(bulk, lo_mm, hi_mm) / 10, name
    for bits in (4, 8):  # mse minimises the error on everything, outliers included
        lo, hi = observe_range(outliers, "mse", bits=bits)
        assert _mse_after(outliers, lo, hi, bits) <= _mse_after(outliers, lo_mm, hi_mm, bits)


def test_mse_range_never_worse_than_minmax():
    x = torch.randn(20_000)
    lo, hi = mse_range(x, bits=4)
    assert _mse_after(x, lo, hi, 4) <= _mse_after(x, *minmax_range(x), 4) + 1e-12


def test_kl_threshold_is_symmetric_and_positive_only_for_relu_data():
    lo, hi = kl_range(torch.randn(20_000).relu())
    assert lo == 0.0 and hi > 0
    with pytest.raises(ValueError, match="unknown observer"):
        observe_range(torch.ones(3), "median")
    with pytest.raises(ValueError, match="percentile"):
        percentile_range(torch.ones(3), 10)
    assert set(OBSERVERS) == {"minmax", "percentile", "mse", "kl"}


def test_mse_weight_clipping_lowers_low_bit_error():
    w = torch.randn(16, 4, 64)
    ratios = mse_clip_ratios(w, 3, True)
    assert ratios.shape == (16, 4) and bool((ratios <= 1).all())
    flat = w.view(16, 256)
    err_minmax = (fake_quantize(flat, 3, True, 64) - flat).pow(2).sum()
    err_mse = (fake_quantize(flat, 3, True, 64, ratios) - flat).pow(2).sum()
    assert err_mse < err_minmax


def test_the_record_shows_the_ranges_an_mse_observer_kept():
    """The record's grid says clip_ratio 1.0 (the minmax setting); what `mse` chose per group is recorded
    beside it, read back from the steps, so a user sees how much of each range was clipped."""
    from mmcompress.quant.api import QuantConfig, quantize
    from mmcompress.quant.primitives import affine_params, to_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 32), nn.Linear(32, 8))
    full_steps, _ = affine_params(to_groups(model[0].weight.detach(), 64), 3, False, 1.0)
    config = QuantConfig(weight_bits=3, granularity="per_group", group_size=64, observer="mse")
    kept = quantize(model, config).modules["0"]["kept_range"]
    assert kept["max"] <= 1.0 and kept["min"] < 0.95  # gaussian weights at 3 bits are clipped
    assert kept["median"] == pytest.approx(float((model[0].scale / full_steps).median()), abs=1e-3)
    plain = nn.Sequential(nn.Linear(256, 32))
    assert "kept_range" not in quantize(plain, config.model_copy(update={"observer": "minmax"})).modules["0"]


def _fed(method: str, x: torch.Tensor, sizes, **kwargs) -> tuple[float, float]:
    acc = RangeAccumulator(method, **kwargs)
    for batch in x.split(sizes):
        acc.update(batch)
    return acc.range()


@pytest.mark.parametrize("method", OBSERVERS)
def test_streamed_ranges_do_not_depend_on_batching(method):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 20, 20) * torch.linspace(0.1, 3.0, 4).view(1, 4, 1, 1)
    x[3, 1, 5, 5] = 40.0
    # small tail and sample: the percentile falls back to the sample, which halves its rate 4 times
    for kwargs in ({}, {"tail": 4, "sample": 2000}):
        ranges = {_fed(method, x, sizes, **kwargs) for sizes in (16, 4, 1, [5, 9, 2])}
        assert len(ranges) == 1, (method, kwargs, ranges)
    if method != "mse":  # the sample holds everything: same as the one-shot observer
        assert _fed(method, x, 4) == pytest.approx(observe_range(x, method))


def test_streamed_percentile_is_exact():
    x = torch.randn(64, 3000)  # 192k values: percentile from the kept tails, not a sample
    lo, hi = _fed("percentile", x, 8)
    want = torch.quantile(x.flatten().double(), torch.tensor([1e-4, 1 - 1e-4], dtype=torch.float64)).tolist()
    assert (lo, hi) == pytest.approx(want, rel=1e-6)
    assert percentile_range(x) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        RangeAccumulator("kl").update(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("observer", ["percentile", "kl"])
def test_static_ranges_same_for_1_4_and_16_calibration_batches(observer):
    """Regression: per-batch subsampling sized by the batch made MobileNetV2's percentile ranges (and its
    W8A8 top-1 agreement, 0.910 vs 0.877) depend on whether 64 crops came in batches of 4 or 16."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU6(), nn.Conv2d(16, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    calib = torch.randn(16, 3, 48, 48)  # the second conv sees 541k values: over 2^18, a sample per batch once
    layers = {n: (m, observer) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    ranges = [static_ranges(model, layers, list(calib.split(size)), str) for size in (16, 4, 1)]
    for other in ranges[1:]:
        for name in layers:
            assert other[name][0] == pytest.approx(ranges[0][name][0], rel=1e-6), name
            assert other[name][1] == ranges[0][name][1], name


def test_kl_threshold_ignores_the_zeros_of_relu_outputs():
    """Mostly-zero ReLU outputs (MobileNetV2) once made the zero bin dominate the divergence: the
    threshold fell far inside the data and W8A8 top-1 agreement dropped to 0.13."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g).relu()
    x[:150_000] = 0
    lo, hi = kl_range(x)
    assert lo == 0.0 and hi >= float(x[x > 0].quantile(0.99))
