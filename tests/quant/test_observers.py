import pytest
import torch

from mmcompress.quant.observers import (
    OBSERVERS,
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
