"""The compiled input quantization computes the eager passes' integers exactly (codes, steps,
zero points, SmoothQuant's multiply, the per-token rescale), and falls back to them when
compiling fails."""

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
