"""The compiled input quantization computes the eager passes' integers exactly (codes, steps,
zero points, SmoothQuant's multiply, the per-token rescale), and falls back to them when
compiling fails."""

import numpy as np
import pytest
import torch

from mmcompress.quant import fused_codes
from mmcompress.quant.fused_codes import fused, rescale_eager, tensor_codes_eager, token_codes_eager
from mmcompress.quant.kernels import input_codes, tensor_qparams


def _activations(rows: int = 256, k: int = 384) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(rows, k, generator=g) * 3)
    x[:, :2] *= 40  # outlier channels
    return x


@pytest.fixture
def always_compiled(monkeypatch):
    monkeypatch.setattr(fused_codes, "FUSED_MIN", 0)
    monkeypatch.setattr(fused_codes, "SMALL_MAX", 0)


def test_eager_codes_are_the_simulations_integers():
    x = _activations()
    codes, step, zero = tensor_codes_eager(x)
    ref_step, ref_zero = tensor_qparams(x)
    assert float(step) == float(ref_step) and int(zero) == ref_zero
    assert torch.equal(codes, input_codes(x, (ref_step, ref_zero))[0])
    tokens, steps = token_codes_eager(x)
    ref_tokens, ref_steps, _ = input_codes(x, None)
    assert torch.equal(tokens, ref_tokens) and torch.equal(steps, ref_steps)
    zeros = tensor_codes_eager(torch.zeros(4, 8))
    assert float(zeros[1]) == 1.0 and int(zeros[2]) == 0 and not zeros[0].any()


def test_compiled_passes_equal_the_eager_ones(always_compiled):
    x, smooth = _activations(), torch.rand(384) + 0.5
    for args in ((x,), (x, smooth)):
        for got, want in zip(fused("tensor", *args), tensor_codes_eager(*args), strict=True):
            assert torch.equal(got, want)
        for got, want in zip(fused("token", *args), token_codes_eager(*args), strict=True):
            assert torch.equal(got, want)
    y, step, bias = torch.randn(256, 64), torch.rand(256, 1), torch.randn(64)
    torch.testing.assert_close(fused("rescale", y, step, bias), rescale_eager(y, step, bias), rtol=0, atol=1e-6)


def test_a_broken_compiler_falls_back_to_the_eager_passes(monkeypatch, always_compiled):
    def no_compiler(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused_codes, "_COMPILED", {"tensor": no_compiler})
    x = _activations(8, 16)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        codes = fused("tensor", x)[0]
    assert torch.equal(codes, tensor_codes_eager(x)[0])
    assert "broken" in fused_codes._COMPILED


def _near_ties(lo: float, hi: float) -> torch.Tensor:
    """Inputs x with x / step just below k + 0.5 in float32, for the step of [lo, hi]: where adding the
    zero point before rounding (as ATen's quantize does) would round up instead of down."""
    step = np.float32(np.float32(hi - lo) / np.float32(255))
    found = []
    for k in range(-60, 60):
        y = np.nextafter(np.float32(k + 0.5), np.float32(-1e9) if k >= 0 else np.float32(1e9))
        x = np.float32(y * step)
        for cand in (x, np.nextafter(x, np.float32(1e9)), np.nextafter(x, np.float32(-1e9))):
            if np.float32(cand / step) == y:
                found.append(float(cand))
                break
    return torch.tensor([lo, hi, *found])


def test_small_inputs_take_the_aten_passes_with_the_same_integers():
    g = torch.Generator().manual_seed(3)
    ties = _near_ties(-1.3, 2.1)
    assert len(ties) > 100
    cases = [ties[None], torch.randn(1, 384, generator=g), torch.randn(300, 384, generator=g) * 50 - 2]
    cases.append(torch.randn(64, 384, generator=g) * 1e-4 + 1.0)
    for x in cases:
        for smooth in (None, torch.rand(x.shape[-1], generator=g) + 0.5):
            codes, step, zero = fused("tensor", x, smooth)
            assert isinstance(step, float)  # the small path ran
            want = tensor_codes_eager(x, smooth)
            assert step == float(want[1]) and zero == int(want[2]) and torch.equal(codes, want[0])
    for special in (torch.zeros(2, 8), torch.full((2, 8), 3.0)):
        got, want = fused_codes.tensor_codes_small(special), tensor_codes_eager(special)
        assert got[1] == float(want[1]) and got[2] == int(want[2]) and torch.equal(got[0], want[0])
    nan = torch.tensor([[1.0, float("nan")]])
    assert fused_codes.tensor_codes_small(nan)[0].dtype == torch.uint8  # the eager passes, no crash
