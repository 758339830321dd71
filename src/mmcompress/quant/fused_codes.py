"""Input quantization for the int8 GEMMs in one compiled pass (the integers of the simulation).

Eager PyTorch forms a W8A8 layer's input codes in five passes over the input (min/max, divide,
round, add the zero point and clamp, convert to uint8); on all-MiniLM-L6-v2 at batch 32 those
passes took longer than the int8 GEMMs themselves. `torch.compile` fuses them (inductor: one
reduction, one element-wise loop) and the per-token rescale after the GEMM (`y * step + bias`)
into one loop. The compiled functions compute exactly what the eager ones do (same float32
operations: the same codes, tested); they compile once per dtype/rank (dynamic shapes, a few
seconds) and run only on inputs of FUSED_MIN elements or more, where they pay for their call
overhead. Without a working compiler the eager functions run, with a warning once.
"""

from __future__ import annotations

import warnings

import torch

from mmcompress.quant.activations import TOKEN_LEVELS

FUSED_MIN = 1 << 12  # input elements from which the compiled pass beats the eager passes
_COMPILED: dict = {}  # name -> compiled function; "broken" -> why compiling failed


def tensor_qparams_eager(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear's uint8 step and zero point for the whole input (0-dim tensors);
    an all-zero input gets step 1 and zero point 0.

    Example:
        >>> step, zero = tensor_qparams_eager(torch.tensor([-1.0, 0.0, 3.0]))  # 4/255, 64
    """
    lo, hi = torch.aminmax(x)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    step = (hi - lo) / 255.0
    step = torch.where(step == 0.0, torch.ones_like(step), step)
    return step, torch.clamp(torch.round(-lo / step), 0, 255)


def tensor_codes_eager(
    x: torch.Tensor, smooth: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear of a float input (times `smooth` per input channel, SmoothQuant's
    1/s, when given): uint8 codes, step and zero point (0-dim tensors).

    Example:
        >>> codes, step, zero = tensor_codes_eager(torch.tensor([-1.0, 0.0, 3.0]))
    """
    x = x if smooth is None else x * smooth
    step, zero = tensor_qparams_eager(x)
    codes = torch.clamp(torch.round(x / step) + zero, 0, 255).to(torch.uint8)
    return codes, step, zero


def token_codes_eager(x: torch.Tensor, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes per row of a (M, K) input (times `smooth` when given) and the (M, 1)
    steps max|row| / 127.

    Example:
        >>> codes, step = token_codes_eager(torch.randn(4, 8))
    """
    x = x if smooth is None else x * smooth
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    step = torch.maximum(hi, -lo).clamp_min(torch.finfo(torch.float32).tiny) / TOKEN_LEVELS
    return torch.round(x / step).to(torch.int8), step


def rescale_eager(
    y: torch.Tensor, step: torch.Tensor, bias: torch.Tensor | None, act: str | None = None
) -> torch.Tensor:
    """y * step (+ bias), then the fused activation ("gelu", "gelu_tanh" or None): the per-token
    steps applied to an int8 GEMM's output.

    Example:
        >>> rescale_eager(torch.ones(2, 3), torch.tensor([[2.0], [3.0]]), None)
        tensor([[2., 2., 2.],
                [3., 3., 3.]])
    """
    y = y * step if bias is None else y * step + bias
    if act is None:
        return y
    return torch.nn.functional.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")


EAGER = {"tensor": tensor_codes_eager, "token": token_codes_eager, "rescale": rescale_eager}


def fused(name: str, x: torch.Tensor, *args):
    """Run EAGER[name](x, *args) compiled when x is large enough and compiling works, else eagerly.

    Example:
        >>> codes, step, zero = fused("tensor", torch.randn(4096, 384))
    """
    eager = EAGER[name]
    if x.numel() < FUSED_MIN or "broken" in _COMPILED or torch.compiler.is_compiling():
        return eager(x, *args)
    fn = _COMPILED.get(name)
    if fn is None:
        fn = _COMPILED[name] = torch.compile(eager, dynamic=True)
    try:
        return fn(x, *args)
    except Exception as err:  # no C++ compiler or an unsupported build: the eager passes still work
        _COMPILED["broken"] = f"{type(err).__name__}: {err}"[:300]
        warnings.warn(f"compiled input quantization unavailable ({_COMPILED['broken']}); using eager passes",
                      stacklevel=2)  # fmt: skip
        return eager(x, *args)
