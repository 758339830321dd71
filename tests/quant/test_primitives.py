import pytest
import torch

from mmcompress.quant.primitives import dequantize_symmetric, qrange, quantize_symmetric, sqnr_db, symmetric_scale

# 8-bit per-channel symmetric on Gaussian weights: SQNR ~ 6.02*8 - 10log10(3*range^2/sigma^2) ~ 40 dB
MIN_SQNR_8BIT_DB = 35.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_error_is_at_most_half_a_step_and_codes_in_range(bits):
    w = torch.randn(16, 32)
    scale = symmetric_scale(w, bits)
    codes = quantize_symmetric(w, scale, bits)
    lo, hi = qrange(bits)
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    err = (dequantize_symmetric(codes, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


def test_8bit_per_channel_sqnr_threshold():
    w = torch.randn(64, 256) * torch.logspace(-2, 0, 64)[:, None]  # channels with very different ranges
    scale = symmetric_scale(w, 8)
    assert sqnr_db(w, dequantize_symmetric(quantize_symmetric(w, scale, 8), scale)) > MIN_SQNR_8BIT_DB


def test_per_channel_beats_per_tensor_on_uneven_channels():
    w = torch.randn(64, 256) * torch.logspace(-2, 0, 64)[:, None]
    per_tensor = torch.full((64,), float(w.abs().max() / 127))
    tensor_db = sqnr_db(w, dequantize_symmetric(quantize_symmetric(w, per_tensor, 8), per_tensor))
    channel = symmetric_scale(w, 8)
    channel_db = sqnr_db(w, dequantize_symmetric(quantize_symmetric(w, channel, 8), channel))
    assert channel_db > tensor_db + 5


def test_zero_channel_and_conv_axis():
    w = torch.randn(4, 3, 3, 3)
    w[1] = 0
    scale = symmetric_scale(w, 8)
    out = dequantize_symmetric(quantize_symmetric(w, scale, 8), scale)
    assert torch.isfinite(out).all() and bool((out[1] == 0).all())
    with pytest.raises(ValueError, match="bits"):
        qrange(9)
