"""Input quantization for the int8 GEMMs in one compiled pass (the integers of the simulation).

Eager PyTorch forms a W8A8 layer's input codes in five passes over the input (min/max, divide,
round, add the zero point and clamp, convert to uint8); on all-MiniLM-L6-v2 at batch 32 those
passes took longer than the int8 GEMMs themselves. `torch.compile` fuses them (inductor: one
reduction, one element-wise loop) and the per-token rescale after the GEMM (`y * step + bias`)
into one loop. The compiled functions compute exactly what the eager ones do (same float32
operations: the same codes, tested); they compile once per dtype/rank (dynamic shapes, a few
seconds) and run only on inputs of FUSED_MIN elements or more, where they pay for their call
overhead. Without a working compiler the eager functions run, with a warning once.

A compiled call costs 30-60 us of guard checks and wrappers before its loop runs: more than the
work on one sentence (128 x 384 inputs). Per-tensor inputs below SMALL_MAX elements therefore take
`tensor_codes_small`: the same integers from four C++ passes (min/max, divide, round, and
ATen's vectorized quantize), 33 us instead of 56 us at 128 x 384 (2 threads).
"""

from __future__ import annotations

import math
import struct
import warnings

import torch

from mmcompress.quant.activations import TOKEN_LEVELS

FUSED_MIN = 1 << 12  # input elements from which the compiled pass beats the eager passes
SMALL_MAX = 1 << 18  # per-tensor inputs below this many elements take `tensor_codes_small`
_COMPILED: dict = {}  # name -> compiled function; "broken" -> why compiling failed
_QUANTIZE = {"quiet": False}  # whether ATen's quantize has printed its (once per process) deprecation


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


def _f32(value: float) -> float:
    """`value` rounded to float32, as a Python float (float32 arithmetic on Python scalars)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _aten_quantize(y: torch.Tensor, zero: int) -> torch.Tensor:
    """uint8 clamp(y + zero, 0, 255) of an integer-valued float tensor, in ATen's vectorized quantize
    (step 1: it adds the zero point before rounding, exact for integers), viewed as plain uint8."""
    if not _QUANTIZE["quiet"]:  # ATen warns once per process that quantized tensors are deprecated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.quantize_per_tensor(y, 1.0, zero, torch.quint8)
        _QUANTIZE["quiet"] = True
    else:
        q = torch.quantize_per_tensor(y, 1.0, zero, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def tensor_codes_small(x: torch.Tensor, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int]:
    """`tensor_codes_eager`'s integers (codes, step, zero point) with the step and zero point as
    Python numbers, in four C++ passes: what small inputs run (see the module docstring).

    The step and zero point are computed in float32 from the min/max, as the eager function does;
    the codes are round(x / step) (divided, then rounded half to even) plus the zero point, clamped.

    Example:
        >>> codes, step, zero = tensor_codes_small(torch.tensor([-1.0, 0.0, 3.0]))  # 4/255, 64
    """
    x = x if smooth is None else x * smooth
    lo, hi = torch.aminmax(x)
    lo, hi = min(lo.item(), 0.0), max(hi.item(), 0.0)
    step = _f32(_f32(hi - lo) / 255.0)
    if not math.isfinite(step):  # NaN or infinite inputs: the eager passes give what they give
        return tensor_codes_eager(x)
    step = 1.0 if step == 0.0 else step
    zero = min(max(round(_f32(-lo / step)), 0), 255)  # float32 quotient, then round half to even
    return _aten_quantize(torch.div(x, step).round_(), zero), step, zero


def token_codes_eager(x: torch.Tensor, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes per row of a (M, K) input (times `smooth` when given) and the (M, 1)
    steps max|row| / 127.

    Example:
        >>> codes, step = token_codes_eager(torch.randn(4, 8))
    """
    x = x if smooth is None else x * smooth
    step = _token_step(x)
    return torch.round(x / step).to(torch.int8), step


def _token_step(x: torch.Tensor) -> torch.Tensor:
    """(M, 1) symmetric per-row steps max|row| / 127 (at least float32's tiniest normal)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    return torch.maximum(hi, -lo).clamp_min(torch.finfo(torch.float32).tiny) / TOKEN_LEVELS


def token_codes_u8_eager(x: torch.Tensor, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_codes_eager`'s codes plus 128 as uint8 (zero point 128) and its steps: the same
    integers in the u8 form that x86 int8 GEMMs take natively (oneDNN runs signed int8 inputs on
    a reference kernel without AMX: seconds instead of a millisecond at 1500 x 384 x 1536).

    Example:
        >>> codes, step = token_codes_u8_eager(torch.randn(4, 8))  # codes - 128 == token codes
    """
    x = x if smooth is None else x * smooth
    step = _token_step(x)
    return (torch.round(x / step) + 128.0).to(torch.uint8), step


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


SMALL_QUANTIZE = hasattr(torch, "quantize_per_tensor") and hasattr(torch, "quint8")
EAGER = {
    "tensor": tensor_codes_eager,
    "token": token_codes_eager,
    "token_u8": token_codes_u8_eager,
    "rescale": rescale_eager,
}


def fused(name: str, x: torch.Tensor, *args):
    """Run EAGER[name](x, *args) compiled when x is large enough and compiling works, else eagerly;
    per-tensor inputs below SMALL_MAX elements take `tensor_codes_small` (the same integers, with
    the step and zero point as Python numbers).

    Example:
        >>> codes, step, zero = fused("tensor", torch.randn(4096, 384))
    """
    eager = EAGER[name]
    if name == "tensor" and x.numel() < SMALL_MAX and SMALL_QUANTIZE and not torch.compiler.is_compiling():
        return tensor_codes_small(x, *args)
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
